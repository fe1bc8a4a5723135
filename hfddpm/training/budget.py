"""A time budget for a run: the speed of the first steps sets how many steps fit, so a run ends on time on any
machine (a CPU without native bf16 trains the default recipe at a third of the speed of one with it).

The budget is the run's time from its start (``training/train.py``: its own start, imports included; then data, model,
the precision probe) to the saved pipeline: the training steps and the work between them (validation grids,
checkpoints, evaluations, the final evaluation and the final grid) all count in it. That work is kept out of the
measured speed of the steps and counted apart (:class:`SideWork`): how many of each are still to come follows from the
plan, and what one costs is first estimated (timed sampling calls for grids and evaluations), then measured.

The plan is made early (during the LR warm-up, where the learning rate does not depend on the total), and the LR
schedule is then rebuilt for the planned number of steps. The speed of 20 steps can mislead (another job briefly on
the CPU, a laptop that throttles), so the plan is checked again at a quarter, half, three quarters and nine tenths of
the run against the speed of the steps since the last check, and corrected when it is more than 1% off (the last check
catches a machine that speeds up or slows down in the last quarter); the rest of the LR schedule is then stretched or
squeezed to the new length (:meth:`hfddpm.training.TrainingEngine.replan`), so the learning rate stays continuous. The
planned number and its corrections are saved with every checkpoint, so a resumed run keeps them.

Example (a fake clock: 3 steps to warm up in 2 s, then 10 steps in 5 s, of a 60 s budget):
    >>> budget = StepBudget(60, cap=1000, skip=3, calibration_steps=10, clock=iter([0.0, 2.0, 7.0]).__next__)
    >>> budget.start(step=0)
    >>> [budget.observe(step) for step in range(1, 14)][-1]  # 13 + (60 * 0.98 - 7) s * 2 steps/s
    116
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Share of the budget the first plan keeps for what it cannot estimate yet (checkpoints, until one is timed) and the
# final save.
RESERVE_FRACTION = 0.02
# What a re-plan keeps for the final save (the pipeline's files and the model card): the rest is timed SideWork.
FINAL_RESERVE_FRACTION = 0.01
# Where the plan is checked again (shares of the planned steps), and by how much it must be off to be corrected.
REPLAN_AT = (0.25, 0.5, 0.75, 0.9)
REPLAN_TOLERANCE = 0.01
# Steps timed to measure the speed (after the first ones, which include one-off start-up costs).
CALIBRATION_STEPS = 20
SKIPPED_STEPS = 3


def plan_steps(
    budget_s: float,
    elapsed_s: float,
    steps_done: int,
    steps_per_second: float,
    cap: int,
    reserve: float = RESERVE_FRACTION,
    reserved_s: float = 0.0,
) -> int:
    """How many steps in all fit into ``budget_s`` seconds, ``elapsed_s`` of which are spent and ``steps_done``
    taken, at ``steps_per_second``, keeping the share ``reserve`` and ``reserved_s`` seconds (the work between the
    steps still to come) in hand; at most ``cap``, at least one more.

    Example:
        >>> plan_steps(480, 20, 20, 2.0, cap=1800)  # 20 + (480 * 0.98 - 20) s * 2 steps/s
        920
        >>> plan_steps(480, 20, 20, 2.0, cap=1800, reserved_s=40)  # 40 s of evaluations to come: 80 steps fewer
        840
    """
    left = budget_s * (1 - reserve) - elapsed_s - reserved_s
    planned = steps_done + max(1, math.floor(left * steps_per_second))
    return min(cap, planned)


def due_every(every: int, step: int, stop: int) -> int:
    """How many pieces of work due every ``every`` steps (none if 0) come at steps ``step`` to ``stop - 1``.

    Example:
        >>> due_every(500, 250, 2000), due_every(500, 500, 2001), due_every(0, 1, 100)
        (3, 4, 0)
    """
    return len(range(math.ceil(step / every) * every, stop, every)) if every else 0


def device_clock(device: torch.device | str) -> Callable[[], float]:
    """``time.perf_counter``, read once ``device`` has done the work queued on it. A GPU runs the steps
    asynchronously, the host queueing ahead of it, so the plain clock would time the queueing, not the steps. Each
    reading waits for the GPU: a run reads it about ten times, not at every step.

    Example:
        >>> clock = device_clock("cpu")
        >>> clock() <= clock()
        True
    """
    device = torch.device(device)
    if device.type != "cuda":
        return time.perf_counter

    def clock() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return clock


@dataclass
class SideWork:
    """Work between the steps (validation grids, checkpoints, evaluations) that the budget counts but the speed of the
    steps leaves out: ``left(step, planned)`` pieces are still to come after ``step`` of a run planned to ``planned``
    steps (the one due at ``step`` and any at the end included), each ``seconds`` long: an estimate until one is
    measured, then the mean of those measured.

    Example (one every 100 steps, estimated at 5 s; then two took 7 s and 9 s):
        >>> grids = SideWork(left=lambda step, planned: (planned - step) // 100, seconds=5.0)
        >>> grids.measured(7.0); grids.measured(9.0)
        >>> grids.seconds, grids.reserved(150, 450)  # 3 more at 8 s each
        (8.0, 24.0)
    """

    left: Callable[[int, int], int]
    seconds: float = 0.0
    timed: int = 0  # how many were measured
    spent_s: float = 0.0  # the seconds they took

    def measured(self, seconds: float) -> None:
        self.spent_s += seconds
        self.timed += 1
        self.seconds = self.spent_s / self.timed

    def reserved(self, step: int, planned: int) -> float:
        """Seconds to keep in hand at ``step`` of a run planned to ``planned`` steps."""
        return self.left(step, planned) * self.seconds


class StepBudget:
    """Times ``calibration_steps`` steps (after ``skip`` steps of start-up costs) and plans the run's length.

    Args:
        budget_s: seconds for the run, counted from the ``since`` time given to :meth:`start`.
        cap: the most steps to plan (the recipe's length: a fast machine does not train longer than asked).
        skip: steps not timed at the start (first-call costs: allocator, autotuning, compilation).
        calibration_steps: how many steps to time.
        clock: a monotonic clock in seconds (tests pass a fake one).

    The work between the steps is declared with :meth:`keep` and timed with :meth:`spent`.
    """

    def __init__(
        self,
        budget_s: float,
        *,
        cap: int,
        skip: int = SKIPPED_STEPS,
        calibration_steps: int = CALIBRATION_STEPS,
        clock: Callable[[], float] = time.perf_counter,
    ):
        if not budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s}.")
        self.budget_s, self.cap, self.skip, self.calibration_steps = budget_s, cap, skip, calibration_steps
        self.clock = clock
        self.t0 = self.start_step = self.timed_from = None
        self.steps_per_second = self.planned = None
        self.work: dict[str, SideWork] = {}  # the work between the steps, by name
        self.replans: list[tuple[int, int]] = []  # (step, new planned length) of every correction
        self._checks_done = 0
        self._last_check = None  # (step, time) of the last check: each check times the steps since the one before
        self.speed_from = None

    @property
    def outside_s(self) -> float:
        """Seconds spent in the work between the steps so far: in the budget, not in the speed of the steps."""
        return sum(work.spent_s for work in self.work.values())

    def now(self) -> float:
        """The steps' clock: ``clock`` without the time spent between the steps (:meth:`spent`)."""
        return self.clock() - self.outside_s

    def keep(self, name: str, left: Callable[[int, int], int], estimate_s: float = 0.0) -> None:
        """Keep the time of ``left(step, planned)`` pieces of ``name`` work in hand (see :class:`SideWork`), at
        ``estimate_s`` each until one is measured; an estimate never replaces a measurement."""
        work = self.work.get(name)
        if work is None or not work.timed:
            self.work[name] = SideWork(left, estimate_s)
        else:
            work.left = left

    def spent(self, name: str, seconds: float) -> None:
        """A piece of ``name`` work took ``seconds``: they count in the budget but not in the speed of the steps,
        and the mean cost of those measured so far is kept in hand for each one still to come.

        Example (a 10 s evaluation between the timed steps does not slow the measured speed, and the one left costs
        as much):
            >>> budget = StepBudget(60, cap=1000, skip=1, calibration_steps=10, clock=iter([0.0, 1.0, 16.0]).__next__)
            >>> budget.keep("evaluation", left=lambda step, planned: 1)
            >>> budget.start(step=0)
            >>> budget.observe(1)
            >>> budget.spent("evaluation", 10.0)
            >>> budget.observe(11), budget.steps_per_second  # 10 steps in 16 - 1 - 10 s; 11 + (58.8 - 16 - 10) s * 2
            (76, 2.0)
        """
        self.work[name].measured(seconds)

    def start(self, step: int, since: float | None = None) -> None:
        """Call when the loop starts, at ``step`` (0, or the step a run resumes from); ``since`` is the ``clock``
        time the run began (its start-up counts in the budget), by default now."""
        self.start_step = step
        self.t0 = self.now() if since is None else since

    def reserved(self, step: int, planned: int) -> float:
        """Seconds of work between the steps still to come after ``step`` of a run planned to ``planned`` steps."""
        return sum(work.reserved(step, planned) for work in self.work.values())

    def _plan(self, now: float, step: int, speed: float, reserve: float) -> int:
        """The length that fits at ``speed`` from ``step`` at ``now`` (:meth:`now`), keeping ``reserve`` and the work
        between the steps still to come in hand: the longest plan whose own grids, checkpoints and evaluations (their
        number grows with its length) still leave time for its steps; at least one more step."""
        elapsed = now + self.outside_s - self.t0  # the work between the steps so far counts in the budget

        def plan(length: int) -> int:  # the length that fits beside the work a plan of ``length`` steps holds
            return plan_steps(self.budget_s, elapsed, step, speed, self.cap, reserve, self.reserved(step, length))

        # plan(length) >= length holds up to some length and fails beyond it; the least work (one more step) bounds it
        low, high = step + 1, plan(step + 1)
        if high < low:
            return low
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if plan(middle) >= middle else (low, middle - 1)
        return low

    @property
    def plan_step(self) -> int:
        """The step after which :meth:`observe` makes the plan."""
        return self.start_step + self.skip + self.calibration_steps

    def observe(self, step: int) -> int | None:
        """Call after each step; returns the planned number of steps after :attr:`plan_step` and a corrected one
        when a check finds the plan more than :data:`REPLAN_TOLERANCE` off (see :meth:`check`), else ``None``."""
        if self.planned is None:
            if step == self.start_step + self.skip:
                self.timed_from = self.now()
            elif step == self.plan_step:
                now = self.now()
                self.steps_per_second = self.calibration_steps / max(now - self.timed_from, 1e-9)
                self.planned = self._plan(now, step, self.steps_per_second, RESERVE_FRACTION)
                return self.planned
            return None
        return self.check(step)

    def decides(self, step: int) -> bool:
        """Whether :meth:`observe` at ``step`` makes or checks the plan (the steps where several processes must
        agree on it: the same on every process that holds the same plan; call it before :meth:`observe`)."""
        if self.planned is None:
            return step == self.plan_step
        if self._checks_done >= len(REPLAN_AT) or step >= self.planned:
            return False
        return step >= self.start_step + REPLAN_AT[self._checks_done] * (self.planned - self.start_step)

    def check(self, step: int) -> int | None:
        """At the :data:`REPLAN_AT` shares of the plan: the plan again from the speed of the steps since the last
        check (the first check: since the timing began), the work between them left out, keeping
        :data:`FINAL_RESERVE_FRACTION` and the work still to come in hand; returns it if it differs from the current
        plan by more than :data:`REPLAN_TOLERANCE`, else ``None``.

        Example (planned 116 steps at 2 steps/s; then the machine slows to 1 step/s):
            >>> budget = StepBudget(60, cap=1000, skip=3, calibration_steps=10, clock=iter([0.0, 2.0, 7.0]).__next__)
            >>> budget.start(step=0)
            >>> [budget.observe(step) for step in range(1, 14)][-1]
            116
            >>> budget.clock = iter([7.0 + 16 * 1.0]).__next__  # steps 14-29 took 1 s each
            >>> [budget.observe(step) for step in range(14, 30)][-1]  # 29 + (60 * 0.99 - 23) s * 26 / 21 s
            74
            >>> budget.replans
            [(29, 74)]
        """
        if not self.decides(step):
            return None
        self._checks_done += 1
        now = self.now()
        since_step, since = self._last_check or (self.start_step + self.skip, self.timed_from)
        self._last_check = (step, now)
        self.speed_from = since_step  # the steps the last check timed: speed_from to step
        speed = (step - since_step) / max(now - since, 1e-9)
        corrected = self._plan(now, step, speed, FINAL_RESERVE_FRACTION)
        if abs(corrected - self.planned) <= REPLAN_TOLERANCE * self.planned:
            return None
        self.steps_per_second, self.planned = speed, corrected
        self.replans.append((step, corrected))
        return corrected
