"""A saved HFDDPMPipeline loads three ways and gives the same images (subprocesses, like fresh user sessions)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from hfddpm import HFDDPMPipeline, HFDDPMScheduler, build_unet
from hfddpm.pipelines.pipeline_hfddpm import is_repo_id

SAMPLE = dict(batch_size=2, class_labels=[3, 7], guidance_scale=2.0, num_inference_steps=3, output_type="np")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16, num_class_embeds=11)
    pipe = HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler(noise_schedule="sigmoid"))
    pipe.set_progress_bar_config(disable=True)
    folder = tmp_path_factory.mktemp("pipe")
    pipe.save_pretrained(folder)
    expected = pipe(generator=torch.Generator().manual_seed(0), **SAMPLE).images
    return folder, expected


def run_child(code: str, tmp_path) -> np.ndarray:
    out = tmp_path / "images.npy"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    script = textwrap.dedent(code).format(out=str(out), sample=SAMPLE)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out)


def test_folder_holds_safetensors_configs_and_generated_code(saved):
    folder, _ = saved
    files = sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)
    assert files == [
        "model_index.json",
        "pipeline_hfddpm.py",
        "pipeline_hfddpm_audio.py",
        "pipeline_hfddpm_img2img.py",
        "pipeline_hfddpm_inpaint.py",
        "scheduler/scheduler_config.json",
        "scheduler/scheduling_hfddpm.py",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_hfddpm", "HFDDPMPipeline"]
    assert index["scheduler"] == ["scheduling_hfddpm", "HFDDPMScheduler"] and index["unet"] == [
        "diffusers",
        "UNet2DModel",
    ]
    # generated from the package's own modules at save time, not hand-maintained copies
    import hfddpm.pipelines.pipeline_hfddpm as pipeline_module
    import hfddpm.schedulers.scheduling_hfddpm as scheduler_module

    assert (folder / "pipeline_hfddpm.py").read_text() == open(pipeline_module.__file__).read()
    assert (folder / "scheduler/scheduling_hfddpm.py").read_text() == open(scheduler_module.__file__).read()


def test_1_hfddpm_from_pretrained(saved):
    folder, expected = saved
    pipe = HFDDPMPipeline.from_pretrained(folder)
    assert type(pipe.scheduler) is HFDDPMScheduler and pipe.scheduler.config.noise_schedule == "sigmoid"
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(pipe(generator=torch.Generator().manual_seed(0), **SAMPLE).images, expected, atol=1e-5)


def test_2_diffusers_loads_it_without_the_caller_importing_hfddpm(saved, tmp_path):
    folder, expected = saved
    images = run_child(
        f"""
        import sys, numpy as np, torch
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert "hfddpm" not in sys.modules, "the caller never imported hfddpm"
        assert type(pipe).__name__ == "HFDDPMPipeline"
        pipe.set_progress_bar_config(disable=True)
        np.save({{out!r}}, pipe(generator=torch.Generator().manual_seed(0), **{{sample}}).images)
        """,
        tmp_path,
    )
    np.testing.assert_allclose(images, expected, atol=1e-5)


def test_3_plain_diffusers_without_hfddpm_installed(saved, tmp_path):
    folder, expected = saved
    images = run_child(
        f"""
        import sys
        sys.modules["hfddpm"] = None  # any `import hfddpm` now fails, as if it were not installed
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(pipe.scheduler).__name__ == "HFDDPMScheduler"
        pipe.set_progress_bar_config(disable=True)
        np.save({{out!r}}, pipe(generator=torch.Generator().manual_seed(0), **{{sample}}).images)
        # and it saves again in the same format from the remote code
        pipe.save_pretrained({str(tmp_path / "resaved")!r})
        """,
        tmp_path,
    )
    np.testing.assert_allclose(images, expected, atol=1e-5)
    resaved = tmp_path / "resaved"
    assert (resaved / "pipeline_hfddpm.py").read_text() == (folder / "pipeline_hfddpm.py").read_text()
    assert (resaved / "scheduler/scheduling_hfddpm.py").read_text() == (
        folder / "scheduler/scheduling_hfddpm.py"
    ).read_text()


def test_swapped_diffusers_scheduler_is_saved_as_diffusers(tmp_path):
    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    pipe = HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler())
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "DPMSolverMultistepScheduler"]
    assert not (tmp_path / "scheduler" / "scheduling_hfddpm.py").exists()
    loaded = HFDDPMPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler) is DPMSolverMultistepScheduler
    assert torch.equal(loaded.scheduler.alphas_cumprod, pipe.scheduler.alphas_cumprod)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model_index.json"):
        HFDDPMPipeline.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a saved pipeline folder"):
        HFDDPMPipeline.from_pretrained(str(tmp_path / "missing" / "deeper" / "x"))
    with pytest.raises(FileNotFoundError, match="nor a Hub repository id"):
        HFDDPMPipeline.from_pretrained("./missing")


@pytest.mark.parametrize(
    "path, expected",
    [
        ("user/model", True),
        ("user-1/model_v2.5", True),
        ("model", False),
        ("user/model/unet", False),
        ("./model", False),
        ("../model", False),
        ("~/model", False),
        ("/abs/model", False),
        ("user/-model", False),
        ("user/a..b", False),
        ("user/a--b", False),
    ],
)
def test_is_repo_id(path, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_repo_id(path) is expected
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "model").mkdir()
    assert is_repo_id("user/model") is False  # an existing folder is a folder
    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    with pytest.raises(ValueError, match="safetensors only"):
        HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler()).save_pretrained(tmp_path, safe_serialization=False)


def test_from_pretrained_takes_diffusers_dtype_forms(tmp_path):
    from hfddpm import HFDDPMPipeline, HFDDPMScheduler, build_unet

    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler()).save_pretrained(tmp_path / "pipe")
    for kwargs in ({"dtype": torch.bfloat16}, {"torch_dtype": {"unet": torch.bfloat16, "default": torch.float32}}):
        assert HFDDPMPipeline.from_pretrained(tmp_path / "pipe", **kwargs).unet.dtype == torch.bfloat16
    half = HFDDPMPipeline.from_pretrained(tmp_path / "pipe", dtype={"default": torch.float16})
    assert half.unet.dtype == torch.float16
    with pytest.raises(ValueError, match=r"dtype must be a torch.dtype .*: 'bfloat16'"):
        HFDDPMPipeline.from_pretrained(tmp_path / "pipe", dtype="bfloat16")
    with pytest.raises(ValueError, match=r"Unexpected arguments \['variant'\]; .*takes the components unet,"):
        HFDDPMPipeline.from_pretrained(tmp_path / "pipe", variant="fp16")
