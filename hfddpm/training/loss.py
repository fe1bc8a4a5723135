"""The diffusion training objective and the per-step noise generator.

Example:
    >>> import torch
    >>> from hfddpm import HFDDPMScheduler, build_unet
    >>> from hfddpm.training import diffusion_loss
    >>> unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    >>> loss = diffusion_loss(unet, HFDDPMScheduler(), torch.zeros(2, 1, 16, 16), snr_gamma=5.0,
    ...                       generator=torch.Generator().manual_seed(0))
    >>> loss.ndim
    0
"""

import numpy as np
import torch


def diffusion_loss(
    model,
    scheduler,
    clean: torch.Tensor,
    *,
    class_labels: torch.Tensor | None = None,
    snr_gamma: float | None = None,
    generator: torch.Generator | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """Min-SNR-weighted regression loss of one batch of clean images in [-1, 1].

    Draws noise and uniform timesteps from ``generator``, noises the batch (eq. (4) of Ho et al. 2020,
    https://arxiv.org/abs/2006.11239), and regresses ``scheduler.get_target`` (the configured prediction type) with
    ``scheduler.loss_weights(timesteps, snr_gamma)`` (Hang et al. 2023). Nothing here synchronises with the host.
    """
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    noise = noise.contiguous(memory_format=memory_format)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator, device=clean.device
    )
    noisy = scheduler.add_noise(clean, noise, timesteps)
    target = scheduler.get_target(clean, noise, timesteps)
    pred = model(noisy, timesteps, class_labels=class_labels).sample
    per_sample = (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.ndim)))
    return (scheduler.loss_weights(timesteps, snr_gamma) * per_sample).mean()


def step_generator(device, *key: int) -> torch.Generator:
    """A generator seeded by a key such as ``(seed, process, step, micro-step)``: the noise of a step never depends
    on history, so a resumed run draws exactly what the uninterrupted one did.

    Example:
        >>> a, b = step_generator("cpu", 0, 0, 5, 0), step_generator("cpu", 0, 0, 5, 0)
        >>> bool(torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b)))
        True
    """
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(seed)
