"""How a training step runs on the device: its precision and memory format, chosen by measurement on GPUs.

On a GPU no rule picks the faster step: on one H100 the small ``mnist`` UNet trains faster in float32 (TF32) than
in bf16, because its step is bound by kernel launches, while the ``cifar10`` one is faster in bf16 and with
``channels_last``. So when neither ``--mixed_precision`` nor ``--channels_last`` is given, a CUDA run times a few
forward and backward passes of its own UNet on a batch of its own shape in each candidate format and trains in the
fastest. On a CPU the choice is the measured rule of :func:`~hfddpm.training.precision.default_mixed_precision`
(bf16 where the CPU computes it natively) and the contiguous format (``channels_last`` gave nothing there).

Example (a fake clock: float32 takes 2 s for its 2 timed steps, bf16 1 s):
    >>> import torch
    >>> from hfddpm import HFDDPMScheduler, build_unet
    >>> unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    >>> ticks = iter([0, 2, 2, 3])  # start and end of float32 (2 steps), then of bf16
    >>> timings = time_step_formats(unet, HFDDPMScheduler(), (2, 1, 16, 16), "cpu",
    ...                             [StepFormat("no"), StepFormat("bf16")], warmup=0, steps=2,
    ...                             clock=lambda: next(ticks))
    >>> fastest(timings).label
    'bf16'
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hfddpm.schedulers.scheduling_hfddpm import HFDDPMScheduler
from hfddpm.training.budget import device_clock
from hfddpm.training.loss import diffusion_loss
from hfddpm.training.precision import cpu_has_native_bf16, precision_reason, resolve_mixed_precision

# Steps run before timing a format (first-call costs: cuDNN autotuning, allocator) and steps timed.
WARMUP_STEPS = 3
TIMED_STEPS = 8


@dataclass(frozen=True)
class StepFormat:
    """A precision (accelerate's ``mixed_precision``: "no", "bf16", "fp16") and a memory format."""

    mixed_precision: str
    channels_last: bool = False

    @property
    def label(self) -> str:
        name = {"no": "float32", "bf16": "bf16", "fp16": "fp16"}[self.mixed_precision]
        return name + (" channels_last" if self.channels_last else "")


def candidate_formats(
    device: torch.device | str, *, mixed_precision: str | None = None, channels_last: bool | None = None
) -> list[StepFormat]:
    """The formats worth timing on ``device``, with the given settings fixed (``None``: free). float32 (TF32 where
    allowed) always; bf16 where the GPU computes it natively.

    Example:
        >>> [f.label for f in candidate_formats("cpu", mixed_precision="no")]
        ['float32', 'float32 channels_last']
    """
    device = torch.device(device)
    precisions = ["no"]
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        precisions.append("bf16")
    if device.type == "cpu" and cpu_has_native_bf16():
        precisions.append("bf16")
    if mixed_precision is not None:
        precisions = [mixed_precision]
    layouts = [False, True] if channels_last is None else [channels_last]
    return [StepFormat(p, c) for p in precisions for c in layouts]


def time_step_formats(
    unet: torch.nn.Module,
    scheduler: HFDDPMScheduler,
    batch_shape: Sequence[int],
    device: torch.device | str,
    formats: Sequence[StepFormat],
    *,
    num_class_embeds: int | None = None,
    warmup: int = WARMUP_STEPS,
    steps: int = TIMED_STEPS,
    clock: Callable[[], float] | None = None,
) -> dict[StepFormat, float]:
    """Seconds per forward + backward pass of the training loss (:func:`~hfddpm.training.loss.diffusion_loss`) of
    a copy of ``unet`` on a random batch of ``batch_shape``, in each of ``formats`` (``unet`` is not changed).

    The optimizer step is left out: it costs the same in every format (float32 master weights). ``clock``: by
    default :func:`~hfddpm.training.budget.device_clock`, which waits for the device's queued work.
    """
    device = torch.device(device)
    clock = clock or device_clock(device)
    train_scheduler = HFDDPMScheduler.from_config(scheduler.config)
    train_scheduler.alphas_cumprod = train_scheduler.alphas_cumprod.to(device)
    generator = torch.Generator(device).manual_seed(0)
    clean = torch.rand(tuple(batch_shape), generator=generator, device=device) * 2 - 1
    labels = None
    if num_class_embeds:
        labels = torch.randint(0, num_class_embeds, (clean.shape[0],), generator=generator, device=device)
    timings = {}
    for fmt in formats:
        layout = torch.channels_last if fmt.channels_last else torch.contiguous_format
        model = copy.deepcopy(unet).to(device=device, memory_format=layout).train()
        batch = clean.contiguous(memory_format=layout)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(fmt.mixed_precision)
        start = None
        for i in range(warmup + steps):
            if i == warmup:
                start = clock()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = diffusion_loss(
                    model, train_scheduler, batch, class_labels=labels, generator=generator, memory_format=layout
                )
            loss.backward()
            model.zero_grad(set_to_none=True)
        timings[fmt] = (clock() - start) / steps
        del model
    return timings


def fastest(timings: dict[StepFormat, float]) -> StepFormat:
    """The format with the shortest step (the first one listed, on a tie)."""
    return min(timings, key=timings.get)


def describe(timings: dict[StepFormat, float], images_per_step: int) -> str:
    """The timings as a line for the log: ``"float32 1234 images/s, bf16 1500 images/s"``."""
    return ", ".join(f"{fmt.label} {images_per_step / max(t, 1e-12):.0f} images/s" for fmt, t in timings.items())


def resolve_step_format(config, run, state) -> tuple[StepFormat, str]:
    """The format a run trains in and why, in words for the log.

    ``--mixed_precision`` / ``--channels_last`` (or accelerate's config) decide when given. Otherwise a CUDA run
    measures (:func:`time_step_formats` on a batch of ``--train_batch_size``) and every process takes process 0's
    choice; elsewhere the precision is :func:`~hfddpm.training.precision.default_mixed_precision`'s and the format
    contiguous.

    Args:
        config: the run's :class:`~hfddpm.training.TrainConfig`.
        run: its :class:`~hfddpm.training.RunSetup` (the UNet and schedule; nothing is changed).
        state: accelerate's ``PartialState`` (its device and processes).
    """
    device = state.device
    precision_free = config.mixed_precision is None and os.environ.get("ACCELERATE_MIXED_PRECISION", "no") == "no"
    if device.type != "cuda" or not (precision_free or config.channels_last is None):
        mixed_precision = resolve_mixed_precision(config.mixed_precision)
        reason = precision_reason(config.mixed_precision, mixed_precision, device)
        return StepFormat(mixed_precision, bool(config.channels_last)), reason
    formats = candidate_formats(
        device,
        mixed_precision=None if precision_free else resolve_mixed_precision(config.mixed_precision),
        channels_last=config.channels_last,
    )
    unet = run.unet
    size = unet.config.sample_size  # the resolution of the run (of its latents, for a latent model)
    size = (size, size) if isinstance(size, int) else tuple(size)
    batch_shape = (config.train_batch_size, unet.config.in_channels, *size)
    timings = time_step_formats(
        unet, run.noise_scheduler, batch_shape, device, formats, num_class_embeds=unet.config.num_class_embeds
    )
    choice = [fastest(timings)]
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(choice, from_process=0)
    reason = f"{choice[0].label}: measured fastest of {describe(timings, config.train_batch_size)} on this GPU"
    return choice[0], reason
