"""Evaluation during training: fixed samples scored every --eval_steps, gathered from every process, a curve."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import COUNT_DDP_AT_DESTROY, accelerate_launcher, run_train, train_env, write_train_driver

from hfddpm.training import TrainConfig
from hfddpm.training.budget import CALIBRATION_STEPS, SKIPPED_STEPS
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
    # digits metrics for an RGB model (a preset would follow the grey digits: 1 channel)
    config = tmp_path / "rgb.json"
    config.write_text(json.dumps({**GREY, "in_channels": 3, "out_channels": 3}))
    args = ["--unet_config", str(config), "--output_dir", str(tmp_path / "rgb"), *EVAL]
    result = run_train(args, tmp_path, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "includes digits, which scores grey images" in result.stderr


def test_two_processes_evaluate_all_images_and_draw_the_curve(tmp_path):
    config = tmp_path / "grey.json"
    config.write_text(json.dumps(GREY))
    out = tmp_path / "out"
    # train.py with destroy_process_group wrapped (test side only) to count the DDP models alive then: one that
    # outlives the process group frees gloo's backend while holding the GIL, which deadlocked a run at exit
    prelude = COUNT_DDP_AT_DESTROY.format(log=str(tmp_path / "ddp_at_destroy_"))
    driver = write_train_driver(tmp_path / "counted_train.py", prelude)
    launcher = accelerate_launcher(2)
    args = ["--unet_config", str(config), "--output_dir", str(out), "--train_batch_size", "8",
            "--validation_inference_steps", "1", "--validation_images_per_class", "1", *EVAL]  # fmt: skip
    result = subprocess.run(
        [*launcher, str(driver), *args],
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
    # both processes freed their DDP model before the process group
    assert [(tmp_path / f"ddp_at_destroy_{rank}").read_text() for rank in (0, 1)] == ["0", "0"]


def test_fid_without_inception_is_said_once_in_training_terms(tmp_path):
    config = tmp_path / "grey.json"
    config.write_text(json.dumps(GREY))
    out = tmp_path / "out"
    args = ["--unet_config", str(config), "--output_dir", str(out), *EVAL, "--eval_metrics", "fid,kid",
            "--eval_inference_steps", "1"]  # fmt: skip
    result = run_train(args, tmp_path, TORCH_HOME=str(tmp_path / "no-torch-home"))  # no Inception weights there
    history = json.loads((out / "eval_history.json").read_text())
    assert [h["step"] for h in history] == [2, 4]
    assert all({"fid_digits", "kid_digits"} <= set(h) and "fid" not in h and "kid" not in h for h in history)
    # once, before training, with what train.py does instead and how to get FID/KID on Inception-v3 afterwards; no
    # flag of `hfddpm evaluate`'s as if train.py had it
    assert result.stderr.count("FID/KID with Inception-v3 are unavailable") == 1
    (line,) = [line for line in result.stderr.splitlines() if "FID/KID with Inception-v3 are unavailable" in line]
    assert "--eval_metrics fid,kid: FID/KID" in line
    assert result.stderr.index(line) < result.stderr.index("Evaluation at step 2")
    assert "no-torch-home/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth" in line
    assert "put it in that folder). Nothing is downloaded. FID/KID use the digit classifier's features instead" in line
    assert line.endswith(
        "or score the saved pipeline later with `hfddpm evaluate PIPELINE --metrics fid,kid --inception-weights"
        " pt_inception-2015-12-05-6726825d.pth` (torch-fidelity installed)."
    )
    assert "--fid-fallback" not in result.stderr and "pass the file with" not in result.stderr


# train.py with the evaluation replaced by scripted FD values per step (test side only): the ranking logic is tested
# on known numbers instead of on a tiny model's noise
SCRIPTED_EVAL = """
import hfddpm.training.loop as loop

values = {values!r}


def scripted(engine, accelerator, config, *, num_classes, step):
    value = values[step]
    if isinstance(value, tuple):  # (value, low, high): with a 95% interval
        details = {{"fd_digits": {{"ci95": list(value[1:]), "num_samples": config.eval_num_images}}}}
        return {{"step": step, "num_images": config.eval_num_images, "fd_digits": value[0], "details": details}}
    return {{"step": step, "num_images": config.eval_num_images, "fd_digits": value}}


loop.evaluate_ema = scripted
"""


def scripted_run(tmp_path, values, args):
    """train.py with ``args``, its evaluations scripted to give ``values`` by step (``SCRIPTED_EVAL``)."""
    driver = write_train_driver(tmp_path / "scripted_train.py", SCRIPTED_EVAL.format(values=values))
    result = subprocess.run(
        [sys.executable, str(driver), *args], env=train_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def keep_best_run(tmp_path, max_train_steps: int, *extra: str) -> tuple[Path, list[str]]:
    """The output folder and train.py flags of a run of the grey tiny UNet that evaluates every 2 steps (12 images)
    and keeps the best fd_digits, with a checkpoint every 4 steps; ``extra`` flags last."""
    config = tmp_path / "grey.json"
    config.write_text(json.dumps(GREY))
    out = tmp_path / "out"
    args = ["--unet_config", str(config), "--output_dir", str(out), "--train_batch_size", "8", "--eval_steps", "2",
            "--eval_num_images", "12", "--max_train_steps", str(max_train_steps), "--checkpointing_steps", "4",
            "--validation_inference_steps", "1", "--validation_images_per_class", "1", "--keep_best", "fd_digits",
            *extra]  # fmt: skip
    return out, args


def test_keep_best_early_stopping_and_resume(tmp_path):
    from safetensors.torch import load_file

    out, args = keep_best_run(tmp_path, 20, "--early_stopping_patience", "2")
    values = {2: 5.0, 4: 4.0, 6: 6.0, 8: 7.0, 10: 3.0, 12: 8.0, 14: 9.0, 16: 9.5}
    result = scripted_run(tmp_path, values, args)
    assert "Early stopping at step 8" in result.stderr
    best = json.loads((out / "checkpoints" / "checkpoint-best" / "training_state.json").read_text())
    assert (best["global_step"], best["metric"], best["value"]) == (4, "fd_digits", 4.0)
    assert best["data_positions"] and best["settings"]["learning_rate"] == 1e-3  # resumable: the full state
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == 8 and [e["step"] for e in metrics["evaluations"]] == [2, 4, 6, 8]
    # best/ is the EMA pipeline of step 4: the same weights as the best checkpoint's EMA
    best_weights = load_file(str(out / "best" / "unet" / "diffusion_pytorch_model.safetensors"))
    ema = load_file(str(out / "checkpoints" / "checkpoint-best" / "unet_ema" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(best_weights[k], ema[k]) for k in best_weights)

    # resumed from step 8, the best so far (step 4) is remembered: step 10 improves on it, then 12 and 14 do not
    result = scripted_run(tmp_path, values, [*args, "--resume_from_checkpoint", "latest"])
    assert "New best fd_digits 3 at step 10" in result.stderr and "Early stopping at step 14" in result.stderr
    best = json.loads((out / "checkpoints" / "checkpoint-best" / "training_state.json").read_text())
    assert best["global_step"] == 10
    history = json.loads((out / "eval_history.json").read_text())
    assert [h["step"] for h in history] == [2, 4, 6, 8, 10, 12, 14]
    with pytest.raises(ValueError, match=r"--keep_best 'class_histogram' is not a metric to rank by"):
        TrainConfig(eval_steps=2, keep_best="class_histogram").validate()
    with pytest.raises(ValueError, match=r"need --eval_steps"):
        TrainConfig(keep_best="fd_digits").validate()


def test_keep_best_counts_only_improvements_beyond_the_noise(tmp_path):
    config = tmp_path / "grey.json"
    config.write_text(json.dumps(GREY))
    out = tmp_path / "out"
    args = ["--unet_config", str(config), "--output_dir", str(out), "--train_batch_size", "8", "--eval_steps", "2",
            "--eval_num_images", "12", "--max_train_steps", "16", "--validation_inference_steps", "1",
            "--validation_images_per_class", "1", "--keep_best", "fd_digits",
            "--early_stopping_patience", "3"]  # fmt: skip
    # half-widths 0.5: an improvement counts when it exceeds sqrt(0.5**2 + 0.5**2) = 0.71
    values = {2: (5.0, 4.5, 5.5), 4: (4.6, 4.1, 5.1), 6: (4.4, 3.9, 4.9), 8: (4.2, 3.7, 4.7), 10: (3.6, 3.1, 4.1),
              12: (3.5, 3.0, 4.0), 14: (3.6, 3.1, 4.1), 16: (1.0, 0.5, 1.5)}  # fmt: skip
    result = scripted_run(tmp_path, values, args)
    # 4.6 and 4.4 are 0.4 and 0.6 better than 5.0: within the noise; 4.2 is 0.8 better: the new best. 3.6, 3.5, 3.6
    # are 0.6, 0.7, 0.6 better than 4.2: within its noise, three evaluations without an improvement -> stop at 14
    assert "New best fd_digits 5 at step 2" in result.stderr and "New best fd_digits 4.2 at step 8" in result.stderr
    for value in ("4.6", "4.4", "3.6", "3.5"):
        assert f"New best fd_digits {value} " not in result.stderr
    assert "Early stopping at step 14" in result.stderr
    best = json.loads((out / "checkpoints" / "checkpoint-best" / "training_state.json").read_text())
    assert (best["global_step"], best["metric"], best["value"]) == (8, "fd_digits", 4.2)
    assert best["data_positions"] and best["settings"]["learning_rate"] == 1e-3  # resumable: the full state


def test_a_budgeted_run_evaluates_eval_count_times_inside_its_budget(tmp_path):
    config = tmp_path / "grey.json"
    config.write_text(json.dumps(GREY))
    out = tmp_path / "out"
    args = ["--unet_config", str(config), "--output_dir", str(out), "--train_batch_size", "8",
            "--max_train_minutes", "0.2", "--eval_count", "2", "--eval_num_images", "8",
            "--eval_inference_steps", "1", "--checkpointing_steps", "0", "--validation_inference_steps", "1",
            "--validation_images_per_class", "1"]  # fmt: skip
    result = run_train(args, tmp_path)
    metrics = json.loads((out / "train_metrics.json").read_text())
    planned = metrics["planned_steps"]
    # --eval_count 2: once at the first step past half the plan (made after 23 steps, possibly corrected later; a
    # slow or busy machine, whose start-up and evaluations leave little of the 12 s, plans 24: then at step 23), and at
    # the end
    plan_step = SKIPPED_STEPS + CALIBRATION_STEPS
    steps = [e["step"] for e in metrics["evaluations"]]
    assert len(steps) == 2 and plan_step <= steps[0] < planned and steps[1] == planned
    assert all(e["num_images"] == 8 and e["sampling_seconds"] > 0 for e in metrics["evaluations"])
    assert metrics["eval_seconds"] >= sum(e["sampling_seconds"] for e in metrics["evaluations"])
    assert re.search(r"evaluating digits 2 times \(8 samples, about \d+ s each, in the budget\)", result.stderr)
    assert "Evaluation during training took" in result.stderr and (out / "eval_curve.png").is_file()
    # an explicit length (the pinned runs) does not evaluate unless asked
    explicit = tmp_path / "explicit"
    run_train(
        [*args[:4], "--output_dir", str(explicit), "--max_train_steps", "2", "--checkpointing_steps", "0"], tmp_path
    )
    assert "evaluations" not in json.loads((explicit / "train_metrics.json").read_text())
