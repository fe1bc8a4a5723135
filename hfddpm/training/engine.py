"""The training engine: the UNet, scheduler, optimizer, LR schedule and EMA built from a :class:`TrainConfig`, one
training step, and the EMA pipeline it exports.

``hfddpm.training.loop.train`` drives it over a dataset; the benchmarks drive it over in-memory batches, so they
time the product's own step.

Example:
    >>> import torch
    >>> from accelerate import Accelerator
    >>> from hfddpm.training import TrainConfig, TrainingEngine, build_scheduler
    >>> from hfddpm import build_unet
    >>> config = TrainConfig(preset="tiny", max_train_steps=2, mixed_precision="no").validate()
    >>> unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    >>> engine = TrainingEngine(config, unet, build_scheduler(config), Accelerator(cpu=True), max_train_steps=2)
    >>> loss = engine.micro_step(torch.zeros(2, 1, 16, 16), None, global_step=0)
    >>> engine.end_step(); loss.ndim
    0
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
from dataclasses import dataclass

import torch
from diffusers import UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils import make_image_grid

from hfddpm.audio import SPECTROGRAM_COLUMN, resolve_audio_column, spectrogram_dataset, spectrogram_stream
from hfddpm.data import _undecoded, check_resolution, load_train_dataset, read_image, resolve_columns, sample_column
from hfddpm.evaluation.sampling import make_scheduler
from hfddpm.latents import check_latent_unet, check_vae_resolution, latent_settings, load_vae
from hfddpm.models.unet_presets import UNET_PRESETS
from hfddpm.pipelines.mel_hfddpm import HFDDPMMel
from hfddpm.pipelines.pipeline_hfddpm import HFDDPMPipeline, is_repo_id, load_model
from hfddpm.pipelines.pipeline_hfddpm_audio import HFDDPMAudioPipeline
from hfddpm.schedulers.scheduling_hfddpm import HFDDPMScheduler, read_predict_epsilon
from hfddpm.training.checkpoint import plain_model, register_checkpoint_hooks
from hfddpm.training.config import TrainConfig, fallback
from hfddpm.training.loss import diffusion_loss, step_generator
from hfddpm.training.precision import prepare_attention

logger = logging.getLogger(__name__)

# At most this many classes (rows) in a validation grid.
MAX_GRID_ROWS = 16
# PIL's first band of a grey image (L, 1-bit, 16/32-bit integer, float; LA: grey with alpha).
GREY_BANDS = ("L", "1", "I", "F")
# Image channels a UNet can be trained on: L, RGB, RGBA.
IMAGE_CHANNELS = (1, 3, 4)


# ---------------------------------------------------------------------------------------------------------------------
# Building the model and schedule
# ---------------------------------------------------------------------------------------------------------------------
def pretrained_scheduler(path: str, cache_dir=None) -> HFDDPMScheduler:
    """The schedule and sampling settings of a saved pipeline's scheduler (an HFDDPMScheduler, or a diffusers
    DDPM/DDIM one) as an :class:`HFDDPMScheduler`: the scheduler's own conversion of a diffusers config
    (``HFDDPMScheduler.from_config``), so ``beta_schedule``, ``rescale_betas_zero_snr``, ``clip_sample``,
    ``thresholding``, ``variance_type``, ``steps_offset`` and ``timestep_spacing`` carry over as they were.

    A setting the scheduler cannot take (another sampler's, e.g. DPMSolver's ``use_karras_sigmas=True``, or a
    ``beta_schedule`` it does not know) is a ``ValueError`` naming it; one at its writer's default is left behind,
    as it is the sampler's, not the model's. ``predict_epsilon`` (diffusers before 0.10) is read as
    ``prediction_type`` (:func:`~hfddpm.schedulers.scheduling_hfddpm.read_predict_epsilon`, as ``from_pretrained``
    reads it); other keys that the writer's ``__init__`` does not take (those of older diffusers versions:
    ``tensor_format``, ``timestep_values``) are ignored and logged, as diffusers does.

    Example:
        >>> import tempfile
        >>> from diffusers import DDPMScheduler
        >>> folder = tempfile.mkdtemp()
        >>> DDPMScheduler(beta_schedule="sigmoid").save_pretrained(f"{folder}/scheduler")
        >>> c = pretrained_scheduler(folder).config
        >>> c.noise_schedule, c.clip_sample, c.timestep_spacing
        ('sigmoid_betas', True, 'leading')
    """
    source = f"the scheduler of --pretrained_model_name_or_path {path!r}"
    try:
        config = HFDDPMScheduler.load_config(path, subfolder="scheduler", cache_dir=cache_dir)
    except OSError as err:
        raise FileNotFoundError(
            f"{source} could not be read ({err}); a saved pipeline keeps it in scheduler/scheduler_config.json."
        ) from None
    name = config.get("_class_name", HFDDPMScheduler.__name__)  # no name: diffusers reads it as the loading class
    writer = HFDDPMScheduler._config_writer(config) or (HFDDPMScheduler if name == HFDDPMScheduler.__name__ else None)
    parameters = inspect.signature(writer.__init__).parameters if writer is not None else {}
    # 1. predict_epsilon read as the scheduler's conversion reads it, the writer's other keys it does not take (older
    #    diffusers versions') ignored as diffusers ignores them
    try:
        config = read_predict_epsilon(config)
    except ValueError as err:
        raise ValueError(f"{source} cannot be trained with HFDDPMScheduler: {err}") from None
    if writer is not None:
        ignored = {k: v for k, v in config.items() if not k.startswith("_") and k not in parameters}
        config = {k: v for k, v in config.items() if k not in ignored}
        if ignored:
            shown = ", ".join(f"{k}={v!r}" for k, v in sorted(ignored.items()))
            logger.warning(f"{source} ({name}) has keys that {name} no longer takes, ignored: {shown}.")
    # 2. the conversion, then the writer's settings left behind: refused unless at the writer's default (a writer
    #    diffusers does not know: every key left behind is refused)
    try:
        scheduler, unused = HFDDPMScheduler.from_config(config, return_unused_kwargs=True)
    except ValueError as err:
        raise ValueError(f"{source} cannot be trained with HFDDPMScheduler: {err}") from None
    defaults = {k: p.default for k, p in parameters.items() if p.default is not inspect.Parameter.empty}
    changed = {
        k: v
        for k, v in unused.items()
        if not k.startswith("_") and (writer is None or k in parameters) and (k not in defaults or v != defaults[k])
    }
    if changed:
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(changed.items()))
        raise ValueError(
            f"{source} ({name}) has settings that HFDDPMScheduler, the scheduler a run saves,"
            f" cannot represent: {shown}. Save the pipeline with a DDPMScheduler or DDIMScheduler built from it"
            " (e.g. DDPMScheduler.from_config(pipe.scheduler.config)), or set them back to their defaults."
        )
    return scheduler


def describe_schedule(scheduler: HFDDPMScheduler) -> str:
    """The schedule in words: ``noise_schedule`` (with diffusers' ``beta_schedule`` name), steps, zero terminal SNR,
    prediction type and the sampling settings.

    Example:
        >>> describe_schedule(HFDDPMScheduler(beta_schedule="sigmoid", clip_sample=True)).split(", ")[:4]
        ['noise_schedule sigmoid_betas (beta_schedule sigmoid)', '1000 steps', 'v_prediction', 'clip_sample True']
    """
    c = scheduler.config
    schedule = f"noise_schedule {c.noise_schedule}" + (
        f" (beta_schedule {c.beta_schedule})" if c.beta_schedule else ""
    )
    if c.rescale_betas_zero_snr:
        schedule += " rescaled to zero terminal SNR"
    sampling = ("clip_sample", "thresholding", "variance_type", "timestep_spacing", "steps_offset", "eta")
    return ", ".join(
        [schedule, f"{c.num_train_timesteps} steps", c.prediction_type, *(f"{k} {c[k]}" for k in sampling)]
    )


def build_scheduler(config: TrainConfig, resolution: int | None = None) -> HFDDPMScheduler:
    """The training schedule: the flags, else the pretrained pipeline's settings (:func:`pretrained_scheduler`: its
    schedule exactly, and its sampling settings), else the recipe's fallbacks."""
    flags = {"noise_schedule": config.noise_schedule, "num_train_timesteps": config.ddpm_num_steps}
    flags = {k: v for k, v in {**flags, "prediction_type": config.prediction_type}.items() if v is not None}
    names = {"noise_schedule": "noise_schedule", "num_train_timesteps": "ddpm_num_steps"}
    if config.pretrained_model_name_or_path:
        path = config.pretrained_model_name_or_path
        base = pretrained_scheduler(path, config.cache_dir)
        kwargs = {k: v for k, v in base.config.items() if not k.startswith("_")}
        changed = {k: v for k, v in flags.items() if v != kwargs[k]}
        if changed.keys() & {"noise_schedule", "num_train_timesteps"}:
            kwargs.update(trained_betas=None, beta_schedule=None)  # a new schedule is asked for: rebuild it
        for key, value in changed.items():
            logger.info(
                f"--{names.get(key, key)} {value} replaces the {kwargs[key]} of the pretrained scheduler of {path}."
            )
        kwargs.update(changed)
        if kwargs["noise_schedule"] in ("shifted_cosine", "interpolated_shifted_cosine") and not kwargs["image_size"]:
            kwargs["image_size"] = resolution if resolution is not None else config.resolution
        if changed:  # rebuilt from the settings it takes (base.config also keeps those of a compatible writer)
            ours = inspect.signature(HFDDPMScheduler.__init__).parameters
            scheduler = HFDDPMScheduler(**{k: v for k, v in kwargs.items() if k in ours})
        else:
            scheduler = base
        logger.info(f"The schedule of the pretrained pipeline {path}: {describe_schedule(scheduler)}.")
        return scheduler
    kwargs = {
        "noise_schedule": fallback("noise_schedule"),
        "num_train_timesteps": fallback("ddpm_num_steps"),
        "prediction_type": fallback("prediction_type"),
        **flags,
    }
    if kwargs["noise_schedule"] in ("shifted_cosine", "interpolated_shifted_cosine"):
        kwargs["image_size"] = resolution if resolution is not None else config.resolution
    return HFDDPMScheduler(**kwargs)


def load_unet_config(path: str, cache_dir=None) -> dict:
    """The UNet2DModel config that --unet_config (alias --model_config_name_or_path) names: a JSON file, a folder with
    config.json, or a Hub repository id whose config.json is a UNet's (downloaded into ``cache_dir``; diffusers'
    train_unconditional.py takes one through ``UNet2DModel.load_config``). ``FileNotFoundError``/``ValueError``
    naming the fix for anything else: a pipeline folder (its UNet is ``unet/``), a file that is not JSON, another
    class's config.

    Example:
        >>> import json, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> with open(f"{folder}/config.json", "w") as f:
        ...     json.dump({"_class_name": "DDPMScheduler", "num_train_timesteps": 1000}, f)
        >>> load_unet_config(folder)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --unet_config '...' is a DDPMScheduler config, not a UNet2DModel's: ...
    """
    flag = f"--unet_config {path!r}"
    if os.path.isdir(path):
        file = os.path.join(path, UNet2DModel.config_name)
        if not os.path.isfile(file):
            nested = os.path.join(path, "unet")
            hint = (
                f" Did you mean {nested}? (a saved pipeline keeps its UNet's config in unet/config.json; to start from"
                " its weights too, pass --pretrained_model_name_or_path instead)"
                if os.path.isfile(os.path.join(nested, UNet2DModel.config_name))
                else " Pass a UNet2DModel config JSON file or a folder with config.json."
            )
            raise FileNotFoundError(f"{flag} is a folder without {UNet2DModel.config_name}.{hint}")
    elif os.path.isfile(path):
        file = path
    elif is_repo_id(path):
        file = _hub_unet_config(path, cache_dir)
    else:
        raise FileNotFoundError(
            f"{flag} does not exist; pass a UNet2DModel config JSON file, a folder with config.json, or a Hub"
            " repository id (namespace/name) with a UNet's config.json."
        )
    try:
        with open(file, encoding="utf-8") as f:
            unet_config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{flag}: {file} is not a JSON file ({err}); pass a UNet2DModel config JSON file.") from None
    if not isinstance(unet_config, dict):
        raise ValueError(f"{flag}: {file} holds a JSON {type(unet_config).__name__}, not a UNet2DModel config object.")
    class_name = unet_config.get("_class_name")
    if class_name is not None and class_name != UNet2DModel.__name__:
        hint = "a pipeline's UNet config is unet/config.json in its folder"
        if str(class_name).endswith("Pipeline"):
            hint += "; to start from the pipeline's weights, pass --pretrained_model_name_or_path"
        raise ValueError(
            f"{flag} is a {class_name} config, not a UNet2DModel's: {file}. Pass a UNet2DModel config ({hint})."
        )
    parameters = inspect.signature(UNet2DModel.__init__).parameters
    if not any(k in parameters for k in unet_config):
        raise ValueError(
            f"{flag}: {file} holds none of UNet2DModel's settings (keys {sorted(unet_config)[:8]}); pass a UNet2DModel"
            " config, e.g. the unet/config.json of a saved pipeline."
        )
    return unet_config


def _hub_unet_config(repo_id: str, cache_dir=None) -> str:
    """The local copy of ``config.json`` of Hub repository ``repo_id``, downloaded into ``cache_dir`` if needed."""
    import huggingface_hub

    try:
        return huggingface_hub.hf_hub_download(repo_id, UNet2DModel.config_name, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001 (the Hub client raises many types)
        offline = (
            " HF_HUB_OFFLINE is set, so only repositories already in the local cache load: unset it (or"
            " HF_HUB_OFFLINE=0) to download, or pass the config.json file."
            if huggingface_hub.constants.HF_HUB_OFFLINE
            else " Check the repository id (and your login for a private one), or pass a local config.json file."
        )
        raise FileNotFoundError(
            f"--unet_config {repo_id!r} is not a local file or folder, and its config.json could not be read from"
            f" the Hub ({type(err).__name__}: {err}).{offline}"
        ) from None


def data_channels(config: TrainConfig, dataset, image_column: str, max_rows: int = 16) -> int | None:
    """The image channels a --preset UNet takes for this data: 1 when the images looked at (up to ``max_rows``) are
    all grey, else 3 (RGB); None when --unet_config or --pretrained_model_name_or_path decides them (the data is then
    converted to the UNet's channels). A change of the preset's channels is logged. Broken images are passed over
    (the training loop skips and counts them); when all those looked at are broken, the preset's channels are kept.

    Example:
        >>> import datasets
        >>> from PIL import Image
        >>> grey = datasets.Dataset.from_dict({"image": [Image.new("L", (8, 8))]}, features=datasets.Features(
        ...     {"image": datasets.Image()}))
        >>> data_channels(TrainConfig(preset="tiny"), grey, "image")
        1
    """
    if config.unet_config or config.pretrained_model_name_or_path:
        return None
    preset = UNET_PRESETS[config.preset]["in_channels"]
    # 1. undecoded values, so a broken file is read as None here instead of raising inside 🤗 datasets
    values = sample_column(_undecoded(dataset, image_column), image_column, max_rows)
    images = [image for image in map(read_image, values) if image is not None]
    if not images:
        return preset
    # 2. grey when every readable image is
    grey = all(image.getbands()[0] in GREY_BANDS for image in images)
    channels = 1 if grey else 3
    if channels != preset:
        logger.info(
            f"--preset {config.preset} takes {preset}-channel images, but the data is {'grey' if grey else 'colour'}:"
            f" its UNet is built with in_channels = out_channels = {channels}. Pass --unet_config to choose them."
        )
    return channels


def build_training_unet(
    config: TrainConfig, num_classes: int, sample_size: int | None = None, channels: int | None = None
) -> UNet2DModel:
    """The UNet from --pretrained_model_name_or_path, --unet_config or --preset, sized for the data (``sample_size``:
    the latent size of a latent run, else --resolution; a preset takes ``channels`` input and output channels when
    given: 1 for spectrograms, else those of the data, :func:`data_channels`)."""
    conditional = num_classes > 0
    sample_size = sample_size if sample_size is not None else config.resolution
    if config.pretrained_model_name_or_path:
        unet = load_model(
            UNet2DModel, config.pretrained_model_name_or_path, subfolder="unet", cache_dir=config.cache_dir
        )
        if sample_size is not None:
            unet.register_to_config(sample_size=sample_size)
        source = f"the pretrained UNet of {config.pretrained_model_name_or_path!r}"
    else:
        if config.unet_config:
            unet_config = load_unet_config(config.unet_config, config.cache_dir)
            source = f"--unet_config {config.unet_config!r}"
        else:
            unet_config = dict(UNET_PRESETS[config.preset])
            unet_config["num_class_embeds"] = None
            if channels is not None:
                unet_config["in_channels"] = unet_config["out_channels"] = channels
            source = f"--preset {config.preset!r}"
        if sample_size is not None:
            unet_config["sample_size"] = sample_size
        if conditional and not unet_config.get("num_class_embeds"):
            unet_config["num_class_embeds"] = num_classes + 1  # the last index is the null class
        unet = UNet2DModel.from_config(unet_config)
    if conditional:
        embeds = unet.config.num_class_embeds
        if not embeds:
            raise ValueError(
                f"Class-conditional training needs class embeddings, but {source} has none"
                " (num_class_embeds=None). Train unconditionally with --no_class_conditional."
            )
        if num_classes > embeds - 1:
            raise ValueError(
                f"The dataset has {num_classes} classes but {source} has num_class_embeds={embeds}, i.e. room for"
                f" {embeds - 1} classes plus the null class. Use a UNet with num_class_embeds >= {num_classes + 1},"
                " fewer classes, or --no_class_conditional."
            )
    return unet


def configured_resolution(config: TrainConfig) -> int:
    """The training resolution before the UNet is built: --resolution, else the sample_size of the pretrained UNet,
    of --unet_config or of --preset."""
    if config.resolution is not None:
        return config.resolution
    if config.pretrained_model_name_or_path:
        size = UNet2DModel.load_config(
            config.pretrained_model_name_or_path, subfolder="unet", cache_dir=config.cache_dir
        )["sample_size"]
    elif config.unet_config:
        size = load_unet_config(config.unet_config, config.cache_dir).get("sample_size")
    else:
        size = UNET_PRESETS[config.preset]["sample_size"]
    return _side(size)


def _side(sample_size) -> int:
    """The image side of a UNet's ``sample_size`` (an int or ``[height, width]``); ``ValueError`` when it has none."""
    if sample_size is None:
        raise ValueError(
            "The UNet config has no sample_size, so the training resolution is unknown: pass --resolution."
        )
    return sample_size if isinstance(sample_size, int) else int(sample_size[0])


def build_mel(config: TrainConfig, resolution: int) -> HFDDPMMel:
    """The spectrogram conversion of an audio run: square ``resolution x resolution`` log-mel images (``n_mels`` bands
    by ``resolution`` frames) from --sample_rate, --hop_length or --audio_seconds, --n_fft; a pretrained audio
    pipeline's ``mel`` gives the defaults. ``ValueError`` for sizes the UNet cannot take, naming the fix."""
    base = {}
    path = config.pretrained_model_name_or_path
    if path and os.path.isfile(os.path.join(path, "mel", HFDDPMMel.config_name)):
        base = dict(HFDDPMMel.load_config(path, subfolder="mel"))
    sample_rate = config.sample_rate or base.get("sample_rate") or fallback("sample_rate")
    n_fft = config.n_fft or base.get("n_fft") or fallback("n_fft")
    n_mels = config.n_mels or resolution
    if n_mels != resolution:
        raise ValueError(
            f"--n_mels {n_mels} makes spectrograms {n_mels} bands high, but the UNet takes {resolution} x {resolution}"
            f" images; use --n_mels {resolution}, or a UNet of that size (--resolution {n_mels}, or --preset mel64 /"
            " mel256)."
        )
    if resolution < 2:
        raise ValueError(f"A spectrogram needs at least 2 frames; the resolution is {resolution}.")
    if config.hop_length is not None:
        hop_length = config.hop_length
        if config.audio_seconds is not None:
            frames = round(config.audio_seconds * sample_rate / hop_length) + 1
            if frames != resolution:
                fit = round(config.audio_seconds * sample_rate / (resolution - 1))
                raise ValueError(
                    f"--audio_seconds {config.audio_seconds} at {sample_rate} Hz with --hop_length {hop_length} gives"
                    f" {frames} spectrogram frames, but the UNet takes {resolution}; use --hop_length {fit}, or"
                    f" --audio_seconds {(resolution - 1) * hop_length / sample_rate:g}, or give only one of them."
                )
    elif config.audio_seconds is not None:
        hop_length = round(config.audio_seconds * sample_rate / (resolution - 1))
        if hop_length < 1:
            raise ValueError(
                f"--audio_seconds {config.audio_seconds} at {sample_rate} Hz is too short for {resolution} frames."
            )
    else:
        hop_length = base.get("hop_length") or fallback("hop_length")
    return HFDDPMMel(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, num_frames=resolution)


@dataclass
class RunSetup:
    """What :func:`setup` resolves before training: the data, the model, the schedule and the derived settings."""

    dataset: object
    columns: object
    unet: UNet2DModel
    noise_scheduler: HFDDPMScheduler
    resolution: int
    class_conditional: bool
    label_column: str | None
    vae: object = None  # the autoencoder of a latent run (hfddpm.latents.load_vae)
    mel: HFDDPMMel | None = None  # audio runs: the spectrogram conversion, saved as the pipeline's mel component
    decode: object = None  # a streamed audio run: the clip -> spectrogram converter its DataLoader decodes with

    @property
    def num_classes(self) -> int:
        return self.columns.num_classes

    def resolved(self) -> dict:
        """The derived settings, by name, as recorded in ``training_config.json``."""
        return {
            "resolution": self.resolution,
            "class_conditional": self.class_conditional,
            "label_column": self.label_column,
            "num_classes": self.columns.num_classes,
            "class_names": self.columns.class_names,
            "noise_schedule": self.noise_scheduler.config.noise_schedule,
            "ddpm_num_steps": self.noise_scheduler.config.num_train_timesteps,
            "prediction_type": self.noise_scheduler.config.prediction_type,
            "in_channels": self.unet.config.in_channels,
            "num_parameters": sum(p.numel() for p in self.unet.parameters()),
            **(latent_settings(self.vae, self.resolution) if self.vae is not None else {}),
            "mel": None if self.mel is None else {k: v for k, v in self.mel.config.items() if not k.startswith("_")},
        }


def setup(config: TrainConfig, *, main_process_first=None) -> RunSetup:
    """Load the data and build the UNet and scheduler: every bad input fails here, before training."""
    config.validate()
    embedded = config.dataset_name is None and config.train_data_dir is None
    class_conditional = config.class_conditional
    if class_conditional is None:
        class_conditional = config.label_column is not None or embedded
    label_column = (config.label_column or "label") if class_conditional else None

    ctx = main_process_first() if main_process_first is not None else contextlib.nullcontext()
    with ctx:
        dataset = load_train_dataset(
            config.dataset_name,
            config.dataset_config_name,
            config.train_data_dir,
            split=config.dataset_split,
            streaming=config.streaming,
            cache_dir=config.cache_dir,
        )
    # audio: every clip becomes a log-mel spectrogram image (hfddpm.audio), once up front or, streamed, as it is
    # read; the image path trains on those
    mel, decode = None, None
    audio_column = resolve_audio_column(dataset, config.audio_column)
    if audio_column is None:
        columns = resolve_columns(dataset, config.image_column, label_column)
    else:
        if config.random_flip:
            raise ValueError("--random_flip would play spectrograms backwards in time; leave it off for audio.")
        mel = build_mel(config, configured_resolution(config))
        if config.streaming:
            dataset, columns, decode = spectrogram_stream(
                dataset, audio_column, mel, label_column, max_bad_fraction=config.max_bad_image_fraction
            )
        else:
            dataset = spectrogram_dataset(
                dataset, audio_column, mel, label_column, max_bad_fraction=config.max_bad_image_fraction
            )
            columns = resolve_columns(dataset, SPECTROGRAM_COLUMN, label_column)

    vae, vae_source = None, (config.vae, config.vae_subfolder, config.vae_revision)
    if mel is not None and vae_source[0] is not None:
        raise ValueError(
            f"--vae {vae_source[0]!r} with audio data: latent spectrogram diffusion is not supported; train audio in"
            " pixel (spectrogram) space without --vae."
        )
    if config.vae is None and config.pretrained_model_name_or_path and _has_vae(config):
        # continuing a latent pipeline: its own autoencoder, so the UNet keeps seeing the latents it was trained on
        vae_source = (config.pretrained_model_name_or_path, "vae", None)
    if vae_source[0] is not None:
        # a latent run: the UNet works on the autoencoder's latents, --resolution is the image size
        vae = load_vae(*vae_source, cache_dir=config.cache_dir)
        if config.streaming:
            raise ValueError(
                f"The autoencoder of {vae_source[0]!r} makes this a latent run, whose latents are encoded once into a"
                " cache; that needs a map-style dataset: drop --streaming."
            )
        latent_size = check_vae_resolution(config.resolution, vae) if config.resolution is not None else None
        unet = build_training_unet(config, columns.num_classes, sample_size=latent_size)
        resolution = check_latent_unet(unet, vae, config.resolution, source=config.unet_config or config.preset)
        noise_scheduler = build_scheduler(config, unet.config.sample_size)  # a shifted schedule sees the latent size
        config.check_sampling_steps(noise_scheduler.config.num_train_timesteps)
        return RunSetup(dataset, columns, unet, noise_scheduler, resolution, class_conditional, label_column, vae=vae)
    channels = 1 if mel is not None else data_channels(config, dataset, columns.image_column)
    unet = build_training_unet(config, columns.num_classes, channels=channels)
    resolution = config.resolution if config.resolution is not None else _side(unet.config.sample_size)
    check_resolution(resolution, unet.config.block_out_channels)
    if unet.config.in_channels not in IMAGE_CHANNELS:
        raise ValueError(
            f"The UNet has in_channels={unet.config.in_channels}; images can be trained with 1 (L), 3"
            " (RGB) or 4 (RGBA) channels."
        )
    if mel is not None and (unet.config.in_channels, resolution) != (1, mel.config.n_mels):
        raise ValueError(
            f"Spectrograms are 1 x {mel.config.n_mels} x {mel.config.num_frames} (channels x n_mels x frames), but"
            f" the UNet takes {unet.config.in_channels} x {resolution} x {resolution} images; use a UNet with"
            " in_channels=1 and that sample_size (e.g. --preset mel64 or mel256)."
        )
    noise_scheduler = build_scheduler(config, resolution)
    config.check_sampling_steps(noise_scheduler.config.num_train_timesteps)
    return RunSetup(
        dataset, columns, unet, noise_scheduler, resolution, class_conditional, label_column, mel=mel, decode=decode
    )


def _has_vae(config: TrainConfig) -> bool:
    """Whether --pretrained_model_name_or_path is a latent pipeline (its model_index.json names a vae)."""
    try:
        index = HFDDPMPipeline.load_config(config.pretrained_model_name_or_path, cache_dir=config.cache_dir)
    except OSError as err:
        raise FileNotFoundError(
            f"--pretrained_model_name_or_path {config.pretrained_model_name_or_path!r} is not a saved pipeline: no"
            f" model_index.json could be read ({err})."
        ) from None
    return bool(index.get("vae")) and index["vae"][0] is not None


def _stretched(fn, at: int, old_total: int, new_total: int):
    """``fn`` up to ``at``, then the rest of it (``at`` to ``old_total``) spread over ``at`` to ``new_total``."""
    scale = (old_total - at) / max(new_total - at, 1)
    return lambda k: fn(k) if k <= at else fn(at + (k - at) * scale)


def resolve_max_train_steps(
    config: TrainConfig, num_examples: int | None, world_size: int, *, recipe_steps: int | None = None
) -> int:
    """``--max_train_steps``, else ``--num_epochs`` worth of steps, else the recipe's length (``recipe_steps``,
    default the fallback)."""
    if config.max_train_steps is not None:
        return config.max_train_steps
    if config.num_epochs is None:
        return recipe_steps if recipe_steps is not None else fallback("max_train_steps")
    per_process = num_examples // world_size
    steps_per_epoch = math.ceil(per_process / (config.train_batch_size * config.gradient_accumulation_steps))
    return max(1, config.num_epochs * steps_per_epoch)


# ---------------------------------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------------------------------
class TrainingEngine:
    """Optimizer, LR schedule and EMA around a UNet, prepared by ``accelerator``, and the training step.

    Args:
        config: the run's settings (optimizer, EMA, min-SNR, label dropout, memory format, seed).
        unet: the model to train (built by :func:`build_training_unet`).
        noise_scheduler: the training schedule (:func:`build_scheduler`).
        accelerator: an ``accelerate.Accelerator``; its mixed precision applies to the forward pass.
        max_train_steps: length of the LR schedule.
        class_conditional: whether batches carry labels to train on (else a conditional UNet sees the null class).
        forward_context: a context manager factory around the loss (e.g. ``torch.autocast``); benchmarks that
            compare precisions in one process use it, since accelerate keeps one precision per process.
        mixed_precision: the precision of the forward pass when ``forward_context`` sets it (else accelerate's).
        channels_last: train in the channels_last memory format (default: ``config.channels_last``, off if unset).
        vae: the autoencoder of a latent run (batches are then scaled latents); it goes into the pipelines.
        mel: an audio run's spectrogram conversion: the exported pipeline is then an ``HFDDPMAudioPipeline``.
    """

    def __init__(
        self,
        config: TrainConfig,
        unet: UNet2DModel,
        noise_scheduler: HFDDPMScheduler,
        accelerator,
        *,
        max_train_steps: int,
        class_conditional: bool = False,
        forward_context=contextlib.nullcontext,
        mixed_precision: str | None = None,
        channels_last: bool | None = None,
        vae=None,
        mel: HFDDPMMel | None = None,
    ):
        config = config.with_recipe()  # batch size, learning rate and warm-up: the CPU recipe's where unset
        self.config, self.accelerator, self.noise_scheduler = config, accelerator, noise_scheduler
        self.vae = vae  # a latent run's autoencoder: its pipelines decode the samples
        self.mel = mel
        self.class_conditional, self.forward_context = class_conditional, forward_context
        device = self.device = accelerator.device
        channels_last = bool(config.channels_last) if channels_last is None else channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            unet = unet.to(memory_format=torch.channels_last)
        # float32 attention on CPU under mixed precision; convolutions keep bf16
        prepare_attention(unet, device, mixed_precision or accelerator.mixed_precision)
        fused = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
        optimizer = torch.optim.AdamW(
            unet.parameters(),
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay,
            eps=config.adam_epsilon,
            **fused,
        )
        # accelerate steps a prepared LR scheduler once per process per optimizer step: count in those units.
        lr_scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=max_train_steps * accelerator.num_processes,
        )
        if config.compile:
            # compiled lazily, at the first step (whose time the loop logs); EMA, saving and sampling use the original
            unet = torch.compile(unet, mode=config.compile_mode)
        self.model, self.optimizer, self.lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
        self.lr_plan = [(0, max_train_steps)]  # the LR schedule's length and its corrections (set_lr_plan)
        self.unwrapped = plain_model(accelerator, self.model)
        self.ema = None
        if config.use_ema:
            # built after `prepare` (weights already broadcast) and updated from the same weights on every process
            self.ema = EMAModel(
                self.unwrapped.parameters(),
                decay=config.ema_max_decay,
                use_ema_warmup=True,
                inv_gamma=config.ema_inv_gamma,
                power=config.ema_power,
                foreach=True,
                model_cls=UNet2DModel,
                model_config=self.unwrapped.config,
            )
        register_checkpoint_hooks(accelerator, self.ema)
        self.null_class = (self.unwrapped.config.num_class_embeds or 0) - 1
        # a training copy of the schedule on the device: indexing it by timesteps needs no host round trip
        self.train_scheduler = HFDDPMScheduler.from_config(noise_scheduler.config)
        self.train_scheduler.alphas_cumprod = self.train_scheduler.alphas_cumprod.to(device)
        self.snr_gamma = config.snr_gamma if config.snr_gamma > 0 else None
        self.max_grad_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
        self.grad_norm = None
        self.model.train()

    def set_total_steps(self, max_train_steps: int) -> None:
        """Rebuild the LR schedule for ``max_train_steps`` in all, keeping the steps already taken (a time budget
        plans the length of a run after its first steps)."""
        self.set_lr_plan([(0, max_train_steps)])

    def replan(self, step: int, max_train_steps: int) -> None:
        """Give the run ``max_train_steps`` in all from ``step`` on, the LR schedule continuous: the rest of the
        current schedule is stretched (or squeezed) onto the new length (a time budget corrects its plan)."""
        self.set_lr_plan(self.lr_plan + [(step, max_train_steps)])

    def set_lr_plan(self, plan: list) -> None:
        """The LR schedule of ``plan``, ``[(0, planned length), (step, corrected length), ...]`` (saved with every
        checkpoint, so a resumed run rebuilds the same schedule).

        Example (a 100-step cosine schedule corrected to 200 steps at step 50: half of the decay is left, now over
        150 steps):
            >>> from accelerate import Accelerator
            >>> from hfddpm import build_unet
            >>> from hfddpm.training import TrainConfig, build_scheduler
            >>> config = TrainConfig(preset="tiny", lr_warmup_steps=0, mixed_precision="no").validate()
            >>> unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
            >>> accelerator = Accelerator(cpu=True)
            >>> engine = TrainingEngine(config, unet, build_scheduler(config), accelerator, max_train_steps=100)
            >>> engine.set_lr_plan([(0, 100), (50, 200)])
            >>> [round(engine.lr_scheduler.scheduler.lr_lambdas[0](k), 4) for k in (50, 125, 200)]
            [0.5, 0.1464, 0.0]
        """
        config, n = self.config, self.accelerator.num_processes
        (_, first), *corrections = [(int(step), int(total)) for step, total in plan]
        probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        lambdas = get_scheduler(
            config.lr_scheduler,
            optimizer=probe,
            num_warmup_steps=config.lr_warmup_steps * n,
            num_training_steps=first * n,
        ).lr_lambdas
        total = first
        for step, new_total in corrections:
            lambdas = [_stretched(fn, step * n, total * n, new_total * n) for fn in lambdas]
            total = new_total
        self.lr_scheduler.scheduler.lr_lambdas = lambdas
        self.lr_plan = [(0, first)] + corrections

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.unwrapped.parameters())

    def micro_step(
        self, clean: torch.Tensor, class_labels: torch.Tensor | None, global_step: int, micro: int = 0
    ) -> torch.Tensor:
        """Forward, backward and (when gradients sync) the optimizer step for one micro-batch of clean images in
        [-1, 1]; returns the detached loss without synchronising with the host.

        The noise, timesteps and label dropout come from a generator keyed by (seed, process, step, micro-step).
        """
        device, config = self.device, self.config
        clean = clean.to(device, non_blocking=True).contiguous(memory_format=self.memory_format)
        bsz = clean.shape[0]
        gen = step_generator(device, config.seed, self.accelerator.process_index, global_step, micro)
        labels = None
        if self.class_conditional:
            labels = class_labels.to(device, non_blocking=True)
            if config.cond_drop_prob > 0:
                # label dropout for classifier-free guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598)
                drop = torch.rand(bsz, generator=gen, device=device) < config.cond_drop_prob
                labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        elif self.null_class >= 0:  # a class-conditional UNet trained without labels sees the null class
            labels = torch.full((bsz,), self.null_class, dtype=torch.long, device=device)

        with self.accelerator.accumulate(self.model):
            with self.forward_context():
                loss = diffusion_loss(
                    self.model,
                    self.train_scheduler,
                    clean,
                    class_labels=labels,
                    snr_gamma=self.snr_gamma,
                    generator=gen,
                    memory_format=self.memory_format,
                )
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients:
                self.grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def end_step(self) -> None:
        """After the micro-batches of one optimizer step: update the EMA."""
        if self.ema is not None:
            self.ema.step(self.unwrapped.parameters())

    def release(self) -> None:
        """Drop the training model (DDP-wrapped on several processes), its optimizer and LR schedule; the EMA and the
        unwrapped UNet stay. Before the process group ends (:func:`hfddpm.training.processes.end_training`)."""
        self.model = self.optimizer = self.lr_scheduler = None

    # --- export ------------------------------------------------------------------------------------------------------
    def ema_unet(self) -> UNet2DModel:
        """A float32 copy of the UNet carrying the EMA weights (the raw weights without EMA), for sampling/saving."""
        unet = UNet2DModel.from_config(self.unwrapped.config)
        if self.ema is not None:
            self.ema.copy_to(unet.parameters())
        else:
            unet.load_state_dict(self.unwrapped.state_dict())
        return unet.to(self.device).eval()

    def pipeline(self, unet: UNet2DModel | None = None, *, sampler: str | None = None) -> HFDDPMPipeline:
        """The pipeline of the EMA weights (or ``unet``): with the training schedule, as the run saves it, or with
        the scheduler called ``sampler`` (``hfddpm.evaluation.SCHEDULERS``, no progress bar) for the run's own
        sampling."""
        unet = unet if unet is not None else self.ema_unet()
        scheduler = self.noise_scheduler if sampler is None else make_scheduler(sampler, self.noise_scheduler.config)
        if self.mel is not None:  # an audio run: spectrograms and the conversion back to sound
            pipe = HFDDPMAudioPipeline(unet=unet, scheduler=scheduler, mel=self.mel)
        else:
            pipe = HFDDPMPipeline(unet=unet, scheduler=scheduler, vae=self.vae)
        if sampler is None:
            return pipe
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def grid_layout(self, num_classes: int = 0) -> tuple[int, int, list[int] | None, float]:
        """Rows, columns, labels and guidance scale of :meth:`sample_grid`: one row per class (at most
        ``MAX_GRID_ROWS``) guided by ``validation_guidance_scale``, or a square of ``eval_batch_size`` unguided."""
        config = self.config
        if num_classes:
            rows, cols = min(num_classes, MAX_GRID_ROWS), config.validation_images_per_class
            return rows, cols, [c for c in range(rows) for _ in range(cols)], config.validation_guidance_scale
        cols = math.ceil(math.sqrt(config.eval_batch_size))
        return math.ceil(config.eval_batch_size / cols), cols, None, 1.0

    def grid_image_steps(self, num_classes: int = 0) -> int:
        """Images times UNet steps of one :meth:`sample_grid` (guidance runs the UNet twice per step)."""
        rows, cols, labels, guidance = self.grid_layout(num_classes)
        return rows * cols * self.config.validation_inference_steps * (2 if labels and guidance != 1.0 else 1)

    def sample_grid(self, unet: UNet2DModel | None = None, *, num_classes: int = 0):
        """A sample grid with DPM-Solver++ (``validation_inference_steps``); one row per class, seeded by ``seed``."""
        config = self.config
        pipe = self.pipeline(unet, sampler="dpmsolver++")
        rows, cols, labels, guidance = self.grid_layout(num_classes)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            images = pipe(
                batch_size=rows * cols,
                class_labels=labels,
                guidance_scale=guidance,
                num_inference_steps=config.validation_inference_steps,
                generator=torch.Generator("cpu").manual_seed(config.seed),
                output_type="pil",
            ).images
        return make_image_grid(images, rows=rows, cols=cols)
