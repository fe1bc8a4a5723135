"""Generate samples with a pipeline and score them with the metrics of ``registry.METRIC_REGISTRY``."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .digits import reference_images
from .dinov2 import DEFAULT_DINOV2_MODEL, load_dinov2
from .fad import DEFAULT_FAD_MODEL, load_fad_model
from .features import FEATURE_EXTRACTORS
from .inception import MetricUnavailableError, find_inception_weights, inception_problems
from .registry import METRICS, MetricInputs, any_needs, metrics_of
from .sampling import balanced_labels, generate_samples, num_classes, set_scheduler
from .spoken_digits import check_spectrogram_settings
from .uncertainty import DETAILS_KEY

logger = logging.getLogger(__name__)

FID_FALLBACKS = ("none", "digits", "skip")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# How far outside [0, 1] a pixel may stray (round-off of a pipeline's output) before the images are refused.
RANGE_TOLERANCE = 1e-3


def parse_metrics(metrics: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"digits,fid"`` or ``["digits", "fid"]`` -> ``("digits", "fid")``, checked against ``METRICS``."""
    names = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(
            f"Unknown metrics {unknown or metrics!r}; choose a comma-separated subset of {list(METRICS)}."
        )
    return tuple(dict.fromkeys(names))


def load_reference(
    reference: str | os.PathLike, resolution: int, channels: int, *, name: str = "reference"
) -> torch.Tensor:
    """Real images for FID / KID / FD-DINOv2 as ``[N, channels, resolution, resolution]`` floats in [0, 1].

    ``reference`` is ``"mnist_5k"`` (its 1000 held-out digits) or a folder of images (resized to ``resolution``);
    errors call it ``name`` (the caller's flag, e.g. ``"--heldout-dir"``).
    """
    if str(reference) == "mnist_5k":
        images, _ = reference_images("mnist_5k", "heldout", resolution)
        return images.expand(-1, channels, -1, -1) if channels != 1 else images
    folder = Path(reference)
    if not folder.is_dir():
        raise FileNotFoundError(f"{name} {str(reference)!r} is neither 'mnist_5k' nor a folder of images.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if len(files) < 2:
        raise ValueError(f"{name} folder {folder} holds {len(files)} images with {IMAGE_EXTENSIONS}; need >= 2.")
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for path in files:
        with Image.open(path) as image:
            image = image.convert(mode).resize((resolution, resolution), Image.Resampling.BICUBIC)
            arrays.append(np.asarray(image, dtype=np.float32).reshape(resolution, resolution, channels) / 255.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def check_metrics_available(
    metrics,
    *,
    fid_fallback: str = "none",
    inception_weights=None,
    dinov2_model=DEFAULT_DINOV2_MODEL,
    fad_model=DEFAULT_FAD_MODEL,
    feature_extractor: str = "digits",
) -> list[str]:
    """Fail before any sampling when a requested metric cannot run; returns notes about fallbacks taken.

    Checks the networks the ``metrics`` choices need, the memorisation check's ``feature_extractor`` (when
    ``memorization`` is asked for) and that ``fid_fallback="skip"`` leaves something to compute.
    """
    if fid_fallback not in FID_FALLBACKS:
        raise ValueError(f"fid_fallback={fid_fallback!r} is not supported; choose one of {FID_FALLBACKS}.")
    notes = []
    metrics = parse_metrics(metrics)
    chosen = metrics_of(metrics)
    needs = {need for metric in chosen for need in metric.needs}
    if "inception" in needs:
        try:
            find_inception_weights(inception_weights)
        except MetricUnavailableError as err:
            if fid_fallback == "none":
                raise
            skipped = list(dict.fromkeys(m.choice for m in chosen if "inception" in m.needs))
            if fid_fallback == "skip" and not set(metrics) - set(skipped):
                raise ValueError(
                    f"nothing left to compute: --fid-fallback skip leaves out {skipped}, every metric asked for."
                    f" {err.reason} Options: provide them, use --fid-fallback digits, or add other --metrics."
                ) from None
            notes.append(f"{err} -> fid_fallback={fid_fallback!r}")
    if "dinov2" in needs:
        load_dinov2(dinov2_model)
    if "fad" in needs:
        load_fad_model(fad_model)
    if "train" in needs:
        _check_feature_extractor(feature_extractor, inception_weights, dinov2_model)
    return notes


def _check_feature_extractor(feature_extractor: str, inception_weights, dinov2_model) -> None:
    """The memorisation check's feature space: a known name whose network is available offline."""
    if feature_extractor not in FEATURE_EXTRACTORS:
        raise ValueError(f"--feature-extractor {feature_extractor!r} is unknown; choose one of {FEATURE_EXTRACTORS}.")
    others = f"or rerun with another --feature-extractor of {FEATURE_EXTRACTORS} (digits needs no download)."
    if feature_extractor == "inception":
        _, problems = inception_problems(inception_weights)
        if problems:
            raise MetricUnavailableError(
                "--feature-extractor inception (the memorization check's feature space) is unavailable: "
                + "; ".join(problems)
                + ". Nothing is downloaded.",
                f"provide them, {others}",
            )
    elif feature_extractor == "dinov2":
        try:
            load_dinov2(dinov2_model)
        except MetricUnavailableError as err:
            raise MetricUnavailableError(
                f"--feature-extractor dinov2 (the memorization check's feature space): {err.reason}",
                f"pass a local folder with --dinov2-model PATH, {others}",
            ) from None


def check_images(images: torch.Tensor, name: str = "samples") -> None:
    """``ValueError`` unless ``images`` hold finite values in [0, 1], the range every metric reads.

    Example:
        >>> check_images(torch.rand(4, 1, 8, 8))
        >>> check_images(torch.full((4, 1, 8, 8), float("nan")))
        Traceback (most recent call last):
        ...
        ValueError: 4 of the 4 samples hold NaN or inf values: the model diverged ...
    """
    finite = torch.isfinite(images.reshape(len(images), -1)).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(
            f"{int((~finite).sum())} of the {len(images)} {name} hold NaN or inf values: the model diverged (evaluate"
            " an earlier checkpoint, or retrain with a lower learning rate) or the sampler is unstable at these"
            " settings (try another scheduler or more inference steps); no metric can score them."
        )
    low, high = float(images.min()), float(images.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"The metrics score {name} as floats in [0, 1]; got values in [{low:.4g}, {high:.4g}]. Convert [-1, 1]"
            " images with (x + 1) / 2 and 0..255 ones with x / 255 (pipelines give [0, 1] with output_type='pt')."
        )


def _check_grey_pipeline(pipe, chosen) -> None:
    """``ValueError`` when a metric of grey images is asked of a pipeline that makes colour ones."""
    channels = pipe._image_shape()[0]
    grey = [m.choice for m in chosen if "grey" in m.needs]
    if grey and channels != 1:
        raise ValueError(
            f"The {', '.join(dict.fromkeys(grey))} metrics score grey (1-channel) images; this pipeline makes"
            f" {channels}-channel images. For colour images use fid, kid or dinov2."
        )


def _check_training_images(chosen, train_images) -> None:
    if any_needs(chosen, "train") and train_images is None:
        raise ValueError(
            "The memorization metric needs the training images (train_images=...; `hfddpm evaluate` reads them from"
            " the run's training_config.json, or from --train-data-dir / --dataset-name)."
        )


def _check_real_clips(chosen, reference_audios) -> None:
    if any_needs(chosen, "audio") and reference_audios is None:
        raise ValueError(
            "The fad metric needs real clips (reference_audios=..., at the samples' sample rate; `hfddpm evaluate`"
            " reads them from --reference-audio or from the training source in PIPELINE/training_config.json)."
        )


def _check_audio_pipeline(pipe, chosen) -> None:
    """``ValueError`` when a metric of audio (spectrograms, sound) is asked of an image pipeline."""
    audio = {"spectrogram": "spectrograms", "audio": "sound"}
    asked = {m.choice: audio[n] for m in chosen for n in m.needs if n in audio}
    if asked and not hasattr(pipe, "mel"):
        image_metrics = [m.choice for m in metrics_of(METRICS) if not set(m.needs) & set(audio)]
        raise ValueError(
            f"The {', '.join(asked)} metrics score an audio pipeline's {' and '.join(dict.fromkeys(asked.values()))};"
            f" this pipeline makes images. Metrics for image models: {list(dict.fromkeys(image_metrics))}."
        )


def compute_metrics(
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    metrics=("digits",),
    reference: str | os.PathLike = "mnist_5k",
    fid_fallback: str = "none",
    inception_weights=None,
    dinov2_model: str | os.PathLike = DEFAULT_DINOV2_MODEL,
    cache_dir=None,
    seed: int = 0,
    train_images: torch.Tensor | None = None,
    heldout_images: torch.Tensor | None = None,
    feature_extractor: str = "digits",
    output_dir: str | os.PathLike | None = None,
    audios: np.ndarray | None = None,
    sample_rate: int | None = None,
    reference_audios: np.ndarray | None = None,
    reference_audio_name: str = "reference clips",
    fad_model: str | os.PathLike = DEFAULT_FAD_MODEL,
    log_notes: bool = True,
) -> dict:
    """Score ``images`` (float ``[N, C, H, W]`` in [0, 1]) with the ``metrics`` choices (see ``METRIC_REGISTRY``);
    images with NaN / inf or outside [0, 1] are refused (``check_images``), whatever the metric.

    - ``digits``: ``digit_metrics`` (grey images only; ``label_accuracy`` when ``labels`` are given).
    - ``fid`` / ``kid``: torchmetrics with Inception-v3 against ``reference``. When Inception is unavailable:
      ``fid_fallback="none"`` raises ``MetricUnavailableError`` naming what is missing, ``"digits"`` computes them
      on the digit classifier's features (keys ``fid_digits``, ``kid_digits``), ``"skip"`` leaves them out.
    - ``dinov2``: ``fd_dinov2`` against ``reference`` (transformers and local weights).

    - ``pr_digits`` / ``pr`` / ``pr_dinov2``: precision and recall (``precision_recall``) against ``reference`` on
      digit-classifier / Inception-v3 / DINOv2 features.
    - ``memorization``: ``memorization.memorization_check`` against ``train_images`` (threshold from
      ``heldout_images``, else leave-one-out) in pixels and ``feature_extractor`` features; the picture of the
      closest pairs goes to ``output_dir`` when given.
    - ``fad``: ``fad.fad_with_details`` of ``audios`` (the samples' sound, ``[N, num_samples]`` at ``sample_rate``)
      against ``reference_audios`` (real clips at ``sample_rate``, called ``reference_audio_name``) on the
      embeddings of ``fad_model`` (transformers and local weights).

    Returns a flat dict of metrics, ``details`` (per metric: its 95% bootstrap interval ``ci95``, ``num_samples``,
    ``feature_extractor`` and ``reference`` fingerprint; see ``uncertainty``) and ``notes`` (a list of strings) when
    a fallback was taken; ``log_notes=False`` leaves logging them to the caller (training says it once, not at each
    evaluation).
    """
    choices = parse_metrics(metrics)
    # 1. the images every metric reads: finite, in [0, 1]
    check_images(images)
    for name, real_images in (("training images", train_images), ("held-out images", heldout_images)):
        if real_images is not None:
            check_images(real_images, name)
    # 2. the networks the metrics need
    notes = check_metrics_available(
        choices,
        fid_fallback=fid_fallback,
        inception_weights=inception_weights,
        dinov2_model=dinov2_model,
        fad_model=fad_model,
        feature_extractor=feature_extractor,
    )
    if notes and fid_fallback == "skip":  # Inception is missing: leave out the choices that need it
        skipped = {m.choice for m in metrics_of(choices) if "inception" in m.needs}
        choices = tuple(c for c in choices if c not in skipped)
    chosen = metrics_of(choices)
    _check_training_images(chosen, train_images)
    _check_real_clips(chosen, reference_audios)
    if any_needs(chosen, "audio") and (audios is None or not sample_rate):
        raise ValueError(
            "The fad metric scores sound: pass audios=... ([N, num_samples]) and their sample_rate (evaluate_pipeline"
            " makes them with an audio pipeline)."
        )
    real = None
    if any_needs(chosen, "reference"):
        real = load_reference(reference, images.shape[-1], images.shape[1])
    inputs = MetricInputs(
        images,
        labels,
        real,
        choices,
        inception_available=not notes,
        inception_weights=inception_weights,
        dinov2_model=dinov2_model,
        cache_dir=cache_dir,
        seed=seed,
        reference_name=str(reference) + (" heldout" if str(reference) == "mnist_5k" else ""),
        train_images=train_images,
        heldout_images=heldout_images,
        feature_extractor=feature_extractor,
        output_dir=output_dir,
        audios=audios,
        sample_rate=sample_rate,
        reference_audios=reference_audios,
        reference_audio_name=reference_audio_name,
        fad_model=fad_model,
    )
    results, info = {}, {}
    for compute in dict.fromkeys(m.compute for m in chosen):  # once each, in registry order
        scores = compute(inputs)
        info.update(scores.pop(DETAILS_KEY, {}))
        results.update(scores)
    if info:
        results[DETAILS_KEY] = info
    if notes:
        for note in notes if log_notes else ():
            logger.warning(note)
        results["notes"] = notes
    return results


def evaluate_pipeline(
    pipe,
    *,
    num_images: int = 1000,
    batch_size: int = 64,
    num_inference_steps: int = 50,
    scheduler: str | None = None,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    seed: int = 0,
    metrics=("digits",),
    reference: str | os.PathLike = "mnist_5k",
    fid_fallback: str = "none",
    inception_weights=None,
    dinov2_model: str | os.PathLike = DEFAULT_DINOV2_MODEL,
    fad_model: str | os.PathLike = DEFAULT_FAD_MODEL,
    cache_dir=None,
    progress: bool = True,
    **metric_inputs,
) -> dict:
    """Sample ``num_images`` images with ``pipe`` and score them with ``compute_metrics``.

    Class-conditional pipelines get balanced labels (``i % num_classes``) and the result has ``label_accuracy``
    when digit metrics are requested. ``scheduler`` swaps the sampler by short name (``sampling.SCHEDULERS``).

    ``metric_inputs`` go to ``compute_metrics`` (``train_images``, ``heldout_images``, ``feature_extractor``,
    ``output_dir`` for the memorisation check; ``reference_audios``, ``reference_audio_name`` for ``fad``, which
    scores the sound an audio pipeline makes of its samples).

    Returns a flat dict: the metrics, then the settings (``num_samples``, ``num_inference_steps``, ``scheduler``,
    ``guidance_scale``, ``eta``, ``seed``, ``batch_size``, ``reference``, ``class_conditional``) and timings.
    """
    metrics = parse_metrics(metrics)
    if num_images < 2:
        raise ValueError(f"num_images={num_images}: the metrics need at least 2 samples (a covariance).")
    check_metrics_available(
        metrics,
        fid_fallback=fid_fallback,
        inception_weights=inception_weights,
        dinov2_model=dinov2_model,
        fad_model=fad_model,
        feature_extractor=metric_inputs.get("feature_extractor", "digits"),
    )
    chosen = metrics_of(metrics)
    _check_audio_pipeline(pipe, chosen)
    if any_needs(chosen, "spectrogram"):
        check_spectrogram_settings(pipe.mel.config)
    # before any sampling
    _check_grey_pipeline(pipe, chosen)
    _check_training_images(chosen, metric_inputs.get("train_images"))
    sound = any_needs(chosen, "audio")
    _check_real_clips(chosen, metric_inputs.get("reference_audios"))
    set_scheduler(pipe, scheduler)
    classes = num_classes(pipe)
    labels = balanced_labels(num_images, classes) if classes else None

    start = time.perf_counter()
    samples = generate_samples(
        pipe,
        num_images,
        batch_size=batch_size,
        num_inference_steps=num_inference_steps,
        class_labels=labels,
        guidance_scale=guidance_scale,
        eta=eta,
        seed=seed,
        progress=progress,
        return_audios=sound,
    )
    images, audios = samples if sound else (samples, None)
    if sound:
        metric_inputs.update(audios=audios, sample_rate=pipe.sample_rate)
    generation_seconds = time.perf_counter() - start
    start = time.perf_counter()
    results = compute_metrics(
        images,
        labels,
        metrics=metrics,
        reference=reference,
        fid_fallback=fid_fallback,
        inception_weights=inception_weights,
        dinov2_model=dinov2_model,
        fad_model=fad_model,
        cache_dir=cache_dir,
        seed=seed,
        **metric_inputs,
    )
    notes = results.pop("notes", None)
    results.update(
        num_samples=num_images,
        num_inference_steps=num_inference_steps,
        scheduler=scheduler or type(pipe.scheduler).__name__,
        guidance_scale=guidance_scale,
        eta=eta,
        seed=seed,
        batch_size=batch_size,
        **({"reference": str(reference)} if any_needs(chosen, "reference") else {}),
        class_conditional=bool(classes),
        **({"reference_audio": metric_inputs.get("reference_audio_name", "reference clips")} if sound else {}),
        generation_seconds=round(generation_seconds, 2),
        metrics_seconds=round(time.perf_counter() - start, 2),
    )
    if notes:
        results["notes"] = notes
    return results
