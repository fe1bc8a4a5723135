"""hfddpm.training.step_format: the training step's precision and memory format, measured on GPUs, by rule on CPUs."""

import itertools
import math

import pytest
import torch
from accelerate import PartialState

from hfddpm import HFDDPMScheduler, build_unet
from hfddpm.training import TrainConfig, setup
from hfddpm.training.precision import default_mixed_precision
from hfddpm.training.step_format import (
    StepFormat,
    candidate_formats,
    describe,
    fastest,
    resolve_step_format,
    time_step_formats,
)


def _tiny():
    torch.manual_seed(0)
    return build_unet("tiny", in_channels=1, out_channels=1, sample_size=16, num_class_embeds=11)


def _scripted_clock(seconds_per_format):
    """A clock that makes format k take seconds_per_format[k] for the whole timed stretch."""
    ticks, now = [], 0.0
    for seconds in seconds_per_format:
        ticks += [now, now + seconds]
        now += seconds
    return iter(ticks).__next__


@pytest.mark.parametrize("slow_index", range(4))
def test_the_fastest_measured_format_wins(slow_index):
    formats = [StepFormat(p, c) for p, c in itertools.product(("no", "bf16"), (False, True))]
    seconds = [1.0] * 4
    seconds[slow_index] = 0.5  # the one fast format
    timings = time_step_formats(
        _tiny(), HFDDPMScheduler(), (2, 1, 16, 16), "cpu", formats, num_class_embeds=11, warmup=0, steps=2,
        clock=_scripted_clock(seconds),
    )  # fmt: skip
    assert fastest(timings) == formats[slow_index]
    assert timings[formats[slow_index]] == pytest.approx(0.25)  # 0.5 s over 2 steps
    assert describe({formats[0]: 0.5}, images_per_step=64) == "float32 128 images/s"


def test_a_tie_keeps_the_first_listed_format():
    formats = [StepFormat("no"), StepFormat("bf16")]
    timings = time_step_formats(
        _tiny(), HFDDPMScheduler(), (2, 1, 16, 16), "cpu", formats, num_class_embeds=11, warmup=0, steps=1,
        clock=_scripted_clock([1, 1]),
    )  # fmt: skip
    assert fastest(timings) == StepFormat("no")


def test_measuring_runs_every_format_and_leaves_the_model_untouched():
    unet = _tiny()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    formats = candidate_formats("cpu", mixed_precision="no") + [StepFormat("bf16", True)]
    timings = time_step_formats(unet, HFDDPMScheduler(), (2, 1, 16, 16), "cpu", formats, num_class_embeds=11,
                                warmup=1, steps=1)  # fmt: skip
    assert list(timings) == formats and all(t > 0 for t in timings.values())
    after = unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in unet.parameters())
    conv = unet.down_blocks[0].resnets[0].conv1.weight  # [8, 8, 3, 3]: the two formats differ
    assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)


def test_candidates_fix_what_was_given():
    assert candidate_formats("cpu", mixed_precision="bf16", channels_last=True) == [StepFormat("bf16", True)]
    assert [f.channels_last for f in candidate_formats("cpu", mixed_precision="no")] == [False, True]
    assert StepFormat("bf16", True).label == "bf16 channels_last"


def test_on_a_cpu_the_rule_decides_and_the_format_stays_contiguous(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    config = TrainConfig(preset="tiny", max_train_steps=1, output_dir=str(tmp_path)).validate()
    run = setup(config)
    fmt, reason = resolve_step_format(config, run, PartialState(cpu=True))
    assert fmt == StepFormat(default_mixed_precision("cpu"), False)
    assert reason.startswith("bf16 autocast: this CPU computes" if fmt.mixed_precision == "bf16" else "float32:")
    config = TrainConfig(preset="tiny", max_train_steps=1, mixed_precision="no", channels_last=True).validate()
    fmt, reason = resolve_step_format(config, run, PartialState(cpu=True))
    assert fmt == StepFormat("no", True) and reason == "float32: --mixed_precision no"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_step_format_is_measured(tmp_path):
    # as the loop calls it: with the recipe applied (the batch size that is timed)
    config = TrainConfig(max_train_steps=1, output_dir=str(tmp_path)).validate().with_recipe(gpu=True)
    run = setup(config)
    fmt, reason = resolve_step_format(config, run, PartialState())
    assert fmt in candidate_formats("cuda")
    assert "measured fastest of float32" in reason and "images/s" in reason
    config = TrainConfig(max_train_steps=1, mixed_precision="bf16", output_dir=str(tmp_path)).validate()
    fmt, _ = resolve_step_format(config.with_recipe(gpu=True), run, PartialState())
    assert fmt.mixed_precision == "bf16"  # only the memory format was measured


def test_the_gpu_recipe_trains_the_fallback_images_in_larger_batches():
    from hfddpm.training.config import FALLBACK_RECIPE, GPU_RECIPE, fallback

    base = TrainConfig().recipe()
    assert base == FALLBACK_RECIPE == {
        "train_batch_size": 64, "learning_rate": 1e-3, "lr_warmup_steps": 100, "max_train_steps": 1800,
        "validation_steps": 250, "checkpointing_steps": 250,
    }  # fmt: skip
    assert all(fallback(name) == value for name, value in FALLBACK_RECIPE.items())
    assert TrainConfig().recipe(gpu=True) == GPU_RECIPE
    scale = GPU_RECIPE["train_batch_size"] / base["train_batch_size"]
    assert GPU_RECIPE["max_train_steps"] * GPU_RECIPE["train_batch_size"] == 1800 * 64  # the same images
    assert GPU_RECIPE["learning_rate"] == pytest.approx(fallback("learning_rate") * scale**0.5, rel=0.02)
    assert GPU_RECIPE["lr_warmup_steps"] == math.ceil(fallback("lr_warmup_steps") / scale)
    # a batch size given by the user keeps the fallbacks; other flags given always win
    assert TrainConfig(train_batch_size=128).recipe(gpu=True) == {**base, "train_batch_size": 128}
    assert TrainConfig(learning_rate=5e-4, max_train_steps=10).recipe(gpu=True)["learning_rate"] == 5e-4
    filled = TrainConfig(lr_warmup_steps=7).with_recipe(gpu=True)
    assert (filled.train_batch_size, filled.lr_warmup_steps, filled.max_train_steps) == (512, 7, None)


def test_a_cpu_trains_the_recipes_images_in_smaller_batches(tmp_path):
    import json
    import subprocess
    import sys

    from train_helpers import FAST, TRAIN, train_env

    from hfddpm.training.config import CPU_RECIPE

    assert CPU_RECIPE["max_train_steps"] * CPU_RECIPE["train_batch_size"] == 1800 * 64
    # a grid and a checkpoint after as many images as with the fallbacks (250 steps of 64)
    for name in ("validation_steps", "checkpointing_steps"):
        assert CPU_RECIPE[name] * CPU_RECIPE["train_batch_size"] == 250 * 64
    assert TrainConfig(validation_steps=100).recipe(cpu=True)["validation_steps"] == 100  # a given value wins
    assert TrainConfig().recipe(cpu=True) == CPU_RECIPE
    assert TrainConfig(train_batch_size=64).recipe(cpu=True) == TrainConfig().recipe()  # the user's batch
    assert TrainConfig().recipe(gpu=True, cpu=False)["train_batch_size"] == 512
    # train.py on a CPU, without --train_batch_size: batches of 32 in either precision, logged; a given batch wins
    fast = [flag for i, flag in enumerate(FAST) if "--train_batch_size" not in FAST[max(i - 1, 0) : i + 1]]
    for precision, given, batch in (("no", [], 32), ("bf16", [], 32), ("bf16", ["--train_batch_size", "16"], 16)):
        out = tmp_path / f"{precision}-{batch}"
        args = [*fast, *given, "--output_dir", str(out), "--max_train_steps", "1", "--mixed_precision", precision]
        result = subprocess.run(
            [sys.executable, str(TRAIN), *args], env=train_env(tmp_path), capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
        saved = json.loads((out / "training_config.json").read_text())
        assert saved["resolved"]["train_batch_size"] == batch
        cadence = 250 if given else 500  # a given batch keeps the fallbacks
        assert saved["resolved"]["checkpointing_steps"] == saved["resolved"]["validation_steps"] == cadence
        assert saved["config"]["train_batch_size"] == (int(given[1]) if given else None)
        assert ("CPU recipe: batch 32" in result.stderr) == (not given)
