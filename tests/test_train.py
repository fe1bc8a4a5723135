"""training/train.py end to end: real subprocess runs (plain python and `accelerate launch`) of a few steps of a tiny
UNet, and the input checks in-process.

The subprocess runs share one small recipe (UNet with block_out_channels [8, 16], batch 8, 4-6 steps); there are six
of them, most of their time is importing torch and diffusers.
"""

import hashlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from train_helpers import accelerate_launcher, write_train_driver

from hfddpm import UNET_PRESETS
from hfddpm.training import (
    TrainConfig,
    check_trackers,
    default_mixed_precision,
    precision,
    resolve_mixed_precision,
    setup,
)
from hfddpm.training.loop import check_bad_images, choose_recipe, resident_data

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "training" / "train.py"

TINY = UNET_PRESETS["tiny"]  # overridden below to the test resolutions
TINY_MNIST = {**TINY, "sample_size": 28, "in_channels": 1, "out_channels": 1}
TINY_RGB16 = {**TINY, "sample_size": 16, "in_channels": 3, "out_channels": 3}


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    root = tmp_path_factory.mktemp("configs")
    paths = {}
    for name, config in {"mnist": TINY_MNIST, "rgb16": TINY_RGB16}.items():
        paths[name] = root / f"{name}.json"
        paths[name].write_text(json.dumps(config))
    return paths


def _env(tmp: Path, **extra) -> dict:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp / "hf_home"),
        CUDA_VISIBLE_DEVICES="",  # CPU: the resume test compares weights exactly
        OMP_NUM_THREADS="1",  # tiny models: one thread each is fastest, and robust on a busy machine
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        **extra,
    )
    return env


def _common(config: Path, output_dir: Path) -> list[str]:
    return [
        "--unet_config", str(config),
        "--output_dir", str(output_dir),
        "--train_batch_size", "8",
        "--lr_warmup_steps", "2",
        "--logging_steps", "2",
        "--validation_inference_steps", "2",
        "--validation_images_per_class", "2",
        "--eval_batch_size", "4",
    ]  # fmt: skip


def _run(args: list[str], tmp: Path, *, processes: int = 0, **env) -> subprocess.CompletedProcess:
    """``python train.py`` (processes=0) or ``accelerate launch --num_processes N`` on CPU (gloo)."""
    if processes:
        launcher = accelerate_launcher(processes)
        env.setdefault("ACCELERATE_USE_CPU", "1")
    else:
        launcher = [sys.executable]
    result = subprocess.run(
        [*launcher, str(TRAIN), *args], env=_env(tmp, **env), capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        raise AssertionError(
            f"train.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def _assert_same_weights(a: Path, b: Path):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6, msg=key)


def _ema_checksums(output: str) -> dict[int, float]:
    found = {}
    for line in output.splitlines():
        if "EMA checksum of process" in line:
            rank, value = line.rsplit("EMA checksum of process ", 1)[1].split(": ")
            found[int(rank)] = float(value)
    return found


# ---------------------------------------------------------------------------------------------------------------------
# One process: the embedded data, class-conditional by default
# ---------------------------------------------------------------------------------------------------------------------
REFERENCE_ARGS = [
    "--max_train_steps", "6",
    "--checkpointing_steps", "2",
    "--checkpoints_total_limit", "2",
    "--validation_steps", "4",
    "--seed", "3",
]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory, configs):
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "out"
    result = _run([*_common(configs["mnist"], out), *REFERENCE_ARGS, "--report_to", "tensorboard"], tmp)
    return out, result


def test_reference_run_writes_a_loadable_pipeline(reference):
    from hfddpm import HFDDPMPipeline

    out, result = reference
    for name in ("model_index.json", "pipeline_hfddpm.py", "unet/config.json", "scheduler/scheduler_config.json",
                 "README.md", "samples/step_000004.png", "samples/final.png", "train_metrics.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert list((out / "logs").rglob("events.out.tfevents.*")), "no tensorboard events"

    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["images_seen"] == 48
    assert metrics["wall_time_s"] > 0 and metrics["train_images_per_second"] > 0
    assert metrics["run_time_s"] > metrics["wall_time_s"]  # start-up, the loop, the final save and grid
    assert np.isfinite(metrics["final_loss"]) and metrics["skipped_images"] == 0
    config = metrics["training_config"]
    assert config["class_conditional"] and config["num_classes"] == 10 and config["label_column"] == "label"
    assert config["noise_schedule"] == "cosine" and config["prediction_type"] == "v_prediction"
    assert config["snr_gamma"] == 5.0 and config["use_ema"] and config["resolution"] == 28
    assert config["mixed_precision"] == default_mixed_precision("cpu")  # bf16 on CPUs with AVX512-BF16/AMX

    pipe = HFDDPMPipeline.from_pretrained(out)
    assert pipe.unet.config.num_class_embeds == 11 and pipe.num_classes == 10
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    images = pipe(batch_size=2, class_labels=[3, 7], num_inference_steps=2, output_type="np",
                  generator=torch.manual_seed(0)).images  # fmt: skip
    assert images.shape == (2, 28, 28, 1) and np.isfinite(images).all()
    # one row per class, two images per row
    assert Image.open(out / "samples" / "final.png").size == (2 * 28, 10 * 28)
    assert "Saved the pipeline" in result.stderr


def test_checkpoint_limit_and_contents(reference):
    out, _ = reference
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-4", "checkpoint-6"]  # limit 2: checkpoint-2 was removed
    ckpt = out / "checkpoints" / "checkpoint-6"
    state = json.loads((ckpt / "training_state.json").read_text())
    assert state["global_step"] == 6 and state["data_positions"] == [[0, 48]] and state["num_processes"] == 1
    for name in ("unet/config.json", "unet_ema/config.json", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        assert (ckpt / name).is_file(), name
    # the saved pipeline is the EMA of checkpoint-6, not the raw weights
    _assert_same_weights(out / "unet", ckpt / "unet_ema")
    raw, ema = _weights(ckpt / "unet"), _weights(ckpt / "unet_ema")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)


# train.py, run by a wrapper that sleeps after saving one checkpoint: the product has no test hook of its own.
PAUSING_TRAIN = """
import time
import hfddpm.training.loop as loop

save = loop.save_checkpoint


def save_then_pause(accelerator, output_dir, step, *args):
    path = save(accelerator, output_dir, step, *args)
    if step == {step}:
        time.sleep(3600)
    return path


loop.save_checkpoint = save_then_pause
"""


def test_sigkill_then_resume_gives_the_uninterrupted_weights(reference, configs, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "out"
    args = [*_common(configs["mnist"], out), *REFERENCE_ARGS]
    # the run pauses after writing checkpoint-4 (a test-side wrapper of save_checkpoint, see PAUSING_TRAIN); it is
    # killed there, without any chance to clean up
    driver = write_train_driver(tmp_path / "pausing_train.py", PAUSING_TRAIN.format(step=4))
    proc = subprocess.Popen(
        [sys.executable, str(driver), *args],
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoints" / "checkpoint-4").is_dir():
            assert proc.poll() is None, "training exited before checkpoint-4"
            assert time.monotonic() < deadline, "no checkpoint-4 after 300 s"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model_index.json").exists() and not (out / "checkpoints" / "checkpoint-6").exists()
    # what a kill during a save leaves behind is a temporary folder, never a checkpoint-<step>: `latest` skips it
    (out / "checkpoints" / ".tmp-checkpoint-8").mkdir()

    result = _run([*args, "--resume_from_checkpoint", "latest"], tmp_path)
    assert "Resuming from" in result.stderr and "checkpoint-4" in result.stderr
    _assert_same_weights(ref_out / "unet", out / "unet")
    for sub in ("unet", "unet_ema"):  # raw weights and EMA of the last checkpoint too
        _assert_same_weights(
            ref_out / "checkpoints" / "checkpoint-6" / sub, out / "checkpoints" / "checkpoint-6" / sub
        )
    assert not (out / "checkpoints" / ".tmp-checkpoint-8").exists()
    assert json.loads((out / "train_metrics.json").read_text())["steps"] == 6


# The weights of this float32 CPU run before the training engine moved into hfddpm.training (train.py at d9c7355):
# the sum of the EMA weights, and the file's sha256 on the CPU that recorded it (AVX512, torch 2.13.0). Other CPUs
# round float32 convolutions differently, so elsewhere the sum is compared to 1e-4 (a changed step, RNG order or
# default moves it by far more). The batch of 64 is given: it was the default then; a CPU now defaults to 32. The
# UNet is the tiny preset as it was then, with 3 channels (a preset now follows the grey digits: 1 channel).
ENGINE_PIN_ARGS = [
    "--max_train_steps",
    "20",
    "--mixed_precision",
    "no",
    "--seed",
    "0",
    "--train_batch_size",
    "64",
]
ENGINE_PIN_SUM = 302.35288000406774
ENGINE_PIN_SHA256 = "8cb6c18df7ad0ea0"


def test_engine_refactor_kept_the_weights_bit_for_bit(tmp_path):
    from hfddpm import UNET_PRESETS

    rgb_tiny = tmp_path / "tiny_rgb.json"
    rgb_tiny.write_text(json.dumps({**UNET_PRESETS["tiny"], "in_channels": 3, "out_channels": 3}))
    out = tmp_path / "out"
    args = [*ENGINE_PIN_ARGS, "--unet_config", str(rgb_tiny), "--output_dir", str(out), "--validation_steps", "0",
            "--checkpointing_steps", "0"]  # fmt: skip
    _run([*args, "--validation_inference_steps", "2", "--validation_images_per_class", "1"], tmp_path)
    weights = out / "unet" / "diffusion_pytorch_model.safetensors"
    total = sum(v.double().sum().item() for v in load_file(str(weights)).values())
    assert total == pytest.approx(ENGINE_PIN_SUM, rel=1e-4)
    if total == ENGINE_PIN_SUM:  # the recording CPU's exact float32 arithmetic: then the file is identical too
        assert hashlib.sha256(weights.read_bytes()).hexdigest().startswith(ENGINE_PIN_SHA256)


# ---------------------------------------------------------------------------------------------------------------------
# Two processes (gloo on CPU), streaming local parquet files
# ---------------------------------------------------------------------------------------------------------------------
def test_two_processes_stream_parquet_shards_and_resume(configs, tmp_path):
    from hfddpm.data import load_mnist_5k

    data = tmp_path / "parquet"
    data.mkdir()
    digits = load_mnist_5k().select(range(0, 5000, 25)).flatten_indices()  # 200 digits of every class
    for i in range(2):
        digits.shard(2, i).to_parquet(str(data / f"train-{i:05d}.parquet"))
    out = tmp_path / "out"
    args = [*_common(configs["mnist"], out), "--dataset_name", str(data), "--streaming", "--label_column", "label",
            "--checkpointing_steps", "2", "--validation_steps", "0"]  # fmt: skip
    first = _run([*args, "--max_train_steps", "4"], tmp_path, processes=2)
    log = first.stderr + first.stdout
    state = json.loads((out / "checkpoints" / "checkpoint-4" / "training_state.json").read_text())
    assert state["num_processes"] == 2 and state["num_read_images"] == 64
    assert state["data_positions"] == [[0, 32], [0, 32]]  # each process read 4 batches of 8 from its own file
    sums = _ema_checksums(log)
    assert sorted(sums) == [0, 1] and sums[0] == sums[1]  # the same EMA weights on both processes
    assert log.count("Saved the pipeline") == 1  # only process 0 writes the output
    assert json.loads((out / "train_metrics.json").read_text())["images_seen"] == 64

    second = _run([*args, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"], tmp_path, processes=2)
    log = second.stderr + second.stdout
    assert "Resuming from" in log and "checkpoint-4" in log
    state = json.loads((out / "checkpoints" / "checkpoint-6" / "training_state.json").read_text())
    # the streams continued after the 32 examples each process had seen, they did not start over
    assert state["global_step"] == 6 and state["data_positions"] == [[0, 48], [0, 48]]
    sums = _ema_checksums(log)
    assert sorted(sums) == [0, 1] and sums[0] == sums[1]
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["num_processes"] == 2
    # the cores this test may use, shared between the two processes
    assert metrics["training_config"]["cpu_threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    assert metrics["training_config"]["streaming"] and metrics["training_config"]["num_classes"] == 10


# ---------------------------------------------------------------------------------------------------------------------
# A folder of images
# ---------------------------------------------------------------------------------------------------------------------
def test_png_folder_unconditional_bf16_with_a_broken_file(configs, tmp_path):
    from hfddpm import HFDDPMPipeline

    rng = np.random.default_rng(0)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(23):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    (folder / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    args = [*_common(configs["rgb16"], out), "--train_data_dir", str(folder), "--max_train_steps", "4",
            "--mixed_precision", "bf16", "--random_flip", "--dataloader_num_workers", "2",
            "--validation_steps", "0", "--checkpointing_steps", "0", "--max_bad_image_fraction", "0.2"]  # fmt: skip
    _run(args, tmp_path)
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["training_config"]["mixed_precision"] == "bf16"
    assert not metrics["training_config"]["class_conditional"]
    assert metrics["skipped_images"] >= 1  # 32 images read: the broken one at least once
    assert not (out / "checkpoints").exists()
    pipe = HFDDPMPipeline.from_pretrained(out)
    assert pipe.unet.config.num_class_embeds is None
    assert pipe(batch_size=1, num_inference_steps=2, output_type="np").images.shape == (1, 16, 16, 3)
    assert Image.open(out / "samples" / "final.png").size == (2 * 16, 2 * 16)  # 4 images, 2x2


# ---------------------------------------------------------------------------------------------------------------------
# The model card: a card hfddpm wrote for another pipeline class is replaced, an edited one of this class kept
# ---------------------------------------------------------------------------------------------------------------------
def test_training_over_a_diffusers_pipeline_replaces_its_card_and_keeps_it_aside(configs, tmp_path):
    from accelerate import PartialState
    from diffusers import DDPMPipeline, DDPMScheduler

    from hfddpm import build_unet
    from hfddpm.hub import write_model_card
    from hfddpm.hub.card import stale_card
    from hfddpm.training.loop import _write_card

    out = tmp_path / "out"
    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=28)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(out)
    write_model_card(out)
    diffusers_card = (out / "README.md").read_bytes()
    assert b'<!-- hfddpm:pipeline_class "DDPMPipeline" -->' in diffusers_card
    (out / "README.stale.md").write_text("an earlier stale card")  # taken: the new one goes to README.stale-2.md
    args = [*_common(configs["mnist"], out), "--max_train_steps", "2", "--validation_steps", "0",
            "--checkpointing_steps", "0", "--overwrite_output_dir"]  # fmt: skip
    result = _run(args, tmp_path)
    assert (
        f"{out / 'README.md'} was written by hfddpm for DDPMPipeline, not for the HFDDPMPipeline that {out} now"
        f" holds: replaced it with a card of the HFDDPMPipeline and kept the old card as {out / 'README.stale-2.md'}."
    ) in " ".join(result.stderr.split())  # the log wraps long lines
    card = (out / "README.md").read_text()
    assert '<!-- hfddpm:pipeline_class "HFDDPMPipeline" -->' in card and "trust_remote_code=True" in card
    assert stale_card(out) is None and "edited or evaluated" not in result.stderr
    assert (out / "README.stale-2.md").read_bytes() == diffusers_card
    assert (out / "README.stale.md").read_text() == "an earlier stale card"
    # a card of this pipeline edited since training wrote it is still kept, and nothing is moved aside
    PartialState()  # for the training log
    (out / "README.md").write_text(card + "\nMy notes.\n")
    _write_card(out, TrainConfig(), {})
    assert (out / "README.md").read_text() == card + "\nMy notes.\n"
    assert sorted(p.name for p in out.glob("README*")) == ["README.md", "README.stale-2.md", "README.stale.md"]


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: checked before training, with the problem and the fix in the message
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_module():
    spec = importlib.util.spec_from_file_location("hfddpm_train_script", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _setup(train_module, argv):
    return setup(TrainConfig.from_args(train_module.parse_args(argv)))


@pytest.fixture
def offline(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")


def test_defaults_are_the_recipe(train_module):
    args = train_module.parse_args([])
    assert TrainConfig.from_args(args) == TrainConfig()  # the flags' defaults are the dataclass's
    assert (args.preset, args.snr_gamma, args.use_ema) == ("mnist", 5.0, True)
    assert args.learning_rate is None and TrainConfig().recipe()["learning_rate"] == 1e-3  # resolved per device
    assert args.class_conditional is None and args.report_to == "none"
    assert train_module.parse_args(["--no_use_ema"]).use_ema is False
    assert train_module.parse_args(["--no-use_ema"]).use_ema is False
    assert train_module.parse_args(["--no_class_conditional"]).class_conditional is False


def test_train_py_precision_flag_then_accelerate_config_then_device(train_module, monkeypatch):
    monkeypatch.setattr(precision, "default_mixed_precision", lambda device: "bf16")
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_mixed_precision(None) == "bf16"
    assert resolve_mixed_precision("no") == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what `accelerate launch` exports by default
    assert resolve_mixed_precision(None) == "bf16"
    monkeypatch.setattr(precision, "default_mixed_precision", lambda device: "no")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # an accelerate config that chose a precision
    assert resolve_mixed_precision(None) == "bf16"
    assert resolve_mixed_precision("no") == "no"
    assert train_module.parse_args([]).mixed_precision is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid on a GPU")
def test_fp16_on_cpu_is_refused_not_silently_float32(train_module, configs, monkeypatch, tmp_path):
    # accelerate accepts fp16 on a CPU and then trains float32 without autocast; train.py says so instead
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    with pytest.raises(ValueError, match=r"'fp16' \(from --mixed_precision\) needs a GPU.*Use 'bf16'.*or 'no'"):
        resolve_mixed_precision("fp16")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ValueError, match=r"from accelerate's config"):
        resolve_mixed_precision(None)
    args = train_module.parse_args([*_common(configs["mnist"], tmp_path / "out"), "--mixed_precision", "fp16"])
    with pytest.raises(SystemExit, match=r"^train.py: error: mixed precision 'fp16' \(from --mixed_precision\)"):
        train_module.main(args)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_a_missing_tracker_is_an_error_before_training(train_module, configs, hide_package, tracker, tmp_path):
    # accelerate would train and log nothing; train.py names the package and the extra instead
    hide_package("tensorboard", "wandb")
    args = train_module.parse_args([*_common(configs["mnist"], tmp_path / "out"), "--report_to", tracker])
    with pytest.raises(SystemExit, match=rf"--report_to {tracker} needs the {tracker} package.*hfddpm\[tracking\]"):
        train_module.main(args)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=r"--report_to all found no tracker package"):
        check_trackers("all")


def test_trackers_resolve_to_what_is_installed(hide_package):
    assert check_trackers("none") == [] and check_trackers("tensorboard") == ["tensorboard"]
    hide_package("wandb")
    assert check_trackers("all") == ["tensorboard"]
    with pytest.raises(ValueError, match=r"'mlflow' is not a tracker; choose one of \('none', 'tensorboard'"):
        check_trackers("mlflow")


def test_setup_resolves_the_embedded_default(train_module, offline):
    run = _setup(train_module, [])
    dataset, columns, unet, scheduler = run.dataset, run.columns, run.unet, run.noise_scheduler
    assert len(dataset) == 5000 and columns.num_classes == 10 and run.class_conditional
    assert unet.config.num_class_embeds == 11 and unet.config.in_channels == 1 and run.resolution == 28
    assert (scheduler.config.noise_schedule, scheduler.config.prediction_type) == ("cosine", "v_prediction")
    run = _setup(train_module, ["--no_class_conditional"])
    columns, unet = run.columns, run.unet
    assert columns.label_column is None and unet.config.num_class_embeds is None


@pytest.mark.parametrize(
    "argv, error, match",
    [
        (["--dataset_name", "nobody/nothing"], FileNotFoundError, r"Could not load dataset 'nobody/nothing'"),
        (["--train_data_dir", "/no/such/folder"], FileNotFoundError, r"--train_data_dir '/no/such/folder' is not a"),
        (["--image_column", "picture"], ValueError, r"Image column 'picture' not found.*--image_column"),
        (["--label_column", "digit"], ValueError, r"Label column 'digit' not found.*--label_column"),
        (["--resolution", "27"], ValueError, r"resolution=27 cannot be downsampled.*divisible by 2"),
        (["--cond_drop_prob", "1.5"], ValueError, r"--cond_drop_prob 1.5 is invalid: it must be a number in \[0, 1\)"),
        (["--unet_config", "/no/config.json"], FileNotFoundError, r"--unet_config '/no/config.json' does not exist"),
        (["--streaming", "--num_epochs", "2"], ValueError, r"--num_epochs needs the dataset size.*--max_train_steps"),
    ],
)
def test_bad_input_is_named_with_its_fix(train_module, configs, offline, argv, error, match):
    with pytest.raises(error, match=match):
        _setup(train_module, ["--unet_config", str(configs["mnist"]), *argv])


def test_empty_folder_and_too_many_classes(train_module, configs, offline, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds no image files"):
        _setup(train_module, ["--unet_config", str(configs["mnist"]), "--train_data_dir", str(tmp_path / "empty")])
    few = tmp_path / "few.json"
    few.write_text(json.dumps({**TINY_MNIST, "num_class_embeds": 5}))
    with pytest.raises(ValueError, match=r"10 classes but .* num_class_embeds=5.*num_class_embeds >= 11"):
        _setup(train_module, ["--unet_config", str(few)])


def test_pretrained_pipeline_continues_with_its_schedule(train_module, reference, offline):
    out, _ = reference
    run = _setup(train_module, ["--pretrained_model_name_or_path", str(out)])
    unet, scheduler = run.unet, run.noise_scheduler
    torch.testing.assert_close(unet.state_dict()["conv_in.weight"], _weights(out / "unet")["conv_in.weight"])
    saved = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler.config.trained_betas == saved["trained_betas"]
    run = _setup(train_module, ["--pretrained_model_name_or_path", str(out), "--prediction_type", "epsilon"])
    assert run.noise_scheduler.config.prediction_type == "epsilon"


def test_too_many_undecodable_images_stop_the_run():
    fraction = TrainConfig().max_bad_image_fraction
    check_bad_images(1, 1000, fraction)  # 0.1 % is skipped
    check_bad_images(5, 100, fraction)  # too few read to judge yet
    with pytest.raises(ValueError, match=r"5 of the 100 images .*Remove or repair.*--max_bad_image_fraction"):
        check_bad_images(5, 100, fraction, min_read=100)  # a dataset of 100 images: the fraction is decided


def test_a_config_name_without_a_dataset_that_has_configs_stops_before_training(
    train_module, configs, offline, tmp_path
):
    folder = _grey_folder(tmp_path / "imgs", 16, 16)
    for source in (["--train_data_dir", str(folder)], []):
        argv = [*_common(configs["rgb16"], tmp_path / "out"), *source, "--dataset_config_name", "foo"]
        with pytest.raises(SystemExit, match=r"^train.py: error: --dataset_config_name 'foo': the .* has no configs"):
            train_module.main(train_module.parse_args(argv))
    assert not list((tmp_path / "out").rglob("*"))  # nothing trained or written


def test_command_line_error_is_one_clear_line(train_module, configs, offline, tmp_path):
    args = train_module.parse_args([*_common(configs["mnist"], tmp_path / "out"), "--resolution", "27"])
    with pytest.raises(SystemExit, match=r"^train.py: error: resolution=27 cannot be downsampled"):
        train_module.main(args)


# ---------------------------------------------------------------------------------------------------------------------
# The recipe follows the data: GPU_RECIPE only when the images were decoded onto the device
# ---------------------------------------------------------------------------------------------------------------------
def _grey_folder(root: Path, width: int, height: int, broken: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).save(root / c / f"{i}.png")
    if broken:
        (root / "dog" / "broken.png").write_bytes(b"\x89PNG but not really")
    return root


def test_the_recipe_choice_names_the_device_and_why():
    assert choose_recipe("cuda", None) == ("gpu", "the data is on the device")
    assert choose_recipe("cuda", "a streamed dataset (--streaming)") == (
        "fallback", "the data is not kept on the device: a streamed dataset (--streaming)",
    )  # fmt: skip
    assert choose_recipe("cpu", None) == choose_recipe("cpu", "--no_data_on_device") == ("cpu", "this is a CPU")
    assert choose_recipe("mps", None) == ("fallback", "mps is not a CUDA device")


@pytest.mark.parametrize(
    "size, broken, flags, why",
    [
        ((16, 16), False, [], None),
        ((24, 16), False, [], r"^row \d+ \(.*[0-9]\.png\) is 24x16, cropped at random without --center_crop$"),
        ((24, 16), False, ["--center_crop"], None),
        ((16, 16), True, [], r"^row \d+ \(.*broken\.png\) cannot be decoded$"),
        ((16, 16), False, ["--random_flip"], r"^random flips, drawn per example and epoch$"),
        ((16, 16), False, ["--no_data_on_device"], r"^--no_data_on_device$"),
    ],
)  # fmt: skip
def test_the_gpu_recipe_needs_the_images_decoded_onto_the_device(
    train_module, configs, offline, tmp_path, size, broken, flags, why
):
    folder = _grey_folder(tmp_path / "images", *size, broken=broken)
    argv = ["--unet_config", str(configs["rgb16"]), "--train_data_dir", str(folder), "--resolution", "16", *flags]
    config = TrainConfig.from_args(train_module.parse_args(argv))
    run = setup(config)
    decoded, off_device = resident_data(config, run, "cpu")
    recipe, reason = choose_recipe("cuda", off_device)
    if why is None:
        images, labels = decoded
        assert off_device is None and recipe == "gpu" and reason == "the data is on the device"
        assert images.shape == (6, 3, 16, 16) and labels is None  # the UNet has no class embedding
        assert config.recipe(gpu=True)["train_batch_size"] == 512
    else:
        assert decoded is None and re.search(why, off_device), off_device
        assert (recipe, reason) == ("fallback", f"the data is not kept on the device: {off_device}")
        assert config.recipe(gpu=False)["train_batch_size"] == 64  # the DataLoader's batches: the fallback recipe


@pytest.mark.parametrize(
    "flags, error, match",
    [
        (["--resume_from_checkpoint", "checkpoint-7"], FileNotFoundError,
         r"--resume_from_checkpoint 'checkpoint-7' is not a checkpoint folder .* \(it has none\)"),
        (["--resume_from_checkpoint", "{damaged}"], ValueError,
         r"checkpoint-2 is damaged: unet/diffusion_pytorch_model.safetensors cannot be read"),
        (["--resume_from_checkpoint", "{other_unet}"], ValueError,
         r"checkpoint-3 holds another UNet than this run builds .*in_channels 1 -> 3"),
        (["--eval_steps", "2", "--eval_metrics", "digits"], ValueError,
         r"--eval_metrics digits includes digits, which scores grey images, but this model makes 3-channel images"),
    ],
)  # fmt: skip
def test_bad_resume_and_evaluation_settings_stop_the_run_before_the_images_are_decoded(
    train_module, configs, offline, monkeypatch, tmp_path, flags, error, match
):
    from diffusers import UNet2DModel

    from hfddpm.data import ResidentImageBatches
    from hfddpm.training import train

    damaged = tmp_path / "old" / "checkpoint-2"  # a state without the UNet's weights
    damaged.mkdir(parents=True)
    (damaged / "training_state.json").write_text('{"global_step": 2, "data_positions": [[0, 16]]}')
    other_unet = tmp_path / "other" / "checkpoint-3"  # an intact checkpoint of a grey-image UNet
    UNet2DModel.from_config(TINY_MNIST).save_pretrained(other_unet / "unet")
    (other_unet / "training_state.json").write_text('{"global_step": 3, "data_positions": [[0, 24]]}')
    decoded = []  # the calls that decode the images (tens of seconds for 50,000 of them)
    monkeypatch.setattr(ResidentImageBatches, "decode", staticmethod(lambda *args, **kwargs: decoded.append(args)))
    folder = _grey_folder(tmp_path / "images", 16, 16)
    flags = [flag.format(damaged=damaged, other_unet=other_unet) for flag in flags]
    argv = [*_common(configs["rgb16"], tmp_path / "out"), "--train_data_dir", str(folder), "--resolution", "16"]
    config = TrainConfig.from_args(train_module.parse_args([*argv, *flags]))
    with pytest.raises(error, match=match):
        train(config)
    assert decoded == []
    resident_data(config, setup(config), "cpu")  # these images are decoded once the checks pass
    assert len(decoded) == 1


def test_images_over_the_cap_stay_off_the_device_and_get_the_fallback_recipe(train_module, configs, offline, tmp_path):
    folder = _grey_folder(tmp_path / "images", 16, 16)
    argv = ["--unet_config", str(configs["rgb16"]), "--train_data_dir", str(folder), "--resolution", "16"]
    config = TrainConfig.from_args(train_module.parse_args(argv))
    run = setup(config)
    nbytes = 6 * 3 * 16 * 16 * 4  # decoded float32
    decoded, off_device = resident_data(config, run, "cpu", max_bytes=nbytes)
    assert off_device is None and decoded[0].nbytes == nbytes
    decoded, off_device = resident_data(config, run, "cpu", max_bytes=nbytes - 1)
    assert decoded is None and off_device.startswith("6 images of 3x16x16 take more than")
    assert choose_recipe("cuda", off_device)[0] == "fallback"
