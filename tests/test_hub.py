"""hfddpm.hub: model cards, push_to_hub against a local fake Hub, and loading by repo id in fresh processes."""

import dataclasses
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from audio_helpers import build_audio_pipeline
from hub_server import USER_TOKEN as TOKEN
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.errors import RepositoryNotFoundError
from PIL import Image

import hfddpm
from hfddpm.hub import (
    CONFIG_ROWS,
    PushToHubError,
    card_template_path,
    check_pipeline_folder,
    check_push_settings,
    count_parameters,
    default_commit_message,
    pipeline_files,
    push_to_hub,
    update_card_metrics,
    update_model_card,
    write_model_card,
)
from hfddpm.hub.card import stale_card
from hfddpm.training.config import TrainConfig, write_config

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAINING_CONFIG = {
    "preset": "tiny",
    "max_train_steps": 10,
    "train_batch_size": 8,
    "learning_rate": 1e-3,
    "device": "CPU",
    "num_processes": 1,
    "wall_time_s": 75.4,
    "validation_inference_steps": 3,
    "output_dir": "/home/someone/private/run",
    "hub_token": TOKEN,
    "seed": 0,
}
METRICS = {"fd_digits": 4.25, "confident_share": 0.75, "class_histogram": [0.1] * 10, "num_samples": 64}
PIPELINE = [
    "README.md",
    "model_index.json",
    "pipeline_hfddpm.py",
    "pipeline_hfddpm_audio.py",
    "pipeline_hfddpm_img2img.py",
    "pipeline_hfddpm_inpaint.py",
    "samples/final.png",
    "scheduler/scheduler_config.json",
    "scheduler/scheduling_hfddpm.py",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
]


def build_output(folder: Path, num_class_embeds=None, card=True) -> Path:
    """A training-like output folder: a tiny pipeline, sample grids, metrics, a checkpoint and logs."""
    torch.manual_seed(0)
    unet = hfddpm.build_unet("tiny", in_channels=1, out_channels=1, sample_size=28, num_class_embeds=num_class_embeds)
    hfddpm.HFDDPMPipeline(unet=unet, scheduler=hfddpm.HFDDPMScheduler()).save_pretrained(folder)
    (folder / "samples").mkdir()
    Image.new("L", (56, 56), 128).save(folder / "samples" / "final.png")
    Image.new("L", (56, 56), 64).save(folder / "samples" / "step_000005.png")
    (folder / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint-10" / "optimizer.bin").write_bytes(b"optimizer state")
    (folder / "checkpoints" / "checkpoint-10" / "random_states_0.pkl").write_bytes(b"rng")
    (folder / "logs").mkdir()
    (folder / "logs" / "events.out.tfevents.1").write_bytes(b"log")
    train_metrics = {"steps": 10, "final_loss": 0.0812, "wall_time_s": 75.4, "device": "cpu", "num_processes": 1}
    (folder / "train_metrics.json").write_text(json.dumps(train_metrics))
    if card:
        write_model_card(folder, training_config=TRAINING_CONFIG, metrics=METRICS, dataset_name="mnist")
    return folder


@pytest.fixture(scope="module")
def saved_output(tmp_path_factory):
    return build_output(tmp_path_factory.mktemp("saved") / "out")


@pytest.fixture
def output(saved_output, tmp_path):
    return Path(shutil.copytree(saved_output, tmp_path / "out"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def sample(pipe, steps=3):
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np")


# ------------------------------------------------------------------------------------------------------------------
# Model cards
# ------------------------------------------------------------------------------------------------------------------
def test_card_metadata_and_sections(output):
    card = ModelCard.load(output / "README.md")
    data = card.data
    assert data.license == "apache-2.0" and data.library_name == "diffusers"
    assert data.pipeline_tag == "unconditional-image-generation"
    assert {"hfddpm", "diffusers", "ddpm", "mnist"} <= set(data.tags)
    assert data.datasets == ["ylecun/mnist"]
    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == {"fd_digits", "confident_share"}  # numbers only; histograms and settings stay out
    assert results["fd_digits"].metric_value == 4.25 and results["fd_digits"].dataset_type == "ylecun/mnist"
    assert results["fd_digits"].task_type == "unconditional-image-generation"

    text = card.text
    assert "![Samples from the final model](samples/final.png)" in text
    n_params = hfddpm.HFDDPMPipeline.from_pretrained(output).unet.num_parameters()
    assert count_parameters(output / "unet") == n_params
    for row in (
        "| UNet preset | tiny |",
        f"| Parameters | {n_params:,} |",
        "| Resolution | 28×28 |",
        "| Noise schedule | cosine |",
        "| Prediction type | v_prediction |",
        "| Training steps | 10 |",
        "| Batch size | 8 |",
        "| Hardware | 1 × CPU |",
        "| Wall time | 1 min 15 s |",
        "| Fréchet distance of digit-classifier features (`fd_digits`) | 4.25 |  |  | lower is better |",
    ):
        assert row in text
    assert "Computed with num_samples = 64." in text
    assert "## Limitations" in text
    # both ways of loading, with the number of steps of the training run's validation grids
    assert re.search(r'<!-- hfddpm:repo_id ".+/out" -->', text)  # snippets load the folder until it is pushed
    snippets = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(snippets) == 2
    assert "HFDDPMPipeline.from_pretrained(" in snippets[0] and "num_inference_steps=3" in snippets[0]
    assert "DiffusionPipeline.from_pretrained(" in snippets[1] and "trust_remote_code=True" in snippets[1]
    # secrets and paths of the training machine stay out
    readme = (output / "README.md").read_text()
    assert TOKEN not in readme and "hub_token" not in readme and "/home/someone" not in readme


def test_card_variants(tmp_path):
    folder = build_output(tmp_path / "cond", num_class_embeds=11, card=False)
    (folder / "samples" / "final.png").unlink()
    path = write_model_card(folder, training_config={"preset": "tiny"}, repo_id="user/cond")
    card = ModelCard.load(path)
    assert card.data.eval_results is None and "model-index:" not in path.read_text()
    assert "Not evaluated yet" in card.text
    assert "![" not in card.text  # no grid on disk, no broken image
    assert 'from_pretrained("user/cond")' in card.text
    # a config without the field (an older run) shows TrainConfig's default; a run's own value is shown as given
    assert "    class_labels=[0, 1, 2, 3],\n    guidance_scale=1.5,\n).images" in card.text
    path = write_model_card(folder, training_config={"preset": "tiny", "validation_guidance_scale": 3}, repo_id="u/c")
    assert "    class_labels=[0, 1, 2, 3],\n    guidance_scale=3.0,\n).images" in path.read_text()
    assert "conditioned on one of 10 class labels" in card.text
    assert card_template_path().name == "hfddpm_card_template.md"

    with pytest.raises(FileNotFoundError, match="not a folder"):
        write_model_card(tmp_path / "missing", training_config={})
    with pytest.raises(ValueError, match="training_config must be a dict"):
        write_model_card(folder, training_config=["preset"])


def test_audio_card_describes_sound(tmp_path):
    folder = build_audio_pipeline(tmp_path / "audio", num_class_embeds=4)
    settings = {"preset": "tiny", "validation_inference_steps": 2, "train_data_dir": "/home/someone/tones"}
    path = write_model_card(folder, training_config=settings, metrics={"fd_digits": 1.5}, dataset_name="tones")
    card = ModelCard.load(path)
    # no Hub pipeline tag fits unconditional sound; a local folder name is no Hub dataset id
    assert card.data.pipeline_tag is None and card.data.datasets is None
    assert "pipeline_tag" not in path.read_text() and "datasets:" not in path.read_text()
    assert "tones" in card.data.tags  # a tag may be any word
    result = card.data.eval_results[0]
    assert (result.task_type, result.task_name) == ("other", "Unconditional audio generation")
    assert result.dataset_type == "custom" and result.dataset_name == "tones"
    text = card.text
    assert "generates\n0.12 s sound clips in the style of **tones**, conditioned on one of 3 class labels" in text
    assert "grayscale" not in text and "images[0]" not in text and "sample.png" not in text
    assert "it produces 0.12 s clips at\n  8000 Hz of that kind" in text
    assert "(`pip install diffusers torch librosa soundfile`" in text and "(`pip install 'hfddpm[audio]'`)" in text
    snippets = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(snippets) == 2
    for snippet in snippets:
        assert 'soundfile.write("sample.wav", out.audios[0], out.sample_rate)' in snippet
    # evaluating later keeps the audio task; a Hub dataset id goes to the metadata
    card = ModelCard.load(update_card_metrics(path, {"fd_digits": 1.0}))
    assert {r.task_type for r in card.data.eval_results} == {"other"}
    path = write_model_card(folder, training_config=settings, dataset_name="someone/spoken-digits")
    assert ModelCard.load(path).data.datasets == ["someone/spoken-digits"]
    assert ModelCard.load(path).data.eval_results is None
    card = ModelCard.load(update_card_metrics(path, {"fd_digits": 1.0}))  # first results: the task from mel/
    assert card.data.eval_results[0].task_type == "other"
    assert card.data.eval_results[0].dataset_type == "someone/spoken-digits"


def write_card_snippets(card_text: str, folder) -> None:
    """The card's two usage snippets as snippet_hfddpm.py (with hfddpm) and snippet_diffusers.py (diffusers only)."""
    snippets = re.findall(r"```python\n(.*?)```", card_text, re.S)
    (folder / "snippet_hfddpm.py").write_text(snippets[0])
    (folder / "snippet_diffusers.py").write_text(snippets[1])


def test_audio_card_snippets_write_the_same_wav_with_and_without_hfddpm(tmp_path):
    folder = build_audio_pipeline(tmp_path / "audio", num_class_embeds=4)
    text = write_model_card(folder, training_config={"validation_inference_steps": 2}).read_text()
    write_card_snippets(text, tmp_path)
    (tmp_path / "run.py").write_text(
        textwrap.dedent(
            """
            import os, sys
            sys.modules["hfddpm"] = None  # as if hfddpm were not installed
            exec(open("snippet_diffusers.py").read(), {})
            os.rename("sample.wav", "sample_diffusers.wav")
            del sys.modules["hfddpm"]
            exec(open("snippet_hfddpm.py").read(), {})
            """
        )
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run(
        [sys.executable, "run.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    import soundfile

    with_hfddpm, rate = soundfile.read(tmp_path / "sample.wav")
    without, rate_without = soundfile.read(tmp_path / "sample_diffusers.wav")
    assert rate == rate_without == 8000 and with_hfddpm.shape == without.shape == ((16 - 1) * 64,)
    np.testing.assert_allclose(with_hfddpm, without, atol=1e-3)
    assert np.abs(with_hfddpm).max() > 0


def test_card_reads_training_config_json_by_field_name(tmp_path):
    folder = build_output(tmp_path / "out", card=False)
    # without training_config.json: what the saved folder and train_metrics.json say
    text = write_model_card(folder).read_text()
    for row in (
        "| Resolution | 28×28 |",
        "| Noise schedule | cosine |",
        "| Hardware | 1 × cpu |",
        "| Wall time | 1 min 15 s |",
    ):
        assert row in text
    assert "| UNet preset |" not in text and "| Batch size |" not in text

    config = TrainConfig(preset="tiny", train_batch_size=4, learning_rate=2e-4, max_train_steps=10, snr_gamma=5.0)
    resolved = {"max_train_steps": 12, "mixed_precision": "no", "device": "cuda", "num_processes": 2}
    write_config(folder / "training_config.json", config, resolved)
    text = write_model_card(folder).read_text()
    rows = ["| UNet preset | tiny |", "| Batch size | 4 |", "| Learning rate | 0.0002 |", "| Training steps | 12 |"]
    rows += [
        "| Min-SNR-γ loss weight | 5 |",
        "| EMA decay | 0.9999 |",
        "| Mixed precision | no |",
        "| Hardware | 2 × cuda |",
    ]
    rows += ["| Diffusion timesteps | 1000 |", "| Wall time | 1 min 15 s |"]
    for row in rows:
        assert row in text
    # one name per row: a TrainConfig field, or a value the training run resolves or measures
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    resolved_or_measured = {
        "num_parameters",
        "device",
        "wall_time_s",
        "time_budget_minutes",
        "train_images_per_second",
    }
    assert set(CONFIG_ROWS.values()) - fields == resolved_or_measured
    # a run planned by the time budget says so, with its measured speed from train_metrics.json
    write_config(folder / "training_config.json", config, {**resolved, "time_budget_minutes": 8.0})
    metrics = json.loads((folder / "train_metrics.json").read_text())
    (folder / "train_metrics.json").write_text(json.dumps({**metrics, "train_images_per_second": 176.2}))
    text = write_model_card(folder).read_text()
    assert "| Time budget (minutes) | 8 |" in text and "| Training images/s | 176.2 |" in text


def test_update_card_metrics(output):
    path = update_card_metrics(output, {"fd_digits": 3.5, "label_accuracy": 0.9, "num_inference_steps": 20})
    card = ModelCard.load(path)
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values == {"fd_digits": 3.5, "label_accuracy": 0.9}  # the card's earlier confident_share is gone
    assert "| Fréchet distance of digit-classifier features (`fd_digits`) | 3.5 |  |  | lower is better |" in card.text
    assert "`confident_share`" not in card.text
    assert "4.25" not in card.text and "Computed with num_inference_steps = 20." in card.text
    assert card.text.count("## Evaluation") == 1 and "## Limitations" in card.text

    with pytest.raises(FileNotFoundError, match="No model card"):
        update_card_metrics(output / "unet", {"fd_digits": 1.0})
    with pytest.raises(ValueError, match="metrics must be a dict"):
        update_card_metrics(path, [1.0])
    before = path.read_text()
    with pytest.raises(
        ValueError, match=r"No metric value to write .*\['notes', 'num_samples'\]\); the card is unchanged"
    ):
        update_card_metrics(path, {"num_samples": 10, "notes": ["fid skipped"]})
    assert path.read_text() == before


def test_update_model_card_writes_model_index(tmp_path):
    card_path = tmp_path / "README.md"
    card_path.write_text("---\nlicense: apache-2.0\nlibrary_name: diffusers\n---\n\n# tiny\n")
    results = {"fd_digits": 12.5, "confident_share": 0.75, "class_histogram": [1] * 10, "num_samples": 10}
    update_model_card(card_path, results)
    card = ModelCard.load(card_path)
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values["fd_digits"] == pytest.approx(12.5) and values["confident_share"] == pytest.approx(0.75)
    assert "class_histogram" not in values and "num_samples" not in values
    # a second evaluation replaces the first one's results, those it did not compute too (their settings differ)
    update_model_card(card_path, {"fd_digits": 3.0, "num_samples": 40})
    card = ModelCard.load(card_path)
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"fd_digits": pytest.approx(3.0)}
    assert "`confident_share`" not in card.text and "Computed with num_samples = 40." in card.text
    assert card.text.count("## Evaluation") == 1
    assert json.loads(json.dumps(ModelCard.load(card_path).data.to_dict()))["license"] == "apache-2.0"


def test_pipeline_files_and_commit_message(output, tmp_path):
    assert pipeline_files(output) == PIPELINE
    (output / "unet" / "optimizer.pt").write_bytes(b"x")  # training state inside a component folder stays local
    assert pipeline_files(output) == PIPELINE
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        pipeline_files(tmp_path)

    title, description = default_commit_message(output)
    assert title == "Upload hfddpm pipeline at step 10: final_loss=0.0812, fd_digits=4.25, confident_share=0.75"
    assert "- steps: 10" in description and "- fd_digits: 4.25" in description


# ------------------------------------------------------------------------------------------------------------------
# Pushing
# ------------------------------------------------------------------------------------------------------------------
def test_push_then_load_by_repo_id_in_fresh_processes(output, hub, tmp_path):
    url = push_to_hub(output, "user/hfddpm-tiny", token=TOKEN)
    assert url == f"{hub.url}/user/hfddpm-tiny"
    files = hub.files("user/hfddpm-tiny")
    assert sorted(files) == sorted([".gitattributes", *PIPELINE])  # no checkpoints, logs or run files
    assert (
        files["unet/diffusion_pytorch_model.safetensors"]
        == (output / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    )
    commit = hub.commits("user/hfddpm-tiny")[-1]
    assert commit.title == "Upload hfddpm pipeline at step 10: final_loss=0.0812, fd_digits=4.25, confident_share=0.75"
    assert "- final_loss: 0.0812" in commit.message
    readme = files["README.md"].decode()
    assert readme == (output / "README.md").read_text()  # the local card now names the repository too
    assert readme.count('from_pretrained("user/hfddpm-tiny"') == 2
    assert ModelCard(readme).data.eval_results[0].metric_value == 4.25

    # One fresh process (imports are slow): first without hfddpm, then with it.
    write_card_snippets(readme, tmp_path)
    (tmp_path / "load.py").write_text(
        textwrap.dedent(
            """
            import os, sys
            sys.modules["hfddpm"] = None  # as if hfddpm were not installed
            import numpy as np, torch
            from diffusers import DiffusionPipeline

            def sample(pipe):
                pipe.set_progress_bar_config(disable=True)
                generator = torch.Generator().manual_seed(0)
                return pipe(batch_size=2, num_inference_steps=3, generator=generator, output_type="np").images

            images = {}
            pipe = DiffusionPipeline.from_pretrained("user/hfddpm-tiny", trust_remote_code=True)
            assert not type(pipe).__module__.startswith("hfddpm"), type(pipe).__module__
            images["remote_without_hfddpm"] = sample(pipe)
            exec(open("snippet_diffusers.py").read(), {})  # the card's snippets, as written
            os.rename("sample.png", "sample_diffusers.png")

            del sys.modules["hfddpm"]
            from hfddpm import HFDDPMPipeline

            images["hfddpm"] = sample(HFDDPMPipeline.from_pretrained("user/hfddpm-tiny"))
            images["remote"] = sample(DiffusionPipeline.from_pretrained("user/hfddpm-tiny", trust_remote_code=True))
            exec(open("snippet_hfddpm.py").read(), {})
            np.savez("images.npz", **images)
            """
        )
    )
    run = subprocess.run([sys.executable, "load.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("sample.png", "sample_diffusers.png"):
        assert Image.open(tmp_path / name).size == (28, 28)

    expected = sample(hfddpm.HFDDPMPipeline.from_pretrained(output)).images
    with np.load(tmp_path / "images.npz") as loaded:
        assert sorted(loaded) == ["hfddpm", "remote", "remote_without_hfddpm"]
        for name in loaded:
            np.testing.assert_allclose(loaded[name], expected, atol=1e-5)


def test_push_again_updates_in_place(output, hub):
    push_to_hub(output, "user/x", token=TOKEN, commit_message="first")
    api = HfApi(token=TOKEN)
    api.upload_file(path_or_fileobj=b"user notes", path_in_repo="NOTES.md", repo_id="user/x", commit_message="notes")
    (output / "unet" / "extra.safetensors").write_bytes(b"stale soon")
    push_to_hub(output, "user/x", token=TOKEN, commit_message="second")
    assert "unet/extra.safetensors" in hub.files("user/x")

    (output / "unet" / "extra.safetensors").unlink()
    (output / "pipeline_hfddpm.py").write_text((output / "pipeline_hfddpm.py").read_text() + "\n# edited\n")
    push_to_hub(output, "user/x", token=TOKEN, commit_message="third")
    files = hub.files("user/x")
    assert sorted(files) == sorted([".gitattributes", "NOTES.md", *PIPELINE])  # stale pipeline file gone, notes kept
    assert files["pipeline_hfddpm.py"].endswith(b"# edited\n")

    push_to_hub(output, "user/x", token=TOKEN, commit_message="unchanged")  # nothing to commit
    titles = [c.title for c in hub.commits("user/x")]
    assert titles == ["initial commit", "first", "notes", "second", "third"]


def test_private_push_and_repo_name_without_namespace(output, hub):
    url = push_to_hub(output, "secret-model", token=TOKEN, private=True)
    assert url.endswith("/user/secret-model")
    assert HfApi(token=TOKEN).model_info("user/secret-model").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info("user/secret-model")
    assert 'from_pretrained("user/secret-model"' in hub.files("user/secret-model")["README.md"].decode()


def test_push_writes_a_card_when_there_is_none(tmp_path, hub):
    folder = build_output(tmp_path / "out", card=False)
    # training_config.json as hfddpm.training writes it; the hardware comes from train_metrics.json
    config = {"preset": "tiny", "train_batch_size": 4, "dataset_name": "mnist", "hub_token": TOKEN}
    payload = {"format_version": 1, "config": config, "resolved": {"num_parameters": 1}}
    (folder / "training_config.json").write_text(json.dumps(payload))
    push_to_hub(folder, "user/carded", token=TOKEN)
    card = ModelCard(hub.files("user/carded")["README.md"].decode())
    assert "| Batch size | 4 |" in card.text and "| Hardware | 1 × cpu |" in card.text
    assert 'from_pretrained("user/carded"' in card.text and TOKEN not in card.content
    assert (folder / "README.md").read_bytes() == hub.files("user/carded")["README.md"]


def build_diffusers_pipeline(folder: Path) -> Path:
    """A plain diffusers DDPMPipeline folder (no hfddpm code or training files), with 10 timesteps to sample fast."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=4,
        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )  # fmt: skip
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(folder)
    return folder


DIFFUSERS_PIPELINE = [
    "README.md",
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
]


@pytest.mark.parametrize("kind", ["hfddpm", "diffusers"])
def test_push_writes_the_card_of_what_the_folder_is(kind, tmp_path, hub, monkeypatch, capsys):
    from hfddpm.cli import main

    if kind == "hfddpm":
        folder = build_output(tmp_path / "out", card=False)
    else:
        folder = build_diffusers_pipeline(tmp_path / "out")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["push", str(folder), "--repo-id", f"user/{kind}"]) == 0, capsys.readouterr().err
    files = hub.files(f"user/{kind}")
    card = ModelCard(files["README.md"].decode())
    snippets = re.findall(r"```python\n(.*?)```", card.text, re.S)
    if kind == "hfddpm":
        assert sorted(files) == sorted([".gitattributes", *PIPELINE])
        assert "It was trained with hfddpm" in card.text and "hfddpm" in card.data.tags
        assert [s.count(f'from_pretrained("user/{kind}"') for s in snippets] == [1, 1]
        assert "HFDDPMPipeline.from_pretrained(" in snippets[0] and "trust_remote_code=True" in snippets[1]
        assert hub.commits(f"user/{kind}")[-1].title.startswith("Upload hfddpm pipeline at step 10")
        return

    # a diffusers DDPMPipeline: its own files only, and a card of what the folder says, loaded with diffusers
    assert sorted(files) == sorted([".gitattributes", *DIFFUSERS_PIPELINE])
    assert hub.commits(f"user/{kind}")[-1].title == "Upload diffusers DDPMPipeline"
    assert card.data.library_name == "diffusers" and card.data.tags == ["diffusers"]
    assert card.data.pipeline_tag == "unconditional-image-generation" and card.data.license is None
    text = card.text
    shown = re.sub(r"<!--.*?-->", "", text, flags=re.S)  # what the Hub page shows
    for claim in ("hfddpm", "HFDDPM", "trust_remote_code", "trained with", "Training", "Evaluation", "Min-SNR"):
        assert claim not in shown
    assert "# DDPMPipeline\n\nA 🤗 diffusers `DDPMPipeline` that generates 16×16 grayscale images.\n" in text
    assert "how, on what data and for how long the model was\ntrained is not known here" in text
    n_params = count_parameters(folder / "unet")
    assert f"| `unet` | `diffusers.UNet2DModel` | {n_params:,} |" in text
    assert "| `scheduler` | `diffusers.DDPMScheduler` | — |" in text
    assert len(snippets) == 1
    assert 'pipe = DiffusionPipeline.from_pretrained("user/diffusers")  # a DDPMPipeline\n' in snippets[0]
    assert "    batch_size=4,\n    num_inference_steps=10,\n" in snippets[0]  # the whole chain of this scheduler
    # the snippet, as written, loads the pushed repository with diffusers alone and samples (a fresh process: the
    # endpoint of the fake Hub is read at import)
    (tmp_path / "snippet.py").write_text(snippets[0])
    script = (
        'import sys; sys.modules["hfddpm"] = None; ns = {}; exec(open("snippet.py").read(), ns)\n'
        'print(type(ns["pipe"]).__module__, type(ns["pipe"]).__name__)'
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["diffusers.pipelines.ddpm.pipeline_ddpm", "DDPMPipeline"]
    assert Image.open(tmp_path / "sample.png").size == (16, 16)


def test_diffusers_card_shows_only_what_it_is_given(tmp_path):
    folder = build_diffusers_pipeline(tmp_path / "plain")
    (folder / "train_metrics.json").write_text(json.dumps({"device": "cpu", "wall_time_s": 75.4}))
    settings = {"max_train_steps": 5, "train_batch_size": 8, "hub_token": TOKEN}
    path = write_model_card(folder, training_config=settings, metrics={"fd_digits": 2.0}, dataset_name="mnist")
    card = ModelCard.load(path)
    assert card.data.datasets == ["ylecun/mnist"] and card.data.tags == ["diffusers", "mnist"]
    assert card.data.eval_results[0].metric_value == 2.0
    assert card.data.eval_results[0].task_type == "unconditional-image-generation"
    assert "16×16 grayscale images, trained on **mnist**." in card.text and "not known here" not in card.text
    rows = re.findall(r"^\| (.+?) \|", card.text.split("## Training")[1].split("## Evaluation")[0], re.M)
    assert rows == ["Setting", "Training steps", "Batch size"]  # nothing from the folder's train_metrics.json
    assert TOKEN not in path.read_text() and "| Fréchet distance of digit-classifier features" in card.text
    # another diffusers pipeline: loaded, not sampled (its call arguments are its own), no image task
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "LDMPipeline"}))
    card = ModelCard.load(write_model_card(folder))
    assert card.data.pipeline_tag is None and "= pipe(" not in card.text and "images" not in card.text
    assert "For the arguments of `pipe(...)`, see `LDMPipeline` in the diffusers documentation." in card.text


def test_a_diffusers_pipeline_saved_over_an_hfddpm_one_pushes_none_of_its_code(tmp_path, hub):
    folder = build_output(tmp_path / "out", card=False)
    hfddpm.HFDDPMPipeline.from_pretrained(folder).save_pretrained(folder)
    push_to_hub(folder, "user/swap", token=TOKEN)
    assert {"pipeline_hfddpm.py", "scheduler/scheduling_hfddpm.py"} <= set(hub.files("user/swap"))
    # the same folder, saved again as a diffusers DDPMPipeline: hfddpm's code and card stay behind on disk
    build_diffusers_pipeline(folder)
    assert (folder / "pipeline_hfddpm.py").is_file() and (folder / "scheduler" / "scheduling_hfddpm.py").is_file()
    assert pipeline_files(folder) == sorted([*DIFFUSERS_PIPELINE, "samples/final.png"])
    push_to_hub(folder, "user/swap", token=TOKEN)
    files = hub.files("user/swap")
    assert sorted(files) == sorted([".gitattributes", *DIFFUSERS_PIPELINE, "samples/final.png"])  # stale code deleted
    assert "trust_remote_code" not in files["README.md"].decode()  # nor hfddpm's card (stale_card)
    # an hfddpm pipeline with diffusers' scheduler: its own code, not the scheduler code an earlier save left
    from diffusers import DDPMScheduler

    unet = hfddpm.build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    hfddpm.HFDDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)
    files = pipeline_files(folder)
    assert "pipeline_hfddpm.py" in files and "scheduler/scheduling_hfddpm.py" not in files


HFDDPM_CLAIMS = ("HFDDPMPipeline", "trust_remote_code", "It was trained with hfddpm", "## Training")


def test_push_replaces_the_hfddpm_card_of_a_folder_that_now_holds_a_diffusers_pipeline(tmp_path, hub):
    folder = build_output(tmp_path / "out")  # hfddpm's card, with training settings and metrics
    push_to_hub(folder, "user/swapped", token=TOKEN)
    old_card = (folder / "README.md").read_bytes()
    assert all(claim in old_card.decode() for claim in HFDDPM_CLAIMS)
    build_diffusers_pipeline(folder)  # DDPMPipeline.save_pretrained over it: the card stays behind
    assert stale_card(folder) == "HFDDPMPipeline"
    assert "fd_digits" not in default_commit_message(folder)[0]  # the old card's metrics are not this pipeline's

    # `hfddpm push` in a fresh process, as a user runs it: the output says that the card was replaced, and where the
    # old one is
    script = "import sys; from hfddpm.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", script, "push", str(folder), "--repo-id", "user/swapped"]
    run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_TOKEN": TOKEN}, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (
        f"{folder / 'README.md'} was written by hfddpm for HFDDPMPipeline, not for the DDPMPipeline that {folder} now"
        f" holds: replaced it with a card of the DDPMPipeline (pushed) and kept the old card as"
        f" {folder / 'README.stale.md'} (not uploaded)."
    ) in run.stderr
    files = hub.files("user/swapped")
    card = files["README.md"].decode()
    assert all(claim not in card for claim in HFDDPM_CLAIMS)
    assert "\n# DDPMPipeline\n" in card and 'DiffusionPipeline.from_pretrained("user/swapped")' in card
    assert (folder / "README.md").read_text() == card and stale_card(folder) is None
    assert (folder / "README.stale.md").read_bytes() == old_card and "README.stale.md" not in files
    assert "fd_digits" not in hub.commits("user/swapped")[-1].title


def test_push_replaces_stale_cards_both_ways_and_keeps_the_old_ones(tmp_path, hub, caplog):
    from diffusers import DDPMScheduler

    folder = build_diffusers_pipeline(tmp_path / "out")
    push_to_hub(folder, "user/both", token=TOKEN)  # writes the card of a DDPMPipeline
    diffusers_card = (folder / "README.md").read_bytes()
    assert b'<!-- hfddpm:pipeline_class "DDPMPipeline" -->' in diffusers_card
    # an hfddpm pipeline saved over it (with diffusers' scheduler: the same class of scheduler as before)
    unet = hfddpm.build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    hfddpm.HFDDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)
    assert stale_card(folder) == "DDPMPipeline"
    with caplog.at_level(logging.WARNING, logger="hfddpm.hub.upload"):
        push_to_hub(folder, "user/both", token=TOKEN)
    assert "written by hfddpm for DDPMPipeline, not for the HFDDPMPipeline" in caplog.text
    card = hub.files("user/both")["README.md"].decode()
    assert 'HFDDPMPipeline.from_pretrained("user/both")' in card and "trust_remote_code=True" in card
    assert (folder / "README.stale.md").read_bytes() == diffusers_card
    # and back: the hfddpm card is set aside under a free name, the first one kept as it was
    hfddpm_card = (folder / "README.md").read_bytes()
    build_diffusers_pipeline(folder)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hfddpm.hub.upload"):
        push_to_hub(folder, "user/both", token=TOKEN)
    assert f"kept the old card as {folder / 'README.stale-2.md'}" in caplog.text
    assert (folder / "README.stale.md").read_bytes() == diffusers_card
    assert (folder / "README.stale-2.md").read_bytes() == hfddpm_card
    assert "trust_remote_code" not in hub.files("user/both")["README.md"].decode()


@pytest.mark.parametrize("front_matter", ["", "---\ntags:\n- hfddpm\nlibrary_name: diffusers\n---\n"])
def test_push_never_replaces_a_card_the_user_wrote(front_matter, tmp_path, hub, caplog):
    folder = build_output(tmp_path / "out", card=False)
    mine = f"{front_matter}# My DDPM\r\n\nTrained by hand with HFDDPMPipeline, then converted. é".encode()
    (folder / "README.md").write_bytes(mine)
    build_diffusers_pipeline(folder)  # the folder now holds a DDPMPipeline; the card is still the user's
    assert stale_card(folder) is None
    with caplog.at_level(logging.WARNING, logger="hfddpm.hub.upload"):
        push_to_hub(folder, "user/mine", token=TOKEN)
    assert hub.files("user/mine")["README.md"] == mine and (folder / "README.md").read_bytes() == mine
    assert not list(folder.glob("README.stale*")) and not [r for r in caplog.records if r.name.startswith("hfddpm")]


def test_push_keeps_an_older_card_of_the_same_pipeline(output, hub):
    card_path = output / "README.md"
    card_path.write_text(card_path.read_text() + "\n## Notes\n\nMy notes.\n")  # the user's edit
    update_card_metrics(card_path, {"fd_digits": 9.5})
    # more training: new weights and steps, saved over the same folder as the same class
    torch.manual_seed(1)
    unet = hfddpm.build_unet("tiny", in_channels=1, out_channels=1, sample_size=28)
    hfddpm.HFDDPMPipeline(unet=unet, scheduler=hfddpm.HFDDPMScheduler()).save_pretrained(output)
    (output / "train_metrics.json").write_text(json.dumps({"steps": 20, "final_loss": 0.05}))
    before = card_path.read_text()
    assert stale_card(output) is None
    push_to_hub(output, "user/older", token=TOKEN)
    card = hub.files("user/older")["README.md"].decode()
    # only the repository id changed: in the snippets, and the model-index name
    written_for = re.search(r"<!-- hfddpm:repo_id (.*?) -->", before).group(1)  # the folder it was written in
    assert card == before.replace(written_for, '"user/older"').replace("- name: out\n", "- name: older\n")
    assert "My notes." in card and "9.5" in card and not list(output.glob("README.stale*"))
    assert hub.commits("user/older")[-1].title == "Upload hfddpm pipeline at step 20: final_loss=0.05, fd_digits=9.5"


def test_stale_card_of_a_card_written_before_the_class_was_recorded(tmp_path):
    folder = build_diffusers_pipeline(tmp_path / "out")
    write_model_card(folder)
    marker = re.compile(r"<!-- hfddpm:pipeline_class .*? -->\n")
    legacy = marker.sub("", (folder / "README.md").read_text(), count=1)
    assert "hfddpm:pipeline_class" not in legacy and "<!-- hfddpm:repo_id" in legacy
    (folder / "README.md").write_text(legacy)
    assert stale_card(folder) is None  # a diffusers card, a diffusers pipeline
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "DDIMPipeline"}))
    assert stale_card(folder) is None  # the same kind: the class is not known, the card is kept
    unet = hfddpm.build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    hfddpm.HFDDPMPipeline(unet=unet, scheduler=hfddpm.HFDDPMScheduler()).save_pretrained(folder)
    assert stale_card(folder) == "a diffusers pipeline"
    write_model_card(folder)
    (folder / "README.md").write_text(marker.sub("", (folder / "README.md").read_text(), count=1))
    assert stale_card(folder) is None  # an hfddpm card, an hfddpm pipeline
    build_diffusers_pipeline(folder)
    assert stale_card(folder) == "an hfddpm pipeline"


def test_a_failed_push_leaves_a_stale_card_where_it_was(output, hub):
    build_diffusers_pipeline(output)
    before = snapshot(output)
    hub.set_failure(404, endpoints=["commit"])  # after the card was replaced
    with pytest.raises(PushToHubError, match="HTTP 404"):
        push_to_hub(output, "user/x", token=TOKEN)
    assert snapshot(output) == before and stale_card(output) == "HFDDPMPipeline"


def test_push_refuses_a_pipeline_with_code_that_is_not_hfddpms(tmp_path, hub):
    folder = build_diffusers_pipeline(tmp_path / "custom")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": ["my_pipeline", "MyPipeline"]}))
    (folder / "my_pipeline.py").write_text("class MyPipeline: ...\n")
    before = snapshot(folder)
    with pytest.raises(ValueError, match=r"names the pipeline my_pipeline\.MyPipeline, whose code is not") as e:
        push_to_hub(folder, "user/custom", token=TOKEN)
    assert "pipeline_hfddpm.py" in str(e.value) and "HfApi().upload_folder" in str(e.value)
    assert hub.requests == [] and snapshot(folder) == before


def test_push_refuses_a_diffusers_pipeline_with_hfddpms_scheduler(tmp_path, hub):
    from diffusers import DDPMPipeline

    folder = tmp_path / "mixed"
    unet = hfddpm.build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    DDPMPipeline(unet=unet, scheduler=hfddpm.HFDDPMScheduler()).save_pretrained(folder)  # diffusers needs hfddpm
    expected = (
        r"names scheduler = hfddpm\.schedulers\.scheduling_hfddpm\.HFDDPMScheduler, which diffusers loads only"
        r" from diffusers or transformers for a DDPMPipeline: .*HFDDPMPipeline\(unet=\.\.\., scheduler="
    )
    with pytest.raises(ValueError, match=expected):
        push_to_hub(folder, "user/mixed", token=TOKEN)
    assert hub.requests == []


def test_a_diffusers_pipeline_without_a_unet_is_pushed_with_its_own_components(tmp_path):
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    folder = tmp_path / "dit"
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=1,
                                        sample_size=8, patch_size=2, num_embeds_ada_norm=10)  # fmt: skip
    (folder / "transformer").mkdir(parents=True)
    transformer.save_pretrained(folder / "transformer")
    DDIMScheduler().save_pretrained(folder / "scheduler")
    index = {"_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"],
             "scheduler": ["diffusers", "DDIMScheduler"]}  # fmt: skip
    (folder / "model_index.json").write_text(json.dumps(index))
    assert DiTPipeline.__name__ == index["_class_name"]
    assert pipeline_files(folder) == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
    ]
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"not a complete pipeline folder: transformer/ lacks its weights"):
        pipeline_files(folder)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("failure", ["500", "401", "404", "unreachable", "offline"])
def test_failed_push_leaves_output_untouched_and_names_the_retry(output, hub, monkeypatch, failure):
    token, status = TOKEN, int(failure) if failure.isdigit() else None
    if failure == "500":
        hub.set_failure(500)
    elif failure == "401":
        token = "hf_revokedtoken0123456789abcdef"
    elif failure == "404":
        hub.set_failure(404, endpoints=["commit"])  # the repository gets created, the commit fails
    elif failure == "unreachable":
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    else:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = snapshot(output)
    with pytest.raises(PushToHubError) as err:
        push_to_hub(output, "user/x", token=token)
    assert snapshot(output) == before
    message = str(err.value)
    assert err.value.status_code == status and err.value.repo_id == "user/x"
    reason = {"unreachable": "could not reach", "offline": "HF_HUB_OFFLINE is set"}.get(failure, f"HTTP {status}")
    assert "'user/x'" in message and reason in message
    assert err.value.retry_command == f"hfddpm push {output} --repo-id user/x"
    assert message.endswith(err.value.retry_command) and token not in message


def test_token_from_environment_never_leaks(output, hub, monkeypatch, capfd, caplog):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    hf_logger = logging.getLogger("huggingface_hub")
    hf_logger.addHandler(caplog.handler)
    try:
        push_to_hub(output, "user/x")  # token from HF_TOKEN
        hub.set_failure(500)
        with pytest.raises(PushToHubError) as err:
            push_to_hub(output, "user/x", private=True)
    finally:
        hf_logger.removeHandler(caplog.handler)
    assert "--private" in err.value.retry_command
    out, errors = capfd.readouterr()
    assert TOKEN not in out + errors + caplog.text + str(err.value)
    assert "Uploading" in caplog.text
    assert not [path for path, data in snapshot(output).items() if TOKEN.encode() in data]
    assert not [path for path, data in hub.files("user/x").items() if TOKEN.encode() in data]
    assert [r["user"] for r in hub.requests if r["endpoint"] == "commit"] == ["user"]  # authenticated by HF_TOKEN
    assert TOKEN not in json.dumps(hub.requests)


def test_push_input_errors(output, hub, tmp_path):
    with pytest.raises(PushToHubError, match="No Hugging Face token.*HF_TOKEN.*hf auth login") as err:
        push_to_hub(output, "user/x")
    assert err.value.retry_command == f"hfddpm push {output} --repo-id user/x" and hub.requests == []
    with pytest.raises(ValueError, match="'a/b/c' is not a Hub repository id"):
        push_to_hub(output, "a/b/c", token=TOKEN)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        push_to_hub(tmp_path / "nothing", "user/x", token=TOKEN)
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        push_to_hub(output / "unet", "user/x", token=TOKEN)


def test_cli_push(output, hub, monkeypatch, capsys):
    from hfddpm.cli import main

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    args = ["push", str(output), "--repo-id", "user/cli"]
    assert main(args) == 0
    assert sorted(hub.files("user/cli")) == sorted([".gitattributes", *PIPELINE])
    out, err = capsys.readouterr()
    assert f"{hub.url}/user/cli" in out and TOKEN not in out + err

    hub.set_failure(500)
    assert main(args) != 0
    out, err = capsys.readouterr()
    assert "HTTP 500" in err and err.rstrip().endswith(f"hfddpm push {output} --repo-id user/cli")
    assert TOKEN not in out + err


def _drop(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _unset_in_index(name: str):
    def edit(folder: Path) -> None:
        index = json.loads((folder / "model_index.json").read_text())
        del index[name]
        (folder / "model_index.json").write_text(json.dumps(index))

    return edit


@pytest.mark.parametrize(
    ("break_folder", "message"),
    [
        (lambda f: _drop(f / "unet"), r"unet/ is missing \(model_index.json names unet = diffusers.UNet2DModel\)"),
        (lambda f: _drop(f / "unet" / "diffusion_pytorch_model.safetensors"), r"unet/ lacks its weights"),
        (lambda f: _drop(f / "unet" / "config.json"), r"unet/ lacks a config \(config.json or \*_config.json\)"),
        (lambda f: _drop(f / "scheduler" / "scheduler_config.json"), r"scheduler/ lacks a config"),
        (lambda f: _drop(f / "scheduler" / "scheduling_hfddpm.py"), r"scheduler/ lacks its code"),
        (lambda f: _drop(f / "pipeline_hfddpm.py"), r"pipeline_hfddpm.py \(the code of HFDDPMPipeline\) is missing"),
        (_unset_in_index("unet"), "model_index.json names no unet"),
    ],
)
def test_push_refuses_a_folder_that_is_not_a_loadable_pipeline(
    output, hub, monkeypatch, capsys, break_folder, message
):
    # the folder of the report: a copy of a trained folder without unet/ (only the index, scheduler and code)
    break_folder(output)
    before = snapshot(output)
    with pytest.raises(FileNotFoundError, match=message) as err:
        push_to_hub(output, "user/x", token=TOKEN)
    assert str(output) in str(err.value) and "is not a complete pipeline folder" in str(err.value)
    assert snapshot(output) == before and hub.requests == []  # refused before any request, no card written

    from hfddpm.cli import main

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["push", str(output), "--repo-id", "user/x"]) == 2
    out, errors = capsys.readouterr()
    assert errors.startswith("hfddpm push: error:") and re.search(message, errors) and "Pushed" not in out
    assert hub.requests == [] and snapshot(output) == before


def test_pipeline_folder_check_names_every_missing_component(tmp_path):
    folder = build_audio_pipeline(tmp_path / "audio", num_class_embeds=4)
    check_pipeline_folder(folder)  # complete
    shutil.rmtree(folder / "mel")
    shutil.rmtree(folder / "unet")
    (folder / "pipeline_hfddpm_audio.py").unlink()
    with pytest.raises(FileNotFoundError) as err:
        check_pipeline_folder(folder)
    message = str(err.value)
    for part in ("pipeline_hfddpm_audio.py (the code of HFDDPMAudioPipeline) is missing", "unet/ is missing",
                 "mel/ is missing (model_index.json names mel = mel_hfddpm.HFDDPMMel)"):  # fmt: skip
        assert part in message
    assert "scheduler/" not in message  # complete components are not named
    (folder / "model_index.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="model_index.json must hold a JSON object of components, got list"):
        check_pipeline_folder(folder)
    (folder / "model_index.json").write_text("{")
    with pytest.raises(ValueError, match="model_index.json is not valid JSON"):
        check_pipeline_folder(folder)


def test_push_refuses_files_that_link_outside_the_folder(output, hub, tmp_path, monkeypatch, capsys):
    from hfddpm.cli import main

    secret = tmp_path / "secret" / "token"
    secret.parent.mkdir()
    secret.write_text("hf_the_secret_of_someone_else")
    # a file of a component, and the card: each named with its target, nothing sent (no repository created)
    for name in ("unet/notes.txt", "README.md"):
        (output / name).unlink(missing_ok=True)
        (output / name).symlink_to(secret)
        with pytest.raises(ValueError) as err:
            push_to_hub(output, "user/x", token=TOKEN)
        assert str(err.value) == (
            f"{output} links to files outside it: {name} -> {secret}. Only the folder's own files are uploaded:"
            " replace each link with a copy of the file it points to (or remove it), then push again."
        )
        with pytest.raises(ValueError, match=re.escape(f"{name} -> {secret}")):
            pipeline_files(output)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        assert main(["push", str(output), "--repo-id", "user/x"]) == 2
        assert f"hfddpm push: error: {output} links to files outside it: {name} -> {secret}" in capsys.readouterr().err
        monkeypatch.delenv("HF_TOKEN")
        (output / name).unlink()
        assert hub.requests == [] and secret.read_text() == "hf_the_secret_of_someone_else"
    # a link inside the folder stays: it is uploaded as the file it points to
    write_model_card(output)
    (output / "samples" / "final.png").unlink()
    (output / "samples" / "final.png").symlink_to("step_000005.png")
    push_to_hub(output, "user/x", token=TOKEN)
    assert hub.files("user/x")["samples/final.png"] == (output / "samples" / "step_000005.png").read_bytes()
    assert not [data for data in hub.files("user/x").values() if b"hf_the_secret" in data]


def test_cards_are_never_written_through_a_link(output, tmp_path):
    card = output / "README.md"
    elsewhere = tmp_path / "bashrc"
    elsewhere.write_text("export PATH=$HOME/bin:$PATH\n")
    card.unlink()
    card.symlink_to(elsewhere)
    # updating a card that links out of its folder would copy that file into the card: refused, nothing changed
    with pytest.raises(ValueError) as err:
        update_card_metrics(output, {"fd_digits": 3.5})
    assert str(err.value) == (
        f"{card} is a symbolic link to {elsewhere}, outside its folder: hfddpm does not update a card through it,"
        " which would copy that file into the card. Replace the link with a copy of the card (or remove it)."
    )
    assert card.is_symlink() and elsewhere.read_text() == "export PATH=$HOME/bin:$PATH\n"
    # a new card replaces the link, whose target is left as it was
    write_model_card(output, training_config=TRAINING_CONFIG)
    assert not card.is_symlink() and "hfddpm" in card.read_text()
    assert elsewhere.read_text() == "export PATH=$HOME/bin:$PATH\n"
    # a card that links inside the folder is read, and replaced by the updated card
    shutil.move(card, output / "card.md")
    card.symlink_to("card.md")
    original = (output / "card.md").read_text()
    update_card_metrics(output, {"fd_digits": 3.5})
    assert not card.is_symlink() and "| 3.5 |" in card.read_text() and (output / "card.md").read_text() == original
    # a card keeps its permissions, and no temporary file is left
    card.chmod(0o640)
    update_card_metrics(output, {"fd_digits": 2.5})
    assert "| 2.5 |" in card.read_text() and (card.stat().st_mode & 0o777) == 0o640
    assert sorted(p.name for p in output.iterdir() if p.name.startswith(".")) == []


def test_check_push_settings_before_training(hub, monkeypatch):
    from huggingface_hub import constants

    # no token: no argument, no HF_TOKEN, no saved login (the fixture's empty HF_HOME); an empty token is none
    for token in (None, "", "  "):
        with pytest.raises(ValueError) as err:
            check_push_settings("user/run", token)
        assert str(err.value) == "No Hugging Face token to push to 'user/run': set HF_TOKEN or run `hf auth login`."
    with pytest.raises(ValueError, match=r"run `hf auth login`, or pass hub_token=\.$"):
        check_push_settings("user/run", token_flag="hub_token=")
    # the same repository id rule as the push, checked first
    for bad in ("a/b/c", "user/my run", "user/x--y", None):
        with pytest.raises(ValueError, match=re.escape(f"repo_id={bad!r} is not a Hub repository id")):
            check_push_settings(bad, TOKEN)
    # a token from each place the push looks
    check_push_settings("user/run", TOKEN)
    check_push_settings("run", TOKEN)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    check_push_settings("user/run", "")
    monkeypatch.delenv("HF_TOKEN")
    Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True, exist_ok=True)
    Path(constants.HF_TOKEN_PATH).write_text(TOKEN)
    check_push_settings("user/run")
    assert hub.requests == []  # nothing was asked of the Hub


def test_empty_token_is_no_token_and_messages_name_where_the_token_came_from(output, hub, monkeypatch, capsys):
    from hfddpm.cli import main

    before = snapshot(output)
    with pytest.raises(PushToHubError, match="No Hugging Face token") as err:
        push_to_hub(output, "user/x", token="")
    assert str(err.value).startswith(
        "No Hugging Face token to push to 'user/x': set HF_TOKEN or run `hf auth login`. Then retry with:"
    )
    assert err.value.retry_command in str(err.value) and "--token" not in str(err.value)
    assert main(["push", str(output), "--repo-id", "user/x"]) == 1
    errors = capsys.readouterr().err
    assert "No Hugging Face token to push to 'user/x': set HF_TOKEN or run `hf auth login`." in errors
    assert "hub_token" not in errors and "--token" not in errors and "LocalProtocolError" not in errors
    assert hub.requests == [] and snapshot(output) == before

    # a refused token: the message names where it came from
    revoked = "hf_revokedtoken0123456789abcdef"
    with pytest.raises(PushToHubError, match=r"Check that the token from the token argument is valid"):
        push_to_hub(output, "user/x", token=revoked)
    monkeypatch.setenv("HF_TOKEN", revoked)
    assert main(["push", str(output), "--repo-id", "user/x"]) == 1
    errors = capsys.readouterr().err
    assert "HTTP 401" in errors and "Check that the token from HF_TOKEN is valid" in errors and revoked not in errors
    # an empty token argument falls back to HF_TOKEN, like none
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    push_to_hub(output, "user/x", token="")
    assert "README.md" in hub.files("user/x")


@pytest.mark.parametrize("form", ["separate", "equals"])
def test_a_token_on_the_push_command_line_is_refused_unused(output, hub, monkeypatch, capsys, form):
    from hfddpm.cli import main

    monkeypatch.setenv("HF_TOKEN", TOKEN)  # a good token is there: the flag alone is refused
    flag = ["--token", TOKEN] if form == "separate" else [f"--token={TOKEN}"]
    before = snapshot(output)
    assert main(["push", str(output), "--repo-id", "user/x", *flag]) == 2
    out, errors = capsys.readouterr()
    assert errors.startswith("hfddpm push: error: --token puts the token on the command line, where `ps`")
    assert "set HF_TOKEN in the environment or run `hf auth login` instead" in errors
    assert TOKEN not in out + errors and "Pushed" not in out
    assert hub.requests == [] and snapshot(output) == before
    # documented as refused in --help, with the way on
    with pytest.raises(SystemExit):
        main(["push", "--help"])
    assert "refused: a token on the command line" in " ".join(capsys.readouterr().out.split())


MALFORMED_TOKENS = [
    ("hf_LEAKB\nBCDEFGHIJKLMNOPQRSTUVWXYZ", "a line break"),  # pasted from a two-line file
    ("hf_LEAKB\r\nBCDEFGHIJKLMNOPQRSTUVWX", "a line break"),
    ("hf_LEAKB BCDEFGHIJKLMNOPQRSTUVWXYZ", "whitespace"),
    ("hf_LEAKB\tBCDEFGHIJKLMNOPQRSTUVWXYZ", "whitespace"),
    ("hf_LEAKB\x1bBCDEFGHIJKLMNOPQRSTUVWXYZ", "a control character"),
    ("hf_LEAKB\u00e9BCDEFGHIJKLMNOPQRSTUVWXYZ", "a non-ASCII character"),
]


@pytest.mark.parametrize(("token", "problem"), MALFORMED_TOKENS, ids=[p for _, p in MALFORMED_TOKENS])
def test_a_malformed_token_is_refused_without_showing_it(output, hub, monkeypatch, capsys, token, problem):
    from hfddpm.cli import main

    forms = (token, repr(token)[1:-1], ascii(token)[1:-1], repr(token.encode("utf-8", "backslashreplace"))[2:-1])
    before = snapshot(output)
    # from Python: the token argument, named as the caller names it
    for token_flag, source in ((None, "the token argument"), ("hub_token=", "hub_token=")):
        with pytest.raises(ValueError) as err:
            push_to_hub(output, "user/x", token=token, token_flag=token_flag)
        assert str(err.value).startswith(f"The token from {source} contains {problem}: a Hugging Face token is one")
        assert not [form for form in forms if form in str(err.value)]
    with pytest.raises(ValueError, match=f"The token from the token argument contains {problem}"):
        check_push_settings("user/x", token)  # what a training run checks before it starts
    # from the environment (huggingface_hub would join the lines of a token with a line break into another token)
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.setenv(variable, token)
        assert main(["push", str(output), "--repo-id", "user/x"]) == 2
        out, errors = capsys.readouterr()
        assert errors.startswith(f"hfddpm push: error: The token from {variable} contains {problem}:")
        assert not [form for form in forms if form in out + errors]
        monkeypatch.delenv(variable)
    assert hub.requests == [] and snapshot(output) == before


def test_a_failed_push_never_quotes_the_token_in_any_form(output):
    import httpx2

    from hfddpm.hub.upload import _push_error

    token = "hf_LEAKB\nBCDEF\u00e9GHIJ"
    escaped = ("Bearer " + token).encode("utf-8", "backslashreplace")
    for err in (
        httpx2.LocalProtocolError(f"Illegal header value {escaped!r}"),  # what httpx said of a token with a line break
        httpx2.ConnectError(f"refused for {token!r}"),
        httpx2.ConnectError(f"refused for {token} ({ascii(token)})"),
    ):
        message = str(
            _push_error(err, output, "user/x", "hfddpm push out --repo-id user/x", "http://hub", "HF_TOKEN", token)
        )
        assert "could not reach http://hub" in message and "hf_***" in message
        assert "LEAKB" not in message and "BCDEF" not in message, message


def test_training_pushes_to_hub(hub, tmp_path):
    out = tmp_path / "run"
    args = [
        *("--preset", "tiny", "--resolution", "28", "--max_train_steps", "2", "--train_batch_size", "4"),
        *("--validation_steps", "0", "--validation_inference_steps", "2", "--validation_images_per_class", "1"),
        *("--checkpointing_steps", "2", "--output_dir", str(out)),
        *("--push_to_hub", "--hub_model_id", "user/trained"),
    ]
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "training" / "train.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_TOKEN": TOKEN},  # the token's place: the environment, never the command line
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "checkpoints").is_dir()  # written locally, never uploaded
    files = hub.files("user/trained")
    assert sorted(files) == sorted([".gitattributes", *PIPELINE])
    assert hub.commits("user/trained")[-1].title.startswith("Upload hfddpm pipeline at step 2: final_loss=")
    readme = files["README.md"].decode()
    assert readme == (out / "README.md").read_text()
    assert 'HFDDPMPipeline.from_pretrained("user/trained")' in readme and "class_labels=[0, 1, 2, 3]" in readme
    assert TOKEN not in run.stdout + run.stderr
    assert not [path for path, data in snapshot(out).items() if TOKEN.encode() in data]


def test_a_vae_folder_the_index_does_not_name_is_not_part_of_the_pipeline(tmp_path):
    # a pixel pipeline saved where a latent one was: model_index.json says vae [null, null], the old vae/ stays
    from diffusers import AutoencoderKL

    from hfddpm import HFDDPMPipeline, HFDDPMScheduler, build_unet

    folder = tmp_path / "pipe"
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)
    latent_unet = build_unet("tiny", in_channels=4, out_channels=4, sample_size=8)
    HFDDPMPipeline(unet=latent_unet, scheduler=HFDDPMScheduler(), vae=vae).save_pretrained(folder)
    pixel_unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    HFDDPMPipeline(unet=pixel_unet, scheduler=HFDDPMScheduler()).save_pretrained(folder)
    assert (folder / "vae" / "config.json").is_file()
    assert not [f for f in pipeline_files(folder) if f.startswith("vae/")]
    text = write_model_card(folder).read_text()
    assert "Latent" not in text and "latents of the autoencoder" not in text and "pixel-space" in text


def test_a_pipeline_objects_push_to_hub_uploads_hfddpms_card(hub):
    import hfddpm

    unet = hfddpm.build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    pipe = hfddpm.HFDDPMPipeline(unet=unet, scheduler=hfddpm.HFDDPMScheduler())
    pipe.push_to_hub("user/from-python", token=TOKEN)
    files = hub.files("user/from-python")
    card = files["README.md"].decode()
    assert "library_name: diffusers" in card and "[More Information Needed]" not in card
    assert "unet/diffusion_pytorch_model.safetensors" in files and "pipeline_hfddpm.py" in files
    with pytest.raises(ValueError, match=r"Unexpected arguments \['variant'\]"):
        pipe.push_to_hub("user/from-python", token=TOKEN, variant="fp16")
