"""Scheduler swapping by short name and batched sample generation for evaluation."""

from __future__ import annotations

import inspect
import math

import diffusers
import numpy as np
import torch
from tqdm.auto import tqdm

# short name -> (scheduler class name, extra config); hfddpm's own scheduler lives in hfddpm.schedulers.
# Left out: DPM-Solver v1 (deprecated in diffusers) and KDPM2 ancestral (NaN at the cosine schedule's sigma_max ~2e4).
SCHEDULERS = {
    "hfddpm": ("HFDDPMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "sde-dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpmsolver-singlestep": ("DPMSolverSinglestepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "sasolver": ("SASolverScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "kdpm2": ("KDPM2DiscreteScheduler", {}),
}


def make_scheduler(name: str, config):
    """Build the scheduler called ``name`` (see ``SCHEDULERS``) from another scheduler's ``config``.

    hfddpm's scheduler records its discretised betas as ``trained_betas``, so every diffusers scheduler built from
    its config runs the same noise schedule, prediction type and timestep spacing.

    Example:
        >>> from hfddpm import HFDDPMScheduler
        >>> type(make_scheduler("dpmsolver++", HFDDPMScheduler().config)).__name__
        'DPMSolverMultistepScheduler'
    """
    key = name.lower()
    if key not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}.")
    class_name, extra = SCHEDULERS[key]
    if class_name == "HFDDPMScheduler":
        from hfddpm.schedulers import HFDDPMScheduler as scheduler_cls
    else:
        scheduler_cls = getattr(diffusers, class_name)
    # drop settings the target does not take (e.g. noise_schedule: the schedule travels as trained_betas), so
    # diffusers does not warn that they "will be ignored"
    accepted = inspect.signature(scheduler_cls.__init__).parameters
    config = {k: v for k, v in dict(config).items() if k in accepted or k.startswith("_")}
    return scheduler_cls.from_config(config, **extra)


def set_scheduler(pipe, name: str | None):
    """Swap ``pipe.scheduler`` for the scheduler called ``name`` (``None`` keeps the saved one); returns ``pipe``."""
    if name is not None:
        pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
    return pipe


def num_classes(pipe) -> int:
    """Real classes of a class-conditional pipeline (``num_class_embeds - 1``, the last is the null class), else 0."""
    n = pipe.unet.config.num_class_embeds
    return n - 1 if n else 0


def balanced_labels(num_images: int, num_classes: int) -> torch.Tensor:
    """``0, 1, ..., num_classes - 1, 0, 1, ...``: every class equally often (up to one)."""
    return torch.arange(num_images) % num_classes


def grid_shape(num_images: int, columns: int | None = None) -> tuple[int, int]:
    """``(rows, cols)`` with ``rows * cols == num_images``: the most square split, or ``columns`` per row."""
    if columns is not None:
        if num_images % columns:
            raise ValueError(f"num_images={num_images} is not a multiple of columns={columns}.")
        return num_images // columns, columns
    rows = max(r for r in range(1, math.isqrt(num_images) + 1) if num_images % r == 0)
    return rows, num_images // rows


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index`` of a run seeded ``seed``: drawn from ``numpy.random.SeedSequence([seed, index])``,
    so runs with neighbouring seeds share no batch (``seed + index`` would make seed 1's batch 0 seed 0's batch 1).

    Example:
        >>> batch_seed(0, 1) == batch_seed(0, 1), batch_seed(0, 1) == batch_seed(1, 0)
        (True, False)
    """
    entropy = [seed & 0xFFFF_FFFF_FFFF_FFFF, index]  # SeedSequence takes non-negative ints; a negative seed wraps
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


@torch.no_grad()
def generate_samples(
    pipe,
    num_images: int,
    *,
    batch_size: int = 64,
    num_inference_steps: int = 50,
    class_labels: torch.Tensor | list[int] | None = None,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    return_audios: bool = False,
    image_seeds: list[int] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, np.ndarray]:
    """Generate ``num_images`` images as a float tensor ``[N, C, H, W]`` in [0, 1], ``batch_size`` at a time.

    Batch ``i`` is drawn with ``torch.Generator().manual_seed(batch_seed(seed, i))``, so a run is reproducible for a
    given ``seed`` and ``batch_size``, and runs with different seeds share no batch.
    With ``image_seeds`` (one per image), image ``k``'s noise comes from its own generator
    seeded ``image_seeds[k]`` instead, so an image does not depend on the batch size or on which process draws it.
    ``class_labels`` (one per image) are split along with the batches. An audio
    pipeline with ``return_audios`` gives ``(images, audios)``: the spectrograms and the sound it made of them,
    float32 ``[N, num_samples]``.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if class_labels is not None:
        class_labels = torch.as_tensor(class_labels, dtype=torch.long).view(-1)
        if class_labels.numel() != num_images:
            raise ValueError(f"Got {class_labels.numel()} class_labels for num_images={num_images}.")
    if image_seeds is not None and len(image_seeds) != num_images:
        raise ValueError(f"Got {len(image_seeds)} image_seeds for num_images={num_images}.")
    pipe.set_progress_bar_config(disable=True)
    images, audios = [], []
    starts = range(0, num_images, batch_size)
    # one bar over the denoising steps of all batches (a batch of a large model takes minutes)
    bar = tqdm(total=len(starts) * num_inference_steps, desc="generating", unit="step", disable=not progress)

    def advance(pipe, step_index, timestep, callback_kwargs):
        steps = len(pipe.scheduler.timesteps)  # a second-order solver takes more steps than asked
        if step_index == 0 and bar.total != len(starts) * steps:
            bar.total = len(starts) * steps
            bar.refresh()
        bar.update(1)
        return callback_kwargs

    for i, start in enumerate(starts):
        n = min(batch_size, num_images - start)
        labels = None if class_labels is None else class_labels[start : start + n]
        out = pipe(
            batch_size=n,
            num_inference_steps=num_inference_steps,
            generator=torch.Generator().manual_seed(batch_seed(seed, i))
            if image_seeds is None
            else [torch.Generator().manual_seed(s) for s in image_seeds[start : start + n]],
            class_labels=labels,
            guidance_scale=guidance_scale,
            eta=eta,
            output_type="pt",
            callback_on_step_end=advance,
        )
        images.append(out.images.float().cpu())
        if return_audios:
            audios.append(out.audios)
        bar.set_postfix_str(f"{start + n}/{num_images} images")
    bar.close()
    return (torch.cat(images), np.concatenate(audios)) if return_audios else torch.cat(images)
