"""A time budget for a run: the speed of the first steps sets how many steps fit, so a run ends on time on any
machine (a CPU without native bf16 trains the default recipe at a third of the speed of one with it).

The budget is the run's time from its start (data, model, the precision probe) to the saved pipeline: the training
steps, validation grids, checkpoints, evaluations during training, the final evaluation and the final grid all count
in it. The evaluations are kept out of the measured speed of the steps and counted apart: their number is known (or
follows from the plan, with ``--eval_steps``), and their cost is first estimated from a timed sampling call, then
measured; so is the final grid's, measured by each validation grid.

The plan is made early (during the LR warm-up, where the learning rate does not depend on the total), and the LR
schedule is then rebuilt for the planned number of steps. The speed of 20 steps can mislead (another job briefly on
the CPU, a laptop that throttles, the validation grids and checkpoints it did not include), so the plan is checked
again at a quarter, half and three quarters of the run against the speed of the steps since the last check (grids
and checkpoints included), and corrected when it is more than 1% off; the rest of the LR schedule is then stretched or
squeezed to the new length (:meth:`hfddpm.training.TrainingEngine.replan`), so the learning rate stays continuous.
The planned number and its corrections are saved with every checkpoint, so a resumed run keeps them.

Example (a fake clock: 3 steps to warm up in 2 s, then 10 steps in 5 s, of a 60 s budget):
    >>> budget = StepBudget(60, cap=1000, skip=3, calibration_steps=10, clock=iter([0.0, 2.0, 7.0]).__next__)
    >>> budget.start(step=0)
    >>> [budget.observe(step) for step in range(1, 14)][-1]  # 13 + (60 * 0.94 - 7) s * 2 steps/s
    111
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

# Share of the budget the first plan keeps for validation grids and checkpoints (not yet timed) and the final save.
RESERVE_FRACTION = 0.06
# What a re-plan keeps for the final save: the grids and checkpoints so far are in the measured speed. The final grid
# and the evaluations are kept in hand as timed (StepBudget.final_seconds and .evaluation_seconds).
FINAL_RESERVE_FRACTION = 0.01
# Where the plan is checked again (shares of the planned steps), and by how much it must be off to be corrected.
REPLAN_AT = (0.25, 0.5, 0.75)
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
    taken, at ``steps_per_second``, keeping the share ``reserve`` and ``reserved_s`` seconds (the evaluations still
    to come) in hand; at most ``cap``, at least one more.

    Example:
        >>> plan_steps(480, 20, 20, 2.0, cap=1800)  # 20 + (480 * 0.94 - 20) s * 2 steps/s
        882
        >>> plan_steps(480, 20, 20, 2.0, cap=1800, reserved_s=40)  # 40 s of evaluations to come: 80 steps fewer
        802
    """
    left = budget_s * (1 - reserve) - elapsed_s - reserved_s
    planned = steps_done + max(1, math.floor(left * steps_per_second))
    return min(cap, planned)


class StepBudget:
    """Times ``calibration_steps`` steps (after ``skip`` steps of start-up costs) and plans the run's length.

    Args:
        budget_s: seconds for the run, counted from the ``since`` time given to :meth:`start`.
        cap: the most steps to plan (the recipe's length: a fast machine does not train longer than asked).
        skip: steps not timed at the start (first-call costs: allocator, autotuning, compilation).
        calibration_steps: how many steps to time.
        clock: a monotonic clock in seconds (tests pass a fake one).
        evaluations_left: ``evaluations_left(step, planned)``, the evaluations still to come after ``step`` of a run
            planned to ``planned`` steps, the one due at ``step`` and the final one included (``None``: no
            evaluations); their time is kept in hand, at :attr:`evaluation_seconds` each.
    """

    def __init__(
        self,
        budget_s: float,
        *,
        cap: int,
        skip: int = SKIPPED_STEPS,
        calibration_steps: int = CALIBRATION_STEPS,
        clock: Callable[[], float] = time.perf_counter,
        evaluations_left: Callable[[int, int], int] | None = None,
    ):
        if not budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s}.")
        self.budget_s, self.cap, self.skip, self.calibration_steps = budget_s, cap, skip, calibration_steps
        self.clock = clock
        self.t0 = self.start_step = self.timed_from = None
        self.steps_per_second = self.planned = None
        self.evaluations_left = evaluations_left
        self.evaluation_seconds = 0.0  # the cost of one evaluation: estimated (:meth:`expect`), then measured
        self.evaluations_timed = 0  # how many evaluations were measured
        self.outside_s = 0.0  # seconds spent in evaluations: in the budget, not in the speed of the steps
        self.final_seconds = 0.0  # the final grid's cost: estimated, then as long as the last validation grid took
        self.replans: list[tuple[int, int]] = []  # (step, new planned length) of every correction
        self._checks_done = 0
        self._last_check = None  # (step, time) of the last check: each check times the steps since the one before
        self.speed_from = None

    def now(self) -> float:
        """The steps' clock: ``clock`` without the time spent in evaluations (:meth:`evaluated`)."""
        return self.clock() - self.outside_s

    def expect(self, seconds: float) -> None:
        """An estimate of one evaluation's cost, used until one is measured (:meth:`evaluated`)."""
        if not self.evaluations_timed:
            self.evaluation_seconds = seconds

    def evaluated(self, seconds: float) -> None:
        """An evaluation took ``seconds``: they count in the budget but not in the speed of the steps, and the mean
        cost of the evaluations so far is kept in hand for each one still to come.

        Example (10 s of evaluation between the timed steps do not slow the measured speed, and the one left costs
        as much):
            >>> budget = StepBudget(60, cap=1000, skip=1, calibration_steps=10, clock=iter([0.0, 1.0, 16.0]).__next__,
            ...                     evaluations_left=lambda step, planned: 1)
            >>> budget.start(step=0)
            >>> budget.observe(1)
            >>> budget.evaluated(10.0)
            >>> budget.observe(11), budget.steps_per_second  # 10 steps in 16 - 1 - 10 s; 11 + (56.4 - 16 - 10) s * 2
            (71, 2.0)
        """
        self.outside_s += seconds
        self.evaluations_timed += 1
        self.evaluation_seconds = self.outside_s / self.evaluations_timed

    def start(self, step: int, since: float | None = None) -> None:
        """Call when the loop starts, at ``step`` (0, or the step a run resumes from); ``since`` is the ``clock``
        time the run began (its start-up counts in the budget), by default now."""
        self.start_step = step
        self.t0 = self.now() if since is None else since

    def _plan(self, now: float, step: int, speed: float, reserve: float) -> int:
        """The length that fits at ``speed`` from ``step`` at ``now`` (:meth:`now`), keeping ``reserve``, the final
        grid (:attr:`final_seconds`) and the evaluations to come in hand: the longest plan whose own evaluations (with
        ``--eval_steps`` their number grows with the length) still leave time for its steps; at least one more
        step."""
        elapsed = now + self.outside_s - self.t0  # the evaluations so far count in the budget

        def plan(reserved_s: float) -> int:
            return plan_steps(self.budget_s, elapsed, step, speed, self.cap, reserve, reserved_s + self.final_seconds)

        if self.evaluations_left is None:
            return plan(0.0)

        def fits(length: int) -> bool:
            return plan(self.evaluations_left(step, length) * self.evaluation_seconds) >= length

        low, high = step + 1, plan(0.0)  # fits(low) or nothing does; high: no evaluations at all
        if not fits(low):
            return low
        while low < high:  # fits() holds up to some length and fails beyond it
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fits(middle) else (low, middle - 1)
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
        check (the first check: since the timing began), validation grids and checkpoints included and evaluations
        not, keeping :data:`FINAL_RESERVE_FRACTION`, the final grid and the evaluations to come in hand; returns it
        if it differs from the current plan by more than :data:`REPLAN_TOLERANCE`, else ``None``.

        Example (planned 111 steps at 2 steps/s; then the machine slows to 1 step/s):
            >>> budget = StepBudget(60, cap=1000, skip=3, calibration_steps=10, clock=iter([0.0, 2.0, 7.0]).__next__)
            >>> budget.start(step=0)
            >>> [budget.observe(step) for step in range(1, 14)][-1]
            111
            >>> budget.clock = iter([7.0 + 15 * 1.0]).__next__  # steps 14-28 took 1 s each
            >>> [budget.observe(step) for step in range(14, 29)][-1]  # 28 + (60 * 0.99 - 22) s * 25 / 20 s
            74
            >>> budget.replans
            [(28, 74)]
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
