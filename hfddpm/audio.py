# Copyright 2026 The hfddpm authors. Apache-2.0.
"""Audio datasets for spectrogram diffusion: clips decoded, resampled, mixed down, cut or padded, and turned into
log-mel spectrogram images once, before training.

Audio is read with soundfile (WAV, FLAC, OGG, MP3 ...) and resampled with librosa (soxr), from an audio column left
undecoded (``datasets.Audio(decode=False)``: bytes or a path), so 🤗 datasets needs no torchcodec or FFmpeg. A folder
of audio files (one sub-folder per class gives labels, as the ``audiofolder`` builder reads it) is read the same way.
:func:`spectrogram_dataset` returns an image dataset (16-bit PNG spectrograms, the labels kept), which the image data
path (:mod:`hfddpm.data`) then trains on; the conversion's parameters are the pipeline's ``mel`` component
(:class:`~hfddpm.pipelines.mel_hfddpm.HFDDPMMel`), saved with the model.

Example:
    >>> import numpy as np, datasets
    >>> from hfddpm import HFDDPMMel
    >>> mel = HFDDPMMel(sample_rate=8000, n_fft=256, hop_length=64, n_mels=16, num_frames=16)
    >>> clips = [{"array": np.sin(np.arange(4000) * f / 8000 * 2 * np.pi), "sampling_rate": 8000} for f in (300, 900)]
    >>> clips = datasets.Dataset.from_dict({"clip": clips, "label": [0, 1]})
    >>> images = spectrogram_dataset(clips, "clip", mel, "label")
    >>> images.column_names, images[0]["image"].size, images[0]["image"].mode
    (['image', 'label'], (16, 16), 'I;16')
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from datasets.packaged_modules.audiofolder.audiofolder import AudioFolder
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from PIL import Image
from tqdm.auto import tqdm

from hfddpm.pipelines.mel_hfddpm import HFDDPMMel

logger = logging.getLogger(__name__)

# File extensions read as audio (those of 🤗 datasets' audiofolder builder).
AUDIO_EXTENSIONS = tuple(sorted(AudioFolder.EXTENSIONS, key=str.lower))
# The column of the spectrogram images that spectrogram_dataset writes.
SPECTROGRAM_COLUMN = "image"


class AudioDecodeError(ValueError):
    """A clip that is empty or cannot be read as audio."""


def _soundfile():
    try:
        import librosa  # noqa: F401 (resampling; checked here so one message names both)
        import soundfile
    except ImportError as err:
        raise ImportError(
            f"Audio datasets need soundfile and librosa ({err}): `pip install 'hfddpm[audio]'` or `pip install"
            " librosa soundfile`."
        ) from err
    return soundfile


def is_audio_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds audio files (``AUDIO_EXTENSIONS``) and no images: it is read as an audio folder."""
    suffixes = {p.suffix.lower() for p in Path(folder).rglob("*") if p.is_file()}
    audio = {e.lower() for e in AUDIO_EXTENSIONS}
    image = {e.lower() for e in ImageFolder.EXTENSIONS}
    return bool(suffixes & audio) and not suffixes & image


def load_audio_folder(folder: str | os.PathLike) -> datasets.Dataset:
    """A folder of audio files as a dataset with an ``audio`` column (``datasets.Audio(decode=False)``, paths) and,
    when every file sits in a sub-folder, a ``label`` column (``ClassLabel``, the sub-folder names): the layout of
    the ``audiofolder`` builder, read without it (its encoder needs torchcodec)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Audio folder {str(folder)!r} is not a folder.")
    extensions = {e.lower() for e in AUDIO_EXTENSIONS}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    if not files:
        raise ValueError(
            f"Audio folder {str(folder)!r} holds no audio files; put files with one of {', '.join(AUDIO_EXTENSIONS)}"
            " in it, optionally in one sub-folder per class."
        )
    parts = [p.relative_to(root).parts for p in files]
    columns = {"audio": pa.array([{"bytes": None, "path": str(p)} for p in files], type=datasets.Audio().pa_type)}
    features = {"audio": datasets.Audio(decode=False)}
    if all(len(part) >= 2 for part in parts):
        names = sorted({part[0] for part in parts})
        columns["label"] = pa.array([names.index(part[0]) for part in parts], type=pa.int64())
        features["label"] = datasets.ClassLabel(names=names)
    # an Arrow table with the features attached: Dataset.from_dict would encode the paths through torchcodec
    features = datasets.Features(features)
    table = pa.table(columns).cast(features.arrow_schema)
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))


def audio_columns(dataset) -> list[str]:
    """The columns with a ``datasets.Audio`` feature."""
    return [name for name, f in (dataset.features or {}).items() if isinstance(f, datasets.Audio)]


def resolve_audio_column(dataset, audio_column: str | None) -> str | None:
    """``audio_column`` checked against the dataset, else its only ``datasets.Audio`` column, else ``None`` (an image
    dataset). ``ValueError`` naming the columns when the one asked for is missing or several could be meant."""
    names = list(dataset.features or {})
    found = audio_columns(dataset)
    if audio_column is not None:
        if audio_column not in names:
            hint = f" Audio columns: {found}." if found else " No column has a datasets.Audio feature."
            raise ValueError(
                f"Audio column {audio_column!r} not found; the dataset has columns {names}.{hint} Pass the right one"
                " with --audio_column."
            )
        return audio_column
    if len(found) > 1:
        raise ValueError(f"The dataset has several audio columns {found}; choose one with --audio_column.")
    return found[0] if found else None


def decode_audio(value, sample_rate: int) -> tuple[np.ndarray, dict]:
    """One clip -> ``(mono float32 waveform at sample_rate, what was done)``.

    ``value`` is an undecoded ``datasets.Audio`` value (``{"bytes", "path"}``), a path, or a decoded one
    (``{"array", "sampling_rate"}``). Several channels are averaged (``info["mixed_down"]`` = their number), another
    sample rate is resampled (``info["resampled_from"]``). Raises :class:`AudioDecodeError` for an unreadable or empty
    clip.
    """
    soundfile = _soundfile()
    import librosa

    info = {}
    if isinstance(value, dict) and value.get("array") is not None:
        data = np.asarray(value["array"], dtype=np.float32)
        rate = value.get("sampling_rate")
        if rate is None:
            raise AudioDecodeError("a decoded clip without its sampling_rate")
        data = data.reshape(-1, 1) if data.ndim == 1 else data.T  # datasets keeps channels first
    else:
        source = value
        if isinstance(value, dict):
            source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value.get("path")
        if source is None:
            raise AudioDecodeError("an empty audio value (no bytes and no path)")
        try:
            data, rate = soundfile.read(source, dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, OSError, TypeError) as err:
            raise AudioDecodeError(f"not readable as audio ({type(err).__name__}: {err})") from None
    if data.size == 0:
        raise AudioDecodeError("an empty clip (no samples)")
    if not np.isfinite(data).all():
        raise AudioDecodeError("a clip with NaN or infinite samples")
    if data.shape[1] > 1:
        info["mixed_down"] = data.shape[1]
    waveform = data.mean(axis=1)
    if int(rate) != sample_rate:
        info["resampled_from"] = int(rate)
        waveform = librosa.resample(waveform, orig_sr=int(rate), target_sr=sample_rate)
    return waveform.astype(np.float32), info


def write_wav(path: str | os.PathLike, waveform: np.ndarray, sample_rate: int) -> None:
    """A mono waveform in [-1, 1] as a 16-bit PCM WAV file (clipped to [-1, 1])."""
    _soundfile().write(str(path), np.clip(np.asarray(waveform, dtype=np.float32), -1, 1), sample_rate, "PCM_16")


def spectrogram_image(spectrogram: np.ndarray) -> Image.Image:
    """A ``[n_mels, num_frames]`` spectrogram in [0, 1] as a 16-bit grey PIL image (``I;16``)."""
    return Image.fromarray(np.round(np.clip(spectrogram, 0, 1) * 65535).astype(np.uint16))


def spectrogram_dataset(
    dataset: datasets.Dataset,
    audio_column: str,
    mel: HFDDPMMel,
    label_column: str | None = None,
    *,
    max_bad_fraction: float = 0.01,
) -> datasets.Dataset:
    """Every clip of ``audio_column`` as a log-mel spectrogram image (column ``image``, 16-bit PNG), with
    ``label_column`` kept (all other columns are dropped).

    Clips are resampled to ``mel.sample_rate``, mixed down to mono, cut or zero-padded to ``mel.num_samples``; each
    kind of change is counted and logged once. Empty or unreadable clips are skipped and counted; more than
    ``max_bad_fraction`` of them is a ``ValueError`` naming the first few.
    """
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(
            "Audio training converts every clip to a spectrogram before training, which needs a map-style dataset;"
            " drop --streaming."
        )
    if label_column is not None and label_column not in dataset.column_names:
        raise ValueError(
            f"Label column {label_column!r} not found; the dataset has columns {dataset.column_names}. Pass the right"
            " one with --label_column, or train unconditionally with --no_class_conditional."
        )
    feature = dataset.features.get(audio_column)
    if isinstance(feature, datasets.Audio) and feature.decode:
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    keep = [audio_column] + ([label_column] if label_column else [])
    dataset = dataset.select_columns(keep)
    images, labels, bad = [], [], []
    resampled, mixed, cut, padded = Counter(), Counter(), 0, 0
    for index, row in enumerate(tqdm(dataset, desc="audio -> spectrograms", unit="clip", leave=False)):
        try:
            waveform, info = decode_audio(row[audio_column], mel.sample_rate)
        except AudioDecodeError as err:
            bad.append(f"row {index} ({_where(row[audio_column])}): {err}")
            continue
        if "resampled_from" in info:
            resampled[info["resampled_from"]] += 1
        if "mixed_down" in info:
            mixed[info["mixed_down"]] += 1
        cut += waveform.shape[0] > mel.num_samples
        padded += waveform.shape[0] < mel.num_samples
        images.append(spectrogram_image(mel.audio_to_spectrogram(waveform)))
        if label_column:
            labels.append(row[label_column])
    total = len(dataset)
    if resampled:
        rates = ", ".join(f"{n} at {rate} Hz" for rate, n in sorted(resampled.items()))
        logger.warning(f"Resampled {sum(resampled.values())} of {total} clips to {mel.sample_rate} Hz ({rates}).")
    if mixed:
        channels = ", ".join(f"{n} with {c} channels" for c, n in sorted(mixed.items()))
        logger.warning(f"Mixed {sum(mixed.values())} of {total} clips down to mono ({channels}).")
    if cut or padded:
        logger.info(
            f"Clips are {mel.audio_seconds:.3f} s ({mel.num_samples} samples): cut {cut}, zero-padded {padded}."
        )
    if bad:
        shown = "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
        if len(bad) > max_bad_fraction * total:
            raise ValueError(
                f"{len(bad)} of the {total} audio clips could not be read ({len(bad) / total:.1%} >"
                f" --max_bad_image_fraction {max_bad_fraction}): {shown}. Remove or repair them, or raise"
                " --max_bad_image_fraction to skip them."
            )
        logger.warning(f"Skipped {len(bad)} of {total} audio clips that could not be read: {shown}.")
    columns = {SPECTROGRAM_COLUMN: images}
    features = {SPECTROGRAM_COLUMN: datasets.Image()}
    if label_column:
        columns[label_column] = labels
        features[label_column] = dataset.features[label_column]
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _where(value) -> str:
    if isinstance(value, dict):
        return str(value.get("path") or "bytes")
    return str(value)[:80]
