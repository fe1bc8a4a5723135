"""How much a metric value moves with the samples drawn: a bootstrap 95% interval from resampling the generated
features, the details every value carries (sample count, feature extractor, reference fingerprint, interval), and the
one rule that says whether two values differ beyond that noise (``hfddpm evaluate --compare``, ``--keep_best``).

The interval is the basic bootstrap (Efron & Tibshirani 1993, ch. 13): the generated set is resampled with
replacement ``num_resamples`` times, the metric recomputed on each resample (a Fréchet distance refits the mean and
covariance), and the deviations ``d = value* - mean(value*)`` give ``[value - q97.5(d), value - q2.5(d)]``. It is an
interval for the metric's expected value at this sample count and reference: what the average over many evaluations
with fresh samples would give. Centring on the resamples' mean removes the shift that resampling itself adds (a
resample repeats images, which biases a Fréchet distance upwards).

Example (the mean of 400 standard normal numbers: about +-1.96 / sqrt(400) = +-0.098):
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal(400)
    >>> lo, hi = bootstrap_interval(lambda idx: x[idx].mean(), len(x), float(x.mean()))
    >>> round(hi - lo, 1)
    0.2
    >>> differs_beyond_noise(10.0, [9.0, 11.0], 12.0, [11.0, 13.0])  # 2 apart, noise sqrt(1 + 1) = 1.41
    (True, 2.0, 1.4142135623730951)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np
import torch

NUM_RESAMPLES = 200
LEVEL = 0.95
# Key of an evaluation result that holds, per metric, its sample count, feature extractor, reference and interval.
DETAILS_KEY = "details"


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    num_samples: int,
    estimate: float,
    *,
    num_resamples: int = NUM_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> list[float]:
    """The basic-bootstrap ``level`` interval ``[low, high]`` of ``estimate``.

    Args:
        statistic: the metric of a resample, given the indices (``[num_samples]`` ints, with repeats) of the
            generated samples it holds.
        num_samples: how many generated samples there are.
        estimate: the metric on all of them (the reported value).
        num_resamples, seed: resamples drawn with ``numpy.random.default_rng(seed)``.
        bounds: the metric's range; the interval is clipped to it (a share stays in [0, 1]).
    """
    if num_samples < 2:
        raise ValueError(f"A bootstrap interval needs at least 2 samples, got {num_samples}.")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, num_samples, num_samples)) for _ in range(num_resamples)])
    deviations = values - values.mean()
    low, high = np.quantile(deviations, [(1 - level) / 2, (1 + level) / 2])
    return [float(np.clip(estimate - high, *bounds)), float(np.clip(estimate - low, *bounds))]


def fingerprint(images: torch.Tensor) -> dict:
    """``{"count", "sha256"}`` of a set of images (float ``[N, C, H, W]`` in [0, 1]): the sha256 of their 8-bit
    pixels and shape (first 16 hex digits), so two results computed against the same reference are recognised.

    Example:
        >>> fingerprint(torch.zeros(3, 1, 2, 2))
        {'count': 3, 'sha256': 'a73bffb3b851dec7'}
    """
    pixels = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    digest = hashlib.sha256(str(tuple(pixels.shape)).encode() + pixels.numpy().tobytes()).hexdigest()
    return {"count": int(pixels.shape[0]), "sha256": digest[:16]}


def audio_fingerprint(clips, sample_rate: int) -> dict:
    """``{"count", "sha256", "sample_rate"}`` of a set of mono clips (float, [-1, 1]): the sha256 of their 16-bit
    samples, lengths and sample rate (first 16 hex digits), the audio counterpart of ``fingerprint``.

    Example:
        >>> audio_fingerprint(np.zeros((2, 4)), 16000)
        {'count': 2, 'sha256': '89abeef8d0b8fdf9', 'sample_rate': 16000}
    """
    digest = hashlib.sha256(str(int(sample_rate)).encode())
    for clip in clips:
        samples = (np.clip(np.asarray(clip, dtype=np.float64).reshape(-1), -1, 1) * 32767).round().astype("<i2")
        digest.update(str(samples.shape[0]).encode() + samples.tobytes())
    return {"count": len(clips), "sha256": digest.hexdigest()[:16], "sample_rate": int(sample_rate)}


def details(
    interval: list[float], num_samples: int, feature_extractor: str, reference: dict | None, seed: int = 0
) -> dict:
    """What one metric value carries: its ``ci95``, ``num_samples``, ``feature_extractor``, ``reference``
    (``fingerprint`` plus a ``name``) and how the interval was made."""
    return {
        "ci95": [round(v, 6) for v in interval],
        "num_samples": int(num_samples),
        "feature_extractor": feature_extractor,
        "reference": reference,
        "interval": f"basic bootstrap, {NUM_RESAMPLES} resamples of the generated samples, seed {seed}",
    }


def differs_beyond_noise(a: float, ci_a, b: float, ci_b) -> tuple[bool, float, float]:
    """Whether ``b`` differs from ``a`` beyond the noise of both: ``|b - a| > sqrt(u_a**2 + u_b**2)``, where
    ``u_a`` and ``u_b`` are the half-widths of the two 95% intervals on the sides that face each other (the
    95% interval of a difference of two independent estimates). Returns ``(differs, b - a, noise)``."""
    diff = b - a
    if diff >= 0:
        u_a, u_b = ci_a[1] - a, b - ci_b[0]
    else:
        u_a, u_b = a - ci_a[0], ci_b[1] - b
    noise = math.hypot(u_a, u_b)
    return abs(diff) > noise, diff, noise


def improves(new: float, ci_new, best: float, ci_best, higher_is_better: bool) -> bool:
    """Whether ``new`` is better than ``best`` by more than the noise (``differs_beyond_noise``); without an interval
    for either value (``None``), any strict improvement counts.

    Example:
        >>> improves(9.0, [8.0, 10.0], 10.0, [9.0, 11.0], higher_is_better=False)  # 1 better, noise 1.41
        False
        >>> improves(7.0, [6.0, 8.0], 10.0, [9.0, 11.0], higher_is_better=False)
        True
    """
    better = new > best if higher_is_better else new < best
    if ci_new is None or ci_best is None:
        return better
    return better and differs_beyond_noise(best, ci_best, new, ci_new)[0]
