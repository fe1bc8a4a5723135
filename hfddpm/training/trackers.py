"""Experiment trackers: which ones a run can use, and logging a sample grid to them.

Example:
    >>> from hfddpm.training.trackers import check_trackers
    >>> check_trackers("none")
    []
"""

import importlib.util

import numpy as np

# The trackers --report_to takes and the package each needs (without it accelerate silently logs nothing).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
REPORT_TO_CHOICES = ("none", *TRACKER_PACKAGES, "all")


def check_trackers(report_to: str) -> list[str]:
    """The trackers ``--report_to`` asks for, or a ``ValueError`` naming the missing package and how to install it.

    accelerate would start a run whose tracker package is missing and log nothing; this fails before training.
    ``"all"`` means every installed tracker, and at least one must be.
    """
    if report_to not in REPORT_TO_CHOICES:
        raise ValueError(f"--report_to {report_to!r} is not a tracker; choose one of {REPORT_TO_CHOICES}.")
    if report_to == "none":
        return []
    installed = [name for name, package in TRACKER_PACKAGES.items() if importlib.util.find_spec(package) is not None]
    if report_to == "all":
        if not installed:
            raise ValueError(
                f"--report_to all found no tracker package ({', '.join(TRACKER_PACKAGES.values())} are not installed);"
                ' install one with `pip install "hfddpm[tracking]"`, or pass --report_to none.'
            )
        return installed
    if report_to not in installed:
        raise ValueError(
            f"--report_to {report_to} needs the {TRACKER_PACKAGES[report_to]} package, which is not installed:"
            f' `pip install "hfddpm[tracking]"` (or `pip install {TRACKER_PACKAGES[report_to]}`), or pass'
            " --report_to none."
        )
    return [report_to]


def log_grid(accelerator, grid, step: int) -> None:
    """Send a PIL sample grid to every tracker of ``accelerator`` that shows images."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("samples", np.asarray(grid.convert("RGB")), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"samples": wandb.Image(grid)}, step=step)
