"""hfddpm.training.processes: the threads each training process uses (its CPU affinity shared between the local
processes). Ending the processes safely is tested by the two-process run in test_periodic_eval.py."""

import json
import os
import subprocess
import sys

import pytest
from train_helpers import FAST, TRAIN, train_env

from hfddpm.training.processes import cpu_threads_per_process

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is a Linux call")


def test_threads_follow_the_cores_this_process_may_use():
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert [cpu_threads_per_process(n) for n in (1, 2, 4)] == [1, 1, 1]
    finally:
        os.sched_setaffinity(0, before)
    cores = len(before)
    assert [cpu_threads_per_process(n) for n in (1, 2, 0)] == [cores, max(1, cores // 2), cores]


def test_a_run_restricted_to_one_core_trains_with_one_thread(tmp_path):
    """``taskset -c 0 python train.py``: one thread, whatever ``os.cpu_count()`` says, and recorded."""
    out = tmp_path / "out"
    one_core = min(os.sched_getaffinity(0))
    result = subprocess.run(
        [sys.executable, str(TRAIN), *FAST, "--output_dir", str(out), "--max_train_steps", "1"],
        env=train_env(tmp_path),
        preexec_fn=lambda: os.sched_setaffinity(0, {one_core}),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    resolved = json.loads((out / "training_config.json").read_text())["resolved"]
    assert resolved["cpu_threads"] == 1 and resolved["device"] == "cpu"
    assert ", 1 CPU thread(s) per process;" in result.stderr  # the log says it
    assert json.loads((out / "train_metrics.json").read_text())["training_config"]["cpu_threads"] == 1
