"""Evaluation during training: every ``eval_steps`` the EMA weights are sampled with a fixed seed and fixed labels
(so the points of a run are comparable), scored with ``hfddpm.evaluation``, logged, and drawn as ``eval_curve.png``.

With several processes each generates its share of the images; process 0 gathers them and computes the metrics.

Example:
    >>> from hfddpm.training.periodic_eval import share
    >>> share(10, rank=1, world_size=4)
    [1, 5, 9]
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hfddpm.evaluation import compute_metrics
from hfddpm.evaluation.sampling import balanced_labels, batch_seed, generate_samples

EVAL_HISTORY_FILE = "eval_history.json"
EVAL_CURVE_FILE = "eval_curve.png"
# Metric values plotted in the curve, when present (lower or higher is better as the metric says).
CURVE_KEYS = ("fd_digits", "fid", "fid_digits", "fd_dinov2", "label_accuracy", "confident_share")


def share(num_images: int, *, rank: int, world_size: int) -> list[int]:
    """The indices of the evaluation images that process ``rank`` of ``world_size`` generates."""
    return list(range(rank, num_images, world_size))


@torch.no_grad()
def evaluate_ema(engine, accelerator, config, *, num_classes: int, step: int) -> dict | None:
    """Sample ``config.eval_num_images`` images from ``engine``'s EMA weights (DPM-Solver++,
    ``config.eval_inference_steps``, guidance 1, balanced labels, seeds fixed per image index) and score them with
    ``config.eval_metrics`` on process 0; returns the metrics there, with ``sampling_seconds`` (process 0's share)
    and ``metrics_seconds`` (``None`` on the other processes)."""
    rank, world_size = accelerator.process_index, accelerator.num_processes
    n = config.eval_num_images
    labels = balanced_labels(n, num_classes) if num_classes else None
    mine = share(n, rank=rank, world_size=world_size)
    start = time.perf_counter()
    pipe = engine.pipeline(sampler="dpmsolver++")
    images = generate_samples(
        pipe,
        len(mine),
        batch_size=config.eval_batch_size,
        num_inference_steps=config.eval_inference_steps,
        class_labels=None if labels is None else labels[mine],
        # the same images whatever the number of processes; runs with neighbouring seeds share none
        image_seeds=[batch_seed(config.seed, i) for i in mine],
        progress=False,
    )
    sampling_seconds = time.perf_counter() - start
    index = torch.tensor(mine, device=accelerator.device)
    all_images = accelerator.gather(images.to(accelerator.device))
    all_index = accelerator.gather(index)
    if not accelerator.is_main_process:
        return None
    order = torch.argsort(all_index)
    all_images = all_images[order].cpu()
    start = time.perf_counter()
    # the fallbacks taken (FID/KID on digit features without Inception-v3) were said once, before training
    results = compute_metrics(
        all_images, labels, metrics=config.eval_metrics, fid_fallback="digits", seed=config.seed, log_notes=False
    )
    results.pop("notes", None)
    timing = {"sampling_seconds": sampling_seconds, "metrics_seconds": time.perf_counter() - start}
    return {"step": step, "num_images": n, **results, **timing}


@dataclass(frozen=True)
class SamplingCost:
    """What sampling costs here: ``per_call`` seconds for each pipeline call (setting up the scheduler, drawing the
    noise, converting the images), plus ``per_image_step`` for each image and UNet evaluation.

    Example (a grid: one call of 80 images, 20 steps, guided: the UNet twice per step):
        >>> round(SamplingCost(per_call=0.05, per_image_step=0.004).seconds(image_steps=80 * 20 * 2, calls=1), 6)
        12.85
    """

    per_call: float
    per_image_step: float

    def seconds(self, *, image_steps: int, calls: int) -> float:
        return calls * self.per_call + image_steps * self.per_image_step


@torch.no_grad()
def sampling_cost(engine, config, *, num_classes: int, clock: Callable[[], float] = time.perf_counter) -> SamplingCost:
    """Time ``engine``'s EMA weights sampling a batch of ``config.eval_batch_size`` images with DPM-Solver++ in 1 and
    in 3 steps, twice each after a first call (its one-off costs), and keep the faster of each pair: the difference is
    the cost of 2 steps, the rest of the 1-step call the cost of a call. Larger batches sample faster per image, so
    estimates for a grid err on the safe side; a time budget uses them for the evaluations and grids until those are
    measured.

    Example:
        >>> from accelerate import Accelerator
        >>> from hfddpm import build_unet
        >>> from hfddpm.training import TrainConfig, TrainingEngine, build_scheduler
        >>> config = TrainConfig(preset="tiny", mixed_precision="no", eval_batch_size=4).validate()
        >>> unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
        >>> engine = TrainingEngine(config, unet, build_scheduler(config), Accelerator(cpu=True), max_train_steps=1)
        >>> cost = sampling_cost(engine, config, num_classes=0)
        >>> cost.per_call >= 0 and cost.per_image_step > 0
        True
    """
    n = config.eval_batch_size
    labels = balanced_labels(n, num_classes) if num_classes else None
    pipe = engine.pipeline(sampler="dpmsolver++")
    took = {1: [], 3: []}
    for steps in (1, 1, 3, 1, 3):  # the first call is not timed; the fastest of two calls counts (a busy moment)
        start = clock()
        generate_samples(pipe, n, batch_size=n, num_inference_steps=steps, class_labels=labels, progress=False)
        took[steps].append(clock() - start)
    one, three = min(took[1][1:]), min(took[3])
    per_step = (three - one) / 2
    if per_step <= 0 or per_step > one:  # timing noise: charge each call as steps only (the safe side)
        return SamplingCost(per_call=0.0, per_image_step=max(one, three / 3) / n)
    return SamplingCost(per_call=one - per_step, per_image_step=per_step / n)


def evaluation_seconds(cost: SamplingCost, config, *, rank: int, world_size: int) -> float:
    """The estimated seconds of process ``rank``'s share of one :func:`evaluate_ema`: its calls of
    ``config.eval_batch_size`` images, ``config.eval_inference_steps`` each.

    Example (200 images on 2 processes: 100 each, in 7 calls of at most 16, 20 steps: 7 * 0.01 + 2000 * 0.001 s):
        >>> from types import SimpleNamespace
        >>> config = SimpleNamespace(eval_num_images=200, eval_inference_steps=20, eval_batch_size=16)
        >>> round(evaluation_seconds(SamplingCost(0.01, 0.001), config, rank=0, world_size=2), 6)
        2.07
    """
    mine = len(share(config.eval_num_images, rank=rank, world_size=world_size))
    calls = -(-mine // config.eval_batch_size)
    return cost.seconds(image_steps=mine * config.eval_inference_steps, calls=calls)


def best_so_far(history: list[dict], metric: str) -> tuple[dict, int]:
    """The best evaluation point of ``metric`` so far, and how many evaluations came after it.

    The points are taken in order and a point replaces the best one only when it is better by more than the noise of
    both (``hfddpm.evaluation.uncertainty.improves``: the difference exceeds ``sqrt(u_new**2 + u_best**2)``, the
    half-widths of their 95% intervals on the facing sides); points without an interval count any strict
    improvement. Which way is better comes from the metric registry.

    Example:
        >>> best_so_far([{"step": 1, "fd_digits": 3.0}, {"step": 2, "fd_digits": 2.0}, {"step": 3, "fd_digits": 2.5}],
        ...             "fd_digits")
        ({'step': 2, 'fd_digits': 2.0}, 1)
        >>> def point(step, fd, low, high):
        ...     return {"step": step, "fd_digits": fd, "details": {"fd_digits": {"ci95": [low, high]}}}
        >>> best, since = best_so_far([point(1, 3.0, 2.8, 3.2), point(2, 2.9, 2.7, 3.1)], "fd_digits")  # in the noise
        >>> best["step"], since
        (1, 1)
    """
    from hfddpm.evaluation.registry import METRIC_REGISTRY
    from hfddpm.evaluation.uncertainty import DETAILS_KEY, improves

    higher = bool(METRIC_REGISTRY[metric].higher_is_better)
    points = [h for h in history if h.get(metric) is not None]
    if not points:
        raise ValueError(f"No evaluation computed {metric!r}; add the metric that gives it to --eval_metrics.")

    def interval(point: dict):
        return (point.get(DETAILS_KEY) or {}).get(metric, {}).get("ci95")

    best_index = 0
    for i, point in enumerate(points[1:], start=1):
        best = points[best_index]
        if improves(point[metric], interval(point), best[metric], interval(best), higher):
            best_index = i
    return points[best_index], len(points) - 1 - best_index


def load_history(output_dir: Path, up_to_step: int | None = None) -> list[dict]:
    """Earlier evaluation points of this run (those at or before ``up_to_step`` when a run resumes)."""
    path = Path(output_dir) / EVAL_HISTORY_FILE
    if not path.is_file():
        return []
    history = json.loads(path.read_text())
    return [h for h in history if up_to_step is None or h["step"] <= up_to_step]


def save_history(output_dir: Path, history: list[dict], images_per_step: int) -> None:
    """``eval_history.json`` and ``eval_curve.png`` (each metric against step, images seen on the top axis)."""
    output_dir = Path(output_dir)
    (output_dir / EVAL_HISTORY_FILE).write_text(json.dumps(history, indent=2, allow_nan=False) + "\n")
    keys = [k for k in CURVE_KEYS if any(k in h for h in history)]
    if not keys:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        points = [(h["step"], h[key], (h.get("details") or {}).get(key, {}).get("ci95")) for h in history if key in h]
        steps, values = [p[0] for p in points], [p[1] for p in points]
        ax.plot(steps, values, marker="o")
        if all(p[2] for p in points):  # the 95% intervals as a band
            ax.fill_between(steps, [p[2][0] for p in points], [p[2][1] for p in points], alpha=0.25, label="95%")
        ax.set_xlabel("training step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        top = ax.secondary_xaxis("top", functions=(lambda s: s * images_per_step, lambda i: i / images_per_step))
        top.set_xlabel("images seen")
    n = history[-1]["num_images"]
    fig.suptitle(f"Evaluation during training\n{n} samples per point; band: bootstrap 95% interval", fontsize=9)
    fig.tight_layout()
    fig.savefig(output_dir / EVAL_CURVE_FILE, dpi=100)
    plt.close(fig)
