r"""Training throughput: hfddpm's training step against the diffusers tutorial loop, same UNet and batch.

All loops run in this process, interleaved round by round (the order alternates), so a busy machine slows them
alike. Reports images/s per loop (median over rounds) and the median per-round ratio against the tutorial loop as
its config trains on this device (fp16 with loss scaling on a GPU, float32 on a CPU), with a bootstrap 95% interval
over the rounds. Other rows: the tutorial loop in float32 (GPU) and with bf16 autocast, hfddpm's step in the format
train.py would train this UNet and batch in here (``hfddpm.training.step_format``: the CPU rule, or measured on a
GPU), and in float32 (--skip-row leaves one out, e.g. bf16 autocast where it is emulated and 10x slower).

    python benchmarks/bench_train_throughput.py                          # mnist preset, batch 64
    python benchmarks/bench_train_throughput.py --preset tiny --batch-size 16 --rounds 2 --steps-per-round 2
    python benchmarks/bench_train_throughput.py --preset cifar10 --resolution 32 --channels 3 --batch-size 128 \
        --compile-mode max-autotune-no-cudagraphs --channels-last --data-on-device     # a GPU configuration
"""

import argparse
from types import SimpleNamespace

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from common import (
    DiffusersTutorialLoop,
    HFDDPMTrainLoop,
    environment,
    markdown_table,
    median,
    mnist_train_images,
    timed,
    tutorial_precision,
    unet_config,
    write_json,
)
from diffusers import UNet2DModel

from hfddpm import UNET_PRESETS
from hfddpm.evaluation.uncertainty import bootstrap_interval
from hfddpm.training import TrainConfig, build_scheduler
from hfddpm.training.config import COMPILE_MODES
from hfddpm.training.precision import set_cuda_math, train_cuda_math
from hfddpm.training.step_format import resolve_step_format

PRECISION_NAMES = {"no": "float32", "bf16": "bf16", "fp16": "fp16 + loss scaling"}
OPTIONAL_ROWS = ("diffusers_fp32", "diffusers_bf16", "hfddpm_fp32")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset", default="mnist", choices=list(UNET_PRESETS), help="hfddpm UNet preset (built unconditional)"
    )
    parser.add_argument("--resolution", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1, help="image channels (3: the digits repeated, as RGB)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=10)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="train.py's --channels_last for hfddpm (default: train.py's choice, measured on a GPU, off on a CPU)",
    )
    parser.add_argument(
        "--mixed-precision",
        choices=["no", "bf16"],
        default=None,
        help="hfddpm loop's precision (default: train.py's choice for this UNet and batch on this device, measured"
        " on a GPU; fp16 would need train.py's loss scaling, which this loop, fed by autocast alone, does not have)",
    )
    parser.add_argument(
        "--compile-mode",
        action="append",
        default=[],
        choices=COMPILE_MODES,
        help="add a row: hfddpm's step in its default precision with train.py's --compile --compile_mode MODE"
        " (repeatable); the first step, which compiles, is reported as compile_seconds",
    )
    parser.add_argument(
        "--data-on-device",
        action="store_true",
        help="hfddpm rows read batches from a tensor on the device, as train.py does for small datasets",
    )
    parser.add_argument(
        "--skip-row", action="append", default=[], choices=OPTIONAL_ROWS, help="leave this row out (repeatable)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", default="train_throughput.json", help="file name under benchmarks/results/")
    return parser.parse_args(argv)


def train_step_format(config: dict, batch_size: int, mixed_precision: str | None, channels_last: bool):
    """The precision and memory format ``training/train.py`` trains this UNet and batch in on this device, and why
    (``hfddpm.training.step_format.resolve_step_format``, run under train.py's CUDA math)."""
    unet = UNet2DModel.from_config(config)
    train_config = TrainConfig(
        train_batch_size=batch_size, mixed_precision=mixed_precision, channels_last=True if channels_last else None
    ).validate()
    run = SimpleNamespace(unet=unet, noise_scheduler=build_scheduler(train_config))  # what the choice reads of a run
    previous = set_cuda_math(train_cuda_math())
    try:
        return resolve_step_format(train_config, run, PartialState())
    finally:
        set_cuda_math(previous)


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    config = unet_config(args.preset, args.resolution, args.channels)
    data = mnist_train_images(args.resolution).repeat(1, args.channels, 1, 1)
    max_steps = args.warmup_steps + args.rounds * args.steps_per_round
    device = Accelerator().device
    # the format train.py trains this UNet and batch in here: measured on a GPU, the CPU rule elsewhere
    step_format, format_reason = train_step_format(config, args.batch_size, args.mixed_precision, args.channels_last)
    hfddpm_precision = step_format.mixed_precision
    print(f"hfddpm's step format, as train.py chooses it: {format_reason}")
    baseline = tutorial_precision(device)  # fp16 with loss scaling on a GPU, float32 on a CPU
    tutorial = {"diffusers": baseline, "diffusers_fp32": "no", "diffusers_bf16": "bf16"}
    if baseline == "no":
        del tutorial["diffusers_fp32"]
    hfddpm_rows = {"hfddpm": (hfddpm_precision, None), "hfddpm_fp32": ("no", None)}  # (precision, compile mode)
    for key in args.skip_row:
        tutorial.pop(key, None)
        hfddpm_rows.pop(key, None)
    loops = {
        key: DiffusersTutorialLoop(config, data, args.batch_size, max_steps=max_steps, mixed_precision=precision)
        for key, precision in tutorial.items()
    }
    names = {
        "diffusers": f"{DiffusersTutorialLoop.name}, as configured ({PRECISION_NAMES[baseline]} here): the baseline",
        "diffusers_fp32": f"{DiffusersTutorialLoop.name}, float32",
        "diffusers_bf16": f"{DiffusersTutorialLoop.name} + bf16 autocast",
    }
    hfddpm_rows.update({f"hfddpm_compiled_{mode}": (hfddpm_precision, mode) for mode in args.compile_mode})
    hfddpm_data = data.to(device) if args.data_on_device else data
    for key, (precision, mode) in hfddpm_rows.items():
        loops[key] = HFDDPMTrainLoop(
            config,
            hfddpm_data,
            args.batch_size,
            max_steps=max_steps,
            channels_last=step_format.channels_last,
            mixed_precision=precision,
            compile_mode=mode,
        )
        names[key] = f"{HFDDPMTrainLoop.name}, " + (
            f"--compile --compile_mode {mode} ({step_format.label})"
            if mode
            else f"as train.py trains it: {step_format.label}"
            if key == "hfddpm"
            else "--mixed_precision no" + (" channels_last" if step_format.channels_last else "")
        )

    compile_seconds = {}

    def run(loop, steps):
        for _ in range(steps):
            loop.step()

    for key, loop in loops.items():
        first = timed(lambda loop=loop: run(loop, 1), device)
        if key.startswith("hfddpm_compiled"):
            compile_seconds[key] = first
        timed(lambda loop=loop: run(loop, args.warmup_steps - 1), device)

    seconds = {key: [] for key in loops}
    order = list(loops)
    for r in range(args.rounds):
        for key in order if r % 2 == 0 else order[::-1]:
            seconds[key].append(timed(lambda key=key: run(loops[key], args.steps_per_round), device))
    images = args.steps_per_round * args.batch_size
    per_round = {key: [images / s for s in values] for key, values in seconds.items()}
    results = {}
    for key in loops:
        ratios = np.array([a / b for a, b in zip(per_round[key], per_round["diffusers"], strict=True)])
        ratio = median(ratios.tolist())
        results[key] = {
            "mixed_precision": loops[key].mixed_precision,
            "images_per_second": median(per_round[key]),
            "ratio_vs_diffusers": ratio,
            # resampling the rounds: how far the median ratio could move on another run of as many rounds
            "ratio_ci95": bootstrap_interval(lambda idx, r=ratios: float(np.median(r[idx])), len(ratios), ratio)
            if len(ratios) > 1
            else None,
            "images_per_second_per_round": per_round[key],
            "compile_seconds": compile_seconds.get(key),
            "cuda_math": loops[key].cuda_math,
        }

    def ratio_cell(result):
        low_high = result["ratio_ci95"]
        return f"{result['ratio_vs_diffusers']:.3f}x" + (f" ({low_high[0]:.2f}-{low_high[1]:.2f})" if low_high else "")

    rows = [[names[key], results[key]["images_per_second"], ratio_cell(results[key])] for key in loops]
    print(
        f"\nTraining throughput, preset {args.preset} ({args.resolution}px, {args.channels} channel(s)), batch"
        f" {args.batch_size},"
        f" {args.rounds} interleaved rounds x {args.steps_per_round} steps, device {device}\n"
    )
    print(markdown_table(["loop", "images/s (median)", "ratio vs diffusers (95% interval)"], rows))
    params = sum(p.numel() for p in loops["hfddpm"].engine.unwrapped.parameters())
    path = write_json(
        args.out,
        {
            "args": vars(args),
            "parameters": params,
            "device": str(device),
            "environment": environment(),
            "step_format": {"label": step_format.label, "reason": format_reason},
            **results,
        },
    )
    print(f"\nWrote {path}")


if __name__ == "__main__":
    main(parse_args())
