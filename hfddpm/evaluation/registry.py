"""The metrics hfddpm reports, in one registry: name, label, which way is better, what each needs, how it is computed.

``hfddpm evaluate`` (``compute_metrics``), its ``--metrics`` choices and help, the model card (labels, directions,
model-index) and the push commit message all read ``METRIC_REGISTRY``. Adding a metric is one ``Metric`` entry here
and the function that computes it.

Example:
    >>> from hfddpm.evaluation import METRIC_REGISTRY, METRICS
    >>> METRICS  # the --metrics choices, in registry order
    ('digits', 'fid', 'kid', 'dinov2', 'pr_digits', 'pr', 'pr_dinov2', 'memorization', 'spoken_digits', 'fad')
    >>> METRIC_REGISTRY["fd_digits"].direction
    'lower is better'
    >>> [m.name for m in METRIC_REGISTRY.values() if m.choice == "kid"]
    ['kid', 'kid_std', 'kid_digits', 'kid_digits_std']
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .digits import DigitFeatureExtractor, digit_metrics
from .dinov2 import DEFAULT_DINOV2_MODEL, fd_dinov2_with_details, load_dinov2
from .fad import DEFAULT_FAD_MODEL, fad_with_details, load_fad_model
from .features import extract_features
from .inception import fid_kid
from .memorization import PAIRS_FILE, memorization_check, pairs_picture
from .precision_recall import NEAREST_NEIGHBOURS, precision_recall
from .spoken_digits import spoken_digit_metrics
from .uncertainty import DETAILS_KEY, details, fingerprint

# Keys of an evaluation result that say how the metrics were computed: shown under the card's table, never scores.
# The scheduler and the batch size belong here: both change the samples a seed gives.
EVAL_SETTINGS = (
    "num_samples",
    "num_images",
    "num_inference_steps",
    "scheduler",
    "guidance_scale",
    "eta",
    "seed",
    "batch_size",
    "step",
)


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
    reference_name: str = "mnist_5k heldout"  # what the details call the reference set
    train_images: torch.Tensor | None = None  # the training images, loaded when a chosen metric needs "train"
    heldout_images: torch.Tensor | None = None  # real images not trained on, for the memorisation threshold
    feature_extractor: str = "digits"  # the feature space of the memorisation check
    output_dir: str | os.PathLike | None = None  # where a metric writes its picture (memorization_pairs.png)
    audios: np.ndarray | None = None  # the sound of the samples, [N, num_samples] at sample_rate (audio pipelines)
    sample_rate: int | None = None
    reference_audios: np.ndarray | None = None  # real clips at sample_rate, when a chosen metric needs "audio"
    reference_audio_name: str = "reference clips"  # what the details call them
    fad_model: str | os.PathLike = DEFAULT_FAD_MODEL


def digit_scores(inputs: MetricInputs) -> dict:
    """``digit_metrics`` against MNIST-5k's held-out digits (``label_accuracy`` when the samples have labels)."""
    scores = digit_metrics(
        inputs.images, inputs.labels, reference="mnist_5k", cache_dir=inputs.cache_dir, seed=inputs.seed
    )
    scores.pop("num_images")
    return scores


def inception_scores(inputs: MetricInputs) -> dict:
    """FID and/or KID (torchmetrics) against the reference on Inception-v3 features, or, when Inception is
    unavailable (``fid_fallback="digits"``), on the digit classifier's features as ``fid_digits`` / ``kid_digits``."""
    wanted = tuple(choice for choice in ("fid", "kid") if choice in inputs.choices)
    settings = {"metrics": wanted, "seed": inputs.seed, "reference_name": inputs.reference_name}
    if inputs.inception_available:
        return fid_kid(inputs.images, inputs.reference, inception_weights=inputs.inception_weights, **settings)
    scores = fid_kid(inputs.images, inputs.reference, feature=DigitFeatureExtractor(), **settings)

    def renamed(name: str) -> str:
        return name.replace("fid", "fid_digits").replace("kid", "kid_digits")

    scores[DETAILS_KEY] = {renamed(k): v for k, v in scores[DETAILS_KEY].items()}
    return {renamed(name) if name != DETAILS_KEY else name: v for name, v in scores.items()}


def spoken_digit_scores(inputs: MetricInputs) -> dict:
    """``spoken_digit_metrics`` of generated spectrograms (``spoken_digit_accuracy`` when they have labels)."""
    scores = spoken_digit_metrics(inputs.images, inputs.labels, seed=inputs.seed)
    scores.pop("num_images")
    return scores


def dinov2_scores(inputs: MetricInputs) -> dict:
    """``fd_dinov2`` against the reference."""
    model = load_dinov2(inputs.dinov2_model)
    value, info = fd_dinov2_with_details(
        inputs.images, inputs.reference, model, seed=inputs.seed, reference_name=inputs.reference_name
    )
    return {"fd_dinov2": value, DETAILS_KEY: {"fd_dinov2": info}}


def fad_scores(inputs: MetricInputs) -> dict:
    """``fad`` of the samples' sound against the real clips."""
    embedding = load_fad_model(inputs.fad_model)
    value, info = fad_with_details(
        inputs.audios,
        inputs.reference_audios,
        inputs.sample_rate,
        embedding,
        seed=inputs.seed,
        reference_name=inputs.reference_audio_name,
    )
    return {"fad": value, DETAILS_KEY: {"fad": info}}


# --metrics choice of precision / recall -> (feature extractor, suffix of the metric names)
PRECISION_RECALL_CHOICES = {
    "pr_digits": ("digits", "_digits"),
    "pr": ("inception", ""),
    "pr_dinov2": ("dinov2", "_dinov2"),
}


def precision_recall_scores(inputs: MetricInputs) -> dict:
    """Precision and recall (k-NN manifolds, k = ``NEAREST_NEIGHBOURS``) against the reference, on the features of
    each chosen extractor (``pr`` falls back to digit features when Inception is unavailable, as FID does)."""
    scores, info = {}, {}
    reference = {"name": inputs.reference_name, **fingerprint(inputs.reference)}
    for choice, (extractor, suffix) in PRECISION_RECALL_CHOICES.items():
        if choice not in inputs.choices:
            continue
        if extractor == "inception" and not inputs.inception_available:
            extractor, suffix = "digits", "_digits"
        options = {"inception_weights": inputs.inception_weights, "dinov2_model": inputs.dinov2_model}
        fake, name = extract_features(extractor, inputs.images, **options)
        real, _ = extract_features(extractor, inputs.reference, **options)
        precision, recall, intervals = precision_recall(fake, real, seed=inputs.seed)
        for key, value in (("precision", precision), ("recall", recall)):
            scores[key + suffix] = value
            info[key + suffix] = {
                **details(intervals[key], len(fake), name, reference, inputs.seed),
                "k": NEAREST_NEIGHBOURS,
            }
    return {**scores, DETAILS_KEY: info}


def memorization_scores(inputs: MetricInputs) -> dict:
    """``memorization_check`` of the samples against the training images; writes ``memorization_pairs.png`` into
    ``inputs.output_dir`` (its name goes to the details of ``memorization_share``)."""
    options = {"inception_weights": inputs.inception_weights, "dinov2_model": inputs.dinov2_model}
    scores = memorization_check(
        inputs.images,
        inputs.train_images,
        heldout=inputs.heldout_images,
        extractor=inputs.feature_extractor,
        seed=inputs.seed,
        extractor_options=options,
    )
    if inputs.output_dir is not None:
        info = scores[DETAILS_KEY]["memorization_share"]
        path = Path(inputs.output_dir) / PAIRS_FILE
        pairs_picture(inputs.images, inputs.train_images, scores["memorization_pairs"], path, info["threshold_pixels"])
        info["picture"] = PAIRS_FILE
    return scores


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
            model), ``"reference"`` (real images), ``"inception"`` / ``"dinov2"`` / ``"fad"`` (a network available
            offline), ``"train"`` (the training images), ``"spectrogram"`` (an audio pipeline's spectrograms),
            ``"audio"`` (an audio pipeline's sound and real clips).
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
        *(
            Metric(
                f"{kind}{suffix}",
                f"{kind.capitalize()} (k-NN manifolds, {label} features)",
                True,
                choice,
                needs,
                precision_recall_scores,
            )
            for choice, suffix, label, needs in (
                ("pr_digits", "_digits", "digit-classifier", ("reference",)),
                ("pr", "", "Inception-v3", ("reference", "inception")),
                ("pr_dinov2", "_dinov2", "DINOv2", ("reference", "dinov2")),
            )
            for kind in ("precision", "recall")
        ),
        Metric(
            "memorization_share",
            "Share of samples closer to a training image than held-out real images are (pixels and features)",
            False,
            "memorization",
            ("train",),
            memorization_scores,
        ),
        Metric(
            "memorization_share_pixels",
            "Share of samples that close to a training image in pixels",
            False,
            "memorization",
            ("train",),
            memorization_scores,
        ),
        Metric(
            "memorization_share_features",
            "Share of samples that close to a training image in features",
            False,
            "memorization",
            ("train",),
            memorization_scores,
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
        Metric(
            "fad",
            "Fréchet Audio Distance (CLAP or AST embeddings of the sound)",
            False,
            "fad",
            ("audio", "fad"),
            fad_scores,
        ),
        Metric("inception_score", "Inception score", True),
    )
}
# The --metrics choices, in registry order.
METRICS = tuple(dict.fromkeys(m.choice for m in METRIC_REGISTRY.values() if m.choice is not None))


def metrics_of(choices) -> list[Metric]:
    """The registered metrics that the ``--metrics`` ``choices`` compute, in registry order."""
    return [m for m in METRIC_REGISTRY.values() if m.choice in choices]


def any_needs(metrics: list[Metric], what: str) -> bool:
    """Whether any of ``metrics`` needs ``what`` (one of :class:`Metric`'s ``needs``), e.g. ``"reference"``.

    Example:
        >>> any_needs(metrics_of(["digits"]), "reference"), any_needs(metrics_of(["pr_digits"]), "reference")
        (False, True)
    """
    return any(what in m.needs for m in metrics)


def card_metrics(results: dict) -> dict:
    """The part of an evaluation result that goes to a model card: the registered metrics, then the settings."""
    return {k: results[k] for k in (*METRIC_REGISTRY, DETAILS_KEY, *EVAL_SETTINGS) if k in results}
