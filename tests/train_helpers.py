"""Running training/train.py from tests: in a subprocess with a small, fast recipe, or as a module in-process."""

import importlib.util
import logging
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "training" / "train.py"
TRAIN_VAE = ROOT / "training" / "train_vae.py"
# small and fast: the tiny preset on the embedded digits, a short warm-up, 1-step validation grids
FAST = [
    "--preset", "tiny", "--train_batch_size", "8", "--lr_warmup_steps", "1", "--logging_steps", "2",
    "--validation_inference_steps", "1", "--validation_images_per_class", "1", "--eval_batch_size", "4",
]  # fmt: skip


def train_env(tmp: Path, **extra) -> dict:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp / "hf_home"),
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    env.update(extra)
    return env


def accelerate_launcher(processes: int) -> list[str]:
    """``accelerate launch`` on CPU with ``processes`` processes (several: torchrun and gloo, with
    ``ACCELERATE_USE_CPU=1`` in the environment), its rendezvous on a free port: tests running side by side
    (pytest-xdist) must not share accelerate's default port 29500."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), *(["--multi_gpu"] if processes > 1 else ["--cpu"])]  # fmt: skip


def run_train(args: list[str], tmp: Path, *, check: bool = True, **env) -> subprocess.CompletedProcess:
    """``python training/train.py`` with :data:`FAST` then ``args`` (later flags win)."""
    result = subprocess.run(
        [sys.executable, str(TRAIN), *FAST, *args],
        env=train_env(tmp, **env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"train.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


def run_report(result: subprocess.CompletedProcess, folder: Path) -> str:
    """For a failed assertion about a run: the files of ``folder`` (its output folder) and the end of the run's log.

    Example:
        >>> done = subprocess.CompletedProcess([], 0, stdout="", stderr="INFO Saved checkpoint-2")
        >>> print(run_report(done, Path("no-such-folder")))
        files of no-such-folder: none
        the run's log (end):
        INFO Saved checkpoint-2
    """
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    listing = "".join(f"\n  {name}" for name in files) or " none"
    return f"files of {folder}:{listing}\nthe run's log (end):\n{result.stderr[-6000:]}"


def write_train_driver(path: Path, prelude: str, script: Path = TRAIN) -> Path:
    """A script at ``path`` that runs ``prelude`` (test-side wrappers of library functions; the product keeps no test
    hooks of its own), then ``script`` (training/train.py, or another script of training/ with ``main`` and
    ``parse_args``) as ``python script`` would, with the same arguments."""
    run = (
        f"import sys\n\nsys.path.insert(0, {str(script.parent)!r})\nimport {script.stem} as script\n\n"
        "script.main(script.parse_args())\n"
    )
    path.write_text(f"{prelude}\n{run}")
    return path


# A prelude for write_train_driver: at torch.distributed.destroy_process_group, each process writes to
# ``{log}<rank>`` how many DistributedDataParallel objects are still alive (uncollected garbage included). A DDP model
# must be freed before its process group (hfddpm.training.processes), so each file should say 0.
COUNT_DDP_AT_DESTROY = """
import gc

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

destroy = dist.destroy_process_group


def counted(group=None):
    alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    with open({log!r} + str(dist.get_rank()), "w") as f:
        f.write(str(alive))
    return destroy(group)


dist.destroy_process_group = counted
"""


def load_train_script():
    """training/train.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("hfddpm_train_script", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def process_state() -> dict:
    """What train() and train_vae() set for the whole process: torch's threads, the global RNG states, the logging
    setup."""
    root = logging.getLogger()
    return {
        "threads": torch.get_num_threads(),
        "torch_seed": torch.initial_seed(),
        "torch_rng": torch.get_rng_state().tolist(),
        "random": random.getstate(),
        "numpy": np.random.get_state()[1].tolist(),
        "root_handlers": list(root.handlers),
        "root_level": root.level,
        "accelerate_level": logging.getLogger("accelerate").level,
    }
