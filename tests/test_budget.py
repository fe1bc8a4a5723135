"""The time budget: planning with a fake clock, the LR schedule rebuilt for the plan, and a run that records it."""

import json
import math
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from train_helpers import FAST, TRAIN, run_train, train_env

from hfddpm import build_unet
from hfddpm.training import TrainConfig, TrainingEngine, build_scheduler, periodic_eval
from hfddpm.training.budget import (
    CALIBRATION_STEPS,
    FINAL_RESERVE_FRACTION,
    REPLAN_AT,
    RESERVE_FRACTION,
    SKIPPED_STEPS,
    StepBudget,
    plan_steps,
)
from hfddpm.training.checkpoint import read_training_state


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _simulate(budget_s, step_s, *, cap=1800, startup_s=5.0):
    clock = FakeClock()
    budget = StepBudget(budget_s, cap=cap, clock=clock)
    budget.start(0)
    step, planned = 0, None
    while planned is None:
        clock.now += startup_s if step < budget.skip else step_s
        step += 1
        planned = budget.observe(step)
    return budget, planned, clock.now


@pytest.mark.parametrize("step_s", [0.05, 0.25, 0.8, 2.5])
def test_the_plan_fits_the_budget_at_any_speed(step_s):
    budget, planned, now = _simulate(480, step_s)
    assert budget.steps_per_second == pytest.approx(1 / step_s)
    finish = now + (planned - budget.plan_step) * step_s
    if planned < 1800:
        # ends inside the budget, with the reserve kept for checkpoints and saving, and no more than a step early
        assert finish <= 480 * (1 - RESERVE_FRACTION) + 1e-9
        assert finish > 480 * (1 - RESERVE_FRACTION) - step_s
    else:  # fast machine: the recipe's full length, well inside the budget
        assert finish < 480


def test_plan_steps_closed_form_and_bounds():
    assert plan_steps(480, 20, 20, 2.0, cap=1800) == 20 + int((480 * (1 - RESERVE_FRACTION) - 20) * 2.0)
    assert plan_steps(480, 20, 20, 100.0, cap=1800) == 1800  # capped at the recipe's length
    assert plan_steps(10, 50, 23, 1.0, cap=1800) == 24  # the budget is gone already: one more step, then save
    with pytest.raises(ValueError, match="budget_s must be > 0"):
        StepBudget(0, cap=10)


def test_the_plan_is_made_once_after_the_calibration_steps():
    clock = FakeClock()
    budget = StepBudget(100, cap=500, skip=2, calibration_steps=4, clock=clock)
    budget.start(10)  # a resumed run counts from its own first step
    results = []
    for step in range(11, 20):
        clock.now += 1.0
        results.append(budget.observe(step))
    assert results[:5] == [None] * 5 and results[5] is not None and results[6:] == [None] * 3
    assert budget.plan_step == 16 and budget.steps_per_second == pytest.approx(1.0)


def test_set_total_steps_gives_the_schedule_of_that_length():
    config = TrainConfig(preset="tiny", lr_warmup_steps=5, max_train_steps=None).validate().with_recipe()
    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    engine = TrainingEngine(config, unet, build_scheduler(config), Accelerator(cpu=True), max_train_steps=1800)
    for _ in range(3):
        engine.optimizer.step()
        engine.lr_scheduler.step()
    engine.set_total_steps(40)
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.learning_rate)
    reference = get_scheduler("cosine", optimizer=probe, num_warmup_steps=5, num_training_steps=40)
    for step in range(3, 40):
        reference_lr = config.learning_rate * reference.lr_lambdas[0](step)
        assert engine.lr_scheduler.scheduler.lr_lambdas[0](step) * config.learning_rate == pytest.approx(reference_lr)
    engine.lr_scheduler.step()
    assert engine.optimizer.param_groups[0]["lr"] == pytest.approx(config.learning_rate * reference.lr_lambdas[0](4))


def test_a_budget_run_records_its_plan_and_explicit_steps_turn_it_off(tmp_path):
    out = tmp_path / "out"
    result = run_train(
        ["--output_dir", str(out), "--max_train_minutes", "0.05", "--checkpointing_steps", "0"], tmp_path
    )
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["max_train_minutes"] == 0.05 and metrics["steps"] == metrics["planned_steps"] >= 24
    # the whole run's time, start-up and final grid included, in train_metrics.json and the last line of the log
    assert metrics["run_time_s"] > metrics["wall_time_s"]
    assert f"({metrics['run_time_s']:.0f} s from the start, of a 0.05-minute budget)" in result.stderr
    saved = json.loads((out / "training_config.json").read_text())
    assert saved["resolved"]["max_train_steps"] == metrics["steps"]
    explicit = tmp_path / "explicit"
    run_train(["--output_dir", str(explicit), "--max_train_steps", "3", "--max_train_minutes", "0.05"], tmp_path)
    metrics = json.loads((explicit / "train_metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["max_train_minutes"] is None


def test_the_budget_counts_from_the_start_the_script_passes(tmp_path):
    # training/train.py passes the time it started (before importing the library) to train(); a start 1000 s ago
    # leaves nothing of a 1-minute budget: the plan is one step after the timed ones, and the run says so
    out = tmp_path / "out"
    code = (
        "import sys, time, importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('script', {str(TRAIN)!r})\n"
        "script = importlib.util.module_from_spec(spec); spec.loader.exec_module(script)\n"
        "script.STARTED = time.perf_counter() - 1000\n"
        "script.main(script.parse_args(sys.argv[1:]))\n"
    )
    args = [*FAST, "--output_dir", str(out), "--max_train_minutes", "1", "--checkpointing_steps", "0"]
    result = subprocess.run(
        [sys.executable, "-c", code, *args, "--eval_count", "0"],
        env=train_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == SKIPPED_STEPS + CALIBRATION_STEPS + 1 and metrics["run_time_s"] > 1000
    assert "1-minute budget -> 24 steps" in result.stderr


def _run_to_end(budget_s, step_s_of, *, cap=1800):
    """Simulate a whole run: ``step_s_of(step)`` is the duration of each step; returns the budget, the final
    planned length and the time the last step ended."""
    clock = FakeClock()
    budget = StepBudget(budget_s, cap=cap, clock=clock)
    budget.start(0)
    step, planned = 0, cap
    while step < planned:
        clock.now += step_s_of(step)
        step += 1
        budget.observe(step)
        planned = budget.planned or cap
    return budget, planned, clock.now


def test_a_slowdown_after_the_plan_is_caught_and_the_run_still_ends_on_time():
    # 0.25 s per step while calibrating, then a throttling laptop at 0.4 s: the first plan alone would overrun by 50%
    budget, planned, end = _run_to_end(480, lambda step: 0.25 if step < 40 else 0.4)
    assert budget.replans and planned < budget.replans[0][1] * 2
    assert 480 * (1 - FINAL_RESERVE_FRACTION) - 0.4 * 2 < end <= 480 * (1 - FINAL_RESERVE_FRACTION) + 1e-9


def test_a_slow_calibration_no_longer_costs_the_end_of_the_budget():
    # another job slows steps 3-23 (the ones timed) to 0.45 s; the run itself trains at 0.35 s per step
    budget, planned, end = _run_to_end(480, lambda step: 0.45 if 3 <= step < 23 else 0.35)
    first_plan = plan_steps(480, 3 * 0.35 + 20 * 0.45, 23, 1 / 0.45, cap=1800)
    assert planned > first_plan * 1.2  # the first plan stopped ~130 s early; the checks give those seconds back
    assert 480 * (1 - FINAL_RESERVE_FRACTION) - 0.35 < end <= 480 * (1 - FINAL_RESERVE_FRACTION) + 1e-9


def test_the_plan_is_checked_at_its_shares_and_only_corrected_beyond_the_tolerance():
    budget, planned, _ = _run_to_end(480, lambda step: 0.3)
    # steady speed: the only correction gives back the first plan's reserve for checkpoints (untimed) that never came
    assert len(budget.replans) == 1 and budget._checks_done == len(REPLAN_AT)
    fast, planned, end = _run_to_end(480, lambda step: 0.01)  # a fast machine trains the recipe's length, no more
    assert planned == 1800 and not fast.replans and end < 480


def test_a_speed_change_in_the_last_quarter_is_caught_by_the_late_check():
    # 0.3 s per step, then the machine speeds up to 0.25 s after the check at three quarters: the late check times the
    # new speed and plans the 74 steps more that fill the budget: without it the run ends 18.5 s sooner
    budget, planned, end = _run_to_end(480, lambda step: 0.3 if step < 1200 else 0.25)
    (_, before), (late_step, after) = budget.replans  # the first check gives back the checkpoints' reserve
    assert late_step == math.ceil(REPLAN_AT[-1] * before) > 1200 and after > before
    assert 480 * (1 - FINAL_RESERVE_FRACTION) - 1.0 < end <= 480 * (1 - FINAL_RESERVE_FRACTION) + 1e-9


def test_a_corrected_lr_schedule_is_continuous_ends_at_zero_and_is_rebuilt_from_the_saved_plan():
    config = TrainConfig(preset="tiny", lr_warmup_steps=5, max_train_steps=None).validate().with_recipe()
    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    engine = TrainingEngine(config, unet, build_scheduler(config), Accelerator(cpu=True), max_train_steps=1800)
    engine.set_total_steps(100)
    before = engine.lr_scheduler.scheduler.lr_lambdas[0]
    engine.replan(40, 160)
    engine.replan(100, 130)
    after = engine.lr_scheduler.scheduler.lr_lambdas[0]
    assert [after(k) for k in range(41)] == [before(k) for k in range(41)]  # the steps taken keep their LR
    values = [after(k) for k in range(131)]
    assert all(
        b <= a + 1e-12 for a, b in zip(values[5:], values[6:], strict=False)
    )  # still decaying after the warm-up
    assert max(abs(b - a) for a, b in zip(values[5:], values[6:], strict=False)) < 0.05  # no jump at the corrections
    assert values[-1] == pytest.approx(0.0, abs=1e-12) and values[100] == pytest.approx(before(40 + 60 * 60 / 120))
    rebuilt = TrainingEngine(config, unet, build_scheduler(config), Accelerator(cpu=True), max_train_steps=1800)
    rebuilt.set_lr_plan(json.loads(json.dumps(engine.lr_plan)))  # as read back from a checkpoint
    assert [rebuilt.lr_scheduler.scheduler.lr_lambdas[0](k) for k in range(131)] == values


def test_a_resumed_budget_run_keeps_its_plan_and_its_corrected_lr_schedule(tmp_path):
    out = tmp_path / "out"
    flags = ["--max_train_minutes", "0.05", "--checkpointing_steps", "8", "--checkpoints_total_limit", "0"]
    run_train(["--output_dir", str(out), *flags, "--eval_count", "0"], tmp_path)
    for checkpoint in (out / "checkpoints").iterdir():  # every checkpoint after the plan records it
        state = read_training_state(checkpoint)
        assert state["lr_plan"][-1][1] == (state["max_train_steps"] or 1800)
    # the plan (made at step 23, so checkpoint-24 has it) as if corrected at step 24: 40 steps, then 60
    checkpoint = out / "checkpoints" / "checkpoint-24"
    for later in (out / "checkpoints").iterdir():
        if later != checkpoint:
            shutil.rmtree(later)
    state = read_training_state(checkpoint) | {"max_train_steps": 60, "lr_plan": [[0, 40], [24, 60]]}
    (checkpoint / "training_state.json").write_text(json.dumps(state))
    result = run_train(
        ["--output_dir", str(out), *flags, "--eval_count", "0", "--resume_from_checkpoint", "latest"], tmp_path
    )
    assert "budget ->" not in result.stderr + result.stdout  # no new plan
    assert json.loads((out / "train_metrics.json").read_text())["steps"] == 60
    config = TrainConfig(preset="tiny", lr_warmup_steps=1, max_train_steps=None).validate().with_recipe()
    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    expected = TrainingEngine(config, unet, build_scheduler(config), Accelerator(cpu=True), max_train_steps=60)
    expected.set_lr_plan([(0, 40), (24, 60)])
    for step in (32, 48, 56):
        saved = torch.load(out / "checkpoints" / f"checkpoint-{step}" / "scheduler.bin", weights_only=False)
        assert saved["last_epoch"] == step
        lr = config.learning_rate * expected.lr_scheduler.scheduler.lr_lambdas[0](step)
        assert saved["_last_lr"][0] == pytest.approx(lr, rel=1e-9)


def _every(interval, *, end):
    """``left(step, planned)`` of work due every ``interval`` steps before the end (``end``: and one at the end)."""

    def left(step, planned):
        return len(range(math.ceil(step / interval) * interval, planned, interval)) + end

    return left


def _run_with_side_work(
    budget_s, step_s, eval_s, *, estimate_s, startup_s=0.0, grid_s=0.0, count=4, grid_every=0, ckpt_s=0.0, cap=100000
):
    """Simulate a budget run like the default one: ``startup_s`` before the loop, ``count`` evaluations of ``eval_s``
    each (at the first step past each share 1/count, 2/count, ... of the current plan, the last after the loop), a
    grid of ``grid_s`` and a checkpoint of ``ckpt_s`` every ``grid_every`` steps (the grid also at the end, the
    checkpoint only where due), the budget told ``estimate_s`` and ``grid_s`` before the loop and nothing of the
    checkpoints; returns the budget, the steps trained and when the final grid ended."""
    clock = FakeClock()
    done = []
    budget = StepBudget(budget_s, cap=cap, clock=clock)
    budget.keep("evaluation", lambda step, planned: count - len(done), estimate_s)
    budget.keep("grid", _every(grid_every, end=1) if grid_every else lambda step, planned: 1, grid_s)
    if grid_every:
        budget.keep("checkpoint", lambda step, planned: _every(grid_every, end=0)(step, planned + 1))
    clock.now = startup_s
    budget.start(0, since=0.0)
    step, planned = 0, cap
    while step < planned:
        clock.now += step_s
        step += 1
        budget.observe(step)
        planned = budget.planned or cap
        if grid_every and step % grid_every == 0:
            clock.now += ckpt_s
            budget.spent("checkpoint", ckpt_s)
        if len(done) + 1 < count and step >= math.ceil((len(done) + 1) * planned / count):
            clock.now += eval_s
            budget.spent("evaluation", eval_s)
            done.append(step)
        if grid_every and step % grid_every == 0 and step < planned:
            clock.now += grid_s
            budget.spent("grid", grid_s)
    clock.now += eval_s + grid_s  # the final evaluation and grid
    return budget, step, clock.now


@pytest.mark.parametrize("estimate_factor", [1.0, 0.5, 2.0])
def test_the_evaluations_and_the_start_up_are_paid_inside_the_budget(estimate_factor):
    # the default run on a slow CPU: 20 s to start, 0.5 s per step, 4 evaluations of 25 s and a final grid of 30 s in
    # a 540 s budget; the estimate before the loop half or twice the real cost: the checks correct it once an
    # evaluation is measured
    budget, steps, end = _run_with_side_work(
        540, 0.5, 25.0, estimate_s=25.0 * estimate_factor, startup_s=20.0, grid_s=30.0
    )
    assert budget.work["evaluation"].seconds == 25.0 and budget.work["evaluation"].timed == 3
    assert budget.steps_per_second == pytest.approx(2.0)  # the evaluations are not in the speed of the steps
    # the final grid ends inside the budget, less its reserve for the final save, by at most a step
    assert 540 * (1 - FINAL_RESERVE_FRACTION) - 0.5 < end <= 540 * (1 - FINAL_RESERVE_FRACTION) + 1e-9
    # the steps are what is left after start-up, evaluations and the final grid: (540 * 0.99 - 20 - 100 - 30) s at 2
    # steps/s
    assert steps == math.floor((540 * (1 - FINAL_RESERVE_FRACTION) - 20 - 4 * 25.0 - 30.0) * 2)


def test_grids_and_checkpoints_are_kept_out_of_the_speed_and_paid_inside_the_budget():
    # one thread on a slow CPU: 0.5 s per step, a 20 s grid and a 3 s checkpoint every 100 steps (the checkpoints
    # unknown until the first), 4 evaluations of 20 s, 540 s in all
    budget, steps, end = _run_with_side_work(
        540, 0.5, 20.0, estimate_s=20.0, startup_s=10.0, grid_s=20.0, grid_every=100, ckpt_s=3.0
    )
    assert budget.steps_per_second == pytest.approx(2.0)  # the speed of the steps alone, at every check
    assert budget.work["checkpoint"].seconds == 3.0 and budget.work["grid"].seconds == 20.0

    # the most steps whose start-up, steps, grids (and the final one), checkpoints and evaluations fit 99% of 540 s
    def cost(n):
        return 10 + 0.5 * n + 20 * (len(range(100, n, 100)) + 1) + 3 * (n // 100) + 4 * 20

    fits = max(n for n in range(1, 2000) if cost(n) <= 540 * (1 - FINAL_RESERVE_FRACTION))
    assert steps == fits and end == pytest.approx(cost(fits))


def test_the_final_grid_is_estimated_from_its_images_and_steps():
    # one row per class, guided (the UNet twice per step), or an unguided square of eval_batch_size images
    config = TrainConfig(
        preset="tiny", validation_images_per_class=3, validation_inference_steps=7, validation_guidance_scale=1.5
    ).validate()
    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    engine = TrainingEngine(
        config.with_recipe(), unet, build_scheduler(config), Accelerator(cpu=True), max_train_steps=9
    )
    assert engine.grid_image_steps(num_classes=10) == 10 * 3 * 7 * 2
    rows, cols, labels, guidance = engine.grid_layout(num_classes=0)
    assert labels is None and guidance == 1.0 and rows * cols >= config.eval_batch_size
    assert engine.grid_image_steps(num_classes=0) == rows * cols * 7


def test_the_first_plan_keeps_the_estimated_evaluations_in_hand():
    clock = FakeClock()
    budget = StepBudget(100, cap=1000, skip=1, calibration_steps=10, clock=clock)
    budget.keep("evaluation", lambda s, p: 3, 5.0)
    clock.now = 4.0  # start-up
    budget.start(0, since=0.0)
    for step in range(1, 12):
        clock.now += 1.0
        planned = budget.observe(step)
    # 15 s spent (start-up and 11 steps) at 1 step/s, 3 evaluations of 5 s to come
    assert planned == plan_steps(100, 15.0, 11, 1.0, cap=1000, reserved_s=15.0) == 11 + math.floor(98 - 15 - 15)
    # a measured evaluation replaces the estimate; later estimates do not replace a measurement
    budget.spent("evaluation", 7.0)
    budget.keep("evaluation", lambda s, p: 3, 5.0)
    assert budget.work["evaluation"].seconds == 7.0


def test_with_eval_steps_the_number_of_evaluations_follows_the_plan():
    # --eval_steps 100 (every 100 steps and at the end): a longer plan holds more evaluations, so the plan and the
    # number of evaluations it keeps in hand settle together
    evaluations_left = _every(100, end=1)
    clock = FakeClock()
    budget = StepBudget(1000, cap=100000, skip=1, calibration_steps=10, clock=clock)
    budget.keep("evaluation", evaluations_left, 30.0)
    budget.start(0)
    for step in range(1, 12):
        clock.now += 0.5
        planned = budget.observe(step)
    # 1200 steps hold 12 evaluations (steps 100, ..., 1100 and the end): (980 - 5.5 - 360) s at 2 steps/s leave
    # time for 1240 in all; 1201 would hold 13 (step 1200 too), leaving time for 1180: too few
    assert evaluations_left(11, planned) == 12
    assert planned == 1200


@pytest.mark.parametrize(
    "one, three, per_call, per_step",
    [
        (0.5, 1.1, 0.2, 0.3),  # 2 more steps took 0.6 s: 0.3 s a step, and the 1-step call's other 0.2 s its own cost
        (0.5, 0.45, 0.0, 0.5),  # noise (3 steps faster than 1): no per-call cost, each call charged as steps
        (0.3, 1.5, 0.0, 0.5),  # noise the other way (a step dearer than the 1-step call): the same, the slower rate
    ],
)  # fmt: skip
def test_sampling_is_timed_in_1_and_3_steps_to_part_the_cost_of_a_call_from_that_of_a_step(
    monkeypatch, one, three, per_call, per_step
):
    steps = []
    monkeypatch.setattr(
        periodic_eval, "generate_samples", lambda pipe, n, **kw: steps.append(kw["num_inference_steps"])
    )
    # the untimed first call, then 1 and 3 steps twice: a busy moment slows the first of each pair
    ticks = iter([0.0, 0.25, 1.0, 1.0 + 2 * one, 3.0, 3.0 + three, 4.0, 4.0 + one, 5.0, 5.0 + 1.5 * three])
    engine = SimpleNamespace(pipeline=lambda sampler: None)
    config = SimpleNamespace(eval_batch_size=16)
    cost = periodic_eval.sampling_cost(engine, config, num_classes=10, clock=lambda: next(ticks))
    assert steps == [1, 1, 3, 1, 3]
    assert cost.per_call == pytest.approx(per_call) and cost.per_image_step * 16 == pytest.approx(per_step)
    # an evaluation of 200 images in calls of 16 (13 calls), 20 steps each
    evaluation = SimpleNamespace(eval_num_images=200, eval_inference_steps=20, eval_batch_size=16)
    seconds = periodic_eval.evaluation_seconds(cost, evaluation, rank=0, world_size=1)
    assert seconds == pytest.approx(13 * per_call + 200 * 20 * per_step / 16)


def test_the_run_clock_waits_for_the_device_only_on_a_gpu():
    from hfddpm.training.budget import device_clock

    assert device_clock("cpu") is time.perf_counter  # nothing to wait for


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_run_clock_waits_for_the_gpu():
    from hfddpm.training.budget import device_clock

    clock, done = device_clock("cuda"), torch.cuda.Event()
    for read, waits in ((time.perf_counter, False), (clock, True)):
        torch.cuda._sleep(10**9)  # about half a second of GPU work, queued
        done.record()
        read()
        assert done.query() is waits  # the plain clock reads at once; the run's clock once the work is done
    torch.cuda.synchronize()
