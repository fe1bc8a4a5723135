"""The runnable examples in hfddpm's docstrings run and print what they show."""

import doctest
import importlib
import pkgutil

import pytest

import hfddpm

MODULES = sorted({"hfddpm"} | {m.name for m in pkgutil.walk_packages(hfddpm.__path__, "hfddpm.")})


def test_the_examples_are_found():
    examples = sum(len(t.examples) for m in MODULES for t in doctest.DocTestFinder().find(importlib.import_module(m)))
    assert examples >= 20, examples


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(
        importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"
