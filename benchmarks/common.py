"""Shared pieces of the benchmarks: the two training loops compared, data, timing and reporting helpers.

``HFDDPMTrainLoop`` runs the product's own step (``hfddpm.training.TrainingEngine`` with the default
``TrainConfig``, as ``training/train.py`` does); ``DiffusersTutorialLoop`` is the loop of the
diffusers "Train a diffusion model" tutorial (UNet2DModel + DDPMScheduler + AdamW + accelerate, ``loss.item()``
logged every step). Both read batches from the same in-memory tensor, so data loading is not part of the comparison.

Mixed precision: accelerate keeps one precision per process (``AcceleratorState`` is a singleton), so loops that
differ in precision cannot each get their own ``Accelerator(mixed_precision=...)`` here. Each loop instead wraps its
forward pass in ``torch.autocast``, which is what accelerate does to a prepared model (float32 master weights, no
loss scaling for bf16).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup

import hfddpm
from hfddpm.evaluation import load_mnist_5k
from hfddpm.training import TrainConfig, TrainingEngine, build_scheduler, cpu_has_native_bf16, default_mixed_precision
from hfddpm.training.budget import device_clock
from hfddpm.training.precision import CUDA_MATH_FLAGS, set_cuda_math, train_cuda_math

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
# torch's own CUDA math (TF32 off for matmuls, on for cuDNN convolutions, no autotuner): what the tutorial runs with
TORCH_CUDA_MATH = {name: getattr(owner, attribute) for name, (owner, attribute) in CUDA_MATH_FLAGS.items()}


def unet_config(preset: str, resolution: int = 28, channels: int = 1) -> dict:
    """An hfddpm preset as a plain UNet2DModel config at the given resolution / channels (unconditional)."""
    return dict(hfddpm.build_unet(preset, sample_size=resolution, in_channels=channels, out_channels=channels).config)


def mnist_train_images(resolution: int = 28) -> torch.Tensor:
    """The 4000 training digits of MNIST 5k as ``[N, 1, R, R]`` in [-1, 1] (the diffusion models' range)."""
    images, _ = load_mnist_5k("train")
    if resolution != 28:
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True)
    return images * 2 - 1


class BatchStream:
    """Random batches of a tensor, reshuffled every epoch with a seeded generator. The epoch's order is kept where
    the data is, so a batch on a GPU is one gather with no copy from the host (which would wait for the GPU)."""

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int = 0):
        self.data, self.batch_size = data, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.position = self._shuffle(), 0

    def _shuffle(self) -> torch.Tensor:
        return torch.randperm(len(self.data), generator=self.generator).to(self.data.device)

    def __next__(self) -> torch.Tensor:
        if self.position + self.batch_size > len(self.data):
            self.order, self.position = self._shuffle(), 0
        idx = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return self.data.index_select(0, idx)


def autocast(device: torch.device, mixed_precision: str):
    """The autocast region accelerate puts around a prepared model's forward pass for ``mixed_precision``."""
    if mixed_precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision={mixed_precision!r}; valid: 'no', 'bf16', 'fp16'")
    if mixed_precision == "no":
        return contextlib.nullcontext()
    if mixed_precision == "fp16" and device.type != "cuda":
        raise ValueError(f"mixed_precision='fp16' needs a CUDA device, not {device.type!r}; use 'bf16' or 'no'")
    return torch.autocast(device.type, dtype=torch.bfloat16 if mixed_precision == "bf16" else torch.float16)


def tutorial_precision(device: torch.device) -> str:
    """The precision the diffusers tutorial's ``mixed_precision="fp16"`` gives on ``device``."""
    return "fp16" if device.type == "cuda" else "no"


class HFDDPMTrainLoop:
    """hfddpm's training step as ``training/train.py`` runs it: ``hfddpm.training.TrainingEngine`` built from the
    default ``TrainConfig`` (cosine log-SNR schedule, v-prediction, min-SNR-5, fused AdamW, EMA, float32 attention
    on CPU under bf16), fed in-memory batches instead of the DataLoader."""

    name = "hfddpm (training/train.py step)"

    def __init__(
        self,
        config: dict,
        data: torch.Tensor,
        batch_size: int,
        *,
        max_steps: int,
        use_ema: bool = True,
        channels_last: bool = False,
        mixed_precision: str | None = None,
        compile_mode: str | None = None,
        seed: int = 0,
    ):
        accelerator = Accelerator()
        torch.manual_seed(seed)
        unet = UNet2DModel.from_config(config)
        train_config = TrainConfig(
            seed=seed,
            use_ema=use_ema,
            channels_last=channels_last,
            max_train_steps=max_steps,
            compile=compile_mode is not None,
            compile_mode=compile_mode or "default",
        )
        self.mixed_precision = mixed_precision or default_mixed_precision(accelerator.device)
        self.engine = TrainingEngine(
            train_config.validate(),
            unet,
            build_scheduler(train_config),
            accelerator,
            max_train_steps=max_steps,
            forward_context=lambda: autocast(accelerator.device, self.mixed_precision),
            mixed_precision=self.mixed_precision,
        )
        self.accelerator, self.device = accelerator, accelerator.device
        self.cuda_math = train_cuda_math()  # what train.py sets on a GPU (the flags are process-wide: set per step)
        self.batches = BatchStream(data, batch_size, seed)
        self.global_step = 0
        self.loss_sum = torch.zeros((), device=self.device)

    def step(self):
        set_cuda_math(self.cuda_math)
        self.loss_sum += self.engine.micro_step(next(self.batches), None, self.global_step)
        self.global_step += 1
        self.engine.end_step()

    def pipeline(self) -> hfddpm.HFDDPMPipeline:
        """The sampling pipeline (EMA weights when EMA is on), as train.py saves it."""
        return self.engine.pipeline()


class DiffusersTutorialLoop:
    """The training loop of the diffusers tutorial (https://huggingface.co/docs/diffusers/tutorials/basic_training):
    DDPMScheduler(1000), epsilon prediction, plain AdamW, cosine warm-up, accelerate, ``loss.detach().item()`` per
    step for the progress bar and tracker. The tutorial's config asks for ``mixed_precision="fp16"``: on a GPU that
    is fp16 autocast with loss scaling (``GradScaler``, as accelerate does it); a CPU trains it in float32, because
    accelerate does not apply fp16 there. ``tutorial_precision(device)`` names the one the tutorial gets."""

    name = "diffusers tutorial loop"

    def __init__(
        self,
        config: dict,
        data: torch.Tensor,
        batch_size: int,
        *,
        max_steps: int,
        seed: int = 0,
        learning_rate: float = 1e-4,
        lr_warmup_steps: int = 500,
        mixed_precision: str = "no",
    ):
        self.accelerator = Accelerator()
        self.mixed_precision = mixed_precision
        self.autocast = lambda: autocast(self.accelerator.device, mixed_precision)
        self.autocast()  # validates mixed_precision for this device
        # fp16 needs loss scaling: scale the loss, unscale before clipping, skip steps with inf/NaN gradients
        self.scaler = torch.amp.GradScaler(self.accelerator.device.type) if mixed_precision == "fp16" else None
        torch.manual_seed(seed)
        unet = UNet2DModel.from_config(config)
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate)
        lr_scheduler = get_cosine_schedule_with_warmup(
            optimizer=optimizer, num_warmup_steps=lr_warmup_steps, num_training_steps=max_steps
        )
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(unet, optimizer, lr_scheduler)
        self.cuda_math = dict(TORCH_CUDA_MATH)  # the tutorial sets no backend flags
        self.batches = BatchStream(data, batch_size, seed)
        self.global_step, self.logs = 0, {}
        self.model.train()

    def step(self):
        set_cuda_math(self.cuda_math)
        clean_images = next(self.batches).to(self.accelerator.device)
        noise = torch.randn(clean_images.shape, device=clean_images.device)
        bs = clean_images.shape[0]
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (bs,), device=clean_images.device, dtype=torch.int64
        )
        noisy_images = self.noise_scheduler.add_noise(clean_images, noise, timesteps)
        with self.accelerator.accumulate(self.model):
            with self.autocast():
                noise_pred = self.model(noisy_images, timesteps, return_dict=False)[0]
            loss = F.mse_loss(noise_pred.float(), noise)
            if self.scaler is None:
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), 1.0)
                self.optimizer.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            self.lr_scheduler.step()
            self.optimizer.zero_grad()
        self.logs = {"loss": loss.detach().item(), "lr": self.lr_scheduler.get_last_lr()[0], "step": self.global_step}
        self.global_step += 1

    def pipeline(self) -> hfddpm.HFDDPMPipeline:
        unet = self.accelerator.unwrap_model(self.model)
        copy = UNet2DModel.from_config(unet.config)
        copy.load_state_dict(unet.state_dict())
        return hfddpm.HFDDPMPipeline(
            unet=copy.eval(), scheduler=DDPMScheduler.from_config(self.noise_scheduler.config)
        )


def timed(fn, device: torch.device) -> float:
    """Seconds taken by ``fn()``, with the device drained before and after (``device_clock``)."""
    clock = device_clock(device)
    start = clock()
    fn()
    return clock() - start


def median(values):
    return statistics.median(values)


def environment() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "emulated_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("ATEN_CPU_CAPABILITY"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def fmt(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(name: str, payload: dict, results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def plot_fd_curves(
    series: dict[str, list[tuple[float, float]]],
    *,
    xlabel: str,
    title: str,
    out: str,
    logx: bool = False,
    references: dict[str, float] | None = None,
) -> Path:
    """Plot FD-digits curves (one line per name, and dashed horizontal ``references``) to results/<out>.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        ax.plot(*zip(*points, strict=True), marker="o", label=name)
    for name, value in (references or {}).items():
        ax.axhline(value, linestyle="--", color="gray", label=name)
    values = [y for points in series.values() for _, y in points] + list((references or {}).values())
    if logx:
        ax.set_xscale("log")
    if all(v > 0 for v in values):
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("FD-digits (lower is better)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    png = RESULTS_DIR / f"{out}.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png
