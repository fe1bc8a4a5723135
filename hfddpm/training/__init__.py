"""The training engine behind ``training/train.py``: one config, one engine, one loop.

- :mod:`hfddpm.training.config`: :class:`TrainConfig`, every setting with its default and help text.
- :mod:`hfddpm.training.engine`: building the UNet and schedule (:func:`setup`) and :class:`TrainingEngine`
  (optimizer, LR schedule, EMA, the training step, the EMA pipeline and validation grid).
- :mod:`hfddpm.training.loop`: :func:`train`, a whole run (data, resume, logging, checkpoints, saving).
- :mod:`hfddpm.training.checkpoint`, :mod:`~hfddpm.training.precision`, :mod:`~hfddpm.training.loss`,
  :mod:`~hfddpm.training.trackers`, :mod:`~hfddpm.training.processes`: one job each.

Example:
    >>> from hfddpm.training import TrainConfig
    >>> TrainConfig(max_train_steps=20, preset="tiny").validate().preset
    'tiny'
"""

from hfddpm.training.checkpoint import list_checkpoints, save_checkpoint
from hfddpm.training.config import TrainConfig
from hfddpm.training.engine import RunSetup, TrainingEngine, build_scheduler, build_training_unet, setup
from hfddpm.training.loop import TrainingError, train
from hfddpm.training.loss import diffusion_loss, step_generator
from hfddpm.training.precision import (
    cpu_has_native_bf16,
    default_mixed_precision,
    prepare_attention,
    resolve_mixed_precision,
)
from hfddpm.training.trackers import REPORT_TO_CHOICES, check_trackers

__all__ = [
    "REPORT_TO_CHOICES",
    "RunSetup",
    "TrainConfig",
    "TrainingEngine",
    "TrainingError",
    "build_scheduler",
    "build_training_unet",
    "check_trackers",
    "cpu_has_native_bf16",
    "default_mixed_precision",
    "diffusion_loss",
    "list_checkpoints",
    "prepare_attention",
    "resolve_mixed_precision",
    "save_checkpoint",
    "setup",
    "step_generator",
    "train",
]
