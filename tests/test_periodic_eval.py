"""Evaluation during training: fixed samples scored every --eval_steps, gathered from every process, a curve."""

import json
import subprocess
import sys

import pytest
from train_helpers import TRAIN, run_train, train_env

from hfddpm.training import TrainConfig
from hfddpm.training.periodic_eval import share

GREY = {"sample_size": 28, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
        "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
        "layers_per_block": 1, "norm_num_groups": 4}  # fmt: skip
EVAL = ["--eval_steps", "2", "--eval_num_images", "12", "--eval_inference_steps", "2", "--max_train_steps", "4"]


def test_each_process_generates_a_disjoint_share():
    shares = [share(12, rank=r, world_size=3) for r in range(3)]
    assert sorted(sum(shares, [])) == list(range(12)) and all(len(s) == 4 for s in shares)


def test_bad_eval_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown metrics \['fdx'\]; choose a comma-separated subset of"):
        TrainConfig(eval_steps=10, eval_metrics="fdx").validate()
    with pytest.raises(ValueError, match=r"--eval_num_images 1 is invalid: it must be an integer >= 2"):
        TrainConfig(eval_num_images=1).validate()
    result = run_train(["--output_dir", str(tmp_path / "rgb"), *EVAL], tmp_path, check=False)  # tiny preset: RGB
    assert result.returncode == 1 and "includes digits, which scores grey images" in result.stderr


def test_two_processes_evaluate_all_images_and_draw_the_curve(tmp_path):
    config = tmp_path / "grey.json"
    config.write_text(json.dumps(GREY))
    out = tmp_path / "out"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    args = ["--unet_config", str(config), "--output_dir", str(out), "--train_batch_size", "8",
            "--validation_inference_steps", "1", "--validation_images_per_class", "1", *EVAL]  # fmt: skip
    result = subprocess.run(
        [*launcher, str(TRAIN), *args],
        env=train_env(tmp_path, ACCELERATE_USE_CPU="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    history = json.loads((out / "eval_history.json").read_text())
    assert [h["step"] for h in history] == [2, 4]
    for point in history:  # 12 images in all, 6 from each process, every class asked for
        assert point["num_images"] == 12 and sum(point["class_histogram"]) == 12
        assert point["images_seen"] == point["step"] * 16 and point["fd_digits"] > 0
    assert (out / "eval_curve.png").stat().st_size > 1000
    assert json.loads((out / "train_metrics.json").read_text())["evaluations"] == history
