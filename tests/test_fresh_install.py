"""The README's first command on a fresh machine: a new virtual environment, exactly its install step, then
``accelerate launch training/train.py`` with a few steps. Catches a runtime dependency missing from
``[project.dependencies]`` that the dev extra or this machine happens to provide. Slow (about 2 minutes): off by
default, run by ``.ci/run`` with ``-m slow``.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_first_command() -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"The first installs.*?```bash\n(.*?)\n```", text, re.S).group(1)


def test_readme_first_command_is_install_then_default_run():
    install, _, run = _readme_first_command().rpartition(" && ")
    assert run == "accelerate launch training/train.py"
    assert install == "pip install torch==2.13.0 && pip install -e ."


@pytest.mark.slow
def test_readme_first_command_in_a_fresh_environment(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}",
        VIRTUAL_ENV=str(venv),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf_home"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    out = tmp_path / "hfddpm-mnist"
    # the README's command, with a short run (flags appended to its training step)
    command = _readme_first_command() + (
        f" --output_dir {out} --max_train_steps 4 --train_batch_size 8 --lr_warmup_steps 1 --logging_steps 2"
        " --validation_inference_steps 2 --validation_images_per_class 2"
    )
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == 4
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file() and (
        out / "samples" / "final.png"
    ).is_file()
    # the fresh environment loads what it trained, without the checkout on the path
    load = "from hfddpm import HFDDPMPipeline; p = HFDDPMPipeline.from_pretrained(%r); print(p.num_classes)" % str(out)
    loaded = subprocess.run(
        [str(venv / "bin" / "python"), "-c", load], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert loaded.returncode == 0 and loaded.stdout.strip() == "10", loaded.stderr[-3000:]
