"""A run's processes: how many CPU threads each one uses, and ending them in a safe order.

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

import gc
import os

from accelerate import Accelerator


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
