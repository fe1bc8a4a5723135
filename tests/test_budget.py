"""The time budget: planning with a fake clock, the LR schedule rebuilt for the plan, and a run that records it."""

import json

import pytest
import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from train_helpers import run_train

from hfddpm import build_unet
from hfddpm.training import TrainConfig, TrainingEngine, build_scheduler
from hfddpm.training.budget import RESERVE_FRACTION, StepBudget, plan_steps


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
        # ends inside the budget, with the reserve kept for validation and saving, and no more than a step early
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
    run_train(["--output_dir", str(out), "--max_train_minutes", "0.05", "--checkpointing_steps", "0"], tmp_path)
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["max_train_minutes"] == 0.05 and metrics["steps"] == metrics["planned_steps"] >= 24
    saved = json.loads((out / "training_config.json").read_text())
    assert saved["resolved"]["max_train_steps"] == metrics["steps"]
    explicit = tmp_path / "explicit"
    run_train(["--output_dir", str(explicit), "--max_train_steps", "3", "--max_train_minutes", "0.05"], tmp_path)
    metrics = json.loads((explicit / "train_metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["max_train_minutes"] is None
