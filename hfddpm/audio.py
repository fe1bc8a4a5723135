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

import hashlib
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

from hfddpm.data import (
    BAD_EXAMPLES_MIN_READ,
    DatasetColumns,
    check_label_column,
    resolve_class_names,
)
from hfddpm.pipelines.mel_hfddpm import HFDDPMMel

logger = logging.getLogger(__name__)

# File extensions read as audio (those of 🤗 datasets' audiofolder builder).
AUDIO_EXTENSIONS = tuple(sorted(AudioFolder.EXTENSIONS, key=str.lower))
# The column of the spectrogram images that spectrogram_dataset writes.
SPECTROGRAM_COLUMN = "image"
# The keys of a clip's dict that decode_audio reads: undecoded (``bytes``, ``path``) or decoded (``array``).
AUDIO_VALUE_KEYS = frozenset({"bytes", "path", "array"})
# The first values of a column of strings that must be paths of existing files for it to be taken as audio.
AUDIO_PATHS_CHECKED = 5
# A stream's converter logs a summary of what it did every this many clips.
STREAM_SUMMARY_EVERY = 1000


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
    dataset). ``ValueError`` naming the columns when the one asked for is missing, is not audio (its feature type
    named) or several could be meant.

    A column named is audio when it has a ``datasets.Audio`` feature or holds undecoded audio: dicts with ``bytes``,
    ``path`` or ``array`` (and ``sampling_rate``), or path strings; a stream of unknown features is judged by its
    first example. A column of strings is audio only if its first ``AUDIO_PATHS_CHECKED`` values are paths of
    existing files (not words, not URLs, which are not downloaded).

    Example:
        >>> import datasets, tempfile
        >>> wav = tempfile.NamedTemporaryFile(suffix=".wav").name
        >>> write_wav(wav, np.zeros(800), 8000)
        >>> clips = datasets.Dataset.from_dict({"clip": [wav, wav], "word": ["yes", "no"], "label": [0, 1]})
        >>> resolve_audio_column(clips, "clip"), resolve_audio_column(clips, None)
        ('clip', None)
        >>> resolve_audio_column(clips, "label")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Column 'label' is not audio: its feature is Value('int64'). An audio column has a ...
        >>> resolve_audio_column(clips, "word")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Column 'word' holds strings that are not paths of audio files: its value in row 0, 'yes', is ...
    """
    found = audio_columns(dataset)
    if audio_column is None:
        if len(found) > 1:
            raise ValueError(f"The dataset has several audio columns {found}; choose one with --audio_column.")
        return found[0] if found else None
    hint = f"Audio columns: {found}." if found else "No column has a datasets.Audio feature."
    if dataset.features is not None:
        names, feature = list(dataset.features), dataset.features.get(audio_column)
        is_audio, kind = _is_audio_feature(feature), _describe_feature(feature)
    else:  # a stream of unknown features (e.g. json): its first example
        first = next(iter(dataset.take(1)), None)
        if first is None:
            raise ValueError("The streaming dataset yielded no examples; choose a dataset with audio in it.")
        names, value = list(first), first.get(audio_column)
        is_audio = isinstance(value, str) or (isinstance(value, dict) and bool(AUDIO_VALUE_KEYS & set(value)))
        kind = f"unknown; its first value is {_where(value)} ({type(value).__name__})"
    if audio_column not in names:
        raise ValueError(
            f"Audio column {audio_column!r} not found; the dataset has columns {names}. {hint} Pass the right one"
            " with --audio_column."
        )
    holds = (
        "An audio column has a datasets.Audio feature or holds undecoded audio (dicts with 'bytes', 'path' or"
        f" 'array' and 'sampling_rate', or paths of audio files). {hint} Pass the right one with --audio_column."
    )
    if not is_audio:
        raise ValueError(f"Column {audio_column!r} is not audio: its feature is {kind}. {holds}")
    if not isinstance(dataset.features.get(audio_column) if dataset.features else None, (datasets.Audio, dict)):
        _check_audio_paths(dataset, audio_column, holds)
    return audio_column


def _check_audio_paths(dataset, audio_column: str, holds: str) -> None:
    """A ``ValueError`` unless the first ``AUDIO_PATHS_CHECKED`` strings of the column are paths of existing files
    (a column of words or URLs would otherwise fail clip by clip, after the others were read)."""
    if isinstance(dataset, datasets.Dataset):
        values = dataset.select(range(min(AUDIO_PATHS_CHECKED, len(dataset))))[audio_column]
    else:
        values = [row[audio_column] for row in dataset.select_columns([audio_column]).take(AUDIO_PATHS_CHECKED)]
    for row, value in enumerate(values):
        if isinstance(value, str) and not os.path.isfile(value):
            url = " (URLs are not downloaded: fetch the files first)" if "://" in value else ""
            raise ValueError(
                f"Column {audio_column!r} holds strings that are not paths of audio files: its value in row {row},"
                f" {_where(value)!r}, is no existing file{url}. {holds}"
            )


def _is_audio_feature(feature) -> bool:
    """``datasets.Audio``, the struct of an undecoded or decoded clip, or strings (paths)."""
    if isinstance(feature, datasets.Audio):
        return True
    if isinstance(feature, dict):
        return bool(AUDIO_VALUE_KEYS & set(feature))
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _describe_feature(feature) -> str:
    if isinstance(feature, datasets.ClassLabel):
        return f"ClassLabel (integer class labels of {feature.names[:3]}{'...' if feature.num_classes > 3 else ''})"
    if isinstance(feature, dict):
        return f"a struct of {sorted(feature)}"
    return repr(feature)[:80]


def decode_audio(value, sample_rate: int) -> tuple[np.ndarray, dict]:
    """One clip -> ``(mono float32 waveform at sample_rate, what was done)``.

    ``value`` is an undecoded ``datasets.Audio`` value (``{"bytes", "path"}``), a path, or a decoded one
    (``{"array", "sampling_rate"}``). Several channels are averaged (``info["mixed_down"]`` = their number), another
    sample rate is resampled (``info["resampled_from"]``). Raises :class:`AudioDecodeError` for an unreadable or empty
    clip, and for a value that is none of these (an int, a list ...).
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
        source = _audio_source(value)
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


def _audio_source(value) -> str | io.BytesIO:
    """What soundfile reads for an undecoded clip (a path, bytes, or a dict of ``bytes`` or ``path``): a path string
    or the bytes as a file. :class:`AudioDecodeError` for anything else: soundfile would read an int as a file
    descriptor (stdin for 0) and close it."""
    if isinstance(value, dict):
        value = value["bytes"] if value.get("bytes") is not None else value.get("path")
    if value is None:
        raise AudioDecodeError("an empty audio value (no bytes, path or array)")
    if isinstance(value, (bytes, bytearray)):
        return io.BytesIO(value)
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    raise AudioDecodeError(
        f"not audio: {_where(value)} ({type(value).__name__}); a clip is a path, bytes, or a dict with 'bytes',"
        " 'path' or 'array' and 'sampling_rate'"
    )


def write_wav(path: str | os.PathLike, waveform: np.ndarray, sample_rate: int) -> None:
    """A mono waveform in [-1, 1] as a 16-bit PCM WAV file (clipped to [-1, 1])."""
    _soundfile().write(str(path), np.clip(np.asarray(waveform, dtype=np.float32), -1, 1), sample_rate, "PCM_16")


def spectrogram_image(spectrogram: np.ndarray) -> Image.Image:
    """A ``[n_mels, num_frames]`` spectrogram in [0, 1] as a 16-bit grey PIL image (``I;16``)."""
    return Image.fromarray(np.round(np.clip(spectrogram, 0, 1) * 65535).astype(np.uint16))


class SpectrogramConverter:
    """Clips -> 16-bit spectrogram images: :func:`decode_audio` (resample, mix down), ``mel.audio_to_spectrogram``
    (cut or zero-pad, log-mel), :func:`spectrogram_image`. The one conversion of both audio paths: all clips up front
    (:func:`spectrogram_dataset`) or clip by clip as a stream is read (:func:`spectrogram_stream`, where it is the
    DataLoader's ``decode``). It counts what it did to distinct clips; :meth:`summary` says it in a few lines.

    Called on a clip (the stream's ``decode``) it returns the image, or ``None`` for an empty or unreadable clip,
    which is skipped and counted; each kind of change (resampled from a rate, mixed down from a channel count, cut,
    padded) is logged the first time it happens, and :meth:`summary` every ``summary_every`` clips. A clip read again
    (a later pass over the stream) is converted but not counted, logged or named again: clips are told apart by a
    64-bit digest of their path, bytes or samples (:func:`clip_key`; about 70 bytes of memory per distinct clip, and
    identical clips count once). A stream has no known length, so the broken clips are judged as they come: once at
    least ``min_clips`` distinct clips were read (by this converter, i.e. this process or DataLoader worker), more
    than ``max_bad_fraction`` of them broken is a ``ValueError`` naming the first few (:meth:`check`); a stream with
    fewer is judged by the training loop, from the batches' counts, once it was read through.

    Example:
        >>> import numpy as np
        >>> from hfddpm import HFDDPMMel
        >>> mel = HFDDPMMel(sample_rate=8000, n_fft=256, hop_length=64, n_mels=16, num_frames=16)
        >>> convert = SpectrogramConverter(mel)
        >>> image = convert({"array": np.sin(np.arange(4000) * 0.3), "sampling_rate": 16000})
        >>> image.size, image.mode, convert({"bytes": b"not audio", "path": "x.wav"})
        ((16, 16), 'I;16', None)
        >>> convert({"bytes": b"not audio", "path": "x.wav"}) is None  # read again: skipped, not counted again
        True
        >>> print("\\n".join(convert.summary()))  # doctest: +ELLIPSIS
        Resampled 1 of 2 clips to 8000 Hz (1 at 16000 Hz).
        Clips are 0.120 s (960 samples): cut 1, zero-padded 0.
        Skipped 1 of 2 audio clips that could not be read: clip 2 (x.wav): not readable as audio (...).
    """

    # the broken clips an error names
    max_named = 3
    # what a stream's reader says it skipped (hfddpm.data.BadExampleLog)
    broken_example = "an audio clip that could not be read"

    def __init__(
        self,
        mel: HFDDPMMel,
        *,
        max_bad_fraction: float = 0.01,
        min_clips: int = BAD_EXAMPLES_MIN_READ,
        summary_every: int = STREAM_SUMMARY_EVERY,
    ):
        self.mel = mel
        self.max_bad_fraction, self.min_clips, self.summary_every = max_bad_fraction, min_clips, summary_every
        self.num_read, self.num_bad, self.bad = 0, 0, []
        self.resampled, self.mixed, self.cut, self.padded = Counter(), Counter(), 0, 0
        self.seen: set[int] = set()  # the clip_key of each clip the stream gave (__call__)

    def convert(self, value, where: str, *, count: bool = True) -> tuple[Image.Image | None, list[str]]:
        """One clip -> ``(image or None if broken, the kinds of change first seen in it)``; ``where`` names it.
        ``count=False``: a clip counted before (read again), converted only."""
        if count:
            self.num_read += 1
        try:
            waveform, info = decode_audio(value, self.mel.sample_rate)
        except AudioDecodeError as err:
            if count:
                self.num_bad += 1
                if len(self.bad) < self.max_named:
                    self.bad.append(f"{where}: {err}")
            return None, []
        new = self._count_changes(waveform, info, where) if count else []
        return spectrogram_image(self.mel.audio_to_spectrogram(waveform)), new

    def _count_changes(self, waveform: np.ndarray, info: dict, where: str) -> list[str]:
        """Count what :func:`decode_audio` and the fitting to ``mel.num_samples`` do to a clip; return the kinds of
        change seen for the first time, in words."""
        sample_rate, num_samples = self.mel.sample_rate, self.mel.num_samples
        new = []
        if "resampled_from" in info:
            rate = info["resampled_from"]
            if not self.resampled[rate]:
                new.append(f"Resampling clips from {rate} Hz to {sample_rate} Hz (the first: {where}).")
            self.resampled[rate] += 1
        if "mixed_down" in info:
            channels = info["mixed_down"]
            if not self.mixed[channels]:
                new.append(f"Mixing clips with {channels} channels down to mono (the first: {where}).")
            self.mixed[channels] += 1
        if waveform.shape[0] > num_samples:
            if not self.cut:
                new.append(f"Cutting clips longer than {self.mel.audio_seconds:.3f} s (the first: {where}).")
            self.cut += 1
        elif waveform.shape[0] < num_samples:
            if not self.padded:
                new.append(f"Zero-padding clips shorter than {self.mel.audio_seconds:.3f} s (the first: {where}).")
            self.padded += 1
        return new

    def __call__(self, value) -> Image.Image | None:
        """A stream's clip -> its image (``None`` if broken). A clip read for the first time is counted, logging new
        kinds of change and periodic summaries, and raises when too many clips are broken (:meth:`check`); one read
        again (a later pass over the stream) is converted only."""
        key = clip_key(value)
        if key in self.seen:
            return self.convert(value, "", count=False)[0]
        self.seen.add(key)
        image, new = self.convert(value, f"clip {self.num_read + 1} ({_where(value)})")
        for line in new:
            (logger.warning if line.startswith(("Resampling", "Mixing")) else logger.info)(line)
        if self.num_read >= self.min_clips:
            self.check()
        if self.num_read % self.summary_every == 0:
            for line in self.summary():
                logger.info(line)
        return image

    def summary(self) -> list[str]:
        """What was done to the clips read so far: resampled, mixed down, cut or padded, skipped."""
        total, lines = self.num_read, []
        if self.resampled:
            rates = ", ".join(f"{n} at {rate} Hz" for rate, n in sorted(self.resampled.items()))
            lines.append(
                f"Resampled {sum(self.resampled.values())} of {total} clips to {self.mel.sample_rate} Hz ({rates})."
            )
        if self.mixed:
            channels = ", ".join(f"{n} with {c} channels" for c, n in sorted(self.mixed.items()))
            lines.append(f"Mixed {sum(self.mixed.values())} of {total} clips down to mono ({channels}).")
        if self.cut or self.padded:
            lines.append(
                f"Clips are {self.mel.audio_seconds:.3f} s ({self.mel.num_samples} samples): cut {self.cut},"
                f" zero-padded {self.padded}."
            )
        if self.num_bad:
            lines.append(f"Skipped {self.num_bad} of {total} audio clips that could not be read: {self._named()}.")
        return lines

    def check(self) -> None:
        """A ``ValueError`` naming the first broken clips when more than ``max_bad_fraction`` of the distinct clips
        read are."""
        if self.num_bad > self.max_bad_fraction * self.num_read:
            raise ValueError(
                f"{self.num_bad} of the {self.num_read} audio clips could not be read"
                f" ({self.num_bad / self.num_read:.1%} > --max_bad_image_fraction {self.max_bad_fraction}):"
                f" {self._named()}. Remove or repair them, or raise --max_bad_image_fraction to skip them."
            )

    def _named(self) -> str:
        return "; ".join(self.bad) + ("; ..." if self.num_bad > len(self.bad) else "")


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

    Clips are converted by :class:`SpectrogramConverter` (resampled to ``mel.sample_rate``, mixed down to mono, cut
    or zero-padded to ``mel.num_samples``); what was done is counted and logged once, at the end. Empty or
    unreadable clips are skipped and counted; more than ``max_bad_fraction`` of them is a ``ValueError`` naming the
    first few. A stream (``datasets.IterableDataset``) is converted as it is read: :func:`spectrogram_stream`.
    """
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(
            f"spectrogram_dataset converts a map-style dataset up front, not a {type(dataset).__name__}; a stream is"
            " converted as it is read by hfddpm.audio.spectrogram_stream."
        )
    if label_column is not None:
        check_label_column(dataset.column_names, label_column)
    dataset = _undecoded_audio(dataset, audio_column)
    keep = [audio_column] + ([label_column] if label_column else [])
    dataset = dataset.select_columns(keep)
    converter = SpectrogramConverter(mel, max_bad_fraction=max_bad_fraction)
    images, labels = [], []
    for index, row in enumerate(tqdm(dataset, desc="audio -> spectrograms", unit="clip", leave=False)):
        image, _ = converter.convert(row[audio_column], f"row {index} ({_where(row[audio_column])})")
        if image is None:
            continue
        images.append(image)
        if label_column:
            labels.append(row[label_column])
    converter.check()  # the whole dataset was read: the fraction is final
    for line in converter.summary():
        (logger.info if line.startswith("Clips are") else logger.warning)(line)
    columns = {SPECTROGRAM_COLUMN: images}
    features = {SPECTROGRAM_COLUMN: datasets.Image()}
    if label_column:
        columns[label_column] = labels
        features[label_column] = dataset.features[label_column]
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def spectrogram_stream(
    dataset: datasets.IterableDataset,
    audio_column: str,
    mel: HFDDPMMel,
    label_column: str | None = None,
    *,
    max_bad_fraction: float = 0.01,
) -> tuple[datasets.IterableDataset, DatasetColumns, SpectrogramConverter]:
    """A streamed audio dataset for :func:`hfddpm.data.make_train_dataloader`: ``(the stream with ``audio_column``
    undecoded and ``label_column`` kept, its columns, the converter to pass as ``decode``)``.

    Nothing is converted here: each clip becomes the same spectrogram image as :func:`spectrogram_dataset` makes,
    inside the DataLoader, only for the examples a process and worker trains on (sharding, the shuffle buffer and
    resume positions are the image stream's). The classes come from the label column's ``ClassLabel`` feature (a
    stream's labels are checked as they are read). Broken clips follow :class:`SpectrogramConverter`'s rule: skipped
    and counted once (not again in later passes), and a ``ValueError`` naming the first few once more than
    ``max_bad_fraction`` of at least ``BAD_EXAMPLES_MIN_READ`` (200) distinct clips read are broken.

    Example:
        >>> import numpy as np, datasets
        >>> from hfddpm import HFDDPMMel
        >>> from hfddpm.data import make_train_dataloader
        >>> mel = HFDDPMMel(sample_rate=8000, n_fft=256, hop_length=64, n_mels=16, num_frames=16)
        >>> clips = [{"array": np.sin(np.arange(1000) * f), "sampling_rate": 8000} for f in (0.2, 0.6, 0.2, 0.6)]
        >>> clips = datasets.Dataset.from_dict({"clip": clips, "label": [0, 1, 0, 1]})
        >>> clips = clips.cast_column("label", datasets.ClassLabel(names=["low", "high"])).to_iterable_dataset()
        >>> stream, columns, convert = spectrogram_stream(clips, "clip", mel, "label")
        >>> columns.class_names
        ['low', 'high']
        >>> loader = make_train_dataloader(stream, columns, resolution=16, channels=1, batch_size=2, seed=0,
        ...                                decode=convert)
        >>> batch = next(iter(loader))
        >>> tuple(batch["pixel_values"].shape), batch["class_labels"].tolist()
        ((2, 1, 16, 16), [0, 0])
    """
    if not isinstance(dataset, datasets.IterableDataset):
        raise ValueError(
            f"spectrogram_stream converts a datasets.IterableDataset as it is read, not a {type(dataset).__name__};"
            " a map-style dataset is converted up front by hfddpm.audio.spectrogram_dataset."
        )
    class_names = None
    if label_column is not None:
        class_names = resolve_class_names(dataset, label_column)
    dataset = _undecoded_audio(dataset, audio_column)
    dataset = dataset.select_columns([audio_column] + ([label_column] if label_column else []))
    columns = DatasetColumns(audio_column, label_column, class_names)
    return dataset, columns, SpectrogramConverter(mel, max_bad_fraction=max_bad_fraction)


def clip_key(value) -> int:
    """A 64-bit digest of what tells a clip apart: its path, bytes, samples and sample rate (for a path string, the
    path). The same clip read again (a later pass over a stream) has the same key; counting keys counts clips.

    Example:
        >>> clip_key({"bytes": b"RIFF...", "path": "a.wav"}) == clip_key({"bytes": b"RIFF...", "path": "a.wav"})
        True
        >>> clip_key({"bytes": b"RIFF...", "path": "a.wav"}) == clip_key({"bytes": b"RIFF!!!", "path": "a.wav"})
        False
    """
    digest = hashlib.blake2b(digest_size=8)
    keys = ("path", "bytes", "array", "sampling_rate")
    for part in [value.get(k) for k in keys] if isinstance(value, dict) else [value]:
        if isinstance(part, (list, tuple)):  # samples as Python lists (a formatted stream)
            try:
                part = np.asarray(part)
            except ValueError:  # ragged: not audio, but a clip all the same (decode_audio refuses it)
                pass
        if isinstance(part, np.ndarray) and part.dtype != object:
            data = f"{part.dtype}{part.shape}".encode() + np.ascontiguousarray(part).tobytes()
        elif isinstance(part, (bytes, bytearray, memoryview)):
            data = b"bytes" + bytes(part)
        else:
            data = repr(part).encode()
        digest.update(len(data).to_bytes(8, "little") + data)
    return int.from_bytes(digest.digest(), "little")


def _undecoded_audio(dataset, audio_column: str):
    """The audio column left as bytes/paths: decode_audio reads it (no torchcodec needed) and can fail softly."""
    feature = (dataset.features or {}).get(audio_column)
    if isinstance(feature, datasets.Audio) and feature.decode:
        return dataset.cast_column(audio_column, datasets.Audio(decode=False))
    return dataset


def _where(value) -> str:
    if isinstance(value, dict):
        return str(value.get("path") or "bytes")
    return str(value)[:80]
