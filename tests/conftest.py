"""Fixtures shared by the test files."""

import importlib.util

import pytest


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
