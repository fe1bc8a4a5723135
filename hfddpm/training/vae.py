"""Train a small diffusers ``AutoencoderKL`` for latent diffusion (``training/train_vae.py`` is the script).

The loss is the first stage of latent diffusion (Rombach et al. 2022, https://arxiv.org/abs/2112.10752, sec. 3 and
appendix G) without its perceptual and adversarial terms (their weights cannot be downloaded here): an L1
reconstruction term plus a small KL term towards N(0, I), both per pixel,

    L = mean |x - D(z)| + kl_weight * KL(q(z|x) || N(0, I)) / (C H W),   z ~ q(z|x) = N(mu(x), sigma(x)^2).

The saved folder is an ``AutoencoderKL`` (``save_pretrained``) whose ``scaling_factor`` is set to ``1 / std`` of the
latents of the training images, the rescaling of sec. 4.3.2, so ``--vae FOLDER`` of ``training/train.py`` takes it
as it is.

Example (a few steps on the embedded digits, 32 px -> 8x8x4 latents)::

    from hfddpm.training.vae import VAETrainConfig, train_vae
    train_vae(VAETrainConfig(max_train_steps=20, output_dir="digit-vae"))
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from diffusers.utils import make_image_grid
from tqdm.auto import tqdm

from hfddpm.data import CHANNEL_MODES, load_train_dataset, make_train_dataloader, resolve_columns
from hfddpm.latents import check_vae_resolution, vae_encode
from hfddpm.training.checkpoint import earlier_run
from hfddpm.training.config import LR_SCHEDULERS
from hfddpm.training.precision import MIXED_PRECISION_CHOICES, resolve_mixed_precision
from hfddpm.training.processes import cpu_threads_per_process, end_training, local_processes, process_state_kept

logger = get_logger(__name__, log_level="INFO")

VAE_METRICS_FILE = "vae_metrics.json"
# Images whose latents set the scaling factor (1 / std) and whose reconstructions are measured at the end.
SCALE_IMAGES = 1024
# Files at the top of --output_dir that mean an earlier run or a model is there (an autoencoder saves the first two).
MODEL_FILES = ("config.json", VAE_METRICS_FILE)
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def _opt(default, help: str, **kwargs):
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class VAETrainConfig:
    """Settings of an autoencoder run; ``training/train_vae.py`` makes one flag per field (names as in
    ``training/train.py``)."""

    dataset_name: str | None = _opt(None, "Hub dataset id or local dataset (default: the embedded MNIST-5k).")
    dataset_config_name: str | None = _opt(None, "Config of the dataset, if it has several.")
    train_data_dir: str | None = _opt(None, "A folder of images (imagefolder).")
    dataset_split: str = _opt("train", "Split to train on.")
    cache_dir: str | None = _opt(None, "Where downloaded datasets are cached.")
    image_column: str = _opt("image", "Column with the images.")
    resolution: int = _opt(32, "Image size (divisible by the downsampling factor 2 ** (levels - 1)).")
    channels: int = _opt(1, "Image channels: 1 (grey), 3 (RGB) or 4 (RGBA).", choices=tuple(CHANNEL_MODES))
    center_crop: bool = _opt(False, "Centre-crop to a square (otherwise a random crop).")
    random_flip: bool = _opt(False, "Flip images horizontally at random.")
    block_out_channels: str = _opt("16,32,64", "Channels per level; 3 levels downsample by 4 (32 px -> 8x8).")
    layers_per_block: int = _opt(1, "ResNet layers per level.")
    latent_channels: int = _opt(4, "Channels of the latents.")
    norm_num_groups: int = _opt(8, "GroupNorm groups (must divide every block's channels).")
    kl_weight: float = _opt(1e-6, "Weight of the KL term (per-pixel units, as in LDM's kl-f8 autoencoders).")
    train_batch_size: int = _opt(64, "Batch size per process.")
    max_train_steps: int = _opt(1500, "Optimizer steps.")
    learning_rate: float = _opt(1e-3, "Peak learning rate (AdamW).")
    lr_scheduler: str = _opt(
        "cosine", "Learning-rate schedule (diffusers.optimization.get_scheduler).", choices=LR_SCHEDULERS
    )
    lr_warmup_steps: int = _opt(50, "Linear warm-up steps.")
    max_grad_norm: float = _opt(1.0, "Clip the gradient norm to this.")
    mixed_precision: str | None = _opt(
        None, "Mixed precision (default as in training/train.py).", choices=MIXED_PRECISION_CHOICES
    )
    seed: int = _opt(0, "Seed of initialisation, data order and sampling.")
    logging_steps: int = _opt(50, "Log the loss every this many steps.")
    output_dir: str = _opt("hfddpm-vae", "Where the AutoencoderKL folder goes (--vae of training/train.py).")
    overwrite_output_dir: bool = _opt(
        False,
        "Train into an --output_dir that holds an earlier run (an autoencoder, checkpoints or other model files),"
        " replacing its files. Without it such a run is refused before training. A pipeline folder is always refused"
        " (its UNet would load the autoencoder's weights).",
    )

    def validate(self) -> VAETrainConfig:
        """``ValueError`` naming a bad value and what fits."""
        blocks = self.block_channels
        for name in ("resolution", "layers_per_block", "latent_channels", "train_batch_size", "max_train_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} {getattr(self, name)} is invalid: it must be an integer >= 1.")
        if self.channels not in CHANNEL_MODES:
            raise ValueError(f"--channels {self.channels} is invalid; choose one of {tuple(CHANNEL_MODES)}.")
        bad = [c for c in blocks if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"--norm_num_groups {self.norm_num_groups} does not divide --block_out_channels {bad}; choose a"
                f" common divisor of {blocks}."
            )
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"--lr_scheduler {self.lr_scheduler!r} is invalid; choose one of {LR_SCHEDULERS}.")
        for name in ("learning_rate", "kl_weight", "max_grad_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name == "learning_rate" and value == 0):
                raise ValueError(f"--{name} {value} is invalid: it must be a finite number > 0 (>= 0 for weights).")
        return self

    def check_output_dir(self) -> Path:
        """The output folder; a clear error when it is a file, or holds an earlier run that this one would replace
        (an autoencoder, checkpoints or other model files) unless --overwrite_output_dir is given; a pipeline folder
        always (an autoencoder written there would break it)."""
        path = Path(self.output_dir)
        if path.exists() and not path.is_dir():
            raise ValueError(f"--output_dir {self.output_dir!r} is a file, not a folder; pass a folder path.")
        if (path / "model_index.json").is_file():  # even with --overwrite_output_dir: the pipeline would break
            raise ValueError(
                f"--output_dir {self.output_dir!r} holds a pipeline (model_index.json): an autoencoder's config.json"
                " and weights written at its top level would be loaded as its UNet. Pass another --output_dir (a"
                " latent run takes the autoencoder with --vae)."
            )
        if path.is_dir() and not self.overwrite_output_dir:
            files = sorted(
                p.name
                for p in path.iterdir()
                if p.is_file() and (p.name in MODEL_FILES or p.suffix in MODEL_FILE_SUFFIXES)
            )
            found = [earlier_run(path)[0], f"model files {', '.join(files)}" if files else None]
            earlier = " and ".join(f for f in found if f)
            if earlier:
                raise ValueError(
                    f"--output_dir {self.output_dir!r} holds an earlier run ({earlier}), and this run would replace"
                    " it. Pass --overwrite_output_dir to replace it, or another --output_dir."
                )
        return path

    @property
    def block_channels(self) -> list[int]:
        try:
            blocks = [int(c) for c in self.block_out_channels.split(",")]
        except ValueError:
            blocks = []
        if not blocks or min(blocks) < 1:
            raise ValueError(
                f"--block_out_channels {self.block_out_channels!r} is invalid: give positive integers separated by"
                ' commas, e.g. "16,32,64".'
            )
        return blocks

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in dataclasses.fields(cls):
            kind = {"int": int, "float": float, "bool": bool}.get(str(f.type).split(" ")[0], str)
            if kind is bool:
                parser.add_argument(f"--{f.name}", action="store_true", default=f.default, help=f.metadata["help"])
                continue
            parser.add_argument(
                f"--{f.name}", type=kind, default=f.default, choices=f.metadata.get("choices"), help=f.metadata["help"]
            )

    @classmethod
    def from_args(cls, namespace: argparse.Namespace) -> VAETrainConfig:
        return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)})


def build_vae(config: VAETrainConfig) -> AutoencoderKL:
    """A fresh ``AutoencoderKL`` with ``len(block_out_channels)`` levels (downsampling by 2 ** (levels - 1))."""
    blocks = config.block_channels
    return AutoencoderKL(
        in_channels=config.channels,
        out_channels=config.channels,
        down_block_types=["DownEncoderBlock2D"] * len(blocks),
        up_block_types=["UpDecoderBlock2D"] * len(blocks),
        block_out_channels=blocks,
        layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        sample_size=config.resolution,
    )


class VAELoss(torch.nn.Module):
    """The per-pixel L1 + KL loss of the module docstring around an ``AutoencoderKL``, as one module so that
    accelerate's DDP wrapper sees every parameter used in one forward pass.

    Example:
        >>> import torch
        >>> vae = build_vae(VAETrainConfig(block_out_channels="8,8", norm_num_groups=4, resolution=8))
        >>> loss, parts = VAELoss(vae, kl_weight=1e-6)(torch.zeros(2, 1, 8, 8), torch.Generator().manual_seed(0))
        >>> loss.ndim, sorted(parts)
        (0, ['kl', 'l1'])
    """

    def __init__(self, vae: AutoencoderKL, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        posterior = self.vae.encode(images).latent_dist
        z = posterior.sample(generator=generator)  # the reparameterisation trick, eq. (5) of arXiv:1312.6114
        reconstruction = self.vae.decode(z).sample
        l1 = (reconstruction.float() - images.float()).abs().mean()
        kl = posterior.kl().float().mean() / images[0].numel()  # KL summed over latent dimensions, per image pixel
        return l1 + self.kl_weight * kl, {"l1": l1.detach(), "kl": kl.detach()}


@torch.no_grad()
def measure_scaling(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 128) -> tuple[float, float, float]:
    """``(1 / std of the latents, reconstruction MSE, reconstruction L1)`` over ``images`` in [-1, 1], with the
    posterior means (as the latent cache stores them)."""
    vae.eval()
    latents, mse, l1 = [], 0.0, 0.0
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        z = vae_encode(vae, x)
        rec = vae.decode(z).sample.clamp(-1, 1)
        latents.append(z.float())
        mse += float(((rec - x) ** 2).sum())
        l1 += float((rec - x).abs().sum())
    latents = torch.cat(latents)
    n = images.numel()
    return 1.0 / float(latents.double().std()), mse / n, l1 / n


def train_vae(config: VAETrainConfig) -> Path:
    """Train as ``config`` says and save the ``AutoencoderKL`` (with its measured ``scaling_factor``),
    ``vae_metrics.json`` and ``samples/reconstructions.png`` in ``config.output_dir``; returns that folder. The
    process is left as it was found (threads, RNG states, logging: :func:`process_state_kept`)."""
    with process_state_kept():
        return _train_vae(config)


def _train_vae(config: VAETrainConfig) -> Path:
    config.validate()
    # 1. the accelerator; data (as training/train.py reads it); the model
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(config.mixed_precision))
    set_seed(config.seed)
    device = accelerator.device
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads_per_process(local_processes(accelerator.num_processes)))
    output_dir = config.check_output_dir()
    vae = build_vae(config)
    check_vae_resolution(config.resolution, vae)
    with accelerator.main_process_first():
        dataset = load_train_dataset(
            config.dataset_name,
            config.dataset_config_name,
            config.train_data_dir,
            split=config.dataset_split,
            cache_dir=config.cache_dir,
        )
    columns = resolve_columns(dataset, config.image_column)
    loader_kwargs = dict(resolution=config.resolution, channels=config.channels, seed=config.seed)
    dataloader = make_train_dataloader(
        dataset,
        columns,
        batch_size=config.train_batch_size,
        center_crop=config.center_crop,
        random_flip=config.random_flip,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        resident_device=device,
        **loader_kwargs,
    )

    # 2. optimizer and LR schedule (counted per process, as accelerate steps a prepared scheduler)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate)
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.max_train_steps * accelerator.num_processes,
    )
    model, optimizer, lr_scheduler = accelerator.prepare(VAELoss(vae, config.kl_weight), optimizer, lr_scheduler)
    generator = torch.Generator(device).manual_seed(config.seed + accelerator.process_index)
    logger.info(
        f"Training an AutoencoderKL of {sum(p.numel() for p in vae.parameters()):,} parameters for"
        f" {config.max_train_steps} steps: {config.resolution} px x {config.channels} -> latents"
        f" {config.latent_channels}x{check_vae_resolution(config.resolution, vae)}x"
        f"{check_vae_resolution(config.resolution, vae)}, {len(dataset)} images, {accelerator.num_processes}"
        f" process(es), mixed precision {accelerator.mixed_precision}."
    )

    # 3. the loop
    model.train()
    data = iter(dataloader)
    progress = tqdm(total=config.max_train_steps, desc="train vae", disable=not accelerator.is_main_process)
    history = []
    for step in range(1, config.max_train_steps + 1):
        images = next(data)["pixel_values"].to(device)
        loss, parts = model(images, generator)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.update(1)
        if step % config.logging_steps == 0 or step == config.max_train_steps:
            logged = {
                k: float(accelerator.reduce(v, reduction="mean")) for k, v in {"loss": loss.detach(), **parts}.items()
            }
            if not math.isfinite(logged["loss"]):
                raise RuntimeError(f"The loss became {logged['loss']} at step {step}; lower --learning_rate.")
            history.append({"step": step, **logged})
            progress.set_postfix(loss=f"{logged['loss']:.4f}", l1=f"{logged['l1']:.4f}")
    progress.close()

    # 4. the scaling factor (1 / std of the latents), reconstructions, and the folder --vae takes
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        vae = accelerator.unwrap_model(model).vae.float().eval()
        sample = next(
            iter(make_train_dataloader(dataset, columns, batch_size=min(SCALE_IMAGES, len(dataset)), center_crop=True,
                                       shuffle=False, **loader_kwargs))
        )["pixel_values"].to(device)  # fmt: skip
        scale, mse, l1 = measure_scaling(vae, sample)
        vae.register_to_config(scaling_factor=scale)
        vae.save_pretrained(output_dir)
        with torch.no_grad():
            shown = sample[:16]
            rec = vae.decode(vae_encode(vae, shown)).sample.clamp(-1, 1)
        pil = [_to_pil(x) for pair in zip(shown, rec, strict=True) for x in pair]
        (output_dir / "samples").mkdir(parents=True, exist_ok=True)
        make_image_grid(pil, rows=4, cols=8).save(output_dir / "samples" / "reconstructions.png")
        metrics = {
            "steps": config.max_train_steps,
            "scaling_factor": scale,
            "reconstruction_mse": mse,
            "reconstruction_l1": l1,
            "psnr_db": 10 * math.log10(4.0 / mse) if mse > 0 else None,  # peak-to-peak 2 in [-1, 1]
            "num_parameters": sum(p.numel() for p in vae.parameters()),
            "config": dataclasses.asdict(config),
            "history": history,
        }
        (output_dir / VAE_METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        logger.info(
            f"Saved the autoencoder to {output_dir}: scaling_factor {scale:.4f}, reconstruction MSE {mse:.5f}"
            f" (PSNR {metrics['psnr_db']:.1f} dB) on {len(sample)} training images."
        )
    accelerator.wait_for_everyone()
    del model, optimizer, lr_scheduler  # the DDP model goes before the process group (hfddpm.training.processes)
    end_training(accelerator)
    return output_dir


def _to_pil(x: torch.Tensor):
    from PIL import Image

    array = ((x.float().cpu() / 2 + 0.5).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
