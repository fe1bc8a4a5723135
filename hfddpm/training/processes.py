"""Ending a run's processes in a safe order.

A model wrapped by ``accelerator.prepare`` on several processes is a ``DistributedDataParallel`` whose reducer holds
the process group. If the reducer outlives ``destroy_process_group`` (called by ``accelerator.end_training``), freeing
it later frees torch's gloo backend while holding the GIL, and the backend waits for its worker thread, which may in
turn wait for the GIL to free the last barrier's work: a deadlock at exit, seen once in a two-process CPU run (py-spy
showed both threads). Freed first, the model leaves the process group to Python, which frees it without the GIL
(torch binds its ``ProcessGroup`` with a holder that releases the GIL to destroy it, the ``Reducer`` with a plain one).

Example (one process: nothing distributed to free):
    >>> from accelerate import Accelerator
    >>> from hfddpm.training.processes import end_training
    >>> end_training(Accelerator(cpu=True))
"""

from __future__ import annotations

import gc

from accelerate import Accelerator


def end_training(accelerator: Accelerator) -> None:
    """Free the models, optimizers and schedulers ``accelerator`` prepared, then end its trackers and process group.

    The caller drops its own references to them first (the prepared model above all)."""
    accelerator.free_memory()
    gc.collect()  # a DDP module sits in reference cycles: free it now, while the process group is alive
    accelerator.end_training()
