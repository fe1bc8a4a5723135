"""Evaluation of hfddpm pipelines: offline digit metrics, FID / KID (torchmetrics), FD-DINOv2, precision / recall, a
memorisation check, spoken-digit metrics and FAD for audio, bootstrap intervals and comparisons, sampling helpers.

Every metric is described once, in ``METRIC_REGISTRY`` (``registry.py``); the model card and the Hub upload
(``hfddpm.hub``) read it. This package does not use ``hfddpm.hub``: its old name ``update_model_card`` only resolves
to ``hfddpm.hub.update_model_card`` on first use.

Example:
    >>> from hfddpm.evaluation import digit_metrics, load_mnist_5k
    >>> images, labels = load_mnist_5k("heldout")
    >>> metrics = digit_metrics(images, labels)                         # doctest: +SKIP
    >>> sorted(metrics)                                                 # doctest: +SKIP
    ['class_histogram', 'classes_covered', 'confident_share', 'fd_digits', 'label_accuracy', 'num_images']
"""

from .compare import compare_results, read_results
from .digits import (
    DigitClassifier,
    DigitFeatureExtractor,
    classify_digits,
    default_cache_dir,
    digit_classifier_info,
    digit_metrics,
    digit_reference_statistics,
    load_digit_classifier,
    load_mnist_5k,
)
from .dinov2 import DEFAULT_DINOV2_MODEL, dinov2_features, fd_dinov2, load_dinov2
from .evaluate import (
    FID_FALLBACKS,
    check_metrics_available,
    compute_metrics,
    evaluate_pipeline,
    load_reference,
    parse_metrics,
)
from .fad import DEFAULT_FAD_MODEL, AudioEmbedding, load_fad_model
from .features import FEATURE_EXTRACTORS, extract_features
from .frechet import FrechetToReference, feature_statistics, frechet_distance
from .inception import InceptionFeatures, MetricUnavailableError, fid_kid, find_inception_weights
from .memorization import memorization_check, training_images
from .precision_recall import precision_recall
from .registry import EVAL_SETTINGS, METRIC_REGISTRY, METRICS, Metric, MetricInputs, card_metrics
from .sampling import SCHEDULERS, balanced_labels, generate_samples, grid_shape, make_scheduler, set_scheduler
from .spoken_digits import (
    SPOKEN_DIGIT_MEL,
    SpokenDigitClassifier,
    load_spoken_digit_classifier,
    spoken_digit_classifier_info,
    spoken_digit_metrics,
)
from .uncertainty import bootstrap_interval, differs_beyond_noise, fingerprint

__all__ = [
    "DEFAULT_DINOV2_MODEL",
    "DEFAULT_FAD_MODEL",
    "EVAL_SETTINGS",
    "FEATURE_EXTRACTORS",
    "FID_FALLBACKS",
    "METRICS",
    "METRIC_REGISTRY",
    "SCHEDULERS",
    "SPOKEN_DIGIT_MEL",
    "SpokenDigitClassifier",
    "AudioEmbedding",
    "DigitClassifier",
    "DigitFeatureExtractor",
    "FrechetToReference",
    "InceptionFeatures",
    "Metric",
    "MetricInputs",
    "MetricUnavailableError",
    "balanced_labels",
    "bootstrap_interval",
    "card_metrics",
    "check_metrics_available",
    "classify_digits",
    "compare_results",
    "compute_metrics",
    "default_cache_dir",
    "digit_classifier_info",
    "digit_metrics",
    "differs_beyond_noise",
    "load_spoken_digit_classifier",
    "spoken_digit_classifier_info",
    "spoken_digit_metrics",
    "digit_reference_statistics",
    "dinov2_features",
    "evaluate_pipeline",
    "extract_features",
    "fd_dinov2",
    "feature_statistics",
    "fid_kid",
    "find_inception_weights",
    "fingerprint",
    "frechet_distance",
    "generate_samples",
    "grid_shape",
    "load_digit_classifier",
    "load_dinov2",
    "load_fad_model",
    "load_mnist_5k",
    "load_reference",
    "make_scheduler",
    "memorization_check",
    "parse_metrics",
    "precision_recall",
    "read_results",
    "set_scheduler",
    "training_images",
]


def __getattr__(name: str):
    # update_model_card writes a model card: it lives in hfddpm.hub (which imports this package, not the reverse)
    if name == "update_model_card":
        from hfddpm.hub import update_model_card

        return update_model_card
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
