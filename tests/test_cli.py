import json
import re

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

import hfddpm
from hfddpm.cli import main


@pytest.fixture(scope="module", autouse=True)
def _offline_and_cache_in_tmp(tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("HFDDPM_CACHE", str(tmp_path_factory.mktemp("cache")))
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        yield


def _save_tiny(path, num_class_embeds=None):
    torch.manual_seed(0)
    unet = hfddpm.build_unet("tiny", in_channels=1, out_channels=1, sample_size=28, num_class_embeds=num_class_embeds)
    hfddpm.HFDDPMPipeline(unet=unet, scheduler=hfddpm.HFDDPMScheduler()).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny_conditional_pipeline(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("tiny-cond"), num_class_embeds=11)


def test_sample_writes_a_grid(tiny_pipeline, tmp_path, capsys):
    out = tmp_path / "grid.png"
    args = ["sample", tiny_pipeline, "--num-images", "6", "--num-inference-steps", "2", "--scheduler", "dpmsolver++"]
    assert main([*args, "--seed", "3", "--out", str(out)]) == 0
    assert "2x3 grid, DPMSolverMultistepScheduler" in capsys.readouterr().out
    with Image.open(out) as grid:
        assert grid.size == (3 * 28, 2 * 28)
        first = grid.copy()
    # same seed -> same grid
    assert main([*args, "--seed", "3", "--out", str(tmp_path / "again.png")]) == 0
    with Image.open(tmp_path / "again.png") as again:
        assert list(again.getdata()) == list(first.getdata())


def test_sample_class_conditional_with_guidance(tiny_conditional_pipeline, tmp_path):
    out = tmp_path / "sub" / "digits.png"
    args = ["sample", tiny_conditional_pipeline, "--num-images", "4", "--num-inference-steps", "2"]
    assert main([*args, "--class-labels", "3,7", "--guidance-scale", "2", "--columns", "4", "--out", str(out)]) == 0
    with Image.open(out) as grid:
        assert grid.size == (4 * 28, 28)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scheduler", "dpm"], "Unknown scheduler 'dpm'; choose one of"),
        (["--class-labels", "10"], r"--class-labels must be in \[0, 9\]"),
        (["--class-labels", "x"], "--class-labels must be integers"),
        (["--columns", "5"], "num_images=4 is not a multiple of columns=5"),
    ],
)
def test_sample_bad_input(tiny_conditional_pipeline, tmp_path, capsys, extra, message):
    args = ["sample", tiny_conditional_pipeline, "--num-images", "4", "--num-inference-steps", "1"]
    assert main([*args, *extra, "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hfddpm sample: error:")
    assert re.search(message, err)
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize(
    ("out", "reason"),
    [
        ("ldm_out/", "'ldm_out' has no file extension"),
        ("grid", "'grid' has no file extension"),
        ("grid.xyz", "'grid.xyz' ends in '.xyz', which PIL cannot write"),
        ("grid.xbm", "'grid.xbm' ends in '.xbm', which PIL cannot write"),  # PIL writes only 1-bit XBM
        ("folder", "'folder' is a folder"),
        ("taken.png/grid.png", "'taken.png/grid.png': 'taken.png' is a file, not a folder"),
    ],
)
def test_image_out_is_checked_before_sampling(tiny_pipeline, tmp_path, monkeypatch, capsys, out, reason):
    import hfddpm.evaluation

    sampled = []
    monkeypatch.setattr(hfddpm.evaluation, "generate_samples", lambda *args, **kwargs: sampled.append(1))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "taken.png").write_bytes(b"")
    assert main(["sample", tiny_pipeline, "--num-images", "2", "--num-inference-steps", "1", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hfddpm sample: error: --out {reason}")
    if "taken" not in out:
        assert "; give a file name ending in .png, .jpg, .webp (or " in err
        assert ".tiff" in err and ".xyz" not in err.split("(or")[1]
    assert sampled == [] and sorted(p.name for p in tmp_path.iterdir()) == ["folder", "taken.png"]


def test_sample_writes_other_image_formats(tiny_pipeline, tmp_path):
    args = ["sample", tiny_pipeline, "--num-images", "2", "--num-inference-steps", "1"]
    for name, fmt in (("grid.jpg", "JPEG"), ("grid.WEBP", "WEBP"), ("grid.tif", "TIFF")):
        assert main([*args, "--out", str(tmp_path / name)]) == 0
        with Image.open(tmp_path / name) as grid:
            assert grid.format == fmt and grid.size == (2 * 28, 28)


@pytest.mark.parametrize("command", ["inpaint", "img2img"])
def test_edit_out_is_checked_before_loading(tiny_pipeline, tmp_path, capsys, command):
    Image.new("L", (28, 28), 0).save(tmp_path / "in.png")
    args = [command, tiny_pipeline, "--image", str(tmp_path / "in.png"), "--num-inference-steps", "1"]
    args += ["--mask", str(tmp_path / "in.png")] if command == "inpaint" else []
    assert main([*args, "--out", str(tmp_path / "edited.xyz")]) == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "edited.xyz").exists()
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert f"--out {str(tmp_path)!r} is a folder" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "edited.jpg")]) == 0
    with Image.open(tmp_path / "edited.jpg") as edited:
        assert edited.format == "JPEG" and edited.size == (28, 28)


def test_unconditional_pipeline_rejects_class_labels(tiny_pipeline, tmp_path, capsys):
    args = ["sample", tiny_pipeline, "--num-images", "2", "--class-labels", "1", "--out", str(tmp_path / "g.png")]
    assert main(args) == 2
    assert "unconditional" in capsys.readouterr().err


def test_missing_pipeline_folder(tmp_path, capsys):
    missing = str(tmp_path / "nowhere" / "pipe")
    assert main(["sample", missing, "--out", str(tmp_path / "g.png")]) == 2
    assert f"Pipeline folder {missing!r} does not exist" in capsys.readouterr().err
    assert main(["evaluate", missing]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluate_unconditional_writes_metrics_and_card(tmp_path, capsys):
    pipeline = _save_tiny(tmp_path / "pipe")
    (tmp_path / "pipe" / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# tiny pipeline\n")
    args = ["evaluate", pipeline, "--num-images", "6", "--batch-size", "4", "--num-inference-steps", "2"]
    assert main([*args, "--scheduler", "ddim", "--seed", "1"]) == 0
    results = json.loads((tmp_path / "pipe" / "metrics.json").read_text())
    assert results["num_samples"] == 6 and results["scheduler"] == "ddim" and results["class_conditional"] is False
    assert results["fd_digits"] > 0 and sum(results["class_histogram"]) == 6
    assert "label_accuracy" not in results
    # FD-digits compares with its own held-out digits (named in its details), not with --reference
    assert "reference" not in results and results["details"]["fd_digits"]["reference"]["name"] == "mnist_5k heldout"
    card = ModelCard.load(tmp_path / "pipe" / "README.md")
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values["fd_digits"] == pytest.approx(results["fd_digits"], rel=1e-5)
    assert "Updated the evaluation in" in capsys.readouterr().out
    # a metric against --reference records it
    out = tmp_path / "pr.json"
    assert main([*args, "--metrics", "pr_digits", "--no-update-card", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["reference"] == "mnist_5k"


def test_evaluate_class_conditional_reports_label_accuracy(tiny_conditional_pipeline, tmp_path):
    out = tmp_path / "metrics.json"
    args = ["evaluate", tiny_conditional_pipeline, "--num-images", "10", "--num-inference-steps", "1"]
    assert main([*args, "--guidance-scale", "1.5", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["class_conditional"] is True and 0.0 <= results["label_accuracy"] <= 1.0
    assert results["guidance_scale"] == 1.5


def test_evaluate_fid_without_inception_stops_or_falls_back(tiny_pipeline, tmp_path, capsys, hide_package):
    hide_package("torch_fidelity")
    out = tmp_path / "metrics.json"
    args = ["evaluate", tiny_pipeline, "--num-images", "4", "--num-inference-steps", "1", "--out", str(out)]
    assert main([*args, "--metrics", "digits,fid"]) == 1
    err = capsys.readouterr().err
    assert "torch-fidelity" in err and "pt_inception-2015-12-05-6726825d.pth" in err and "--fid-fallback" in err
    assert not out.exists()

    assert main([*args, "--metrics", "fid,kid", "--fid-fallback", "digits"]) == 0
    results = json.loads(out.read_text())
    assert {"fid_digits", "kid_digits"} <= set(results) and "fid" not in results and results["notes"]


def test_evaluate_bad_metric_name(tiny_pipeline, capsys):
    assert main(["evaluate", tiny_pipeline, "--metrics", "digits,inception_score"]) == 2
    assert (
        "choose a comma-separated subset of ['digits', 'fid', 'kid', 'dinov2', 'pr_digits'," in capsys.readouterr().err
    )


def test_push_calls_hub(monkeypatch, tmp_path, capsys):
    import hfddpm.hub

    calls = []

    def fake_push(output_dir, repo_id, **kwargs):
        calls.append((output_dir, repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    monkeypatch.setattr(hfddpm.hub, "push_to_hub", fake_push)
    assert main(["push", str(tmp_path), "--repo-id", "me/tiny", "--private"]) == 0
    assert calls == [(str(tmp_path), "me/tiny", {"private": True, "commit_message": None})]  # the token: HF_TOKEN
    assert "https://huggingface.co/me/tiny" in capsys.readouterr().out
    # a token on the command line is refused before the push, and never shown
    for flag in (["--token", "hf_secret_value"], ["--token=hf_secret_value"], ["--token", ""]):
        assert main(["push", str(tmp_path), "--repo-id", "me/tiny", *flag]) == 2
        errors = capsys.readouterr().err
        assert errors.startswith("hfddpm push: error: --token puts the token on the command line")
        assert "hf_secret_value" not in errors
    assert len(calls) == 1


def test_push_failure_is_reported(monkeypatch, tmp_path, capsys):
    import hfddpm.hub

    def failing_push(output_dir, repo_id, **kwargs):
        raise hfddpm.hub.PushToHubError(
            "Hub unreachable; retry with: hfddpm push x", repo_id=repo_id, retry_command="x"
        )

    monkeypatch.setattr(hfddpm.hub, "push_to_hub", failing_push)
    assert main(["push", str(tmp_path), "--repo-id", "me/tiny"]) == 1
    assert "hfddpm push: error: Hub unreachable" in capsys.readouterr().err


def test_help_lists_the_subcommands_and_schedulers(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(word in out for word in ("sample", "evaluate", "push", "dpmsolver++", "unipc"))
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "--num-inference-steps" in capsys.readouterr().out


def test_evaluate_never_writes_through_links(tmp_path, monkeypatch, capsys):
    import hfddpm.evaluation.evaluate

    pipeline = _save_tiny(tmp_path / "pipe")
    keys, bashrc = tmp_path / "authorized_keys", tmp_path / "bashrc"
    keys.write_text("ssh-ed25519 AAAA me\n")
    bashrc.write_text("export PATH=$HOME/bin:$PATH\n")
    (tmp_path / "pipe" / "metrics.json").symlink_to(keys)
    (tmp_path / "pipe" / "README.md").symlink_to(bashrc)
    args = ["evaluate", pipeline, "--num-images", "4", "--batch-size", "4", "--num-inference-steps", "1"]
    # a card linked out of the folder: refused before sampling (updating it would copy that file into the card)
    sample = hfddpm.evaluation.evaluate.generate_samples
    monkeypatch.setattr(hfddpm.evaluation.evaluate, "generate_samples", lambda *a, **k: pytest.fail("sampled"))
    assert main(args) == 2
    card = tmp_path / "pipe" / "README.md"
    assert capsys.readouterr().err.startswith(
        f"hfddpm evaluate: error: {card} is a symbolic link to {bashrc}, outside"
    )
    monkeypatch.setattr(hfddpm.evaluation.evaluate, "generate_samples", sample)
    # metrics.json linked anywhere: replaced by the results, the link's target unchanged
    assert main([*args, "--no-update-card"]) == 0
    metrics = tmp_path / "pipe" / "metrics.json"
    assert not metrics.is_symlink() and json.loads(metrics.read_text())["num_samples"] == 4
    assert keys.read_text() == "ssh-ed25519 AAAA me\n" and bashrc.read_text() == "export PATH=$HOME/bin:$PATH\n"
    assert card.is_symlink()  # not touched with --no-update-card


def test_evaluate_out_is_checked_before_sampling(tiny_pipeline, tmp_path, monkeypatch, capsys):
    import hfddpm.evaluation.evaluate

    monkeypatch.setattr(hfddpm.evaluation.evaluate, "generate_samples", lambda *a, **k: pytest.fail("sampled"))
    (tmp_path / "taken").write_bytes(b"")
    for out, reason in ((tmp_path, "is a folder; pass a file path"), (tmp_path / "taken" / "m.json", "is a file")):
        assert main(["evaluate", tiny_pipeline, "--num-images", "2", "--out", str(out)]) == 2
        assert reason in capsys.readouterr().err


@pytest.mark.parametrize(
    ("device", "message"),
    [("gpu", "--device 'gpu' is not a torch device; use cpu, cuda, cuda:N or mps."), ("cuda:7", "is not available")],
)
def test_a_bad_device_is_one_line(tiny_pipeline, capsys, device, message):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert main(["sample", tiny_pipeline, "--num-images", "1", "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hfddpm sample: error: --device") and message in err and "Traceback" not in err


def test_edits_take_one_label_for_all_or_one_per_image(tiny_conditional_pipeline, tmp_path, capsys):
    for name in ("a.png", "b.png", "c.png"):
        Image.new("L", (28, 28), 0).save(tmp_path / name)
    base = ["img2img", tiny_conditional_pipeline, "--num-inference-steps", "1", "--out", str(tmp_path / "o.png")]
    cases = [
        (["a.png"], ["1", "2", "3"], "got 3 labels for 1 image(s)"),
        (["a.png", "b.png", "c.png"], ["1,2"], "got 2"),
    ]
    for images, labels, message in cases:
        args = [*base, "--image", *(str(tmp_path / i) for i in images), "--class-label", *labels]
        assert main(args) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_evaluate_refuses_bad_settings_before_sampling(tiny_pipeline, tmp_path, monkeypatch, capsys, hide_package):
    import hfddpm.evaluation.evaluate

    monkeypatch.setattr(hfddpm.evaluation.evaluate, "generate_samples", lambda *a, **k: pytest.fail("sampled"))
    hide_package("torch_fidelity")
    out = tmp_path / "metrics.json"
    out.write_text('{"fd_digits": 1.0}')
    (tmp_path / "empty").mkdir()
    base = ["evaluate", tiny_pipeline, "--num-images", "4", "--out", str(out)]
    cases = [
        (["--metrics", "fid", "--fid-fallback", "skip"], "nothing left to compute: --fid-fallback skip leaves out"),
        (["--metrics", "memorization", "--feature-extractor", "inception"], "--feature-extractor inception ("),
        (["--metrics", "memorization", "--heldout-dir", str(tmp_path / "empty")], "--heldout-dir folder "),
        (["--metrics", "memorization", "--train-data-dir", str(tmp_path / "no")], "--train-data-dir '"),
        (["--metrics", "memorization", "--image-column", "picture"], "Pass the right one with --image-column."),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) in (1, 2)
        err = capsys.readouterr().err
        assert message in err and "--train_data_dir" not in err and "--image_column" not in err, err
    assert out.read_text() == '{"fd_digits": 1.0}'  # the earlier result is left alone


def test_evaluate_of_a_diverged_model_names_it(tmp_path, capsys):
    pipeline = _save_tiny(tmp_path / "pipe")
    pipe = hfddpm.HFDDPMPipeline.from_pretrained(pipeline)
    torch.nn.init.constant_(pipe.unet.conv_out.weight, float("nan"))
    pipe.save_pretrained(pipeline)
    for metrics in ("digits", "fid", "kid", "pr_digits", "memorization"):
        args = ["evaluate", pipeline, "--num-images", "4", "--batch-size", "2", "--num-inference-steps", "1"]
        assert main([*args, "--metrics", metrics, "--fid-fallback", "digits", "--no-update-card"]) == 2
        err = capsys.readouterr().err
        assert "error: 4 of the 4 samples hold NaN or inf values: the model diverged" in err, (metrics, err)
    assert not (tmp_path / "pipe" / "metrics.json").exists()


def test_card_and_compare_out(tmp_path, capsys):
    pipeline = _save_tiny(tmp_path / "pipe")
    (tmp_path / "pipe" / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# tiny pipeline\n")
    args = ["evaluate", pipeline, "--num-images", "4", "--batch-size", "2", "--num-inference-steps", "1"]
    assert main([*args, "--scheduler", "ddim"]) == 0
    # the card says what changes the samples of a seed: the scheduler and the batch size
    assert "scheduler = ddim" in (tmp_path / "pipe" / "README.md").read_text()
    assert "batch_size = 2" in (tmp_path / "pipe" / "README.md").read_text()
    results = str(tmp_path / "pipe" / "metrics.json")
    capsys.readouterr()
    assert main(["evaluate", "--compare", results, results, "--out", str(tmp_path / "new") + "/"]) == 2
    assert "is a folder; pass a file path" in capsys.readouterr().err and not (tmp_path / "new").exists()
