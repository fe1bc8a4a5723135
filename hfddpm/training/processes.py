"""A run's processes: how many CPU threads each one uses, what a run sets for the whole process (and gives back),
and ending them in a safe order.

A model wrapped by ``accelerator.prepare`` on several processes is a ``DistributedDataParallel`` whose reducer holds
the process group. If the reducer outlives ``destroy_process_group`` (called by ``accelerator.end_training``), freeing
it later frees torch's gloo backend while holding the GIL, and the backend waits for its worker thread, which may in
turn wait for the GIL to free the last barrier's work: a deadlock at exit, seen once in a two-process CPU run (py-spy
showed both threads). Freed first, the model leaves the process group to Python, which frees it without the GIL
(torch binds its ``ProcessGroup`` with a holder that releases the GIL to destroy it, the ``Reducer`` with a plain one).

Example (one process: nothing distributed to free):
    >>> from accelerate import Accelerator
    >>> from hfddpm.training.processes import cpu_threads_per_process, end_training
    >>> cpu_threads_per_process(1) >= 1
    True
    >>> end_training(Accelerator(cpu=True))
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random

import numpy as np
import torch
from accelerate import Accelerator

from hfddpm.training.precision import CUDA_MATH_FLAGS, set_cuda_math

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that log only errors on the processes other than process 0.
QUIET_ON_OTHER_PROCESSES = ("datasets", "diffusers", "accelerate")


def usable_cpus() -> list[int]:
    """The ids of the CPUs this process may run on: its CPU affinity (``taskset``, a container's cpuset) where the
    system has one, else all of the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def local_processes(num_processes: int) -> int:
    """The processes of this run on this machine: torchrun's ``LOCAL_WORLD_SIZE`` (set by ``accelerate launch``),
    else all ``num_processes`` of the run."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))


def cpu_threads_per_process(local_processes: int) -> int:
    """The cores this process may run on (:func:`usable_cpus`), shared evenly between the ``local_processes``
    processes of this machine, at least one each. ``accelerate launch`` exports ``OMP_NUM_THREADS=1`` unless told
    otherwise, so the environment does not say this."""
    return max(1, len(usable_cpus()) // max(1, local_processes))


def end_training(accelerator: Accelerator) -> None:
    """Free the models, optimizers and schedulers ``accelerator`` prepared, then end its trackers and process group.

    The caller drops its own references to them first (the prepared model above all)."""
    accelerator.free_memory()
    gc.collect()  # a DDP module sits in reference cycles: free it now, while the process group is alive
    accelerator.end_training()


@contextlib.contextmanager
def process_state_kept():
    """Restore on the way out what a run sets for the whole process: torch's thread count, the global RNG states
    (``random``, numpy, torch's CPU generator and those of the CUDA devices already in use), the CUDA math flags, and
    the logging setup (a handler for the run's lines when the root logger has none, as ``logging.basicConfig``
    would add; the levels of the root logger and of ``QUIET_ON_OTHER_PROCESSES``)."""
    threads = torch.get_num_threads()
    rng = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    cuda_math = {name: getattr(owner, attribute) for name, (owner, attribute) in CUDA_MATH_FLAGS.items()}
    root = logging.getLogger()
    levels = {named: named.level for named in (root, *map(logging.getLogger, QUIET_ON_OTHER_PROCESSES))}
    handler = None
    if not root.handlers:  # the caller has not set up logging: the run's lines go to stderr, for this run only
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        if handler is not None:
            root.removeHandler(handler)
        for named, level in levels.items():
            named.setLevel(level)
        set_cuda_math(cuda_math)
        torch.set_num_threads(threads)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
