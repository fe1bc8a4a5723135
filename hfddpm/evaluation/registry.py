"""The metrics hfddpm reports, in one registry: name, label, which way is better, what each needs, how it is computed.

``hfddpm evaluate`` (``compute_metrics``), its ``--metrics`` choices and help, the model card (labels, directions,
model-index) and the push commit message all read ``METRIC_REGISTRY``. Adding a metric is one ``Metric`` entry here
and the function that computes it.

Example:
    >>> from hfddpm.evaluation import METRIC_REGISTRY, METRICS
    >>> METRICS  # the --metrics choices, in registry order
    ('digits', 'fid', 'kid', 'dinov2', 'spoken_digits')
    >>> METRIC_REGISTRY["fd_digits"].direction
    'lower is better'
    >>> [m.name for m in METRIC_REGISTRY.values() if m.choice == "kid"]
    ['kid', 'kid_std', 'kid_digits', 'kid_digits_std']
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from .digits import DigitFeatureExtractor, digit_metrics
from .dinov2 import DEFAULT_DINOV2_MODEL, fd_dinov2, load_dinov2
from .inception import fid_kid
from .spoken_digits import spoken_digit_metrics

# Keys of an evaluation result that say how the metrics were computed: shown under the card's table, never scores.
EVAL_SETTINGS = ("num_samples", "num_images", "num_inference_steps", "guidance_scale", "eta", "seed", "step")


@dataclass(frozen=True)
class MetricInputs:
    """What a metric's ``compute`` gets from ``compute_metrics``: the samples, the choices and the settings."""

    images: torch.Tensor  # float [N, C, H, W] in [0, 1]
    labels: torch.Tensor | None  # the class each sample was asked to be (class-conditional models)
    reference: torch.Tensor | None  # real images, loaded when a chosen metric needs "reference"
    choices: tuple[str, ...]  # the --metrics choices asked for
    inception_available: bool = True  # False: Inception-v3 is missing and fid_fallback="digits" applies
    inception_weights: str | os.PathLike | None = None
    dinov2_model: str | os.PathLike = DEFAULT_DINOV2_MODEL
    cache_dir: str | os.PathLike | None = None
    seed: int = 0


def digit_scores(inputs: MetricInputs) -> dict:
    """``digit_metrics`` against MNIST-5k's held-out digits (``label_accuracy`` when the samples have labels)."""
    scores = digit_metrics(inputs.images, inputs.labels, reference="mnist_5k", cache_dir=inputs.cache_dir)
    scores.pop("num_images")
    return scores


def inception_scores(inputs: MetricInputs) -> dict:
    """FID and/or KID (torchmetrics) against the reference on Inception-v3 features, or, when Inception is
    unavailable (``fid_fallback="digits"``), on the digit classifier's features as ``fid_digits`` / ``kid_digits``."""
    wanted = tuple(choice for choice in ("fid", "kid") if choice in inputs.choices)
    if inputs.inception_available:
        weights = inputs.inception_weights
        return fid_kid(inputs.images, inputs.reference, metrics=wanted, inception_weights=weights, seed=inputs.seed)
    scores = fid_kid(
        inputs.images, inputs.reference, feature=DigitFeatureExtractor(), metrics=wanted, seed=inputs.seed
    )
    return {name.replace("fid", "fid_digits").replace("kid", "kid_digits"): v for name, v in scores.items()}


def spoken_digit_scores(inputs: MetricInputs) -> dict:
    """``spoken_digit_metrics`` of generated spectrograms (``spoken_digit_accuracy`` when they have labels)."""
    scores = spoken_digit_metrics(inputs.images, inputs.labels)
    scores.pop("num_images")
    return scores


def dinov2_scores(inputs: MetricInputs) -> dict:
    """``fd_dinov2`` against the reference."""
    return {"fd_dinov2": fd_dinov2(inputs.images, inputs.reference, load_dinov2(inputs.dinov2_model))}


@dataclass(frozen=True)
class Metric:
    """One number that hfddpm reports.

    Attributes:
        name: its key in ``hfddpm evaluate``'s results (``metrics.json``) and in the model card's model-index.
        label: what the model card calls it.
        higher_is_better: which way is better; ``None`` for the spread of another metric (``kid_std``), which the
            card shows but leaves out of the model-index and the push commit title.
        choice: the ``--metrics`` choice that computes it; ``None`` when hfddpm does not compute it (the card still
            labels it, e.g. a number from another tool).
        needs: what it needs besides the samples: ``"grey"`` (1-channel images), ``"labels"`` (a class-conditional
            model), ``"reference"`` (real images), ``"inception"`` / ``"dinov2"`` (a network available offline).
        compute: ``compute(inputs: MetricInputs) -> dict``; the metrics one call returns share it and
            ``compute_metrics`` calls it once.
    """

    name: str
    label: str
    higher_is_better: bool | None
    choice: str | None = None
    needs: tuple[str, ...] = ()
    compute: Callable[[MetricInputs], dict] | None = None

    @property
    def direction(self) -> str:
        """``"higher is better"``, ``"lower is better"`` or ``""`` (a spread)."""
        return {True: "higher is better", False: "lower is better", None: ""}[self.higher_is_better]


METRIC_REGISTRY: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("fd_digits", "Fréchet distance of digit-classifier features", False, "digits", ("grey",), digit_scores),
        Metric(
            "confident_share",
            "Share of samples the digit classifier labels confidently",
            True,
            "digits",
            ("grey",),
            digit_scores,
        ),
        Metric("classes_covered", "Digit classes present among the samples", True, "digits", ("grey",), digit_scores),
        Metric(
            "label_accuracy",
            "Digit-classifier accuracy on class-conditional samples",
            True,
            "digits",
            ("grey", "labels"),
            digit_scores,
        ),
        Metric("fid", "FID (Inception-v3 features)", False, "fid", ("reference", "inception"), inception_scores),
        Metric("fid_digits", "FID on digit-classifier features", False, "fid", ("reference",), inception_scores),
        Metric("kid", "KID (Inception-v3 features)", False, "kid", ("reference", "inception"), inception_scores),
        Metric(
            "kid_std", "KID standard deviation over subsets", None, "kid", ("reference", "inception"), inception_scores
        ),
        Metric("kid_digits", "KID on digit-classifier features", False, "kid", ("reference",), inception_scores),
        Metric(
            "kid_digits_std",
            "KID (digit features) standard deviation over subsets",
            None,
            "kid",
            ("reference",),
            inception_scores,
        ),
        Metric(
            "fd_dinov2", "Fréchet distance of DINOv2 features", False, "dinov2", ("reference", "dinov2"), dinov2_scores
        ),
        Metric(
            "fd_spoken_digits",
            "Fréchet distance of spoken-digit-classifier features (spectrograms)",
            False,
            "spoken_digits",
            ("spectrogram",),
            spoken_digit_scores,
        ),
        Metric(
            "spoken_classes_covered",
            "Spoken digits the classifier hears among the samples",
            True,
            "spoken_digits",
            ("spectrogram",),
            spoken_digit_scores,
        ),
        Metric(
            "spoken_digit_accuracy",
            "Spoken-digit-classifier accuracy on class-conditional samples",
            True,
            "spoken_digits",
            ("spectrogram", "labels"),
            spoken_digit_scores,
        ),
        Metric("inception_score", "Inception score", True),
    )
}
# The --metrics choices, in registry order.
METRICS = tuple(dict.fromkeys(m.choice for m in METRIC_REGISTRY.values() if m.choice is not None))


def metrics_of(choices) -> list[Metric]:
    """The registered metrics that the ``--metrics`` ``choices`` compute, in registry order."""
    return [m for m in METRIC_REGISTRY.values() if m.choice in choices]


def card_metrics(results: dict) -> dict:
    """The part of an evaluation result that goes to a model card: the registered metrics, then the settings."""
    return {k: results[k] for k in (*METRIC_REGISTRY, *EVAL_SETTINGS) if k in results}
