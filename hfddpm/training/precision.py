"""Which precision a run trains in, and the float32-attention rule that goes with it.

Example:
    >>> from hfddpm.training.precision import default_mixed_precision
    >>> default_mixed_precision("mps")
    'no'
"""

import os

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from hfddpm.models.attention_processor import set_fp32_attention

MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")


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
    """The mixed precision training uses when none is asked for: ``"bf16"`` where the device computes it natively
    (a CUDA GPU with bf16, a CPU with AVX512-BF16/AMX), else ``"no"`` (float32).

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


def resolve_mixed_precision(requested: str | None) -> str:
    """``requested`` (``--mixed_precision``) if given; else accelerate's config if it sets one other than "no"; else
    :func:`default_mixed_precision` of the device accelerate is about to use. ``accelerate launch`` always exports
    ACCELERATE_MIXED_PRECISION and "no" is its default, so "no" there does not pin float32. fp16 on a CPU is an
    error: accelerate would train float32 there without a word.
    """
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


def precision_reason(requested: str | None, resolved: str, device: torch.device | str) -> str:
    """Why a run trains in ``resolved``, in words for the log, e.g. ``"float32: this CPU has no native bf16"``.

    Example:
        >>> precision_reason("no", "no", "cpu")
        'float32: --mixed_precision no'
    """
    name = {"no": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[resolved]
    if requested is not None:
        return f"{name}: --mixed_precision {requested}"
    if os.environ.get("ACCELERATE_MIXED_PRECISION", "no") != "no":
        return f"{name}: accelerate's config"
    device = torch.device(device)
    what = "this CPU" if device.type == "cpu" else f"this {device.type} device"
    if resolved == "bf16":
        return f"{name}: {what} computes bf16 natively"
    return f"{name}: {what} has no native bf16"


def prepare_attention(model: torch.nn.Module, device: torch.device | str, mixed_precision: str) -> int:
    """Keep ``model``'s attention blocks in float32 where bf16/fp16 attention is the slow part: on a CPU under mixed
    precision (PyTorch's bf16 CPU attention backward is ~10x slower than float32). Returns how many blocks changed.

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


# The backend flags of CUDA math: TF32 for float32 matmuls and for cuDNN convolutions, cuDNN's autotuner.
CUDA_MATH_FLAGS = {
    "matmul_tf32": (torch.backends.cuda.matmul, "allow_tf32"),
    "cudnn_tf32": (torch.backends.cudnn, "allow_tf32"),
    "cudnn_benchmark": (torch.backends.cudnn, "benchmark"),
}


def train_cuda_math(allow_tf32: bool = True) -> dict[str, bool]:
    """The CUDA math a GPU run of train.py trains with: TF32 float32 matmuls and convolutions (``--allow_tf32``,
    Ampere and newer) and cuDNN's autotuner (a run repeats one input shape, so the fastest kernel is found once).

    Example:
        >>> train_cuda_math(allow_tf32=False)
        {'matmul_tf32': False, 'cudnn_tf32': False, 'cudnn_benchmark': True}
    """
    return {"matmul_tf32": allow_tf32, "cudnn_tf32": allow_tf32, "cudnn_benchmark": True}


def set_cuda_math(flags: dict[str, bool]) -> dict[str, bool]:
    """Set the flags of :data:`CUDA_MATH_FLAGS` named in ``flags`` (process-wide; harmless without a GPU) and return
    their previous values, so that ``set_cuda_math(previous)`` restores them.

    Example:
        >>> previous = set_cuda_math(train_cuda_math())
        >>> set_cuda_math(previous) == train_cuda_math()
        True
    """
    unknown = sorted(set(flags) - set(CUDA_MATH_FLAGS))
    if unknown:
        raise ValueError(f"Unknown CUDA math flag(s) {unknown}; valid: {sorted(CUDA_MATH_FLAGS)}.")
    previous = {}
    for name, value in flags.items():
        owner, attribute = CUDA_MATH_FLAGS[name]
        previous[name] = getattr(owner, attribute)
        setattr(owner, attribute, value)
    return previous
