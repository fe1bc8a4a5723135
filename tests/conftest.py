"""Fixtures shared by the test files. ``tests/`` is on the import path (setup.cfg), so tests import helpers such as
``hub_server`` and ``train_helpers`` by name."""

import importlib.util
import os

import pytest
from hub_server import TEST_TOKENS, FakeHub, use_fake_hub

from hfddpm.training.processes import usable_cpus


@pytest.hookimpl(optionalhook=True)  # an xdist hook: pytest without xdist (the GPU image) runs the tests too
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (setup.cfg): one worker per core this run may use, at most 4 (each may train in 2 processes)."""
    return min(len(usable_cpus()), 4)


def pytest_configure(config):
    """Under pytest-xdist, each worker gets its own share of the cores (CPU affinity, inherited by the training runs
    it starts, which use that many threads): tests running side by side never fight over a core."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    index, count, cores = int(worker.removeprefix("gw")), int(count), usable_cpus()
    share = cores[index * len(cores) // count : (index + 1) * len(cores) // count] or [cores[index % len(cores)]]
    os.sched_setaffinity(0, share)
    import torch

    torch.set_num_threads(len(share))


@pytest.fixture
def hide_package(monkeypatch):
    """``hide_package("transformers")``: ``importlib.util.find_spec`` reports the package as missing, so a test sees
    what a user without it is told, whatever this machine has installed."""
    real_find_spec = importlib.util.find_spec

    def hide(*names: str):
        def find_spec(name, *args, **kwargs):
            return None if name.split(".")[0] in names else real_find_spec(name, *args, **kwargs)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    return hide


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps one process state (device, mixed precision) per process: a test that builds an Accelerator
    must not decide the precision of the next one's."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fake Hub in a thread (``hub_server.FakeHub``) that knows ``hub_server.TEST_TOKENS``; huggingface_hub in this
    process and child processes (environment) is pointed at it, with an empty cache and no saved login."""
    with FakeHub(tmp_path / "hub", tokens=TEST_TOKENS) as server:
        use_fake_hub(monkeypatch, server, tmp_path / "home")
        yield server
    assert server.unhandled == [], f"the client asked for routes the fake Hub does not serve: {server.unhandled}"
