"""The headline numbers of a `gpu_check.sh run` folder, against the speed issue's targets, as a few lines of text.

    python benchmarks/gpu_summary.py benchmarks/results/gpu

Reads what the folder holds (a missing file is said, not an error): the default run's `default_run.json` and
benchmark 1's `train_throughput_*.json`.
"""

import argparse
import json
from pathlib import Path

# The default run on one H100 before the speed work (the measurement: 1800 steps of 64 in 98 s, 122 s wall).
BEFORE_IMAGES_PER_SECOND = 1382
TARGETS = {
    "default run": f"images/s >= 5x {BEFORE_IMAGES_PER_SECOND} and wall < 60 s",
    "cifar10": "hfddpm >= 1.5x the tutorial's fp16 loop (stretch: 2x)",
}
THROUGHPUT_FILES = ("train_throughput_cifar10", "train_throughput_cifar10_compiled", "train_throughput_mnist")
NOT_ROWS = ("args", "parameters", "device", "environment", "step_format")


def default_run_lines(path: Path) -> list[str]:
    if not path.is_file():
        return [f"default run: no {path.name}"]
    r = json.loads(path.read_text())["results"]
    speedup = r["train_images_per_second"] / BEFORE_IMAGES_PER_SECOND
    return [
        f"default run ({TARGETS['default run']}): {r['train_images_per_second']:.0f} images/s = {speedup:.2f}x"
        f" {BEFORE_IMAGES_PER_SECOND}; command wall {r['command_wall_time_s']:.0f} s (training"
        f" {r['train_wall_time_s']:.0f} s); {r['steps']} steps, {r['mixed_precision']}",
        f"  FD-digits {r['fd_digits']:.2f}, confident share {r['confident_share']:.2f}, label accuracy"
        f" {r['label_accuracy']:.2f} ({r['num_samples']} samples, {r['sampler']})",
    ]


def throughput_lines(path: Path) -> list[str]:
    if not path.is_file():
        return [f"{path.stem}: no {path.name}"]
    data = json.loads(path.read_text())
    args = data["args"]
    target = f" (target: {TARGETS['cifar10']})" if args["preset"] == "cifar10" else ""
    lines = [f"{path.stem}: preset {args['preset']}, batch {args['batch_size']}, {data['device']}{target}"]
    if "step_format" in data:  # the format train.py chose for hfddpm's rows, and why
        lines.append(f"  hfddpm's step format: {data['step_format']['reason']}")
    for key, row in data.items():
        if key in NOT_ROWS:
            continue
        interval = row["ratio_ci95"]
        compiled = row.get("compile_seconds")
        lines.append(
            f"  {key:<40} {row['images_per_second']:>9.1f} images/s {row['ratio_vs_diffusers']:>6.2f}x"
            + (f" ({interval[0]:.2f}-{interval[1]:.2f})" if interval else "")
            + (f", first step (compile) {compiled:.0f} s" if compiled is not None else "")
        )
    return lines


def summary(folder: Path) -> str:
    """The summary of ``folder`` as text.

    Example:
        >>> print(summary(Path("/nonexistent")))
        default run: no default_run.json
        train_throughput_cifar10: no train_throughput_cifar10.json
        train_throughput_cifar10_compiled: no train_throughput_cifar10_compiled.json
        train_throughput_mnist: no train_throughput_mnist.json
    """
    lines = default_run_lines(folder / "default_run.json")
    for name in THROUGHPUT_FILES:
        lines += throughput_lines(folder / f"{name}.json")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the OUT folder of gpu_check.sh run")
    folder = parser.parse_args().folder
    if not folder.is_dir():
        parser.error(f"{folder} is not a folder; pass the OUT folder that `gpu_check.sh run OUT` wrote")
    print(summary(folder))
