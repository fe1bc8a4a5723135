"""Training under bad input and faults (issue "hardening"): every bad flag is one clear message before anything is
written, a diverged run stops, a finished run resumed changes nothing, broken images never cost a finished run,
damaged checkpoints are named, and a failed push never shows the token."""

import dataclasses
import json
import logging
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_periodic_eval import GREY
from test_security import RunsCode
from train_helpers import (
    ROOT,
    TRAIN,
    accelerate_launcher,
    load_train_script,
    process_state,
    run_report,
    run_train,
    train_env,
)

from hfddpm.training import TrainConfig, TrainingError
from hfddpm.training.checkpoint import check_checkpoint
from hfddpm.training.loop import _stop_if_diverged, check_bad_images, json_safe

# ---------------------------------------------------------------------------------------------------------------------
# Flags: one line naming the flag, the value and what is valid, and nothing written
# ---------------------------------------------------------------------------------------------------------------------
BAD_FLAGS = [
    (["--logging_steps", "0"], r"--logging_steps 0 is invalid: it must be an integer >= 1"),
    (["--validation_inference_steps", "0"], r"--validation_inference_steps 0 is invalid: it must be an integer >= 1"),
    (["--ddpm_num_steps", "0"], r"--ddpm_num_steps 0 is invalid: it must be an integer >= 1"),
    (["--num_epochs", "0"], r"--num_epochs 0 is invalid: it must be an integer >= 1"),
    (["--num_epochs", "-3"], r"--num_epochs -3 is invalid: it must be an integer >= 1"),
    (["--resolution", "0"], r"--resolution 0 is invalid: it must be an integer >= 1"),
    (["--resolution", "-32"], r"--resolution -32 is invalid: it must be an integer >= 1"),
    (["--snr_gamma", "nan"], r"--snr_gamma nan is invalid: it must be a finite number"),
    (["--learning_rate", "inf"], r"--learning_rate inf is invalid: it must be a finite number"),
    (["--learning_rate", "0"], r"--learning_rate 0.0 is invalid: it must be a finite number > 0"),
    (["--ema_max_decay", "1.5"], r"--ema_max_decay 1.5 is invalid: it must be a number in \[0, 1\]"),
    (["--validation_guidance_scale", "nan"], r"--validation_guidance_scale nan is invalid: it must be a finite"),
    (["--ddpm_num_steps", "10"], r"--validation_inference_steps 20 is more than the 10 diffusion steps"),
    (["--eval_steps", "5", "--eval_metrics", "fad"], r"--eval_metrics fad is not computed during training"),
    (["--pretrained_model_name_or_path", "/no/such"], r"--pretrained_model_name_or_path '/no/such' is neither"),
    (["--overwrite_output_dir", "--resume_from_checkpoint", "latest"], r"--overwrite_output_dir starts a new run"),
    (["--push_to_hub", "--hub_model_id", "me/bad name!"], r"repo_id='me/bad name!' is not a"),
]


@pytest.fixture(scope="module")
def train_script():
    return load_train_script()


@pytest.mark.parametrize("argv, match", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_is_one_clear_line_and_writes_nothing(train_script, argv, match, tmp_path):
    out = tmp_path / "out"
    args = train_script.parse_args([*argv, "--output_dir", str(out)])
    with pytest.raises(SystemExit, match=rf"^train.py: error: {match}"):
        train_script.main(args)
    assert not out.exists()


def _push_is_refused_before_training(train_script, tmp_path, message: str) -> None:
    out = tmp_path / "out"
    args = train_script.parse_args(["--push_to_hub", "--hub_model_id", "me/model", "--output_dir", str(out)])
    with pytest.raises(SystemExit, match=message):
        train_script.main(args)
    assert not out.exists()


def test_push_without_a_token_stops_before_training(train_script, tmp_path, monkeypatch):
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no saved login there
    message = r"^train.py: error: No Hugging Face token to push to 'me/model': set HF_TOKEN"
    _push_is_refused_before_training(train_script, tmp_path, message)


def test_push_with_the_hub_offline_stops_before_training(train_script, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", "hf_" + "T" * 34)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    message = r"^train.py: error: HF_HUB_OFFLINE is set, so the run could not be pushed to 'me/model'"
    _push_is_refused_before_training(train_script, tmp_path, message)


def test_a_bad_flag_from_the_command_line_is_one_line(tmp_path):
    result = run_train(["--logging_steps", "0", "--output_dir", str(tmp_path / "out")], tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "train.py: error: --logging_steps 0 is invalid: it must be an integer >= 1."
    )


def test_flags_of_diffusers_example_name_what_replaces_them(train_script, capsys):
    with pytest.raises(SystemExit):
        train_script.parse_args(["--save_images_epochs", "10", "--ddpm_beta_schedule", "squaredcos_cap_v2"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: unrecognized arguments: --save_images_epochs 10 --ddpm_beta_schedule" in error  # argparse's prog
    assert "instead of --save_images_epochs: --validation_steps N" in error
    assert "instead of --ddpm_beta_schedule: --noise_schedule (linear is linear, scaled_linear is" in error
    assert "squaredcos_cap_v2 is cosine" in error
    # a schedule no flag can configure is not offered
    with pytest.raises(SystemExit):
        train_script.parse_args(["--lr_scheduler", "piecewise_constant"])
    assert "invalid choice: 'piecewise_constant'" in capsys.readouterr().err


def test_a_split_the_embedded_digits_do_not_have():
    from hfddpm.data import load_train_dataset

    with pytest.raises(ValueError, match=r"--dataset_split 'test': the embedded mnist_5k has only the split 'train'"):
        load_train_dataset(None, None, None, split="test")


def test_config_rejects_wrong_types_and_choices():
    with pytest.raises(ValueError, match=r"--train_batch_size '8' is invalid: it must be an integer"):
        TrainConfig(train_batch_size="8").validate()
    with pytest.raises(ValueError, match=r"--preset 'huge' is invalid; choose one of \('tiny', 'mnist'"):
        TrainConfig(preset="huge").validate()
    with pytest.raises(ValueError, match=r"Unknown TrainConfig fields \['batch'\]"):
        TrainConfig.from_dict({"batch": 3})
    assert "hf_secret" not in repr(TrainConfig(hub_token="hf_secret"))


def test_output_dir_that_is_a_file_or_read_only(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ValueError, match=r"--output_dir '.*file' is a file, not a folder"):
        TrainConfig(output_dir=str(file)).check_output_dir()
    # read-only: /proc refuses writes even to root (CI runs as root, where folder permissions stop nothing)
    with pytest.raises(ValueError, match=r"--output_dir '/proc/hfddpm-out' cannot be written"):
        TrainConfig(output_dir="/proc/hfddpm-out").check_output_dir()


@pytest.mark.parametrize("existing", [None, "empty", "with a file"])
def test_a_refused_run_leaves_no_output_folder_it_created(tmp_path, monkeypatch, existing):
    from hfddpm.training import train

    (tmp_path / "imgs").mkdir()
    top = tmp_path / "new"
    out = top / "nested" / "out" if existing is None else tmp_path / "existing"
    if existing is not None:
        out.mkdir()
    if existing == "with a file":
        (out / "notes.txt").write_text("mine")
    seen = []
    check_output_dir = TrainConfig.check_output_dir
    monkeypatch.setattr(TrainConfig, "check_output_dir", lambda self: seen.append(check_output_dir(self)) or seen[-1])
    config = TrainConfig(train_data_dir=str(tmp_path / "imgs"), dataset_config_name="foo", output_dir=str(out))
    with pytest.raises(ValueError, match=r"--dataset_config_name 'foo': the image folder .* has no configs"):
        train(config)
    assert seen == [out]  # refused after the output folder was made
    if existing is None:
        assert not top.exists()  # the folder and the parents this call created
    else:
        assert sorted(p.name for p in out.iterdir()) == ([] if existing == "empty" else ["notes.txt"])
    if existing == "with a file":
        assert (out / "notes.txt").read_text() == "mine"


def test_an_interrupted_or_failed_run_keeps_its_output_folder(tmp_path, monkeypatch):
    from hfddpm.training import loop, train

    for error in (KeyboardInterrupt(), TrainingError("diverged")):
        out = tmp_path / type(error).__name__ / "out"

        def stop(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(loop, "setup", stop)
        with pytest.raises(type(error)):
            train(TrainConfig(output_dir=str(out)))
        assert out.is_dir()  # only bad input (ValueError, FileNotFoundError) removes what the call created


def test_only_empty_folders_a_refused_run_created_are_removed(tmp_path):
    from hfddpm.training.loop import folders_to_create, remove_empty_folders

    out = tmp_path / "a" / "b" / "out"
    created = folders_to_create(out)
    assert created == [out, out.parent, out.parent.parent] and folders_to_create(tmp_path) == []
    (out / "logs" / "run").mkdir(parents=True)
    (out / "samples").mkdir()
    (out / "logs" / "run" / "events").write_text("x")  # e.g. another process wrote there meanwhile
    remove_empty_folders(created)
    assert (out / "logs" / "run" / "events").is_file() and (out / "samples").is_dir()  # untouched
    (out / "logs" / "run" / "events").unlink()
    (tmp_path / "elsewhere").mkdir()
    (out / "logs" / "link").symlink_to(tmp_path / "elsewhere")  # a link counts as a file: it stays
    remove_empty_folders(created)
    assert (out / "logs" / "link").is_symlink() and (out / "samples").is_dir()
    (out / "logs" / "link").unlink()
    remove_empty_folders(created)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]
    remove_empty_folders(created)  # already gone (another process removed them): nothing to do, no error
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep.txt").write_text("x")  # a parent that holds a file now stays
    remove_empty_folders(created)
    assert (tmp_path / "a" / "keep.txt").is_file()


def test_a_malformed_hub_token_from_python_is_named_as_such(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from hfddpm.training import train

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    out = tmp_path / "out"
    config = TrainConfig(push_to_hub=True, hub_model_id="me/model", hub_token="hf_abc\ndef", output_dir=str(out))
    with pytest.raises(ValueError, match=r"^The token from TrainConfig.hub_token contains a line break: ") as err:
        train(config)
    assert "hf_abc" not in str(err.value) and not out.exists()


def test_the_final_push_names_the_hub_token_of_python_as_the_check_did(tmp_path, monkeypatch):
    from huggingface_hub import constants

    import hfddpm.hub
    from hfddpm.training import train

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    pushed = []
    monkeypatch.setattr(hfddpm.hub, "push_to_hub", lambda *args, **kwargs: pushed.append(kwargs) or "url")
    config = TrainConfig(preset="tiny", train_batch_size=8, max_train_steps=1, validation_inference_steps=1,
                         validation_images_per_class=1, mixed_precision="no", cpu_threads=1, push_to_hub=True,
                         hub_model_id="me/model", hub_token="hf_" + "V" * 34)  # fmt: skip
    for token, flag in ((config.hub_token, "TrainConfig.hub_token"), (None, None)):
        monkeypatch.setenv("HF_TOKEN", "hf_" + "W" * 34)
        train(dataclasses.replace(config, hub_token=token, output_dir=str(tmp_path / str(flag))))
        assert pushed.pop()["token_flag"] == flag  # None: no TrainConfig(hub_token=...) to name (HF_TOKEN is used)


# ---------------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------------
def test_a_diverged_loss_stops_with_the_last_good_checkpoint(tmp_path):
    (tmp_path / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    with pytest.raises(TrainingError, match=r"The loss became nan at step 6.*last good checkpoint is .*checkpoint-4"):
        _stop_if_diverged(float("nan"), 6, tmp_path)
    _stop_if_diverged(0.25, 6, tmp_path)
    assert json_safe({"loss": float("nan"), "x": [float("inf"), 1.0]}) == {"loss": None, "x": [None, 1.0]}


def test_a_finished_run_resumed_changes_nothing(tmp_path):
    out = tmp_path / "out"
    args = ["--output_dir", str(out), "--max_train_steps", "2", "--checkpointing_steps", "2"]
    run_train(args, tmp_path)
    card = out / "README.md"
    card.write_text(card.read_text() + "\nEvaluated: FD-digits 1.0\n")  # what `hfddpm evaluate` or a person does
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = run_train([*args, "--resume_from_checkpoint", "latest"], tmp_path)
    assert (
        f"{out} holds a finished run: checkpoint-2 is at step 2, the end of --max_train_steps 2; nothing to do."
        in result.stderr
    )
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    metrics = json.loads((out / "train_metrics.json").read_text())  # valid JSON: no NaN literals
    assert metrics["final_loss"] is not None and metrics["steps"] == 2


def test_an_edited_card_is_kept_when_training_writes_again(tmp_path):
    out = tmp_path / "out"
    run_train(["--output_dir", str(out), "--max_train_steps", "1"], tmp_path)
    card = out / "README.md"
    card.write_text(card.read_text() + "\nmy notes\n")
    result = run_train(["--output_dir", str(out), "--max_train_steps", "2", "--overwrite_output_dir"], tmp_path)
    assert card.read_text().endswith("my notes\n") and "was edited or evaluated since" in result.stderr
    assert json.loads((out / "train_metrics.json").read_text())["steps"] == 2


def test_broken_images_are_judged_early_and_a_finished_run_is_saved_first(tmp_path):
    from PIL import Image

    data = tmp_path / "images"
    data.mkdir()
    for i in range(9):
        Image.new("L", (16, 16), color=i * 20).save(data / f"{i}.png")
    (data / "broken.png").write_bytes(b"not a png")
    # 1 of 10 images broken (10% > 1%): the fraction is decided after one pass, at the first logging step
    early = tmp_path / "early"
    args = ["--train_data_dir", str(data), "--resolution", "16", "--train_batch_size", "5", "--preset", "tiny"]
    result = run_train([*args, "--output_dir", str(early), "--max_train_steps", "50"], tmp_path, check=False)
    assert result.returncode == 1
    # counted once each, however often re-read, and named: its row and file
    assert re.search(
        r"1 of the 10 images read could not be decoded \(.*\), e\.g\. row \d \(\S*broken\.png\)\.", result.stderr
    )
    assert "train: 100%" not in result.stderr  # stopped long before step 50
    # a run that ends before the first logging step: saved, then reported
    late = tmp_path / "late"
    late_args = [*args, "--output_dir", str(late), "--max_train_steps", "3", "--logging_steps", "5"]
    result = run_train(late_args, tmp_path, check=False)
    assert result.returncode == 1 and "could not be decoded" in result.stderr
    assert (late / "model_index.json").is_file() and (late / "unet").is_dir()
    # a stream of fewer images than BAD_EXAMPLES_MIN_READ is judged once every process has read all of it, not at
    # the end: 1 of 10 broken, logged every 2 steps (a pass is 2 steps)
    streamed = tmp_path / "streamed"
    stream_args = [
        *args,
        "--streaming",
        "--output_dir",
        str(streamed),
        "--max_train_steps",
        "50",
        "--logging_steps",
        "2",
    ]
    result = run_train(stream_args, tmp_path, check=False)
    assert result.returncode == 1 and "train: 100%" not in result.stderr and not (streamed / "unet").exists()
    assert re.search(
        r"1 of the 10 images read could not be decoded \(.*\), e\.g\. example \d+ .*broken\.png", result.stderr
    )
    assert check_bad_images(1, 10, 0.5) is None  # 10%: skipped
    with pytest.raises(ValueError, match=r"^3 of the 10 audio clips read could not be read \(30\.0% > .*, e\.g\. clip"
                                         r" 4 \(a/4\.wav\)\. Remove or repair the broken audio files"):  # fmt: skip
        check_bad_images(3, 10, 0.1, min_read=10, examples=["clip 4 (a/4.wav)"], audio=True)


def test_a_truncated_checkpoint_is_named_with_the_intact_ones(tmp_path):
    out = tmp_path / "out"
    args = ["--output_dir", str(out), "--max_train_steps", "4", "--checkpointing_steps", "2"]
    run_train(args, tmp_path)
    latest = out / "checkpoints" / "checkpoint-4"
    weights = latest / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"checkpoint-4 is damaged: unet/diffusion_pytorch_model.safetensors"):
        check_checkpoint(latest)
    result = run_train([*args, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"], tmp_path, check=False)
    assert result.returncode == 1
    assert "unet/diffusion_pytorch_model.safetensors cannot be read" in result.stderr
    assert "Intact checkpoints: " in result.stderr and "checkpoint-2" in result.stderr


# The CPU threads of the runs whose weights are compared bit for bit: train.py takes the cores it may run on (CPU
# affinity) at its start, and 1 thread against 2 rounds some of the UNet's tensors otherwise (by up to 7e-7).
SAME_THREADS = ["--cpu_threads", "1"]


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """An output folder with checkpoints at steps 2 and 4."""
    tmp = tmp_path_factory.mktemp("checkpointed")
    out = tmp / "out"
    run_train(["--output_dir", str(out), "--max_train_steps", "4", "--checkpointing_steps", "2", *SAME_THREADS], tmp)
    return out


@pytest.mark.parametrize(
    ("replaced", "named"),
    [
        ("optimizer.bin", "optimizer.bin"),
        ("random_states_0.pkl", "random_states_0.pkl"),
        ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"),
        ("unet_ema/diffusion_pytorch_model.safetensors", "unet_ema/diffusion_pytorch_model.safetensors"),
    ],
)
def test_a_checkpoint_with_foreign_pickles_is_named_and_they_never_run(checkpointed, tmp_path, replaced, named):
    # accelerate's states are loaded as tensors and numbers only, the weights from safetensors only: a checkpoint
    # whose files were swapped for pickles that run code is refused before anything is loaded
    out = tmp_path / "out"
    shutil.copytree(checkpointed, out)
    latest, marker = out / "checkpoints" / "checkpoint-4", tmp_path / "marker"
    (latest / replaced).unlink()
    target = latest / replaced if replaced.endswith((".bin", ".pkl")) else (latest / replaced).with_suffix(".bin")
    torch.save({"state": RunsCode(marker)}, target)
    with pytest.raises(ValueError, match=rf"checkpoint-4 is damaged: {re.escape(named)} cannot be read"):
        check_checkpoint(latest)
    assert not marker.exists()


def test_an_earlier_run_is_never_replaced_unasked(checkpointed, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(checkpointed, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    args = ["--output_dir", str(out), "--max_train_steps", "2", "--checkpointing_steps", "1"]
    result = run_train(args, tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"train.py: error: --output_dir {str(out)!r} holds an earlier run (a saved pipeline and checkpoints up to"
        " checkpoint-4), and a new run would replace it. Pass --resume_from_checkpoint latest to continue it (when it"
        " has checkpoints), --overwrite_output_dir to replace it, or another --output_dir."
    )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # asked to: the earlier checkpoints go first, so the new run's are never pruned by the old ones
    result = run_train([*args, "--overwrite_output_dir"], tmp_path)
    assert "Deleted the earlier run's checkpoints" in result.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert json.loads((out / "train_metrics.json").read_text())["steps"] == 2
    # a saved pipeline without checkpoints cannot be resumed: "latest" would start again from step 0
    (out / "checkpoints").rename(tmp_path / "moved")
    with pytest.raises(ValueError) as err:
        TrainConfig(output_dir=str(out), resume_from_checkpoint="latest").check_output_dir()
    assert str(err.value) == (
        f"--output_dir {str(out)!r} holds a saved pipeline but no checkpoint, so --resume_from_checkpoint latest has"
        " nothing to continue: this run would start again from step 0 and replace it. To train it further, start a"
        f" new run from it with --pretrained_model_name_or_path {out} and another --output_dir; to replace it, pass"
        " --overwrite_output_dir instead of --resume_from_checkpoint; or use another --output_dir."
    )


def test_a_refused_run_leaves_the_earlier_runs_files_as_they_were(checkpointed, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(checkpointed, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # refused after the data and the model are set up (the metric needs to know the run is on images)
    args = ["--output_dir", str(out), "--max_train_steps", "2", "--overwrite_output_dir", "--eval_steps", "1"]
    result = run_train([*args, "--eval_metrics", "spoken_digits"], tmp_path, check=False)
    assert result.returncode == 1 and "scores an audio run's spectrograms" in result.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_resume_from_a_tampered_checkpoint_stops_with_the_intact_ones(checkpointed, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(checkpointed, out)
    marker = tmp_path / "marker"
    torch.save({"state": RunsCode(marker)}, out / "checkpoints" / "checkpoint-4" / "optimizer.bin")
    args = ["--output_dir", str(out), "--max_train_steps", "6", "--resume_from_checkpoint", "latest"]
    result = run_train(args, tmp_path, check=False)
    assert result.returncode == 1 and not marker.exists()
    assert "checkpoint-4 is damaged: optimizer.bin cannot be read" in result.stderr
    assert "Intact checkpoints: " in result.stderr and "checkpoint-2" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------------------------------
# Resuming continues the same run: what does not fit the checkpoint is refused before it loads, and nothing is written
# ---------------------------------------------------------------------------------------------------------------------
def _files(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _safetensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


RESUME_REFUSED = [
    (
        ["--learning_rate", "0.002"],
        r"checkpoint-4 was trained with --learning_rate 0.001; this run has --learning_rate 0.002\. A resume continues"
        r" the same run: .* Resume with --learning_rate 0.001, or start a new run from its saved pipeline with"
        r" --pretrained_model_name_or_path \S+out and another --output_dir\.$",
    ),
    (
        ["--lr_scheduler", "linear", "--adam_beta2", "0.99", "--prediction_type", "epsilon"],
        r"checkpoint-4 was trained with --lr_scheduler cosine --adam_beta2 0.999 --prediction_type v_prediction; this"
        r" run has --lr_scheduler linear --adam_beta2 0.99 --prediction_type epsilon\.",
    ),
    (
        ["--train_batch_size", "16"],
        r"checkpoint-4 was trained with --train_batch_size 8; .* Resume with --train_batch_size 8, or",
    ),
    (["--ema_power", "0.5"], r"checkpoint-4 was trained with --ema_power 0.75; .* Resume with --ema_power 0.75, or"),
    (
        ["--preset", "mnist"],
        r"checkpoint-4 holds another UNet than this run builds \(the checkpoint's -> this run's: .*block_out_channels"
        r" \[8, 16\] -> \[32, 64, 64\].*\)\. A resume continues the same run: resume with the model flags it was"
        r" trained with \(--preset or --unet_config, the same data and labels\), or start a new run",
    ),
    (
        ["--no_class_conditional"],
        r"checkpoint-4 holds another UNet than this run builds \(the checkpoint's -> this run's: num_class_embeds 11"
        r" -> None \(class-conditional training:"
        r" --class_conditional, --label_column and the dataset's labels\)\)",
    ),
    (
        ["--max_train_steps", "3"],
        r"--max_train_steps 3 ends before step 4, which checkpoint-4 has already trained: a resume continues the run"
        r" and cannot shorten it\. Pass --max_train_steps 4 or more",
    ),
    (
        ["--resume_from_checkpoint", "checkpoint-2"],
        r"checkpoint-2 \(step 2\) is older than the newest checkpoint of \S+out, checkpoint-4: resuming from it would"
        r" abandon checkpoint-4 .* Resume with --resume_from_checkpoint latest, or add --overwrite_output_dir to"
        r" continue from checkpoint-2 and delete the later checkpoints\.",
    ),
]


@pytest.mark.parametrize("argv, match", RESUME_REFUSED, ids=[" ".join(a) for a, _ in RESUME_REFUSED])
def test_a_resume_that_would_not_continue_the_same_run_is_refused(train_script, checkpointed, argv, match, tmp_path):
    from train_helpers import FAST

    out = tmp_path / "out"
    shutil.copytree(checkpointed, out)
    before = _files(out)
    args = [*FAST, "--output_dir", str(out), "--max_train_steps", "6", "--resume_from_checkpoint", "latest", *argv]
    with pytest.raises(SystemExit, match=rf"^train.py: error: {match}"):
        train_script.main(train_script.parse_args(args))
    assert _files(out) == before


def test_a_checkpoint_without_ema_needs_no_use_ema(train_script, tmp_path):
    from train_helpers import FAST

    out = tmp_path / "out"
    run_train(
        ["--output_dir", str(out), "--max_train_steps", "2", "--checkpointing_steps", "2", "--no_use_ema"], tmp_path
    )
    before = _files(out)
    args = [*FAST, "--output_dir", str(out), "--max_train_steps", "4", "--resume_from_checkpoint", "latest"]
    with pytest.raises(SystemExit) as err:  # not diffusers' OSError about huggingface.co and unet_ema/config.json
        train_script.main(train_script.parse_args(args))
    assert str(err.value) == (
        "train.py: error: checkpoint-2 was saved without EMA (--no_use_ema), and this run keeps one (--use_ema, the"
        f" default): resume with --no_use_ema, or start a new run from its saved pipeline with"
        f" --pretrained_model_name_or_path {out} and another --output_dir."
    )
    assert _files(out) == before


def test_an_older_checkpoint_without_settings_is_resumed_unchecked_and_ema_is_optional(checkpointed, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(checkpointed, out)
    state_file = out / "checkpoints" / "checkpoint-4" / "training_state.json"
    state = json.loads(state_file.read_text())
    assert state["settings"]["learning_rate"] == 0.001 and state["settings"]["lr_warmup_steps"] == 1
    del state["settings"]  # as hfddpm <= 2026-11 wrote it
    state_file.write_text(json.dumps(state))
    # an EMA checkpoint resumed with --no_use_ema: the EMA is left unread
    args = ["--output_dir", str(out), "--max_train_steps", "5", "--resume_from_checkpoint", "latest"]
    result = run_train([*args, "--no_use_ema", "--learning_rate", "0.002"], tmp_path)
    assert "checkpoint-4 records no training settings (written by an older hfddpm)" in result.stderr
    assert json.loads((out / "train_metrics.json").read_text())["steps"] == 5


def test_an_older_checkpoint_resumed_with_overwrite_output_dir_deletes_the_later_ones(checkpointed, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(checkpointed, out)
    # by name, as diffusers' train_unconditional.py takes it: a checkpoint of output_dir/checkpoints
    args = ["--output_dir", str(out), "--max_train_steps", "4", "--checkpointing_steps", "2",
            "--resume_from_checkpoint", "checkpoint-2", "--overwrite_output_dir",
            "--checkpoints_total_limit", "1", *SAME_THREADS]  # fmt: skip
    result = run_train(args, tmp_path)
    report = run_report(result, out)  # a failure shows the files and the log of the run
    assert (
        f"Deleted checkpoint-4 of {out / 'checkpoints'}, saved after checkpoint-2 (--overwrite_output_dir): the run"
        " continues from checkpoint-2." in result.stderr
    ), report
    assert f"Resuming from {out / 'checkpoints' / 'checkpoint-2'}" in result.stderr, report
    # the EMA's state is read without diffusers' warning about config attributes the UNet does not expect
    assert "were passed to UNet2DModel" not in result.stderr, report
    # the limit kept the new run's checkpoint: latest is this run's, and the same run gives the same weights
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-4"], report
    metrics = json.loads((out / "train_metrics.json").read_text())
    # bitwise equal weights need the same CPU threads in both runs (SAME_THREADS)
    threads = [json.loads((run / "train_metrics.json").read_text())["training_config"]["cpu_threads"]
               for run in (checkpointed, out)]  # fmt: skip
    for sub in ("unet", "unet_ema"):
        ours, theirs = (
            _safetensors(out / "checkpoints" / "checkpoint-4" / sub),
            _safetensors(checkpointed / "checkpoints" / "checkpoint-4" / sub),
        )
        differ = [k for k in theirs if k not in ours or not torch.equal(ours[k], theirs[k])]
        assert ours.keys() == theirs.keys() and not differ, (
            f"{sub}: {len(differ)} of {len(theirs)} tensors differ from the uninterrupted run's, e.g. {differ[:3]}"
            f" (CPU threads of the uninterrupted and the resumed run: {threads})\n{report}"
        )
    assert (metrics["steps"], metrics["steps_this_run"], metrics["images_seen"]) == (4, 2, 32), report


def test_checkpoint_best_is_resumable(train_script, tmp_path):
    from test_periodic_eval import keep_best_run, scripted_run

    out, args = keep_best_run(tmp_path, 8, "--checkpoints_total_limit", "0")
    values = {2: 5.0, 4: 4.0, 6: 6.0, 8: 7.0}
    scripted_run(tmp_path, values, args)
    best = out / "checkpoints" / "checkpoint-best"
    state = json.loads((best / "training_state.json").read_text())
    # the state of a numbered checkpoint of the same step, and the metric it is the best of
    numbered = json.loads((out / "checkpoints" / "checkpoint-4" / "training_state.json").read_text())
    assert state == numbered | {"metric": "fd_digits", "value": 4.0}
    uninterrupted = _safetensors(out / "unet")
    # older than checkpoint-8: refused unless the later checkpoints may go
    before = _files(out)
    with pytest.raises(
        SystemExit, match=r"checkpoint-best \(step 4\) is older than the newest checkpoint .*checkpoint-8"
    ):
        train_script.main(train_script.parse_args([*args, "--resume_from_checkpoint", "checkpoint-best"]))
    assert _files(out) == before
    result = scripted_run(
        tmp_path, values, [*args, "--resume_from_checkpoint", "checkpoint-best", "--overwrite_output_dir"]
    )
    assert "Deleted checkpoint-8" in result.stderr and "Resuming from" in result.stderr
    assert all(torch.equal(uninterrupted[k], v) for k, v in _safetensors(out / "unet").items())
    assert [h["step"] for h in json.loads((out / "eval_history.json").read_text())] == [2, 4, 6, 8]


def test_a_checkpoint_best_of_an_older_hfddpm_is_refused_by_name(tmp_path):
    from hfddpm.training.checkpoint import check_resume

    best = tmp_path / "run" / "checkpoints" / "checkpoint-best"
    best.mkdir(parents=True)
    (best / "training_state.json").write_text(json.dumps({"global_step": 4, "metric": "fd_digits", "value": 3.0}))
    (tmp_path / "run" / "best").mkdir()
    (tmp_path / "run" / "best" / "model_index.json").write_text("{}")
    with pytest.raises(ValueError) as err:
        check_resume(best, settings={}, unet_config={}, use_ema=True)
    assert str(err.value) == (
        f"{best} cannot be resumed: its training_state.json holds only ['global_step', 'metric', 'value'] (a"
        " checkpoint-best of an older hfddpm kept the weights, not the data order and counts). Resume from a numbered"
        f" checkpoint, or start a new run from its saved pipeline with --pretrained_model_name_or_path"
        f" {tmp_path / 'run' / 'best'} and another --output_dir."
    )


def test_a_checkpoint_name_that_is_not_there_names_those_that_are(checkpointed):
    from hfddpm.training.checkpoint import resolve_resume_path

    assert resolve_resume_path("checkpoint-2", str(checkpointed)) == checkpointed / "checkpoints" / "checkpoint-2"
    with pytest.raises(FileNotFoundError) as err:
        resolve_resume_path("checkpoint-3", str(checkpointed))
    assert str(err.value) == (
        f"--resume_from_checkpoint 'checkpoint-3' is not a checkpoint folder (no training_state.json) nor a checkpoint"
        f" of {checkpointed / 'checkpoints'} (checkpoint-2, checkpoint-4); pass 'latest', a checkpoint name such as"
        f" checkpoint-500 or a folder such as {checkpointed / 'checkpoints'}/checkpoint-500."
    )


def test_ctrl_c_says_what_was_kept_and_how_to_go_on(tmp_path):
    import os
    import signal
    import time

    from train_helpers import FAST

    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    args = [*FAST, "--output_dir", str(out), "--max_train_steps", "500", "--checkpointing_steps", "2"]
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(TRAIN), *args], env=train_env(tmp_path), stdout=subprocess.DEVNULL, stderr=stderr
        )
        try:
            deadline = time.monotonic() + 300
            while not (out / "checkpoints" / "checkpoint-2").is_dir():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert proc.returncode == 130 and "Traceback" not in text, text[-3000:]
    assert re.search(r"train.py: Interrupted: the newest checkpoint is .*checkpoint-\d+; continue", text)


def test_ctrl_c_of_two_processes_is_reported_once(tmp_path):
    import os
    import signal
    import time

    from train_helpers import FAST

    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    args = [*FAST, "--output_dir", str(out), "--max_train_steps", "500", "--checkpointing_steps", "2"]
    with open(log, "w") as stderr:
        # Ctrl-C in a terminal reaches every process of the group: the launcher and both training processes
        proc = subprocess.Popen(
            [*accelerate_launcher(2), str(TRAIN), *args],
            env=train_env(tmp_path, ACCELERATE_USE_CPU="1"),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            while not (out / "checkpoints" / "checkpoint-2").is_dir():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert text.count("train.py: Interrupted: the newest checkpoint is") == 1, text[-3000:]


def test_fid_during_training_without_inception_is_settled_before_training(tmp_path, monkeypatch):
    from hfddpm.evaluation import inception

    monkeypatch.setattr(inception.torch.hub, "get_dir", lambda: str(tmp_path / "no-hub"))  # no weights there
    from hfddpm.training import train

    rgb = tmp_path / "rgb.json"  # a 3-channel UNet for the grey digits (a preset would follow the data: 1 channel)
    rgb.write_text(json.dumps({**GREY, "in_channels": 3, "out_channels": 3}))
    colour = TrainConfig(unet_config=str(rgb), train_batch_size=8, max_train_steps=4, eval_steps=2, eval_metrics="fid")
    with pytest.raises(ValueError, match=r"--eval_metrics fid: FID/KID with Inception-v3 are unavailable.* 3-channel"):
        train(dataclasses.replace(colour, output_dir=str(tmp_path / "colour")))
    assert not (tmp_path / "colour" / "training_config.json").exists()
    grey = tmp_path / "grey.json"
    grey.write_text(json.dumps(GREY))
    best_fid = dataclasses.replace(colour, unet_config=str(grey), keep_best="fid", output_dir=str(tmp_path / "best"))
    with pytest.raises(ValueError) as err:
        train(best_fid)
    # what is missing, then training's own way out: no flag of `hfddpm evaluate`'s
    message = str(err.value)
    assert message.startswith("--keep_best fid: FID/KID with Inception-v3 are unavailable: ")
    assert "(download https://" in message and "and put it in that folder)" in message
    assert message.endswith("instead; pass --keep_best fid_digits.") and "--inception-weights" not in message
    assert "Options" not in message and "--fid-fallback" not in message
    assert not (tmp_path / "best" / "training_config.json").exists()


def test_the_inception_error_keeps_what_is_missing_and_the_options_apart(tmp_path, hide_package):
    from hfddpm.evaluation import MetricUnavailableError, find_inception_weights

    hide_package("torch_fidelity")
    with pytest.raises(MetricUnavailableError) as evaluate:  # hfddpm evaluate's flags, by default
        find_inception_weights(tmp_path / "missing.pth")
    err = evaluate.value
    assert str(err) == f"{err.reason} Options: {err.options}"
    assert err.reason.startswith("FID/KID with Inception-v3 are unavailable: the torch-fidelity package is not")
    assert err.reason.endswith(
        "pass the file with --inception-weights, or put it in that folder). Nothing is downloaded."
    )
    assert err.options.startswith("provide them, or rerun with --fid-fallback digits (FID/KID on the digit")
    with pytest.raises(MetricUnavailableError) as training:  # train.py: no flags, always the digit features
        find_inception_weights(tmp_path / "missing.pth", weights_flag=None, fallback_flag=None)
    err = training.value
    assert "--inception-weights" not in err.reason and err.reason.endswith(
        "put it in that folder). Nothing is downloaded."
    )
    assert "--fid-fallback" not in err.options
    assert err.options.startswith("FID/KID use the digit classifier's features instead (reported as fid_digits/kid_")
    assert "`hfddpm evaluate PIPELINE --metrics fid,kid --inception-weights pt_inception-2015-12-05-6726825d.pth`" in (
        err.options
    )


def test_train_from_python_leaves_the_process_as_it_was(tmp_path, monkeypatch, capfd):
    from hfddpm.training import train

    # a notebook: nothing set up for logging (pytest's capture handlers left aside), its own threads and seeds
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setattr(logging.getLogger(), "level", logging.WARNING)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(1234)
        random.seed(5)
        np.random.seed(6)
        before = process_state()
        config = TrainConfig(preset="tiny", train_batch_size=8, max_train_steps=2, validation_inference_steps=1,
                             validation_images_per_class=1, eval_batch_size=4, mixed_precision="no",
                             cpu_threads=1)  # fmt: skip
        for run in ("first", "second"):
            train(dataclasses.replace(config, output_dir=str(tmp_path / run)))
            assert process_state() == before, run
            # the run's lines were shown, once each: a second call does not repeat them
            assert capfd.readouterr().err.count("Training 2 steps from step 0") == 1, run
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))  # no Inception weights there
        rgb = tmp_path / "rgb.json"  # a 3-channel UNet for the grey digits: FID without Inception is refused
        rgb.write_text(json.dumps({**GREY, "in_channels": 3, "out_channels": 3}))
        refused = dict(eval_steps=2, eval_metrics="fid", unet_config=str(rgb), output_dir=str(tmp_path / "refused"))
        with pytest.raises(ValueError, match=r"--eval_metrics fid: .* 3-channel"):  # refused after seeding
            train(dataclasses.replace(config, **refused))
        assert process_state() == before
    finally:
        torch.set_num_threads(threads)


def test_a_failed_push_never_shows_the_token(tmp_path):
    token = "hf_" + "Q" * 34
    out = tmp_path / "out"
    # the token's place: the environment (or `hf auth login`), never the command line
    env = train_env(
        tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_ETAG_TIMEOUT="2", HF_TOKEN=token
    )
    args = ["--output_dir", str(out), "--max_train_steps", "1", "--preset", "tiny",
            "--validation_inference_steps", "1", "--push_to_hub", "--hub_model_id", "me/model"]  # fmt: skip
    launched = [*accelerate_launcher(1), str(TRAIN), *args]
    result = subprocess.run(launched, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    # a failed push is a failure (accelerate shows the command line: it holds no token)
    assert result.returncode == 1 and token not in output
    assert "train.py: error: Pushing" in output and "failed" in output and "hfddpm push" in output  # how to retry
    assert (out / "model_index.json").is_file()  # the run itself is saved
    for path in out.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("flag", [["--hub_token", "TOKEN"], ["--hub_token=TOKEN"], ["--hub_tok", "TOKEN"]])
def test_a_token_on_the_command_line_is_refused_before_anything_runs(train_script, tmp_path, capsys, flag):
    token = "hf_" + "R" * 34
    flag = [part.replace("TOKEN", token) for part in flag]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        train_script.parse_args(["--push_to_hub", "--hub_model_id", "me/model", *flag, "--output_dir", str(out)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.split(": error: ", 1)[1] == (  # after argparse's prog (train.py when run as a script)
        "--hub_token puts the token on the command line, where `ps` and the shell history show it: set HF_TOKEN in"
        " the environment or run `hf auth login` instead (the flag is refused, its value was not used)."
    )
    assert token not in error and not out.exists()
    # documented as refused in --help, with the way on; from Python a token is still taken
    with pytest.raises(SystemExit):
        train_script.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--hub_token HUB_TOKEN Refused on the command line" in help_text
    assert "--push_to_hub takes the token from HF_TOKEN or `hf auth login`" in help_text
    assert TrainConfig(push_to_hub=True, hub_model_id="me/model", hub_token=token).validate().hub_token == token


def test_a_token_on_the_command_line_stops_train_py_with_status_2(tmp_path):
    token = "hf_" + "S" * 34
    out = tmp_path / "out"
    result = run_train(["--output_dir", str(out), "--push_to_hub", f"--hub_token={token}"], tmp_path, check=False)
    assert result.returncode == 2 and token not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert "--hub_token puts the token on the command line" in result.stderr and not out.exists()


def test_a_token_refused_under_accelerate_launch_is_called_exposed(tmp_path):
    # accelerate launch prints the command line of a process that exits non-zero: the refusal says so
    token = "hf_" + "U" * 34
    args = ["--output_dir", str(tmp_path / "out"), "--push_to_hub", "--hub_token", token]
    launched = [*accelerate_launcher(1), str(TRAIN), *args]
    result = subprocess.run(launched, env=train_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and not (tmp_path / "out").exists()
    refusal = next(line for line in result.stderr.splitlines() if "--hub_token puts the token" in line)
    assert token not in refusal
    assert refusal.endswith(
        "`accelerate launch` prints this command line, token included, as this run stops: treat the token as exposed"
        " and replace it (https://huggingface.co/settings/tokens)."
    )


def test_train_py_has_no_test_hooks():
    source = "\n".join(p.read_text() for p in [TRAIN, *Path(ROOT, "hfddpm", "training").glob("*.py")])
    assert "HFDDPM_TEST" not in source and "time.sleep" not in source


def test_config_from_python_takes_numpy_numbers_and_refuses_missing_strings():
    import numpy as np

    config = TrainConfig(train_batch_size=np.int64(8), learning_rate=np.float32(1e-3)).validate()
    assert type(config.train_batch_size) is int and type(config.learning_rate) is float
    json.dumps(config.to_dict())  # training_config.json
    with pytest.raises(ValueError, match=r"--preset None is invalid: it must be given \(default 'mnist'\)"):
        TrainConfig(preset=None).validate()
    with pytest.raises(ValueError, match=r"--output_dir 123 is invalid: it must be a string"):
        TrainConfig(output_dir=123).validate()
