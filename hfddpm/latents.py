# Copyright 2026 The hfddpm authors. Apache-2.0.
"""Latent diffusion data: a diffusers autoencoder, and the training set encoded once into a cache.

:func:`load_vae` loads an ``AutoencoderKL`` or ``AutoencoderTiny`` (e.g. ``stabilityai/sd-vae-ft-mse``,
``madebyollin/taesd`` or a folder saved by ``training/train_vae.py``) and nothing else. :func:`encode_dataset` encodes
every training image once (``no_grad``, batched, in the training precision, with a progress bar) and keeps the
latents in a safetensors file next to the dataset cache, keyed by the autoencoder's identity (config and weights),
the dataset's fingerprint and the transform; later runs and every process of a run read it (process 0 encodes, the
others wait). The file is written to a temporary name and renamed when complete, so an encode that was killed
half-way is never read.

Flips: a convolutional autoencoder is not equivariant to mirroring (``E(flip(x)) != flip(E(x))``), so a flipped
image is encoded as its own image: with ``random_flip`` the cache holds both the image and its mirror, and each
step picks one per example. Images are centre-cropped before encoding (a random crop cannot be cached).

The stored latents are the posterior means (``latent_dist.mean``; ``AutoencoderTiny`` is deterministic), unscaled;
training scales them as ``(z - shift_factor) * scaling_factor`` (Rombach et al. 2022, sec. 4.3.2 and appendix G of
https://arxiv.org/abs/2112.10752). The scaling factor comes from the autoencoder's config; a config without one gets
``1 / std`` of the cached latents, written into the config (and so into the saved pipeline's ``vae/``).

Example:
    >>> from diffusers import AutoencoderKL
    >>> from hfddpm.latents import check_vae_resolution, downsample_factor
    >>> vae = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=[8, 8, 8, 8], norm_num_groups=4,
    ...                     down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
    >>> downsample_factor(vae), vae.config.latent_channels
    (8, 4)
    >>> check_vae_resolution(32, vae)  # 32 px images -> 4x4 latents (28 px would be a ValueError)
    4
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from tqdm.auto import tqdm

from hfddpm.data import (
    DECODE_ERRORS,
    MAX_NAMED_BAD_EXAMPLES,
    RESIDENT_MAX_BYTES,
    BadExampleLog,
    DatasetColumns,
    EpochShardSampler,
    ImageTransform,
    _example_rng,
    _undecoded,
    decoded_bytes,
    describe_example,
    host_to_device,
    resident_batches,
    to_pil,
)
from hfddpm.pipelines.pipeline_hfddpm import COMPONENTS, load_model

logger = logging.getLogger(__name__)

# The autoencoder classes --vae loads: the pipeline loader's allowlist (diffusers' own; nothing from the folder is
# imported).
VAE_CLASSES = {cls.__name__: cls for cls in COMPONENTS["vae"][0]}
# Bump when the cache file's layout or meaning changes: old files are then ignored (another key).
LATENT_CACHE_VERSION = 1
LATENT_CACHE_DIR = "hfddpm-latents"
# Images per encoder batch.
ENCODE_BATCH_SIZE = 64


# ---------------------------------------------------------------------------------------------------------------------
# The autoencoder
# ---------------------------------------------------------------------------------------------------------------------
def load_vae(
    path: str, subfolder: str | None = None, revision: str | None = None, cache_dir: str | None = None
) -> AutoencoderKL | AutoencoderTiny:
    """An ``AutoencoderKL`` or ``AutoencoderTiny`` from a folder or Hub id, as ``from_pretrained`` loads it.

    ``ValueError`` when ``path`` is a file, or a folder of another kind of model (naming its class and the ones that
    fit); ``FileNotFoundError`` when there is no ``config.json`` (with a hint for pipeline folders:
    ``--vae_subfolder vae``).
    """
    kwargs = {"subfolder": subfolder, "revision": revision, "cache_dir": cache_dir}
    if os.path.isfile(path):  # from_pretrained reads a folder or a repository; given a file it fails deep inside
        raise ValueError(
            f"--vae must be a folder or a Hub repository id, got the file {path!r}; pass the folder that holds the"
            f" autoencoder's config.json and weights (e.g. {os.path.dirname(os.path.abspath(path))!r})."
        )
    where = f"--vae {path!r}" + (f" (--vae_subfolder {subfolder!r})" if subfolder else "")
    try:
        config = AutoencoderKL.load_config(path, **kwargs)
    except OSError as e:
        hint = ""
        if not subfolder and os.path.isdir(os.path.join(str(path), "vae")):
            hint = " It is a pipeline folder: pass --vae_subfolder vae."
        raise FileNotFoundError(
            f"{where} is not a diffusers autoencoder: no config.json could be read ({e}).{hint} Pass a folder or Hub"
            " repository of an AutoencoderKL (e.g. stabilityai/sd-vae-ft-mse, or a folder from training/train_vae.py)"
            " or an AutoencoderTiny (e.g. madebyollin/taesd)."
        ) from None
    class_name = config.get("_class_name")
    if class_name not in VAE_CLASSES:
        raise ValueError(
            f"{where} holds a {class_name!r}, not an autoencoder; --vae takes a diffusers {' or '.join(VAE_CLASSES)}"
            " folder or Hub repository (e.g. stabilityai/sd-vae-ft-mse, madebyollin/taesd)."
        )
    return load_model(VAE_CLASSES[class_name], path, **kwargs)


def downsample_factor(vae) -> int:
    """How many pixels one latent spans per side, for an autoencoder or its config (a dict, e.g. a saved
    ``vae/config.json``): the encoder halves the image once per block after the first."""
    config = getattr(vae, "config", vae)
    blocks = config.get("encoder_block_out_channels") or config["block_out_channels"]  # AutoencoderTiny, else KL
    return 2 ** (len(blocks) - 1)


def check_vae_resolution(resolution: int, vae) -> int:
    """The latent size of ``resolution`` px images; ``ValueError`` unless the autoencoder divides it evenly."""
    factor = downsample_factor(vae)
    if resolution < factor or resolution % factor:
        lower, upper = max(factor, resolution // factor * factor), (resolution // factor + 1) * factor
        raise ValueError(
            f"resolution={resolution} cannot be encoded by this autoencoder: it downsamples by {factor}, so the"
            f" resolution must be divisible by {factor}. Use e.g. --resolution {lower} or {upper}."
        )
    return resolution // factor


def check_latent_unet(unet, vae, resolution: int | None, *, source: str) -> int:
    """Check that ``unet`` takes this autoencoder's latents and return the image resolution (``resolution``, else the
    UNet's ``sample_size`` times the downsampling factor). ``ValueError`` naming the shapes and what fits."""
    factor, channels = downsample_factor(vae), vae.config.latent_channels
    c = unet.config
    if c.in_channels != channels or c.out_channels != channels:
        raise ValueError(
            f"The UNet ({source}) has in_channels={c.in_channels}, out_channels={c.out_channels}, but the autoencoder"
            f" makes {channels}-channel latents; use a latent preset (--preset latent8 or latent32 for 4 channels) or"
            f" a --unet_config with in_channels = out_channels = {channels}."
        )
    size = c.sample_size if isinstance(c.sample_size, int) else int(c.sample_size[0])
    levels = len(c.block_out_channels)
    unet_factor = 2 ** (levels - 1)
    if size % unet_factor:
        step = factor * unet_factor
        image = resolution if resolution is not None else size * factor
        lower, upper = max(step, image // step * step), (image // step + 1) * step
        raise ValueError(
            f"The latents of {image} px images are {channels}x{size}x{size} (the autoencoder downsamples by {factor}),"
            f" but the UNet ({source}) has {levels} levels (block_out_channels={list(c.block_out_channels)}) and needs"
            f" a latent size divisible by {unet_factor}. Use e.g. --resolution {lower} or {upper}."
        )
    return resolution if resolution is not None else size * factor


def latent_settings(vae, resolution: int) -> dict:
    """The latent geometry of a run, by the names ``training_config.json`` records."""
    scale, shift = scale_shift(vae)
    factor = downsample_factor(vae)
    return {
        "vae_class": type(vae).__name__,
        "latent_channels": vae.config.latent_channels,
        "latent_size": resolution // factor,
        "vae_downsample_factor": factor,
        "vae_scaling_factor": scale,
        "vae_shift_factor": shift,
    }


def vae_identity(vae) -> str:
    """A digest of the autoencoder's class, config and weights: two autoencoders share it only if they encode alike."""
    digest = hashlib.sha256(type(vae).__name__.encode())
    config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def vae_encode(vae, images: torch.Tensor) -> torch.Tensor:
    """Unscaled latents of images in [-1, 1]: the posterior mean of an ``AutoencoderKL``, an ``AutoencoderTiny``'s
    latents."""
    if isinstance(vae, AutoencoderTiny):
        return vae.encode(images).latents
    return vae.encode(images).latent_dist.mean


def scale_shift(vae) -> tuple[float, float]:
    """``(scaling_factor, shift_factor)`` of the autoencoder's config: latents are ``(z - shift) * scale``."""
    return float(vae.config.scaling_factor), float(getattr(vae.config, "shift_factor", None) or 0.0)


def has_configured_scaling_factor(vae) -> bool:
    """Whether the autoencoder's config file set ``scaling_factor`` (rather than diffusers filling in its default)."""
    return "scaling_factor" not in (vae.config.get("_use_default_values") or [])


# ---------------------------------------------------------------------------------------------------------------------
# The encode-once cache
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class EncodedDataset:
    """The cached latents of a dataset: ``latents [N, views, C, h, w]`` (unscaled; view 1 is the mirror image when
    flips are on), ``labels [N]`` or None, where the file is, and whether this call encoded it."""

    latents: torch.Tensor
    labels: torch.Tensor | None
    path: str
    encoded: bool
    latent_std: float
    num_bad_images: int
    bad_examples: list[str]  # the first MAX_NAMED_BAD_EXAMPLES broken images (row and path)


def latent_cache_root(dataset, cache_dir: str | None = None) -> str:
    """Where latent caches go: ``cache_dir``, else next to the dataset's Arrow cache, else the 🤗 datasets cache (for
    in-memory data such as the embedded digits); always in a ``hfddpm-latents`` sub-folder."""
    if cache_dir is None and getattr(dataset, "cache_files", None):
        cache_dir = os.path.dirname(dataset.cache_files[0]["filename"])
    return os.path.join(cache_dir or str(datasets.config.HF_DATASETS_CACHE), LATENT_CACHE_DIR)


def cache_key(vae, dataset, columns: DatasetColumns, *, resolution: int, random_flip: bool, dtype) -> dict:
    """Everything the cached latents depend on (the file is named by a digest of it)."""
    return {
        "version": LATENT_CACHE_VERSION,
        "vae": f"{type(vae).__name__}-{vae_identity(vae)}",
        "dataset": dataset._fingerprint,
        "image_column": columns.image_column,
        "label_column": columns.label_column or "",
        "transform": f"resolution={resolution},channels={vae.config.in_channels},center_crop,flips={random_flip}",
        "dtype": str(dtype).removeprefix("torch."),
    }


def encode_dataset(
    dataset: datasets.Dataset,
    columns: DatasetColumns,
    vae,
    *,
    resolution: int,
    random_flip: bool = False,
    cache_dir: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = ENCODE_BATCH_SIZE,
    show_progress: bool = True,
) -> EncodedDataset:
    """The latents of every image of ``dataset``, from the cache when it has them, else encoded and cached.

    Args:
        dataset: a map-style dataset (a stream has no end to cache).
        columns: its image and label columns (``hfddpm.data.resolve_columns``).
        vae: the autoencoder (:func:`load_vae`); it is used in eval mode, under ``no_grad``.
        resolution: image size before encoding (centre-cropped square), divisible by :func:`downsample_factor`.
        random_flip: also encode the mirror image of each example (the cache then holds both).
        cache_dir: the cache's root (default: :func:`latent_cache_root`).
        device, dtype: where and in which precision to encode (``torch.bfloat16`` autocasts).

    Run it on process 0 first (``accelerator.main_process_first()``): the others then read the finished file.
    ``ValueError`` when the file at the key's path holds latents of another autoencoder or dataset.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open, save_file

    check_vae_resolution(resolution, vae)
    key = cache_key(vae, dataset, columns, resolution=resolution, random_flip=random_flip, dtype=dtype)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    root = latent_cache_root(dataset, cache_dir)
    path = os.path.join(root, f"latents-{digest}.safetensors")
    if os.path.isfile(path):
        try:
            with safe_open(path, "pt") as f:
                metadata = f.metadata() or {}
            tensors = load_file(path)
        except (SafetensorError, OSError) as e:
            logger.warning(f"The latent cache {path} cannot be read ({e}); encoding the dataset again.")
        else:
            stored = json.loads(metadata.get("key", "{}"))
            if stored != key:
                differs = sorted(k for k in key if stored.get(k) != key[k])
                raise ValueError(
                    f"The latent cache {path} was built with {', '.join(f'{k}={stored.get(k)!r}' for k in differs)},"
                    f" but this run has {', '.join(f'{k}={key[k]!r}' for k in differs)}. Delete the file (it is"
                    " encoded again) or pass the --vae and data it was built with."
                )
            std, num_bad = float(metadata["latent_std"]), int(metadata["num_bad_images"])
            named = json.loads(metadata.get("bad_examples", "[]"))  # caches written before names were kept: none
            return EncodedDataset(tensors["latents"], tensors.get("labels"), path, False, std, num_bad, named)

    # 1. encode: decode and centre-crop each image, mirror it when flips are on, then E(x) in batches
    transform = ImageTransform(resolution, vae.config.in_channels, center_crop=True)
    table = _undecoded(dataset, columns.image_column)
    vae = vae.eval()
    vae_device = next(vae.parameters()).device
    vae.to(device)
    device = torch.device(device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    chunks, kept, num_bad, named, log_bad = [], [], 0, [], BadExampleLog()
    progress = tqdm(total=len(dataset), desc="encoding the dataset into latents", disable=not show_progress)
    with torch.no_grad(), autocast:
        for start in range(0, len(dataset), batch_size):
            rows = table[start : start + batch_size][columns.image_column]
            pixels = []
            for i, value in enumerate(rows):
                try:
                    pixels.append(transform(to_pil(value)))
                    kept.append(start + i)
                except DECODE_ERRORS:
                    num_bad += 1
                    if len(named) < MAX_NAMED_BAD_EXAMPLES:
                        named.append(log_bad(describe_example(f"row {start + i}", value)))
            progress.update(len(rows))
            if not pixels:
                continue
            x = torch.stack(pixels).to(device)
            views = [x, torch.flip(x, dims=[-1])] if random_flip else [x]
            z = torch.stack([vae_encode(vae, v).float().cpu() for v in views], dim=1)
            chunks.append(z)
    progress.close()
    vae.to(vae_device)
    if not chunks:
        raise ValueError(f"None of the {len(dataset)} images of the dataset could be decoded; nothing to encode.")
    latents = torch.cat(chunks)
    tensors = {"latents": latents.contiguous()}
    if columns.label_column is not None:
        tensors["labels"] = torch.tensor(np.asarray(dataset[columns.label_column])[kept], dtype=torch.long)
    latent_std = float(latents.double().std())

    # 2. write atomically: a temporary file, renamed when complete (a killed encode leaves only the temporary file)
    os.makedirs(root, exist_ok=True)
    metadata = {
        "key": json.dumps(key, sort_keys=True),
        "latent_std": repr(latent_std),
        "num_bad_images": str(num_bad),
        "bad_examples": json.dumps(named),
    }
    tmp = f"{path}.{os.getpid()}.tmp"
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)
    return EncodedDataset(latents, tensors.get("labels"), path, True, latent_std, num_bad, named)


# ---------------------------------------------------------------------------------------------------------------------
# Batches of cached latents
# ---------------------------------------------------------------------------------------------------------------------
class LatentBatches:
    """Endless batches of scaled latents in the order of :class:`hfddpm.data.EpochShardSampler` (sharded,
    resumable), in the format of ``make_train_dataloader``: ``{"pixel_values", "class_labels"?, "num_bad_images",
    "num_read_images", "position"}``.

    With flips, example ``i`` of epoch ``e`` uses its mirror view when a generator seeded ``(seed, e, i)`` draws
    < 0.5: the choice is a pure function of the position, so a resumed run reads the same batches.

    The scaled latents are kept on ``device`` (``resident``) up to ``max_bytes``, the cap of decoded images
    (:data:`hfddpm.data.RESIDENT_MAX_BYTES`); above it they stay in host memory and each batch is gathered there and
    copied to ``device`` (through pinned memory on CUDA; ``max_bytes=0`` always, as training does with
    ``--no_data_on_device``). The batches are the same either way.

    Example:
        >>> import torch
        >>> from hfddpm.data import EpochShardSampler
        >>> latents = torch.arange(6.0).reshape(3, 2, 1, 1, 1)  # 3 examples, 2 views (image, mirror)
        >>> batches = LatentBatches(latents, None, EpochShardSampler(3, seed=0), batch_size=2, scale=1.0, seed=0)
        >>> tuple(next(iter(batches))["pixel_values"].shape), batches.resident
        ((2, 1, 1, 1), True)
    """

    def __init__(
        self,
        latents: torch.Tensor,
        labels: torch.Tensor | None,
        sampler: EpochShardSampler,
        *,
        batch_size: int,
        scale: float,
        shift: float = 0.0,
        seed: int,
        device: torch.device | str = "cpu",
        max_bytes: int = RESIDENT_MAX_BYTES,
    ):
        scaled = (latents - shift) * scale
        self.device = torch.device(device)
        self.resident = scaled.nbytes <= max_bytes
        self.latents = scaled.to(device) if self.resident else scaled.cpu()
        self.labels = labels.to(device) if labels is not None else None
        self.sampler, self.batch_size, self.seed = sampler, batch_size, seed

    def __iter__(self):
        latents, seed, device, resident = self.latents, self.seed, self.device, self.resident
        views = latents.shape[1]

        def pick(index, chunk):  # each example's view (the flipped one with probability 1/2), drawn from its key
            view = [int(views > 1 and _example_rng(seed, e, i).random() < 0.5) for i, e, _ in chunk]
            if resident:
                return latents[index, host_to_device(view, device)]
            rows = torch.tensor([i for i, _, _ in chunk])
            return host_to_device(latents[rows, torch.tensor(view)], device)  # gathered on the host, then copied

        return resident_batches(self.sampler, self.batch_size, device, self.labels, pick)


def latent_bytes(num_examples: int, vae, resolution: int, random_flip: bool) -> int:
    """The bytes of the scaled latents :class:`LatentBatches` holds for ``num_examples`` images of ``resolution`` px
    (float32, two views each with ``random_flip``): known before encoding, e.g. to choose the training recipe.

    Example:
        >>> from diffusers import AutoencoderKL
        >>> vae = AutoencoderKL(block_out_channels=[8, 8, 8, 8], norm_num_groups=4,
        ...                     down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
        >>> latent_bytes(1000, vae, 256, random_flip=True)  # 1000 x 2 views x 4 x 32 x 32 float32
        32768000
    """
    size = resolution // downsample_factor(vae)
    return decoded_bytes(num_examples, vae.config.latent_channels, size, views=2 if random_flip else 1)


def make_latent_batches(
    encoded: EncodedDataset,
    vae,
    *,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start: tuple[int, int] = (0, 0),
    device: torch.device | str = "cpu",
    max_bytes: int = RESIDENT_MAX_BYTES,
) -> LatentBatches:
    """:class:`LatentBatches` over ``encoded`` for process ``rank`` of ``world_size``, scaled as the autoencoder's
    config says; on ``device`` up to ``max_bytes``, else in host memory."""
    scale, shift = scale_shift(vae)
    sampler = EpochShardSampler(len(encoded.latents), seed=seed, rank=rank, world_size=world_size, start=start)
    return LatentBatches(
        encoded.latents, encoded.labels, sampler, batch_size=batch_size, scale=scale, shift=shift, seed=seed,
        device=device, max_bytes=max_bytes,
    )  # fmt: skip
