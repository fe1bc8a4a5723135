"""Loading an untrusted pipeline folder runs none of its code, and a broken model_index.json gives one clear error."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from diffusers import DDPMScheduler

from hfddpm import HFDDPMPipeline, HFDDPMScheduler, build_unet
from hfddpm.cli import main

TAMPERED_ENTRY = ["scheduler.scheduling_hfddpm", "HFDDPMScheduler"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    folder = tmp_path_factory.mktemp("saved") / "pipe"
    HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler()).save_pretrained(folder)
    return folder


def copy_with_index(saved, tmp_path, **entries):
    """A copy of the saved folder whose model_index.json has ``entries`` replaced (None removes the key)."""
    folder = tmp_path / "pipe"
    shutil.copytree(saved, folder)
    index = json.loads((folder / "model_index.json").read_text())
    for key, value in entries.items():
        if value is None:
            index.pop(key)
        else:
            index[key] = value
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def tamper(folder, marker):
    """Make the folder's copy of the scheduler code write ``marker`` when it is imported."""
    with open(folder / "scheduler" / "scheduling_hfddpm.py", "a") as f:
        f.write(f"\nimport pathlib\npathlib.Path({str(marker)!r}).write_text('the folder ran code')\n")


def run_inside(folder, code, tmp_path):
    """``python -c code`` in the folder: the folder is on sys.path, as in a REPL started there."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    return subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, env=env)


def test_tampered_folder_loaded_from_inside_raises_and_imports_nothing(saved, tmp_path):
    folder = copy_with_index(saved, tmp_path, scheduler=TAMPERED_ENTRY)
    marker = tmp_path / "marker"
    tamper(folder, marker)
    proc = run_inside(folder, "from hfddpm import HFDDPMPipeline; HFDDPMPipeline.from_pretrained('.')", tmp_path)
    assert proc.returncode == 1
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("ValueError: ./model_index.json: 'scheduler' is")
    assert '["scheduler.scheduling_hfddpm", "HFDDPMScheduler"]' in error
    assert "DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)" in error
    assert not marker.exists()


def test_tampered_folder_through_the_cli_from_inside(saved, tmp_path):
    folder = copy_with_index(saved, tmp_path, scheduler=TAMPERED_ENTRY)
    marker = tmp_path / "marker"
    tamper(folder, marker)
    code = "import sys; from hfddpm.cli import main; sys.exit(main(['sample', '.', '--out', 'grid.png']))"
    proc = run_inside(folder, code, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("hfddpm sample: error: ./model_index.json: 'scheduler' is")
    assert not marker.exists() and not (folder / "grid.png").exists()


def test_the_folders_own_scheduler_code_never_runs(saved, tmp_path):
    # a standard index: hfddpm maps the file name to its installed class and ignores the folder's copy
    folder = copy_with_index(saved, tmp_path)
    marker = tmp_path / "marker"
    tamper(folder, marker)
    code = "from hfddpm import HFDDPMPipeline; print(type(HFDDPMPipeline.from_pretrained('.').scheduler).__module__)"
    proc = run_inside(folder, code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "hfddpm.schedulers.scheduling_hfddpm"
    assert not marker.exists()


DIFFUSERS_LOAD = (
    "from diffusers import DiffusionPipeline; DiffusionPipeline.from_pretrained('.', trust_remote_code={})"
)


@pytest.mark.parametrize(
    ("trust_remote_code", "error"),
    [
        (False, "contains custom code in pipeline_hfddpm.py which must be executed"),
        (True, "scheduler.scheduling_hfddpm is not one of the libraries Diffusers can load components from"),
    ],
)
def test_plain_diffusers_refuses_the_tampered_folder(saved, tmp_path, trust_remote_code, error):
    # Pins diffusers' own behaviour (0.42.1), described in README.md "The save format": without trust_remote_code
    # it refuses the folder; with it, it runs pipeline_hfddpm.py but imports no dotted module the index names.
    folder = copy_with_index(saved, tmp_path, scheduler=TAMPERED_ENTRY)
    marker = tmp_path / "marker"
    tamper(folder, marker)
    proc = run_inside(folder, DIFFUSERS_LOAD.format(trust_remote_code), tmp_path)
    assert proc.returncode == 1
    assert error in proc.stderr
    assert not marker.exists()


def test_plain_diffusers_with_trust_remote_code_runs_the_folders_files(saved, tmp_path):
    # what trust_remote_code=True means: the component code in the folder runs (read it first)
    folder = copy_with_index(saved, tmp_path)
    marker = tmp_path / "marker"
    tamper(folder, marker)
    proc = run_inside(folder, DIFFUSERS_LOAD.format(True), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert marker.read_text() == "the folder ran code"


@pytest.mark.parametrize(
    ("entry", "scheduler_cls"),
    [
        (["scheduling_hfddpm", "HFDDPMScheduler"], HFDDPMScheduler),
        (["hfddpm.schedulers.scheduling_hfddpm", "HFDDPMScheduler"], HFDDPMScheduler),
        (["diffusers", "DDPMScheduler"], DDPMScheduler),
    ],
)
def test_known_components_load(saved, tmp_path, entry, scheduler_cls):
    folder = copy_with_index(saved, tmp_path, scheduler=entry)
    pipe = HFDDPMPipeline.from_pretrained(folder)
    assert type(pipe.scheduler) is scheduler_cls
    assert type(pipe.unet).__name__ == "UNet2DModel"


def test_an_importable_module_named_by_the_index_is_not_imported(saved, tmp_path, monkeypatch):
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    marker = tmp_path / "marker"
    (code_dir / "evil_scheduling.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    monkeypatch.syspath_prepend(str(code_dir))
    folder = copy_with_index(saved, tmp_path, scheduler=["evil_scheduling", "EvilScheduler"])
    with pytest.raises(ValueError, match=r"'scheduler' is \[\"evil_scheduling\", \"EvilScheduler\"\], a component"):
        HFDDPMPipeline.from_pretrained(folder)
    assert "evil_scheduling" not in sys.modules and not marker.exists()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        # a component of the wrong kind, or a class that does not exist
        (
            {"unet": ["diffusers", "DDPMScheduler"]},
            "'unet' is .* but diffusers has no ModelMixin subclass 'DDPMScheduler'",
        ),
        (
            {"unet": ["scheduling_hfddpm", "HFDDPMScheduler"]},
            "'unet' is .* has no ModelMixin subclass 'HFDDPMScheduler'",
        ),
        ({"scheduler": ["diffusers", "UNet2DModel"]}, "'scheduler' is .* no SchedulerMixin subclass 'UNet2DModel'"),
        ({"scheduler": ["diffusers", "NoSuchScheduler"]}, "no SchedulerMixin subclass 'NoSuchScheduler'"),
        ({"unet": ["os", "system"]}, r"'unet' is \[\"os\", \"system\"\], a component outside diffusers and hfddpm"),
        # malformed entries
        ({"unet": None}, "has no 'unet' entry; a pipeline needs \\['unet', 'scheduler'\\]"),
        ({"unet": "diffusers"}, "'unet' is \"diffusers\", expected \\[library, class name\\] \\(two strings\\)"),
        ({"scheduler": ["diffusers"]}, "'scheduler' is \\[\"diffusers\"\\], expected \\[library, class name\\]"),
        ({"scheduler": ["diffusers", 3]}, "'scheduler' is \\[\"diffusers\", 3\\], expected"),
    ],
)
def test_bad_index_entries_name_the_file_and_key(saved, tmp_path, entries, message):
    folder = copy_with_index(saved, tmp_path, **entries)
    with pytest.raises(ValueError, match=message) as info:
        HFDDPMPipeline.from_pretrained(folder)
    assert str(info.value).startswith(str(folder / "model_index.json"))


def test_a_missing_entry_is_fine_when_the_component_is_passed(saved, tmp_path):
    folder = copy_with_index(saved, tmp_path, unet=None)
    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    assert HFDDPMPipeline.from_pretrained(folder, unet=unet).unet is unet


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"unet": ["diffusers", "UNet2DModel"],', "is not valid JSON \\(Expecting property name"),
        ("\xff\xfe", "is not valid JSON"),
        ('[["diffusers", "UNet2DModel"]]', "holds a list, not a JSON object of components"),
    ],
)
def test_malformed_index_file(saved, tmp_path, capsys, text, message):
    folder = copy_with_index(saved, tmp_path)
    (folder / "model_index.json").write_text(text, encoding="latin-1")
    with pytest.raises(ValueError, match=message):
        HFDDPMPipeline.from_pretrained(folder)
    # the CLI shows it as one line, exit status 2
    assert main(["sample", str(folder), "--out", str(tmp_path / "grid.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hfddpm sample: error: {folder / 'model_index.json'} ") and err.count("\n") == 1
    assert not (tmp_path / "grid.png").exists()


class RunsCode:
    """Pickles to a call that writes ``marker``: what a tampered weights or state file would hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('the pickle ran')",))


def swap_weights_for_pickle(folder, marker):
    """Replace ``folder``'s safetensors weights by a pickled ``.bin`` that runs code when unpickled."""
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"weight": RunsCode(marker)}, folder / "diffusion_pytorch_model.bin")


def test_pickled_unet_weights_are_refused_unopened(saved, tmp_path, capsys):
    folder = copy_with_index(saved, tmp_path)
    marker = tmp_path / "marker"
    swap_weights_for_pickle(folder / "unet", marker)
    with pytest.raises(FileNotFoundError, match=r"pipe/unet holds no safetensors weights") as raised:
        HFDDPMPipeline.from_pretrained(folder)
    assert "pickled weights (.bin, .pt, .ckpt) can run code" in str(raised.value)
    assert main(["sample", str(folder), "--out", str(tmp_path / "grid.png")]) == 2
    assert capsys.readouterr().err.startswith(f"hfddpm sample: error: {folder}/unet holds no safetensors weights")
    assert not marker.exists() and not (tmp_path / "grid.png").exists()


def test_pickled_weights_are_refused_for_vae_and_pretrained_unet(saved, tmp_path):
    from diffusers import AutoencoderKL

    from hfddpm.latents import load_vae
    from hfddpm.training import TrainConfig
    from hfddpm.training.engine import build_training_unet

    marker = tmp_path / "marker"
    vae = tmp_path / "vae"
    AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=2).save_pretrained(vae)
    swap_weights_for_pickle(vae, marker)
    with pytest.raises(FileNotFoundError, match=r"vae holds no safetensors weights"):
        load_vae(str(vae))
    folder = copy_with_index(saved, tmp_path)
    swap_weights_for_pickle(folder / "unet", marker)
    with pytest.raises(FileNotFoundError, match=r"pipe/unet holds no safetensors weights"):
        build_training_unet(TrainConfig(pretrained_model_name_or_path=str(folder)), num_classes=0)
    assert not marker.exists()


def test_truncated_weights_are_named(saved, tmp_path):
    folder = copy_with_index(saved, tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"pipe/unet/diffusion_pytorch_model.safetensors cannot be read \(truncated"):
        HFDDPMPipeline.from_pretrained(folder)


def custom_code_folder(folder, marker):
    """A model folder whose config names code of its own (``auto_map``), code that writes ``marker`` when it runs:
    what transformers would import with ``trust_remote_code=True`` (or after a "y" at its prompt)."""
    folder.mkdir()
    auto_map = {name: "evil.EvilModel" for name in ("AutoConfig", "AutoModel", "AutoFeatureExtractor")}
    auto_map["AutoConfig"] = "evil.EvilConfig"
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": auto_map}))
    (folder / "preprocessor_config.json").write_text(json.dumps({"auto_map": auto_map}))
    (folder / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('the folder ran code')\n"
    )
    return folder


@pytest.mark.parametrize("stdin", ["no input", "y"])
@pytest.mark.parametrize("metric", ["dinov2", "fad"])
def test_evaluate_never_runs_a_model_folders_code(saved, tmp_path, metric, stdin):
    marker = tmp_path / "marker"
    model = custom_code_folder(tmp_path / "model", marker)
    argv = ["evaluate", str(saved), "--metrics", metric, f"--{metric}-model", str(model)]
    code = "import sys; from hfddpm.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    feed = {"stdin": subprocess.DEVNULL} if stdin == "no input" else {"input": "y\n"}  # "y" would run it at a prompt
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=300, **feed
    )
    name = {"dinov2": "The FD-DINOv2 model", "fad": "The FAD model"}[metric]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"hfddpm evaluate: error: {name} {str(model)!r} does not load with transformers'")
    assert "contains custom code" in proc.stderr and "hfddpm never runs code from a model folder" in proc.stderr
    assert "Do you wish to run the custom code" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "modules").exists()
