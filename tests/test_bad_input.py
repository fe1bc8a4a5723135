"""Bad or unusual input is read correctly or refused with one clear error: deep images, columns, CLI numbers."""

import struct
import subprocess
import sys
import zlib

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hfddpm import HFDDPMPipeline, HFDDPMScheduler, build_unet
from hfddpm.cli import main
from hfddpm.data import (
    ImageTransform,
    load_mnist_5k,
    load_train_dataset,
    make_train_dataloader,
    resolve_columns,
    to_pil,
)

# 16 columns from black to white: column j is j / 15 of the full range
RAMP = np.linspace(0, 1, 16)


@pytest.fixture(autouse=True)
def _offline_private_cache(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")


def write_png16(path, array: np.ndarray):
    """A 16-bit PNG (grey, RGB or RGBA by the last axis) written byte by byte: PIL cannot write 16-bit colour."""
    h, w, c = array.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def training_pixels(folder, channels=1):
    """The first batch that training reads from an image folder: load, resolve columns, DataLoader transform."""
    dataset = load_train_dataset(train_data_dir=str(folder))
    columns = resolve_columns(dataset, "image")
    loader = make_train_dataloader(dataset, columns, resolution=16, channels=channels, batch_size=1, seed=0)
    return next(iter(loader))["pixel_values"][0]


def test_16_bit_grey_png_maps_linearly_to_minus_one_one(tmp_path):
    ramp = np.round(RAMP * 65535).astype(np.uint16)
    write_png16(tmp_path / "ramp.png", np.tile(ramp, (16, 1))[..., None])
    with Image.open(tmp_path / "ramp.png") as image:
        assert image.mode == "I;16"  # what PIL makes of it (and convert("L") clips it to white)
    pixels = training_pixels(tmp_path)
    assert pixels.shape == (1, 16, 16)
    np.testing.assert_allclose(pixels[0, 0], RAMP * 2 - 1, atol=1e-6)
    np.testing.assert_allclose(pixels[0], pixels[0, :1].expand(16, 16))


def test_16_bit_grey_becomes_rgb_and_rgba(tmp_path):
    write_png16(tmp_path / "ramp.png", np.tile(np.round(RAMP * 65535).astype(np.uint16), (16, 1))[..., None])
    rgb = training_pixels(tmp_path, channels=3)
    for c in range(3):
        np.testing.assert_allclose(rgb[c, 0], RAMP * 2 - 1, atol=1e-6)
    rgba = ImageTransform(16, 4)(to_pil(str(tmp_path / "ramp.png")))
    assert torch.equal(rgba[:3], rgb) and torch.all(rgba[3] == 1)


def test_16_bit_colour_png_is_read_with_8_bit_precision(tmp_path):
    # PIL opens 16-bit RGB(A) PNGs as 8-bit RGB(A), keeping the high byte: the scale is right, the low bits are lost
    array = np.zeros((16, 16, 3), dtype=np.uint16)
    array[..., 0] = np.round(RAMP * 65535)
    array[..., 1] = 65535
    write_png16(tmp_path / "colour.png", array)
    with Image.open(tmp_path / "colour.png") as image:
        assert image.mode == "RGB"
    pixels = training_pixels(tmp_path, channels=3)
    np.testing.assert_allclose(pixels[0, 0], RAMP * 2 - 1, atol=2 / 255)
    assert torch.all(pixels[1] == 1) and torch.all(pixels[2] == -1)


def write_uint32_tiff(path, array: np.ndarray):
    """An unsigned 32-bit TIFF: PIL writes only signed ones, so write the bits as int32 and patch SampleFormat to 1."""
    Image.fromarray(array.astype(np.uint32).view(np.int32)).save(path)
    signed = struct.pack("<HHIHH", 339, 3, 1, 2, 0)  # tag 339 (SampleFormat), SHORT, count 1, value 2 (signed)
    data = path.read_bytes()
    assert data.count(signed) == 1
    path.write_bytes(data.replace(signed, struct.pack("<HHIHH", 339, 3, 1, 1, 0)))


@pytest.mark.parametrize(
    ("name", "array", "mode"),
    [
        ("float.tiff", RAMP.astype(np.float32), "F"),  # float images are assumed to be in [0, 1]
        ("int32.tiff", np.round(RAMP * (2**31 - 1)).astype(np.int32), "I"),
        ("uint32.tiff", np.round(RAMP * (2**32 - 1)).astype(np.uint32), "I"),  # PIL reads it into an int32 "I"
        ("big-endian.tiff", np.round(RAMP * 65535).astype(">u2"), "I;16B"),
        ("sixteen.pgm", np.round(RAMP * 65535).astype(np.uint16), "I"),  # 16-bit PGM opens as 32-bit "I"
    ],
)
def test_deep_images_are_scaled_by_their_bit_depth(tmp_path, name, array, mode):
    if name == "uint32.tiff":
        write_uint32_tiff(tmp_path / name, np.tile(array, (16, 1)))
    else:
        Image.fromarray(np.tile(array, (16, 1))).save(tmp_path / name)
    with Image.open(tmp_path / name) as image:
        assert image.mode == mode
    np.testing.assert_allclose(training_pixels(tmp_path)[0, 0], RAMP * 2 - 1, atol=1e-6)


def test_float_images_outside_zero_one_are_clipped():
    image = Image.fromarray(np.tile(np.array([-0.5, 0.25, 1.5, np.nan], dtype=np.float32), (4, 1)))
    assert ImageTransform(4, 1, center_crop=True)(image)[0, 0].tolist() == [-1.0, -0.5, 1.0, -1.0]


# ---------------------------------------------------------------------------------------------------------------------
# Columns: checked at setup, before any training
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_mnist_5k().select(range(6))


def test_missing_integer_label_names_the_row(digits):
    labels = [3, 1, 4, None, 5, None]
    ds = digits.remove_columns("label").add_column("label", labels, feature=datasets.Value("int64"))
    with pytest.raises(ValueError) as info:
        resolve_columns(ds, "image", "label")
    assert str(info.value).startswith(
        "Label column 'label' has 2 missing labels (None), the first in row 3; class labels must be integers in"
        " 0, 1, 2, ...."
    )
    assert "dataset.filter(lambda row: row['label'] is not None)" in str(info.value)
    # shuffled or selected datasets report the row as the user sees it
    with pytest.raises(ValueError, match="the first in row 0;"):
        resolve_columns(ds.select([5, 0]), "image", "label")
    assert resolve_columns(ds.select([0, 1, 2]), "image", "label").class_names == ["0", "1", "2", "3", "4"]


def test_missing_or_unlabelled_classlabel_names_the_row(digits):
    feature = datasets.ClassLabel(names=list("0123456789"))
    missing = digits.remove_columns("label").add_column("label", [0, 1, None, 3, 4, 5], feature=feature)
    with pytest.raises(ValueError, match=r"1 missing labels \(None\), the first in row 2; .* in \[0, 9\]"):
        resolve_columns(missing, "image", "label")
    unlabelled = digits.remove_columns("label").add_column("label", [0, 1, 2, 3, -1, 5], feature=feature)
    with pytest.raises(ValueError, match=r"has label -1 in row 4; class labels must be integers in \[0, 9\]"):
        resolve_columns(unlabelled, "image", "label")


def test_negative_integer_label_names_the_row(digits):
    ds = digits.remove_columns("label").add_column("label", [0, 1, 2, -7, 4, 5], feature=datasets.Value("int32"))
    with pytest.raises(ValueError, match=r"has label -7 in row 3; class labels must be integers in 0, 1, 2, \.\.\."):
        resolve_columns(ds, "image", "label")


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ("label", r"its value in row 0, 0, is ClassLabel\(names=\['0', .*\]\)\. Image columns: \['image'\]\."),
        ("caption", r"its value in row 0, 'a five', does not decode as an image \(FileNotFoundError: .*\)\."),
        ("score", r"its value in row 0, 0\.5, is Value\('float64'\)\. Image columns: \['image'\]\."),
    ],
)
def test_image_column_that_holds_no_images(digits, column, message):
    ds = digits.add_column("caption", ["a five"] * 6).add_column("score", [0.5] * 6)
    with pytest.raises(ValueError, match=f"^Image column '{column}' holds no images: {message}") as info:
        resolve_columns(ds, column, "label")
    assert str(info.value).endswith("Pass an image column with --image_column.")


def test_image_column_of_paths_or_arrays_is_accepted(tmp_path):
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "a.png")
    paths = datasets.Dataset.from_dict({"file": [str(tmp_path / "a.png")]})
    assert resolve_columns(paths, "file").image_column == "file"
    arrays = datasets.Dataset.from_dict({"pixels": [np.zeros((4, 4), dtype=np.uint8)]})
    assert resolve_columns(arrays, "pixels").image_column == "pixels"


def test_image_column_of_a_stream_without_image_features(digits):
    stream = datasets.Dataset.from_dict({"text": ["a five"], "label": [5]}).to_iterable_dataset()
    with pytest.raises(ValueError, match=r"^Image column 'text' holds no images: its value in row 0, 'a five',"):
        resolve_columns(stream, "text")


def test_streamed_missing_label_fails_with_its_position(digits):
    ds = digits.cast_column("label", datasets.Value("int64"))
    ds = ds.remove_columns("label").add_column(
        "label", [0, 1, None, 3, 4, 5], feature=datasets.ClassLabel(num_classes=10)
    )
    stream = ds.to_iterable_dataset()
    columns = resolve_columns(stream, "image", "label")  # a stream cannot be checked up front
    loader = make_train_dataloader(stream, columns, resolution=28, channels=1, batch_size=6, seed=0, shuffle=False)
    with pytest.raises(ValueError, match=r"Label column 'label' has label None in example 2 of epoch 0 \(process 0\)"):
        next(iter(loader))


# ---------------------------------------------------------------------------------------------------------------------
# CLI numbers: refused by argparse before anything loads or is written
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def conditional_pipeline(tmp_path_factory):
    torch.manual_seed(0)
    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16, num_class_embeds=11)
    folder = tmp_path_factory.mktemp("cond")
    HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler()).save_pretrained(folder)
    return folder


GUIDANCE = "must be a finite number >= 0 (1 = no guidance, 0 = unconditional), got"


@pytest.mark.parametrize("command", ["sample", "evaluate"])
@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--guidance-scale", "nan", f"{GUIDANCE} nan"),
        ("--guidance-scale", "inf", f"{GUIDANCE} inf"),
        ("--guidance-scale", "-2", f"{GUIDANCE} -2"),
        ("--guidance-scale", "strong", f"{GUIDANCE} strong"),
        ("--eta", "nan", "must be a finite number in [0, 1], got nan"),
        ("--eta", "1.5", "must be a finite number in [0, 1], got 1.5"),
        ("--num-images", "0", None),  # sample: >= 1, evaluate: >= 2
        ("--num-inference-steps", "0", "must be an integer >= 1, got 0"),
        ("--num-inference-steps", "2.5", "must be an integer >= 1, got 2.5"),
        ("--batch-size", "-1", "must be an integer >= 1, got -1"),
        ("--seed", "-1", "must be an integer in [0, 9223372036854775807], got -1"),
    ],
)
def test_cli_numbers_are_checked(conditional_pipeline, tmp_path, capsys, command, flag, value, message):
    message = message or f"must be an integer >= {1 if command == 'sample' else 2}, got 0"
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main([command, str(conditional_pipeline), flag, value, "--out", str(out)])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"hfddpm {command}: error: argument {flag}: {message}"
    assert not out.exists() and not (conditional_pipeline / "metrics.json").exists()


def test_cli_columns_and_evaluate_num_images(conditional_pipeline, tmp_path, capsys):
    with pytest.raises(SystemExit, match="2"):
        main(["sample", str(conditional_pipeline), "--columns", "0", "--out", str(tmp_path / "g.png")])
    assert capsys.readouterr().err.endswith("error: argument --columns: must be an integer >= 1, got 0\n")
    with pytest.raises(SystemExit, match="2"):
        main(["evaluate", str(conditional_pipeline), "--num-images", "1", "--out", str(tmp_path / "m.json")])
    assert capsys.readouterr().err.endswith("error: argument --num-images: must be an integer >= 2, got 1\n")
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "m.json").exists()


def test_cli_exit_status_in_a_fresh_process(conditional_pipeline, tmp_path):
    out = tmp_path / "grid.png"
    args = ["sample", str(conditional_pipeline), "--guidance-scale", "nan", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-m", "hfddpm.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1] == f"hfddpm sample: error: argument --guidance-scale: {GUIDANCE} nan"
    assert not out.exists()


def test_cli_guidance_zero_and_large_are_accepted(conditional_pipeline, tmp_path):
    for scale in ("0", "7.5"):
        out = tmp_path / f"grid-{scale}.png"
        args = ["--num-images", "2", "--num-inference-steps", "1", "--class-labels", "3", "--guidance-scale", scale]
        assert main(["sample", str(conditional_pipeline), *args, "--out", str(out)]) == 0
        assert out.is_file()


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf")])
def test_pipeline_refuses_non_finite_guidance(scale):
    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16, num_class_embeds=11)
    pipe = HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler())
    with pytest.raises(
        ValueError, match=f"guidance_scale must be a finite number \\(1.0 disables guidance\\), got {scale}"
    ):
        pipe(batch_size=1, class_labels=[3], guidance_scale=scale, num_inference_steps=1)
