"""The diffusion training objective and precision choices, shared by ``training/train.py`` and the benchmarks.

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

import importlib.util

import torch

from hfddpm.models.attention_processor import set_fp32_attention

# The trackers --report_to takes and the package each needs (without it accelerate silently logs nothing).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
REPORT_TO_CHOICES = ("none", *TRACKER_PACKAGES, "all")


def check_trackers(report_to: str) -> list[str]:
    """The trackers ``--report_to`` asks for, or a ``ValueError`` naming the missing package and how to install it.

    accelerate would start a run whose tracker package is missing and log nothing; this fails before training.
    ``"all"`` means every installed tracker, and at least one must be.

    Example:
        >>> check_trackers("none")
        []
    """
    if report_to not in REPORT_TO_CHOICES:
        raise ValueError(f"--report_to {report_to!r} is not a tracker; choose one of {REPORT_TO_CHOICES}.")
    if report_to == "none":
        return []
    installed = [name for name, package in TRACKER_PACKAGES.items() if importlib.util.find_spec(package) is not None]
    if report_to == "all":
        if not installed:
            raise ValueError(
                f"--report_to all found no tracker package ({', '.join(TRACKER_PACKAGES.values())} are not installed);"
                ' install one with `pip install "hfddpm[tracking]"`, or pass --report_to none.'
            )
        return installed
    if report_to not in installed:
        raise ValueError(
            f"--report_to {report_to} needs the {TRACKER_PACKAGES[report_to]} package, which is not installed:"
            f' `pip install "hfddpm[tracking]"` (or `pip install {TRACKER_PACKAGES[report_to]}`), or pass'
            " --report_to none."
        )
    return [report_to]


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


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), read from ``/proc/cpuinfo`` (Linux).

    Elsewhere (other systems, CPUs that would emulate bf16) the answer is ``False``.
    """
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_mixed_precision(device: torch.device | str) -> str:
    """The mixed precision ``training/train.py`` uses when none is asked for: ``"bf16"`` where the device computes
    it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16/AMX), else ``"no"`` (float32).

    bf16 autocast keeps float32 master weights and needs no loss scaling. On the 2-core AVX512-BF16 CPU of our
    benchmarks it trains the ``mnist`` preset about 1.6x as fast as float32 (``benchmarks/bench_train_throughput.py``).

    Example:
        >>> default_mixed_precision("mps")
        'no'
    """
    device = torch.device(device)
    if device.type == "cuda":
        # native only: pre-Ampere GPUs (T4, V100) would emulate bf16, slower than float32
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "no"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "no"
    return "no"


def prepare_attention(model: torch.nn.Module, device: torch.device | str, mixed_precision: str) -> int:
    """Keep ``model``'s attention blocks in float32 where bf16/fp16 attention is the slow part: on a CPU under mixed
    precision (PyTorch's bf16 CPU attention backward is ~10x slower than float32). Returns how many blocks changed.

    ``training/train.py`` and the benchmark loop that mirrors it both call this, so they apply the same rule.

    Example:
        >>> from hfddpm import build_unet
        >>> unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
        >>> prepare_attention(unet, "cuda", "bf16"), prepare_attention(unet, "cpu", "no")
        (0, 0)
        >>> prepare_attention(unet, "cpu", "bf16")
        4
    """
    if torch.device(device).type != "cpu" or mixed_precision == "no":
        return 0
    return set_fp32_attention(model)
