"""Starting a run from a diffusers model, as diffusers' train_unconditional.py users do: the pretrained scheduler's
schedule and sampling settings carry over exactly (--pretrained_model_name_or_path), --unet_config
(--model_config_name_or_path) takes what that script takes or says why not, a preset's channels follow the data, and
a saved pipeline with a broken component entry is named."""

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from hub_server import USER_TOKEN
from huggingface_hub import HfApi, constants
from PIL import Image

from hfddpm import HFDDPMPipeline, HFDDPMScheduler
from hfddpm.cli import main
from hfddpm.training import TrainConfig, build_scheduler, build_training_unet, setup
from hfddpm.training.engine import configured_resolution

ROOT = Path(__file__).resolve().parents[1]
# a tiny UNet: 16 x 16 grey images, two levels
TINY_UNET = {
    "sample_size": 16,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [8, 16],
    "norm_num_groups": 4,
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
}
# what the diffusers script's users train with, beyond the defaults: every beta_schedule and zero terminal SNR
SCHEDULES = {
    "linear": {"beta_schedule": "linear"},
    "scaled_linear": {"beta_schedule": "scaled_linear"},
    "squaredcos_cap_v2": {"beta_schedule": "squaredcos_cap_v2"},
    "sigmoid": {"beta_schedule": "sigmoid"},
    "zero_snr": {"beta_schedule": "linear", "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
}
# DDPMScheduler's sampling settings, all away from hfddpm's defaults
SAMPLING = {
    "clip_sample": True,
    "clip_sample_range": 2.0,
    "thresholding": True,
    "dynamic_thresholding_ratio": 0.9,
    "sample_max_value": 1.5,
    "variance_type": "fixed_large",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "sample",
}


def _diffusers_pipeline(folder: Path, scheduler) -> Path:
    torch.manual_seed(0)
    DDPMPipeline(unet=UNet2DModel(**TINY_UNET), scheduler=scheduler).save_pretrained(folder)
    return folder


def _schedule_log(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "hfddpm.training.engine")


# ---------------------------------------------------------------------------------------------------------------------
# 1-2. The pretrained scheduler: its schedule exactly, its sampling settings, overrides logged, the rest refused
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, writer",
    [(name, DDPMScheduler) for name in SCHEDULES] + [(n, DDIMScheduler) for n in SCHEDULES if n != "sigmoid"],
)  # DDIMScheduler has no sigmoid betas
def test_pretrained_diffusers_schedule_carries_over_exactly(name, writer, tmp_path, caplog):
    original = writer(**SCHEDULES[name])
    folder = _diffusers_pipeline(tmp_path / "pipe", original)
    with caplog.at_level(logging.INFO, logger="hfddpm.training.engine"):
        scheduler = build_scheduler(TrainConfig(pretrained_model_name_or_path=str(folder)))
    torch.testing.assert_close(scheduler.alphas_cumprod, original.alphas_cumprod)
    if name == "zero_snr":
        assert scheduler.alphas_cumprod[-1].item() == original.alphas_cumprod[-1].item() == 0.0
    c = scheduler.config
    assert (c.beta_schedule, c.rescale_betas_zero_snr) == (original.config.beta_schedule, name == "zero_snr")
    assert (c.prediction_type, c.clip_sample, c.timestep_spacing) == (original.config.prediction_type, True, "leading")
    assert c.eta == (0.0 if writer is DDIMScheduler else 1.0)  # DDIM's step default, DDPM's ancestral step
    log = _schedule_log(caplog)
    assert f"The schedule of the pretrained pipeline {folder}: noise_schedule {c.noise_schedule}" in log
    assert f"(beta_schedule {original.config.beta_schedule})" in log
    assert ("rescaled to zero terminal SNR" in log) == (name == "zero_snr")


def test_pretrained_sampling_settings_round_trip(tmp_path):
    original = DDPMScheduler(beta_schedule="scaled_linear", **SAMPLING)
    folder = _diffusers_pipeline(tmp_path / "pipe", original)
    scheduler = build_scheduler(TrainConfig(pretrained_model_name_or_path=str(folder)))
    scheduler.save_pretrained(tmp_path / "saved")  # what the run saves
    again = DDPMScheduler.from_pretrained(tmp_path / "saved")
    for key, value in original.config.items():
        if not key.startswith("_") and key != "trained_betas":
            assert again.config[key] == value, key
    torch.testing.assert_close(again.alphas_cumprod, original.alphas_cumprod)
    # and it samples as the original: one ancestral step, the same noise
    x, out = torch.randn(2, 1, 4, 4, generator=torch.manual_seed(0)), torch.randn(2, 1, 4, 4) * 3
    for s in (original, scheduler):
        s.set_timesteps(10)
    t = original.timesteps[3]
    expected = original.step(out, t, x, generator=torch.manual_seed(1)).prev_sample
    torch.testing.assert_close(scheduler.step(out, t, x, generator=torch.manual_seed(1)).prev_sample, expected)


def test_flags_override_the_pretrained_scheduler_and_say_so(tmp_path, caplog):
    original = DDPMScheduler(beta_schedule="sigmoid", clip_sample=True)
    folder = _diffusers_pipeline(tmp_path / "pipe", original)
    with caplog.at_level(logging.INFO, logger="hfddpm.training.engine"):
        kept = build_scheduler(TrainConfig(pretrained_model_name_or_path=str(folder), prediction_type="v_prediction"))
    torch.testing.assert_close(kept.alphas_cumprod, original.alphas_cumprod)  # the schedule is kept
    assert (kept.config.prediction_type, kept.config.clip_sample) == ("v_prediction", True)
    assert f"--prediction_type v_prediction replaces the epsilon of the pretrained scheduler of {folder}" in (
        _schedule_log(caplog)
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hfddpm.training.engine"):
        rebuilt = build_scheduler(TrainConfig(pretrained_model_name_or_path=str(folder), noise_schedule="cosine"))
    torch.testing.assert_close(rebuilt.alphas_cumprod, HFDDPMScheduler(noise_schedule="cosine").alphas_cumprod)
    assert (rebuilt.config.clip_sample, rebuilt.config.timestep_spacing) == (True, "leading")  # sampling kept
    assert "--noise_schedule cosine replaces the sigmoid_betas of the pretrained scheduler" in _schedule_log(caplog)
    # the same value as the pretrained one is no change: the saved schedule stays, bit for bit
    same = build_scheduler(
        TrainConfig(pretrained_model_name_or_path=str(folder), noise_schedule="sigmoid_betas", ddpm_num_steps=1000)
    )
    assert torch.equal(same.alphas_cumprod, kept.alphas_cumprod)


def test_scheduler_settings_hfddpm_cannot_represent_are_refused(tmp_path):
    folder = _diffusers_pipeline(tmp_path / "karras", DPMSolverMultistepScheduler(use_karras_sigmas=True))
    with pytest.raises(ValueError, match=r"DPMSolverMultistepScheduler\) has settings that HFDDPMScheduler.*cannot"
                       r" represent: use_karras_sigmas=True\. Save the pipeline with a DDPMScheduler"):  # fmt: skip
        build_scheduler(TrainConfig(pretrained_model_name_or_path=str(folder)))
    # another sampler at its defaults: its training schedule is the model's, the sampler's own settings are not
    folder = _diffusers_pipeline(tmp_path / "dpm", DPMSolverMultistepScheduler(beta_schedule="scaled_linear"))
    scheduler = build_scheduler(TrainConfig(pretrained_model_name_or_path=str(folder)))
    torch.testing.assert_close(scheduler.alphas_cumprod, DDPMScheduler(beta_schedule="scaled_linear").alphas_cumprod)
    # ... and a flag changing it is rebuilt from the settings HFDDPMScheduler takes, not the sampler's own
    flagged = build_scheduler(TrainConfig(pretrained_model_name_or_path=str(folder), prediction_type="v_prediction"))
    assert flagged.config.prediction_type == "v_prediction" and "algorithm_type" not in flagged.config
    torch.testing.assert_close(flagged.alphas_cumprod, scheduler.alphas_cumprod)
    # a real setting among the keys of an older diffusers: the setting is refused, the old keys are not
    folder = _old_config(
        _diffusers_pipeline(tmp_path / "old_karras", DPMSolverMultistepScheduler(use_karras_sigmas=True)),
        tensor_format="pt",
        predict_epsilon=True,
    )
    with pytest.raises(ValueError, match=r"cannot represent: use_karras_sigmas=True\. Save the pipeline"):
        build_scheduler(TrainConfig(pretrained_model_name_or_path=str(folder)))
    # a beta_schedule hfddpm does not know: named, with the ones it knows
    folder = _diffusers_pipeline(tmp_path / "exp", DDPMScheduler())
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "beta_schedule": "exp"}))
    with pytest.raises(ValueError, match=r"cannot be trained with HFDDPMScheduler: beta_schedule='exp' is not valid:"
                       r" choose one of \('linear', 'scaled_linear', 'squaredcos_cap_v2', 'sigmoid'\)"):  # fmt: skip
        build_scheduler(TrainConfig(pretrained_model_name_or_path=str(folder)))
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"scheduler of --pretrained_model_name_or_path .* could not be read"):
        build_scheduler(TrainConfig(pretrained_model_name_or_path=str(folder)))


# keys of older diffusers versions' scheduler configs, which diffusers ignores (predict_epsilon: read as its
# deprecation read it, unless the config has a prediction_type) -> the prediction_type they are read as
OLD_KEYS = [
    ({"predict_epsilon": True}, "epsilon"),
    ({"predict_epsilon": False}, "sample"),
    ({"tensor_format": "pt"}, "epsilon"),
    ({"timestep_values": None}, "epsilon"),
    ({"predict_epsilon": False, "tensor_format": "pt", "timestep_values": None}, "sample"),
    ({"predict_epsilon": False, "prediction_type": "v_prediction"}, "v_prediction"),
    ({"predict_epsilon": True, "prediction_type": "sample"}, "sample"),
]


def _old_config(folder: Path, **keys) -> Path:
    """``folder``'s scheduler config as an older diffusers wrote it: no prediction_type unless ``keys`` has one."""
    path = folder / "scheduler" / "scheduler_config.json"
    config = {k: v for k, v in json.loads(path.read_text()).items() if k != "prediction_type"}
    path.write_text(json.dumps({**config, **keys, "_diffusers_version": "0.8.0"}))
    return folder


@pytest.mark.parametrize("keys, prediction_type", OLD_KEYS)
def test_an_older_diffusers_scheduler_config_fine_tunes(keys, prediction_type, tmp_path, caplog, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    folder = _old_config(_diffusers_pipeline(tmp_path / "old", DDPMScheduler(beta_schedule="sigmoid")), **keys)
    grey = _image_folder(tmp_path / "grey", "L")
    with caplog.at_level(logging.INFO, logger="hfddpm.training.engine"):
        run = setup(TrainConfig(pretrained_model_name_or_path=str(folder), train_data_dir=str(grey)))
    messages = [r.getMessage() for r in caplog.records]
    scheduler = run.noise_scheduler
    assert scheduler.config.prediction_type == prediction_type
    # the scheduler's own loading reads the folder the same way
    assert HFDDPMScheduler.from_pretrained(folder, subfolder="scheduler").config.prediction_type == prediction_type
    expected = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    torch.testing.assert_close(scheduler.alphas_cumprod, expected.alphas_cumprod)
    old = {k: v for k, v in keys.items() if k != "prediction_type"}
    assert not old.keys() & scheduler.config.keys()  # not carried into the run's saved scheduler
    ignored = [m for m in messages if "no longer takes" in m]
    others = {k: v for k, v in old.items() if k != "predict_epsilon"}
    assert len(ignored) == bool(others)  # said once, naming the pipeline and the keys
    if others:
        assert str(folder) in ignored[0] and "predict_epsilon" not in ignored[0]
        assert f"no longer takes, ignored: {', '.join(f'{k}={v!r}' for k, v in sorted(others.items()))}." in ignored[0]
    read = [m for m in messages if m.startswith("predict_epsilon=")]
    said = f"predict_epsilon={keys.get('predict_epsilon')!r} (diffusers before 0.10) is"
    if "predict_epsilon" in keys and "prediction_type" not in keys:  # read, and said once
        assert read == [f"{said} read as prediction_type={prediction_type!r}."]
    elif "predict_epsilon" in keys:  # the config's prediction_type kept, the contradiction said once
        assert read == [f"{said} ignored: the config's prediction_type={prediction_type!r} replaces it."]
    else:
        assert not read


def test_a_predict_epsilon_that_is_not_true_or_false_is_named(tmp_path):
    folder = _old_config(_diffusers_pipeline(tmp_path / "old", DDPMScheduler()), predict_epsilon="false")
    with pytest.raises(ValueError, match=r"scheduler of --pretrained_model_name_or_path .* cannot be trained with"
                       r" HFDDPMScheduler: predict_epsilon='false' is not valid: true \(prediction_type epsilon\)"
                       r" or false \(sample\)\.$"):  # fmt: skip
        build_scheduler(TrainConfig(pretrained_model_name_or_path=str(folder)))


def test_train_py_fine_tunes_a_sigmoid_diffusers_model_on_its_schedule(tmp_path):
    """The tester's command: the saved scheduler is the pretrained one's (schedule and clipping), and the log says
    which schedule was taken."""
    original = DDPMScheduler(beta_schedule="sigmoid")
    folder = _diffusers_pipeline(tmp_path / "dsig", original)
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8), "L").save(images / f"{i}.png")
    out = tmp_path / "out"
    args = ["--train_data_dir", str(images), "--pretrained_model_name_or_path", str(folder), "--max_train_steps", "1",
            "--output_dir", str(out), "--train_batch_size", "4", "--validation_inference_steps", "2",
            "--eval_batch_size", "1"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "training" / "train.py"), *args], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        f"The schedule of the pretrained pipeline {folder}: noise_schedule sigmoid_betas (beta_schedule sigmoid)"
        in (result.stderr)
    )
    saved = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (saved["noise_schedule"], saved["clip_sample"], saved["timestep_spacing"]) == (
        "sigmoid_betas",
        True,
        "leading",
    )
    reloaded = DDPMScheduler.from_pretrained(out, subfolder="scheduler")
    torch.testing.assert_close(reloaded.alphas_cumprod, original.alphas_cumprod)
    assert json.loads((out / "training_config.json").read_text())["resolved"]["noise_schedule"] == "sigmoid_betas"


# ---------------------------------------------------------------------------------------------------------------------
# 3-5. --unet_config / --model_config_name_or_path
# ---------------------------------------------------------------------------------------------------------------------
def _unet(unet_config: str, **flags) -> UNet2DModel:
    return build_training_unet(TrainConfig(unet_config=unet_config, **flags), num_classes=0)


def test_unet_config_file_folder_and_alias(tmp_path):
    (tmp_path / "unet.json").write_text(json.dumps({"_class_name": "UNet2DModel", **TINY_UNET}))
    assert list(_unet(str(tmp_path / "unet.json")).config.block_out_channels) == [8, 16]
    UNet2DModel(**TINY_UNET).save_config(tmp_path / "folder")
    assert _unet(str(tmp_path / "folder")).config.sample_size == 16
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "training" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    args = train.parse_args(["--model_config_name_or_path", str(tmp_path / "folder")])
    assert TrainConfig.from_args(args).unet_config == str(tmp_path / "folder")


def test_bad_unet_configs_are_named_with_the_fix(tmp_path):
    pipeline = _diffusers_pipeline(tmp_path / "pipe", DDPMScheduler())
    cases = [
        (pipeline, FileNotFoundError, rf"is a folder without config.json\. Did you mean {pipeline / 'unet'}\?"),
        (tmp_path, FileNotFoundError, r"is a folder without config.json\. Pass a UNet2DModel config JSON file"),
        (
            pipeline / "scheduler" / "scheduler_config.json",
            ValueError,
            r"is a DDPMScheduler config, not a UNet2DModel",
        ),
        (pipeline / "model_index.json", ValueError, r"is a DDPMPipeline config.*pass --pretrained_model_name_or_path"),
        ("/no/config.json", FileNotFoundError, r"--unet_config '/no/config.json' does not exist"),
    ]
    (tmp_path / "weights.bin").write_bytes(b"\x80\x04not json")
    cases.append((tmp_path / "weights.bin", ValueError, r"weights\.bin is not a JSON file \("))
    (tmp_path / "list.json").write_text("[1, 2]")
    cases.append((tmp_path / "list.json", ValueError, r"holds a JSON list, not a UNet2DModel config object"))
    (tmp_path / "other.json").write_text(json.dumps({"learning_rate": 1e-4, "format_version": 1}))
    cases.append((tmp_path / "other.json", ValueError, r"holds none of UNet2DModel's settings"))
    for path, error, match in cases:
        with pytest.raises(error, match=match):
            _unet(str(path))
        with pytest.raises(error, match=match):  # audio runs read the resolution first: the same error
            configured_resolution(TrainConfig(unet_config=str(path)))
    assert _unet(str(pipeline / "unet")).config.sample_size == 16  # what the hint names works


def test_unet_config_from_a_hub_repository(hub, tmp_path):
    api = HfApi(token=USER_TOKEN)
    api.create_repo("user/ddpm-tiny")
    config = json.dumps({"_class_name": "UNet2DModel", **TINY_UNET, "sample_size": 8}).encode()
    api.upload_file(path_or_fileobj=config, path_in_repo="config.json", repo_id="user/ddpm-tiny")
    cache = tmp_path / "cache"
    unet = _unet("user/ddpm-tiny", cache_dir=str(cache))
    assert unet.config.sample_size == 8 and list(unet.config.block_out_channels) == [8, 16]
    assert list(cache.rglob("config.json"))  # downloaded into --cache_dir
    with pytest.raises(FileNotFoundError, match=r"'user/missing' is not a local file or folder, and its config.json"
                       r" could not be read from the Hub \(RepositoryNotFoundError"):  # fmt: skip
        _unet("user/missing", cache_dir=str(cache))


def test_unet_config_hub_id_offline_names_hf_hub_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=r"'google/ddpm-cifar10-32' is not a local file or folder.*"
                       r" HF_HUB_OFFLINE is set, so only repositories already in the local cache load"):  # fmt: skip
        _unet("google/ddpm-cifar10-32", cache_dir=str(tmp_path / "empty-cache"))


# ---------------------------------------------------------------------------------------------------------------------
# 6. A saved pipeline whose model_index.json lists a component its folder does not hold
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "pipe"
    HFDDPMPipeline(unet=UNet2DModel(**TINY_UNET), scheduler=HFDDPMScheduler()).save_pretrained(folder)
    return folder


def _set_index(folder: Path, **entries):
    path = folder / "model_index.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **entries}))


def test_a_missing_component_is_named(saved, tmp_path, capsys):
    _set_index(saved, vae=["diffusers", "AutoencoderKL"])
    index = saved / "model_index.json"
    with pytest.raises(FileNotFoundError, match=rf"{index} lists 'vae' as \[\"diffusers\", \"AutoencoderKL\"\], but"
                       rf" {saved / 'vae' / 'config.json'} does not exist\..*\"vae\": \[null, null\]"):  # fmt: skip
        HFDDPMPipeline.from_pretrained(saved)
    assert main(["sample", str(saved), "--out", str(tmp_path / "grid.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hfddpm sample: error: {index} lists 'vae'") and err.count("\n") == 1
    _set_index(saved, vae=[None, None], mel=["mel_hfddpm", "HFDDPMMel"], _class_name=["pipeline_hfddpm_audio",
               "HFDDPMAudioPipeline"])  # fmt: skip
    with pytest.raises(FileNotFoundError, match=rf"lists 'mel' as .*, but {saved / 'mel' / 'mel_config.json'} does"):
        HFDDPMPipeline.from_pretrained(saved)


def test_an_unreadable_component_config_is_named(saved):
    (saved / "scheduler" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(
        ValueError, match=r"lists 'scheduler' as .*, but \S+scheduler cannot be loaded \(It looks like"
    ):
        HFDDPMPipeline.from_pretrained(saved)


# ---------------------------------------------------------------------------------------------------------------------
# 7. A preset's channels follow the data; --unet_config decides its own
# ---------------------------------------------------------------------------------------------------------------------
def _image_folder(folder: Path, mode: str) -> Path:
    folder.mkdir()
    for i in range(3):
        Image.new(mode, (16, 16), color=(40 * i,) * len(mode) if len(mode) > 1 else 40 * i).save(folder / f"{i}.png")
    return folder


def test_a_preset_takes_the_channels_of_the_data(tmp_path, caplog, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    grey, colour = _image_folder(tmp_path / "grey", "L"), _image_folder(tmp_path / "colour", "RGB")
    with caplog.at_level(logging.INFO, logger="hfddpm.training.engine"):
        run = setup(TrainConfig(train_data_dir=str(grey), preset="tiny", resolution=16))
    assert (run.unet.config.in_channels, run.unet.config.out_channels) == (1, 1)
    assert "--preset tiny takes 3-channel images, but the data is grey: its UNet is built with in_channels =" in (
        _schedule_log(caplog)
    )
    assert setup(TrainConfig(train_data_dir=str(colour), preset="mnist", resolution=16)).unet.config.in_channels == 3
    assert setup(TrainConfig(train_data_dir=str(colour), preset="tiny", resolution=16)).unet.config.in_channels == 3
    (tmp_path / "rgb.json").write_text(json.dumps({**TINY_UNET, "in_channels": 3, "out_channels": 3}))
    run = setup(TrainConfig(train_data_dir=str(grey), unet_config=str(tmp_path / "rgb.json")))
    assert run.unet.config.in_channels == 3  # the config's channels: the grey data is converted to them


def test_a_broken_image_does_not_stop_a_preset_run_setting_up(tmp_path, monkeypatch):
    """The channels are judged on the images that can be read; the training loop skips and counts the broken ones."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    grey = _image_folder(tmp_path / "grey", "L")
    (grey / "broken.png").write_bytes(np.random.default_rng(0).bytes(300))
    for streaming in (False, True):
        run = setup(TrainConfig(train_data_dir=str(grey), preset="tiny", resolution=16, streaming=streaming))
        assert (run.unet.config.in_channels, run.unet.config.out_channels) == (1, 1), streaming
    # nothing readable among the images looked at: the preset's own channels
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(2):
        (broken / f"{i}.png").write_bytes(np.random.default_rng(i).bytes(300))
    assert setup(TrainConfig(train_data_dir=str(broken), preset="tiny", resolution=16)).unet.config.in_channels == 3
    assert setup(TrainConfig(train_data_dir=str(broken), preset="mnist", resolution=16)).unet.config.in_channels == 1
