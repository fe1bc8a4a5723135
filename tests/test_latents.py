"""Latent diffusion: the autoencoder, the encode-once cache, latent training, and the pipeline that decodes."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from test_save_format import run_child
from train_helpers import (
    COUNT_DDP_AT_DESTROY,
    ROOT,
    TRAIN,
    TRAIN_VAE,
    accelerate_launcher,
    process_state,
    run_train,
    train_env,
    write_train_driver,
)

from hfddpm import UNET_PRESETS, HFDDPMPipeline, HFDDPMScheduler, build_unet
from hfddpm.cli import main as cli_main
from hfddpm.data import load_mnist_5k, make_train_dataloader, resolve_columns
from hfddpm.latents import encode_dataset, latent_bytes, load_vae, make_latent_batches, vae_encode
from hfddpm.training import TrainConfig
from hfddpm.training.engine import setup
from hfddpm.training.loop import choose_recipe, resident_data
from hfddpm.training.vae import VAETrainConfig, build_vae, measure_scaling, train_vae

# A tiny autoencoder: 16 px grey digits -> 4x8x8 latents (2 levels, downsampling by 2).
TINY_VAE = dict(block_out_channels="8,16", norm_num_groups=4, resolution=16, channels=1)
# A tiny UNet on those latents.
LATENT_UNET = {"sample_size": 8, "in_channels": 4, "out_channels": 4, "block_out_channels": [8, 16],
               "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
               "layers_per_block": 1, "norm_num_groups": 4}  # fmt: skip
SAMPLE = dict(batch_size=2, class_labels=[3, 7], guidance_scale=2.0, num_inference_steps=3, output_type="np")


def digits(n: int, resolution: int = 16, start: int = 0) -> torch.Tensor:
    """``n`` embedded digits (every 50th of the label-sorted set, so all classes) in [-1, 1]."""
    ds = load_mnist_5k().select(range(start, 5000, 50))
    loader = make_train_dataloader(ds, resolve_columns(ds), resolution=resolution, channels=1, batch_size=n, seed=0,
                                   center_crop=True, shuffle=False)  # fmt: skip
    return next(iter(loader))["pixel_values"]


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory):
    """A tiny AutoencoderKL trained by hfddpm.training.vae for 150 steps on the embedded digits (a minute or two;
    held-out reconstruction MSE about 0.017)."""
    out = tmp_path_factory.mktemp("vae")
    train_vae(VAETrainConfig(**TINY_VAE, max_train_steps=150, train_batch_size=16, learning_rate=2e-3,
                             logging_steps=50, mixed_precision="no", output_dir=str(out)))  # fmt: skip
    return out


def test_train_vae_from_python_leaves_the_process_as_it_was(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(1234)
        before = process_state()
        train_vae(VAETrainConfig(**TINY_VAE, max_train_steps=2, train_batch_size=4, mixed_precision="no",
                                 output_dir=str(tmp_path / "vae")))  # fmt: skip
        assert (tmp_path / "vae" / "config.json").is_file()
        assert process_state() == before
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def small_digits():
    ds = load_mnist_5k().select(range(0, 5000, 100))  # 50 images, all classes
    return ds, resolve_columns(ds, "image", "label")


# ---------------------------------------------------------------------------------------------------------------------
# The autoencoder
# ---------------------------------------------------------------------------------------------------------------------
def test_trained_vae_round_trip_and_scaling_factor(trained_vae):
    vae = load_vae(str(trained_vae))
    assert type(vae) is AutoencoderKL
    metrics = json.loads((trained_vae / "vae_metrics.json").read_text())
    assert vae.config.scaling_factor == pytest.approx(metrics["scaling_factor"])
    assert (trained_vae / "samples" / "reconstructions.png").is_file()
    # held-out digits (offset 25 from the every-50th set the metrics were not measured on) come back
    x = digits(64, start=25)
    scale, mse, _ = measure_scaling(vae, x)
    untrained = build_vae(VAETrainConfig(**TINY_VAE))
    _, mse_untrained, _ = measure_scaling(untrained, x)
    assert mse < 0.05 < mse_untrained
    # the scaling factor is 1 / std of the latents: the scaled latents have unit variance
    with torch.no_grad():
        z = vae_encode(vae, x) * vae.config.scaling_factor
    assert float(z.std()) == pytest.approx(1.0, abs=0.15)

    # the pipeline undoes the scaling: scaled latents handed in at the last step decode to the images
    unet = UNet_from(LATENT_UNET)
    pipe = HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler(), vae=vae)
    pipe.set_progress_bar_config(disable=True)

    def last_step(pipe, i, t, kwargs):
        return {"latents": z[:4]} if i == 1 else {}

    images = pipe(batch_size=4, num_inference_steps=2, output_type="pt", callback_on_step_end=last_step).images
    with torch.no_grad():
        expected = (vae.decode(z[:4] / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)
    assert float(((images * 2 - 1) - x[:4]).pow(2).mean()) < 0.05


def UNet_from(config):
    torch.manual_seed(0)
    from diffusers import UNet2DModel

    return UNet2DModel.from_config({**config, "num_class_embeds": 11})


def test_vae_that_is_not_an_autoencoder_is_named(tmp_path):
    build_unet("tiny").save_pretrained(tmp_path / "unet")
    with pytest.raises(ValueError, match=r"holds a 'UNet2DModel', not an autoencoder; --vae takes a diffusers"):
        load_vae(str(tmp_path / "unet"))
    with pytest.raises(FileNotFoundError, match=r"no config.json could be read"):
        load_vae(str(tmp_path / "missing"))
    (tmp_path / "pipe" / "vae").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"It is a pipeline folder: pass --vae_subfolder vae"):
        load_vae(str(tmp_path / "pipe"))


def test_vae_file_is_refused_with_the_folder_to_pass(tmp_path):
    build_vae(VAETrainConfig(**TINY_VAE)).save_pretrained(tmp_path / "vae")
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        file = tmp_path / "vae" / name
        with pytest.raises(ValueError) as err:
            load_vae(str(file))
        assert str(err.value).startswith(f"--vae must be a folder or a Hub repository id, got the file {str(file)!r}")
        assert repr(str(tmp_path / "vae")) in str(err.value)
    assert type(load_vae(str(tmp_path / "vae"))) is AutoencoderKL  # the folder itself loads


# ---------------------------------------------------------------------------------------------------------------------
# The encode-once cache
# ---------------------------------------------------------------------------------------------------------------------
def test_cache_is_written_once_and_reused(small_digits, tmp_path):
    ds, columns = small_digits
    torch.manual_seed(0)
    vae = build_vae(VAETrainConfig(**TINY_VAE))
    kwargs = dict(resolution=16, cache_dir=str(tmp_path), show_progress=False)
    first = encode_dataset(ds, columns, vae, **kwargs)
    assert first.encoded and first.latents.shape == (50, 1, 4, 8, 8)
    assert os.path.dirname(first.path) == str(tmp_path / "hfddpm-latents")
    second = encode_dataset(ds, columns, vae, **kwargs)
    assert not second.encoded and second.path == first.path  # read, not encoded
    assert torch.equal(second.latents, first.latents) and torch.equal(second.labels, torch.tensor(ds["label"]))
    # the latents are the encoder's posterior means of the centre-cropped images
    x = digits(1, start=0)
    with torch.no_grad():
        torch.testing.assert_close(first.latents[0, 0], vae_encode(vae, x)[0], atol=1e-5, rtol=0)
    # with flips the cache holds the image and its mirror, encoded separately (a VAE is not mirror-equivariant)
    flipped = encode_dataset(ds, columns, vae, random_flip=True, **kwargs)
    assert flipped.encoded and flipped.path != first.path and flipped.latents.shape == (50, 2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(flipped.latents[0, 1], vae_encode(vae, x.flip(-1))[0], atol=1e-5, rtol=0)
    assert not torch.allclose(flipped.latents[0, 1], flipped.latents[0, 0].flip(-1), atol=1e-3)
    # another autoencoder (other weights) gets its own cache
    torch.nn.init.normal_(vae.encoder.conv_in.weight)
    assert encode_dataset(ds, columns, vae, **kwargs).encoded


def test_broken_images_are_skipped_counted_and_named_in_the_cache(small_digits, tmp_path, caplog):
    ds, columns = small_digits
    table = ds.cast_column("image", datasets.Image(decode=False))
    images = list(table["image"])
    for row in (3, 7):
        images[row] = {"bytes": b"not a png", "path": f"broken{row}.png"}
    broken = datasets.Dataset.from_dict({"image": images, "label": table["label"]}, features=table.features)
    vae = build_vae(VAETrainConfig(**TINY_VAE))
    kwargs = dict(resolution=16, cache_dir=str(tmp_path), show_progress=False)
    with caplog.at_level("WARNING", logger="hfddpm.data"):
        encoded = encode_dataset(broken, columns, vae, **kwargs)
    assert encoded.latents.shape[0] == 48 and encoded.num_bad_images == 2
    assert encoded.bad_examples == ["row 3 (broken3.png)", "row 7 (broken7.png)"]
    assert any("Skipping an image that could not be decoded: row 3 (broken3.png)" in m for m in caplog.messages)
    cached = encode_dataset(broken, columns, vae, **kwargs)  # read from the cache: the same counts and names
    assert not cached.encoded and (cached.num_bad_images, cached.bad_examples) == (2, encoded.bad_examples)


def test_killed_or_broken_cache_is_never_used(small_digits, tmp_path, caplog):
    ds, columns = small_digits
    vae = build_vae(VAETrainConfig(**TINY_VAE))
    kwargs = dict(resolution=16, cache_dir=str(tmp_path), show_progress=False)
    good = encode_dataset(ds, columns, vae, **kwargs)
    # an encode killed half-way leaves only its temporary file: the next run ignores it and encodes
    os.remove(good.path)
    with open(f"{good.path}.999.tmp", "wb") as f:
        f.write(b"\x00" * 100)
    again = encode_dataset(ds, columns, vae, **kwargs)
    assert again.encoded and torch.equal(again.latents, good.latents)
    # a damaged final file is encoded again (with a warning), never read as latents
    with open(good.path, "r+b") as f:
        f.truncate(200)
    repaired = encode_dataset(ds, columns, vae, **kwargs)
    assert repaired.encoded and torch.equal(repaired.latents, good.latents)
    assert "cannot be read" in caplog.text


def test_cache_built_with_another_vae_is_an_error(small_digits, tmp_path):
    ds, columns = small_digits
    kwargs = dict(resolution=16, cache_dir=str(tmp_path), show_progress=False)
    torch.manual_seed(0)
    vae_a = build_vae(VAETrainConfig(**TINY_VAE))
    vae_b = build_vae(VAETrainConfig(**TINY_VAE))
    path_a = encode_dataset(ds, columns, vae_a, **kwargs).path
    path_b = encode_dataset(ds, columns, vae_b, **kwargs).path
    shutil.copy(path_a, path_b)  # e.g. a cache folder copied between machines by hand
    with pytest.raises(ValueError, match=r"was built with vae='AutoencoderKL-\w+', but this run has vae="):
        encode_dataset(ds, columns, vae_b, **kwargs)


def test_latent_batches_pick_a_view_per_example_and_resume(small_digits, tmp_path):
    ds, columns = small_digits
    vae = build_vae(VAETrainConfig(**TINY_VAE))
    vae.register_to_config(scaling_factor=0.5)
    encoded = encode_dataset(ds, columns, vae, resolution=16, random_flip=True, cache_dir=str(tmp_path),
                             show_progress=False)  # fmt: skip
    batches = iter(make_latent_batches(encoded, vae, batch_size=8, seed=0))
    first, second = next(batches), next(batches)
    views = {0: 0, 1: 0}
    for row, label in zip(first["pixel_values"], first["class_labels"], strict=True):
        matches = [v for v in (0, 1) if any(torch.equal(row, encoded.latents[i, v] * 0.5) for i in range(50))]
        views[matches[0]] += 1
        assert label in range(10)
    assert views[0] and views[1]  # both the image and its mirror are drawn
    resumed = next(iter(make_latent_batches(encoded, vae, batch_size=8, seed=0, start=tuple(first["position"]))))
    assert torch.equal(resumed["pixel_values"], second["pixel_values"])


def test_latents_above_the_cap_stay_in_host_memory_with_the_same_batches(small_digits, tmp_path):
    ds, columns = small_digits
    vae = build_vae(VAETrainConfig(**TINY_VAE))
    vae.register_to_config(scaling_factor=0.5, shift_factor=0.1)
    encoded = encode_dataset(ds, columns, vae, resolution=16, random_flip=True, cache_dir=str(tmp_path),
                             show_progress=False)  # fmt: skip
    nbytes = 50 * 2 * 4 * 8 * 8 * 4  # 50 examples x 2 views x 4x8x8 float32
    assert latent_bytes(len(ds), vae, 16, random_flip=True) == nbytes == encoded.latents.nbytes
    kwargs = dict(batch_size=8, seed=3, rank=1, world_size=2)
    on_device = make_latent_batches(encoded, vae, **kwargs, max_bytes=nbytes)  # exactly the cap: kept on the device
    on_host = make_latent_batches(encoded, vae, **kwargs, max_bytes=nbytes - 1)
    assert on_device.resident and not on_host.resident
    assert torch.equal(on_host.latents, on_device.latents)  # the same scaled latents, (z - 0.1) * 0.5
    reference, host = iter(on_device), iter(on_host)
    keys = {"pixel_values", "class_labels", "num_bad_images", "num_read_images", "position"}
    for _ in range(8):  # past an epoch boundary (25 examples per process)
        a, b = next(reference), next(host)
        assert a.keys() == b.keys() == keys
        assert all(torch.equal(a[k], b[k]) for k in a)
    start = tuple(a["position"].tolist())
    resumed = next(iter(make_latent_batches(encoded, vae, **kwargs, start=start, max_bytes=0)))
    assert torch.equal(resumed["pixel_values"], next(reference)["pixel_values"])


def test_a_latent_run_takes_the_gpu_recipe_only_with_its_latents_on_the_device(tmp_path):
    vae_dir, unet_file = tmp_path / "vae", tmp_path / "unet.json"
    build_vae(VAETrainConfig(**TINY_VAE)).save_pretrained(vae_dir)
    unet_file.write_text(json.dumps(LATENT_UNET))
    for flags, views in (({}, 1), ({"random_flip": True}, 2)):
        config = TrainConfig(vae=str(vae_dir), unet_config=str(unet_file), resolution=16, **flags)
        run = setup(config)
        nbytes = 5000 * views * 4 * 8 * 8 * 4  # the embedded digits' latents, as LatentBatches holds them
        assert resident_data(config, run, "cpu", max_bytes=nbytes) == (None, None)
        decoded, why = resident_data(config, run, "cpu", max_bytes=nbytes - 1)
        assert decoded is None and why.startswith("the latents take")
        assert choose_recipe("cuda", why) == ("fallback", f"the data is not kept on the device: {why}")
        assert choose_recipe("cuda", None)[0] == "gpu"
        # --no_data_on_device: the latents stay in host memory however small (LatentBatches gets max_bytes=0)
        off = dataclasses.replace(config, data_on_device=False)
        assert resident_data(off, run, "cpu", max_bytes=nbytes) == (None, "--no_data_on_device")
        assert choose_recipe("cuda", "--no_data_on_device")[0] == "fallback"


# ---------------------------------------------------------------------------------------------------------------------
# Bad input of a latent run
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"resolution": 15}, ValueError, r"resolution=15 cannot be encoded by this autoencoder: it downsamples by 2,"
         r" so the resolution must be divisible by 2. Use e.g. --resolution 14 or 16"),
        ({"preset": "mnist", "unet_config": None}, ValueError, r"The UNet \(mnist\) has in_channels=1, out_channels=1,"
         r" but the autoencoder makes 4-channel latents; use a latent preset"),
        ({"resolution": 18}, ValueError, r"The latents of 18 px images are 4x9x9 \(the autoencoder downsamples by 2\),"
         r" but the UNet .* needs a latent size divisible by 2. Use e.g. --resolution 16 or 20"),
        ({"streaming": True, "max_train_steps": 1}, ValueError, r"--vae .* with --streaming: latents are"),
        ({"vae": None, "vae_subfolder": "vae"}, ValueError, r"--vae_subfolder and --vae_revision need --vae"),
    ],
)  # fmt: skip
def test_bad_latent_settings_are_named(trained_vae, tmp_path, overrides, error, message):
    config_file = tmp_path / "unet.json"
    config_file.write_text(json.dumps(LATENT_UNET))
    values = {"vae": str(trained_vae), "unet_config": str(config_file), "resolution": 16, **overrides}
    with pytest.raises(error, match=message):
        setup(TrainConfig(**values))


def test_unet_size_follows_the_autoencoder(trained_vae):
    run = setup(TrainConfig(vae=str(trained_vae), preset="latent8"))  # no --resolution: 8x8 latents -> 16 px
    assert run.resolution == 16 and run.unet.config.sample_size == 8 and run.unet.config.in_channels == 4
    assert run.resolved()["latent_size"] == 8 and run.resolved()["vae_downsample_factor"] == 2
    run = setup(TrainConfig(vae=str(trained_vae), preset="latent8", resolution=32))
    assert run.unet.config.sample_size == 16


# ---------------------------------------------------------------------------------------------------------------------
# Training, saving, loading, sampling
# ---------------------------------------------------------------------------------------------------------------------
def _latent_args(trained_vae, tmp_path, out):
    config_file = tmp_path / "latent_unet.json"
    config_file.write_text(json.dumps(LATENT_UNET))
    return ["--vae", str(trained_vae), "--unet_config", str(config_file), "--resolution", "16", "--output_dir",
            str(out), "--max_train_steps", "2", "--cache_dir", str(tmp_path / "cache")]  # fmt: skip


def test_class_conditional_latent_training_reuses_the_cache_and_samples(trained_vae, tmp_path):
    out = tmp_path / "run"
    first = run_train(_latent_args(trained_vae, tmp_path, out), tmp_path)
    assert "Encoded the dataset into" in first.stderr
    assert re.search(r"The scaled latents are kept on cpu \(\d+ MiB\)\.", first.stderr)
    assert len(os.listdir(tmp_path / "cache" / "hfddpm-latents")) == 1
    index = json.loads((out / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert json.loads((out / "vae" / "config.json").read_text())["scaling_factor"] == pytest.approx(
        AutoencoderKL.from_pretrained(trained_vae).config.scaling_factor
    )
    resolved = json.loads((out / "training_config.json").read_text())["resolved"]
    assert resolved["class_conditional"] and resolved["num_classes"] == 10 and resolved["latent_size"] == 8
    card = (out / "README.md").read_text()
    assert "# Latent DDPM for mnist_5k" in card and "latent diffusion model" in card and "4×8×8 latents" in card
    assert "16×16 grayscale images" in card

    # a second run reads the cache (does not encode); --no_data_on_device keeps the latents in host memory
    second = run_train([*_latent_args(trained_vae, tmp_path, tmp_path / "run2"), "--no_data_on_device"], tmp_path)
    assert "Read the cached latents from" in second.stderr and "Encoded the dataset" not in second.stderr
    assert re.search(r"The scaled latents \(\d+ MiB\) stay in host memory \(--no_data_on_device\), and each batch is"
                     r" copied to cpu\.", second.stderr)  # fmt: skip

    # continuing the latent pipeline uses its own autoencoder (same identity: the same cache)
    args = ["--pretrained_model_name_or_path", str(out), "--output_dir", str(tmp_path / "run3"), "--max_train_steps",
            "1", "--cache_dir", str(tmp_path / "cache")]  # fmt: skip
    third = run_train(args, tmp_path)
    assert "Read the cached latents from" in third.stderr
    assert json.loads((tmp_path / "run3" / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderKL"]

    # the saved pipeline decodes to 16 px grey images, class-conditionally
    pipe = HFDDPMPipeline.from_pretrained(out)
    assert type(pipe.vae) is AutoencoderKL
    pipe.set_progress_bar_config(disable=True)
    images = pipe(generator=torch.Generator().manual_seed(0), **SAMPLE).images
    assert images.shape == (2, 16, 16, 1)

    # hfddpm sample / evaluate work on it unchanged
    assert cli_main(["sample", str(out), "--num-images", "4", "--num-inference-steps", "2", "--out",
                     str(tmp_path / "grid.png")]) == 0  # fmt: skip
    assert (tmp_path / "grid.png").is_file()
    metrics = tmp_path / "metrics.json"
    args = ["evaluate", str(out), "--num-images", "10", "--num-inference-steps", "2", "--out", str(metrics)]
    assert cli_main(args) == 0
    results = json.loads(metrics.read_text())
    assert results["num_samples"] == 10 and results["fd_digits"] > 0 and sum(results["class_histogram"]) == 10


@pytest.fixture(scope="module")
def saved_latent(trained_vae, tmp_path_factory):
    pipe = HFDDPMPipeline(unet=UNet_from(LATENT_UNET), scheduler=HFDDPMScheduler(noise_schedule="sigmoid"),
                          vae=AutoencoderKL.from_pretrained(trained_vae))  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    folder = tmp_path_factory.mktemp("latent_pipe")
    pipe.save_pretrained(folder)
    return folder, pipe(generator=torch.Generator().manual_seed(0), **SAMPLE).images


def test_latent_pipeline_saves_and_loads_three_ways_with_equal_images(saved_latent, tmp_path):
    folder, expected = saved_latent
    assert expected.shape == (2, 16, 16, 1)
    assert sorted(os.listdir(folder / "vae")) == ["config.json", "diffusion_pytorch_model.safetensors"]
    # 1. hfddpm's class
    pipe = HFDDPMPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(pipe(generator=torch.Generator().manual_seed(0), **SAMPLE).images, expected, atol=1e-5)
    code = """
        import sys
        {hide}
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({folder!r}, trust_remote_code=True)
        assert type(pipe.vae).__name__ == "AutoencoderKL" and sys.modules.get("hfddpm") is None
        pipe.set_progress_bar_config(disable=True)
        np.save({{out!r}}, pipe(generator=torch.Generator().manual_seed(0), **{{sample}}).images)
        """
    for hide in ("", 'sys.modules["hfddpm"] = None  # as if hfddpm were not installed'):
        # 2. DiffusionPipeline with trust_remote_code; 3. the same without hfddpm
        images = run_child(code.format(hide=hide, folder=str(folder)), tmp_path)
        np.testing.assert_allclose(images, expected, atol=1e-5)


def test_pixel_pipeline_has_no_vae_and_tiny_autoencoder_loads(tmp_path):
    pixel = HFDDPMPipeline(unet=build_unet("tiny", in_channels=1, out_channels=1, sample_size=8),
                           scheduler=HFDDPMScheduler())  # fmt: skip
    pixel.save_pretrained(tmp_path / "pixel")
    assert HFDDPMPipeline.from_pretrained(tmp_path / "pixel").vae is None
    assert json.loads((tmp_path / "pixel" / "model_index.json").read_text())["vae"] == [None, None]
    # the loader's allowlist: the vae entry must name an AutoencoderKL or AutoencoderTiny
    index = json.loads((tmp_path / "pixel" / "model_index.json").read_text())
    (tmp_path / "pixel" / "model_index.json").write_text(json.dumps({**index, "vae": ["diffusers", "UNet2DModel"]}))
    with pytest.raises(
        ValueError, match=r"'vae' is .* has no AutoencoderKL or AutoencoderTiny subclass 'UNet2DModel'"
    ):
        HFDDPMPipeline.from_pretrained(tmp_path / "pixel")
    taesd = AutoencoderTiny(in_channels=1, out_channels=1, encoder_block_out_channels=[8, 8],
                            decoder_block_out_channels=[8, 8], num_encoder_blocks=[1, 1], num_decoder_blocks=[1, 1],
                            latent_channels=4)  # fmt: skip
    taesd.save_pretrained(tmp_path / "taesd")
    vae = load_vae(str(tmp_path / "taesd"))
    assert type(vae) is AutoencoderTiny
    latent = HFDDPMPipeline(unet=UNet_from(LATENT_UNET), scheduler=HFDDPMScheduler(), vae=vae)
    latent.save_pretrained(tmp_path / "tiny")
    loaded = HFDDPMPipeline.from_pretrained(tmp_path / "tiny")
    assert type(loaded.vae) is AutoencoderTiny
    loaded.set_progress_bar_config(disable=True)
    assert loaded(num_inference_steps=1, output_type="np").images.shape == (1, 16, 16, 1)


def test_two_process_latent_run(trained_vae, tmp_path):
    out = tmp_path / "out"
    launcher = accelerate_launcher(2)
    args = [*_latent_args(trained_vae, tmp_path, out), "--train_batch_size", "4", "--validation_inference_steps", "1",
            "--validation_images_per_class", "1", "--random_flip"]  # fmt: skip
    result = subprocess.run([*launcher, str(TRAIN), *args], env=train_env(tmp_path, ACCELERATE_USE_CPU="1"),
                            capture_output=True, text=True, timeout=600, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    # process 0 encoded, process 1 read its file; one cache with both flips
    assert result.stderr.count("Encoded the dataset into") == 1
    assert result.stderr.count("Read the cached latents from") == 1
    assert len(os.listdir(tmp_path / "cache" / "hfddpm-latents")) == 1
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["images_seen"] == 2 * 2 * 4
    assert json.loads((out / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderKL"]


def test_latent_presets_take_four_channel_latents():
    for name, size in (("latent8", 8), ("latent32", 32)):
        assert UNET_PRESETS[name]["in_channels"] == 4 and UNET_PRESETS[name]["sample_size"] == size
    unet = build_unet("latent8", num_class_embeds=11)
    out = unet(torch.randn(2, 4, 8, 8), torch.tensor([1, 900]), class_labels=torch.tensor([0, 10])).sample
    assert out.shape == (2, 4, 8, 8)


def test_latent_benchmark_smoke_configuration(tmp_path):
    out = tmp_path / "latent_smoke.json"
    args = ["--batch-size", "8", "--rounds", "1", "--steps-per-round", "1", "--warmup-steps", "1",
            "--encode-images", "64", "--out", str(out)]  # fmt: skip
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_latent.py"), *args], capture_output=True,
                            text=True, env=train_env(tmp_path), timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    payload = json.loads(out.read_text())
    assert payload["encode"]["images"] == 64 and payload["encode"]["seconds"] > 0
    assert payload["results"]["latent"]["row"] == "`latent8` on 4x8x8 latents"
    assert payload["results"]["pixel"]["row"] == "`mnist` on 32x32x1 pixels"
    assert payload["latent_speedup"] == pytest.approx(
        payload["results"]["latent"]["images_per_second"] / payload["results"]["pixel"]["images_per_second"]
    )


def test_train_vae_script_saves_a_folder_that_vae_takes(tmp_path):
    out = tmp_path / "vae"
    args = ["--block_out_channels", "8,16", "--norm_num_groups", "4", "--resolution", "16", "--train_batch_size", "4",
            "--max_train_steps", "2", "--logging_steps", "1", "--output_dir", str(out)]  # fmt: skip
    result = subprocess.run([sys.executable, str(TRAIN_VAE), *args], capture_output=True, text=True,
                            env=train_env(tmp_path), timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    vae = load_vae(str(out))
    metrics = json.loads((out / "vae_metrics.json").read_text())
    assert vae.config.scaling_factor == pytest.approx(metrics["scaling_factor"]) and metrics["steps"] == 2
    assert [h["step"] for h in metrics["history"]] == [1, 2]


def test_two_process_vae_training_saves_one_folder_and_frees_its_ddp_model_first(tmp_path):
    out = tmp_path / "vae"
    args = ["--block_out_channels", "8,16", "--norm_num_groups", "4", "--resolution", "16", "--train_batch_size", "4",
            "--max_train_steps", "3", "--logging_steps", "1", "--output_dir", str(out)]  # fmt: skip
    # destroy_process_group wrapped (test side only) to count the DDP models still alive then: each must be 0
    prelude = COUNT_DDP_AT_DESTROY.format(log=str(tmp_path / "ddp_at_destroy_"))
    driver = write_train_driver(tmp_path / "counted_train_vae.py", prelude, script=TRAIN_VAE)
    result = subprocess.run([*accelerate_launcher(2), str(driver), *args], capture_output=True, text=True,
                            env=train_env(tmp_path, ACCELERATE_USE_CPU="1"), timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 process(es)" in result.stderr and result.stderr.count("Saved the autoencoder to") == 1
    metrics = json.loads((out / "vae_metrics.json").read_text())
    assert metrics["steps"] == 3 and [h["step"] for h in metrics["history"]] == [1, 2, 3]
    assert load_vae(str(out)).config.scaling_factor == pytest.approx(metrics["scaling_factor"])
    assert [(tmp_path / f"ddp_at_destroy_{rank}").read_text() for rank in (0, 1)] == ["0", "0"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"block_out_channels": "8,12", "norm_num_groups": 8}, r"--norm_num_groups 8 does not divide"
         r" --block_out_channels \[12\]; choose a common divisor of \[8, 12\]"),
        ({"block_out_channels": "8,x"}, r"--block_out_channels '8,x' is invalid: give positive integers"),
        ({"resolution": 0}, r"--resolution 0 is invalid: it must be an integer >= 1"),
        ({"kl_weight": float("nan")}, r"--kl_weight nan is invalid"),
        ({"lr_scheduler": "foo"}, r"--lr_scheduler 'foo' is invalid; choose one of \('linear', 'cosine', "),
    ],
)  # fmt: skip
def test_bad_vae_settings_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        VAETrainConfig(**overrides).validate()


def test_train_vae_refuses_an_earlier_run_before_training_unless_overwrite(tmp_path):
    out = tmp_path / "vae"
    settings = dict(**TINY_VAE, train_batch_size=4, mixed_precision="no", output_dir=str(out))
    train_vae(VAETrainConfig(**settings, max_train_steps=2))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert sorted(before) == ["config.json", "diffusion_pytorch_model.safetensors", "vae_metrics.json"]
    # refused before any data loads (the missing image folder is never reached), nothing written
    with pytest.raises(
        ValueError,
        match=r"holds an earlier run \(model files config.json, diffusion_pytorch_model"
        r".safetensors, vae_metrics.json\), and this run would replace it. Pass --overwrite_output_dir",
    ):
        train_vae(VAETrainConfig(**settings, max_train_steps=3, train_data_dir=str(tmp_path / "missing")))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # with --overwrite_output_dir it trains and replaces the autoencoder
    train_vae(VAETrainConfig(**settings, max_train_steps=3, overwrite_output_dir=True))
    assert json.loads((out / "vae_metrics.json").read_text())["steps"] == 3
    assert (out / "diffusion_pytorch_model.safetensors").read_bytes() != before["diffusion_pytorch_model.safetensors"]


def test_train_vae_refuses_a_pipeline_folder(tmp_path):
    pipe = tmp_path / "pipe"
    HFDDPMPipeline(unet=build_unet("tiny"), scheduler=HFDDPMScheduler()).save_pretrained(pipe)
    before = sorted(p.name for p in pipe.iterdir())
    for again in (False, True):  # even --overwrite_output_dir: the autoencoder would be loaded as its UNet
        with pytest.raises(ValueError, match=r"--output_dir '.*pipe' holds a pipeline \(model_index.json\): an"):
            config = VAETrainConfig(**TINY_VAE, max_train_steps=2, output_dir=str(pipe), overwrite_output_dir=again)
            train_vae(config)
        assert sorted(p.name for p in pipe.iterdir()) == before and not (pipe / "config.json").exists()


@pytest.mark.parametrize(
    "flags, status, message",
    [
        (["--resolution", "30"], 1, "train_vae.py: error: resolution=30 cannot be encoded by this autoencoder: it"
         " downsamples by 4, so the resolution must be divisible by 4. Use e.g. --resolution 28 or 32."),
        (["--lr_scheduler", "foo"], 2, "train_vae.py: error: argument --lr_scheduler: invalid choice: 'foo' (choose"
         " from 'linear', 'cosine', "),
        (["--output_dir", "earlier"], 1, "train_vae.py: error: --output_dir 'earlier' holds an earlier run (model"
         " files config.json), and this run would replace it. Pass --overwrite_output_dir"),
    ],
)  # fmt: skip
def test_train_vae_script_bad_flags_are_one_line(tmp_path, flags, status, message):
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "config.json").write_text("{}")
    result = subprocess.run([sys.executable, str(TRAIN_VAE), "--max_train_steps", "1", *flags], capture_output=True,
                            text=True, env=train_env(tmp_path), cwd=tmp_path, timeout=600)  # fmt: skip
    assert result.returncode == status, result.stderr[-4000:]
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-4000:]
    assert not (tmp_path / "hfddpm-vae").exists()
