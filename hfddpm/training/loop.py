"""``train(config)``: a whole training run with 🤗 accelerate, on one process or many.

Reads top to bottom: processes -> data, model and schedule (:func:`~hfddpm.training.engine.setup`) -> the step's
precision and memory format (measured on GPUs, :mod:`~hfddpm.training.step_format`) and the accelerator -> engine
-> resume -> loop (log, checkpoint, validate) -> save the EMA pipeline, metrics and model card -> push.

Example (a few steps of the tiny preset on the embedded digits)::

    from hfddpm.training import TrainConfig, train
    train(TrainConfig(preset="tiny", max_train_steps=20, output_dir="tiny-run"))
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, broadcast, parse_flag_from_env, set_seed
from tqdm.auto import tqdm

from hfddpm.data import (
    BAD_EXAMPLES_MIN_READ,
    EMBEDDED_DATASET_NAME,
    MAX_NAMED_BAD_EXAMPLES,
    RESIDENT_MAX_BYTES,
    ImageTransform,
    ResidentImageBatches,
    make_train_dataloader,
)
from hfddpm.evaluation import parse_metrics
from hfddpm.training.budget import StepBudget, device_clock, due_every
from hfddpm.training.checkpoint import (
    SETTINGS_KEY,
    check_checkpoint,
    check_resume,
    delete_checkpoints_after,
    later_checkpoints,
    list_checkpoints,
    match_optimizer_layout,
    read_training_state,
    rescale_positions,
    resolve_resume_path,
    save_checkpoint,
)
from hfddpm.training.config import CONFIG_FILE, RECIPE_FIELDS, RESUME_FIELDS, TrainConfig, write_config
from hfddpm.training.engine import TrainingEngine, resolve_max_train_steps, setup
from hfddpm.training.periodic_eval import (
    best_so_far,
    evaluate_ema,
    evaluation_seconds,
    load_history,
    sampling_cost,
    save_history,
)
from hfddpm.training.precision import resolve_mixed_precision, set_cuda_math, train_cuda_math
from hfddpm.training.processes import (
    QUIET_ON_OTHER_PROCESSES,
    cpu_threads_per_process,
    end_training,
    local_processes,
    process_state_kept,
)
from hfddpm.training.step_format import resolve_step_format
from hfddpm.training.trackers import check_trackers, log_grid

logger = get_logger(__name__, log_level="INFO")

TRAIN_METRICS_FILE = "train_metrics.json"
CARD_FILE = "README.md"
# how the messages about a malformed or missing token name TrainConfig(hub_token=...) (a command line takes none)
HUB_TOKEN_ARGUMENT = "TrainConfig.hub_token"


class TrainingError(RuntimeError):
    """A run that cannot go on (diverged, too many broken images); the message says what was kept."""


def check_bad_images(
    bad: int,
    read: int,
    max_fraction: float,
    *,
    min_read: int = BAD_EXAMPLES_MIN_READ,
    examples: list[str] = (),
    audio: bool = False,
) -> None:
    """A ``ValueError`` once more than ``max_fraction`` of at least ``min_read`` images read could not be decoded;
    it names the broken ``examples`` given (the batches' ``bad_examples``: row and path). ``audio``: the examples
    are an audio run's clips.

    Example:
        >>> check_bad_images(3, 10, 0.1, min_read=10, examples=["row 4 (cats/4.png)"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: 3 of the 10 images read could not be decoded (30.0% > --max_bad_image_fraction 0.1), e.g. row 4 ...
    """
    if bad == 0 or read < min_read:
        return
    if bad > max_fraction * read:
        named = f", e.g. {', '.join(examples)}" if examples else ""
        examples_, failed, files = ("audio clips", "read", "audio") if audio else ("images", "decoded", "image")
        raise ValueError(
            f"{bad} of the {read} {examples_} read could not be {failed} ({bad / read:.1%} >"
            f" --max_bad_image_fraction {max_fraction}){named}. Remove or repair the broken {files} files, or raise"
            " --max_bad_image_fraction to skip them."
        )


def choose_recipe(device_type: str, off_device: str | None) -> tuple[str, str]:
    """The recipe of :meth:`TrainConfig.recipe` a run without ``--train_batch_size`` takes, and why: ``"cpu"`` on a
    CPU, ``"gpu"`` on a CUDA device with the data kept on it (``off_device`` is ``None``), else ``"fallback"``.
    ``off_device`` says why the data is not kept on the device (:func:`resident_data`).

    Example:
        >>> choose_recipe("cuda", None)
        ('gpu', 'the data is on the device')
        >>> choose_recipe("cuda", "row 3 (cats/3.png) cannot be decoded")
        ('fallback', 'the data is not kept on the device: row 3 (cats/3.png) cannot be decoded')
        >>> choose_recipe("cpu", "--no_data_on_device"), choose_recipe("mps", None)
        (('cpu', 'this is a CPU'), ('fallback', 'mps is not a CUDA device'))
    """
    if device_type == "cpu":
        return "cpu", "this is a CPU"
    if device_type != "cuda":
        return "fallback", f"{device_type} is not a CUDA device"
    if off_device is not None:
        return "fallback", f"the data is not kept on the device: {off_device}"
    return "gpu", "the data is on the device"


def resident_data(config: TrainConfig, run, device: torch.device | str, max_bytes: int = RESIDENT_MAX_BYTES):
    """Whether the data of ``run`` (:func:`~hfddpm.training.engine.setup`) is kept on ``device``, decided once, before
    the recipe that depends on it: ``(images, labels)`` of a pixel run decoded onto ``device``
    (:meth:`ResidentImageBatches.decode`, up to ``max_bytes``), else ``None``; and why the data is not kept there,
    ``None`` when it is (the decoded images, or the latents that :class:`~hfddpm.latents.LatentBatches` will keep
    there: a latent run encodes later, in the training precision, but the size of its latents is known now).
    ``--no_data_on_device`` keeps either in host memory. Decoding takes time (tens of seconds for 50,000 images):
    :func:`train` calls it after every check that does not depend on the recipe."""
    if not config.data_on_device:
        return None, "--no_data_on_device"
    if run.vae is not None:
        from hfddpm.latents import latent_bytes

        size = latent_bytes(len(run.dataset), run.vae, run.resolution, config.random_flip)
        if size <= max_bytes:
            return None, None
        return None, f"the latents take {size / 2**30:.1f} GiB, more than {max_bytes / 2**30:g} GiB"
    if config.streaming:
        return None, "a streamed dataset (--streaming)"
    channels = run.unet.config.in_channels
    transform = ImageTransform(
        run.resolution, channels, center_crop=config.center_crop, random_flip=config.random_flip
    )
    decoded = ResidentImageBatches.decode(run.dataset, run.columns, transform, device, max_bytes)
    return (None, decoded) if isinstance(decoded, str) else (decoded, None)


def json_safe(value):
    """``value`` with non-finite floats as ``None``: JSON files never hold NaN literals."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def train(config: TrainConfig, *, started: float | None = None) -> Path:
    """Train as ``config`` says and save an ``HFDDPMPipeline`` folder (EMA weights), ``samples/final.png``,
    ``train_metrics.json``, ``training_config.json`` and a model card in ``config.output_dir``; returns that folder.

    ``started`` is the ``time.perf_counter()`` at which the run began, by default now: a time budget counts from it
    (``training/train.py`` passes its own start, so that importing the library counts too).

    Bad input raises ``ValueError``/``FileNotFoundError`` before any training step; an output folder this call
    created is then removed if it holds no file (:func:`remove_empty_folders`). Whether it returns or raises, the
    process is left as it was found (:func:`process_state_kept`), so that a notebook can call it again.
    """
    started = time.perf_counter() if started is None else started
    config.validate()
    created = folders_to_create(config.output_dir)  # what TrainConfig.check_output_dir will create
    with process_state_kept():
        try:
            return _train(config, started)
        except (ValueError, FileNotFoundError):  # bad input; a TrainingError or Ctrl-C keeps the checkpoints
            remove_empty_folders(created)
            raise


def folders_to_create(path: str | Path) -> list[Path]:
    """The folders ``Path(path).mkdir(parents=True)`` would create: ``path`` and its parents up to the first that
    exists, deepest first (none when ``path`` exists).

    Example:
        >>> [folder.name for folder in folders_to_create("no-such-run/samples")]
        ['samples', 'no-such-run']
    """
    path = Path(path).absolute()
    return list(itertools.takewhile(lambda folder: not os.path.lexists(folder), (path, *path.parents)))


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (:func:`folders_to_create`, deepest first) and the empty subfolders of the first, unless the
    first holds a file (or a link) anywhere below it: a refused run leaves no empty output folder behind. Only empty
    folders are ever removed (``os.rmdir``), so several processes may do this at once, or write there meanwhile."""
    if not folders:
        return
    walked = list(os.walk(folders[0]))  # top-down (a folder before its subfolders); errors: a folder already gone
    if any(files or any(os.path.islink(os.path.join(root, d)) for d in dirs) for root, dirs, files in walked):
        return
    for folder in [*(root for root, _, _ in reversed(walked)), *folders[1:]]:
        try:
            os.rmdir(folder)
        except OSError:  # removed by another process, or not empty (any more): what holds it stays
            pass


def _train(config: TrainConfig, started: float) -> Path:
    """:func:`train`'s run (``config`` validated), in a process whose state :func:`process_state_kept` restores
    afterwards."""
    # 1. processes, threads, trackers
    trackers = check_trackers(config.report_to)
    resolve_mixed_precision(config.mixed_precision)  # fp16 on a CPU is refused here, before any file is written
    token_flag = HUB_TOKEN_ARGUMENT if config.hub_token is not None else None
    if config.push_to_hub:  # a bad repository id or a missing token stops the run now, not after training
        from hfddpm.hub import check_push_settings

        repo_id = config.hub_model_id or Path(config.output_dir).name
        check_push_settings(repo_id, config.hub_token, token_flag=token_flag)
    output_dir = config.check_output_dir()
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes == 1:
        # every process would train alone and write the same files
        raise ValueError(
            f"{launched} processes were launched but accelerate set up no distributed training (no GPU?). On CPU"
            " run `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...`."
        )
    if not state.is_main_process:
        for name in QUIET_ON_OTHER_PROCESSES:
            logging.getLogger(name).setLevel(logging.ERROR)
    set_seed(config.seed)  # the same on every process: identical initial weights
    device = state.device
    clock = device_clock(device)  # the run's timings (budget, images/s, pauses) wait for the device's queued work
    if device.type == "cpu":
        torch.set_num_threads(config.cpu_threads or cpu_threads_per_process(local_processes(state.num_processes)))
    if device.type == "cuda":
        set_cuda_math(train_cuda_math(config.allow_tf32))

    # 2. data, model and schedule (every bad input fails here); the checks of the resume and of the evaluations that
    # do not depend on the recipe; then whether the data is kept on the device (a pixel run's images are decoded onto
    # it now, which takes time) and so the recipe, the step's precision and memory format and the recipe's checks
    run = setup(config, main_process_first=state.main_process_first)
    run_settings = run.resolved()  # the noise schedule and prediction type (a pretrained pipeline's, or the flags')
    given = config
    num_examples = len(run.dataset) if not config.streaming else None
    resume_path = resolve_resume_path(config.resume_from_checkpoint, config.output_dir)
    if resume_path is not None:
        # a resume continues the same run: anything that does not fit the checkpoint is refused before it loads;
        # the settings the recipe sets are compared once it is chosen, below
        check_checkpoint(resume_path)
        resumed = read_training_state(resume_path)  # read once: the checks below and the resume itself use it
        resume_step = resumed["global_step"]
        not_recipe = [name for name in RESUME_FIELDS if name not in RECIPE_FIELDS]
        settings = {name: run_settings.get(name, getattr(config, name)) for name in not_recipe}
        note = check_resume(resume_path, settings=settings, unet_config=run.unet.config, use_ema=config.use_ema)
        if note is not None:
            logger.warning(note)
        later = later_checkpoints(output_dir, resume_step)
        if later and not config.overwrite_output_dir:
            raise ValueError(
                f"{resume_path.name} (step {resume_step}) is older than the newest checkpoint of"
                f" {output_dir}, {later[-1].name}: resuming from it would abandon {', '.join(p.name for p in later)}"
                " (and --checkpoints_total_limit would then delete the new checkpoints before them). Resume with"
                " --resume_from_checkpoint latest, or add --overwrite_output_dir to continue from"
                f" {resume_path.name} and delete the later checkpoints."
            )
    # evaluation during training: every --eval_steps, or --eval_count times over a length the time budget plans
    eval_steps = config.eval_steps
    image_channels = (run.vae or run.unet).config.out_channels
    digits_chosen = "digits" in parse_metrics(config.eval_metrics)
    auto_eval = not eval_steps and config.eval_count > 0 and config.uses_time_budget
    # without Inception-v3 the evaluations' FID/KID use the digit classifier's features, which score grey images only
    no_inception = _inception_unavailable(config) if eval_steps or auto_eval else None
    if auto_eval and (
        config.eval_num_images % state.num_processes
        or ((digits_chosen or no_inception is not None) and (image_channels != 1 or run.mel is not None))
    ):
        auto_eval = False  # the default --eval_metrics do not fit this run: only an explicit --eval_steps insists
        logger.info(f"No evaluation during training: --eval_metrics {config.eval_metrics} do not fit this run.")
    if eval_steps and config.eval_num_images % state.num_processes:
        raise ValueError(
            f"--eval_num_images {config.eval_num_images} must be a multiple of the {state.num_processes}"
            " processes (each generates an equal share)."
        )
    if eval_steps and digits_chosen and image_channels != 1:
        raise ValueError(
            f"--eval_metrics {config.eval_metrics} includes digits, which scores grey images, but this model makes"
            f" {image_channels}-channel images; use --eval_metrics fid,kid or dinov2 for colour data."
        )
    if eval_steps:
        _check_audio_metrics(config, run.mel)
        if no_inception is not None:
            _check_inception(config, image_channels, no_inception)
    if (eval_steps or auto_eval) and no_inception is not None:  # said once here; the evaluations do not repeat it
        logger.warning(f"--eval_metrics {config.eval_metrics}: {no_inception.reason} {no_inception.options}")
    decoded, off_device = resident_data(config, run, device)
    recipe_name, recipe_why = choose_recipe(device.type, off_device)
    gpu_recipe, cpu_recipe = recipe_name == "gpu", recipe_name == "cpu"
    recipe = config.recipe(gpu=gpu_recipe, cpu=cpu_recipe)
    config = config.with_recipe(gpu=gpu_recipe, cpu=cpu_recipe)  # batch size, learning rate, warm-up, cadences
    step_format, precision_why = resolve_step_format(config, run, state)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=step_format.mixed_precision,
        log_with=trackers or None,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / config.logging_dir)
        ),
    )
    max_train_steps = resolve_max_train_steps(
        config, num_examples, accelerator.num_processes, recipe_steps=recipe["max_train_steps"]
    )
    budget = None
    if config.uses_time_budget:
        planned = resumed.get("max_train_steps") if resume_path is not None else None
        if planned:  # a resumed run keeps the length it planned
            max_train_steps = planned
        else:
            budget = StepBudget(config.max_train_minutes * 60, cap=max_train_steps, clock=clock)
    # the settings a checkpoint's state belongs to, as this run resolved them: saved with every checkpoint
    settings = {name: run_settings.get(name, getattr(config, name)) for name in RESUME_FIELDS}
    if resume_path is not None:
        # the recipe's settings (the others passed above) and the length: both follow the recipe
        check_resume(resume_path, settings=settings, unet_config=run.unet.config, use_ema=config.use_ema)
        _check_resume_length(config, resume_path, resume_step, max_train_steps, planned_by_budget=budget is not None)
        if _finished(output_dir, resume_step, max_train_steps):
            logger.info(
                f"{output_dir} holds a finished run: {resume_path.name} is at step {resume_step},"
                f" the end of {_length_flag(config, max_train_steps)}; nothing to do. Raise --max_train_steps to"
                " train further, or use another --output_dir for a new run."
            )
            return output_dir

    # 3. the engine: optimizer, LR schedule, EMA
    engine = TrainingEngine(
        config,
        run.unet,
        run.noise_scheduler,
        accelerator,
        max_train_steps=max_train_steps,
        class_conditional=run.class_conditional,
        channels_last=step_format.channels_last,
        vae=run.vae,
        mel=run.mel,
    )

    # 4. resume
    global_step, positions, bad_total, read_total, resumed_images = 0, None, 0, 0, None
    if config.resume_from_checkpoint and resume_path is None:
        logger.warning(f"No checkpoint in {output_dir / 'checkpoints'}; starting a new run.")
    elif resume_path is None and list_checkpoints(output_dir / "checkpoints"):
        # only with --overwrite_output_dir (TrainConfig.check_output_dir refuses otherwise): the earlier run's
        # checkpoints go, so that "latest" and --checkpoints_total_limit see this run's only
        if accelerator.is_main_process:
            shutil.rmtree(output_dir / "checkpoints")
            logger.warning(f"Deleted the earlier run's checkpoints in {output_dir} (--overwrite_output_dir).")
        accelerator.wait_for_everyone()
    if resume_path is not None:
        if config.overwrite_output_dir:  # from an older checkpoint: the later ones belong to an abandoned run
            if accelerator.is_main_process:
                deleted = delete_checkpoints_after(output_dir, resume_step)
                if any(p.name == "checkpoint-best" for p in deleted) and (output_dir / "best").is_dir():
                    shutil.rmtree(output_dir / "best")  # the EMA pipeline of the deleted checkpoint-best
                if deleted:
                    logger.warning(
                        f"Deleted {', '.join(p.name for p in deleted)} of {output_dir / 'checkpoints'}, saved after"
                        f" {resume_path.name} (--overwrite_output_dir): the run continues from {resume_path.name}."
                    )
            accelerator.wait_for_everyone()
        logger.info(f"Resuming from {resume_path}")
        accelerator.load_state(str(resume_path))
        match_optimizer_layout(engine.optimizer)  # the memory format may differ from the checkpoint's
        global_step = resume_step
        positions = resumed["data_positions"]
        resumed_images = resumed.get("images_seen")  # not in checkpoints of hfddpm <= 2026-11
        if config.uses_time_budget and resumed.get("lr_plan") and resumed.get("max_train_steps"):
            engine.set_lr_plan(resumed["lr_plan"])  # the planned length and its corrections, as before the pause
        if accelerator.is_main_process:
            bad_total, read_total = resumed["num_bad_images"], resumed["num_read_images"]
        if resumed["num_processes"] != accelerator.num_processes:
            positions = rescale_positions(positions, accelerator.num_processes, config.streaming)
            logger.warning(
                f"The checkpoint was written by {resumed['num_processes']} processes, this run has"
                f" {accelerator.num_processes}: the data order continues approximately, not exactly."
            )
    start = tuple(positions[accelerator.process_index]) if positions else (0, 0)

    if run.vae is not None:
        dataloader = _latent_batches(run, config, accelerator, start, off_device)
    else:
        dataloader = make_train_dataloader(
            run.dataset,
            run.columns,
            resolution=run.resolution,
            channels=engine.unwrapped.config.in_channels,
            batch_size=config.train_batch_size,
            seed=config.seed,
            center_crop=config.center_crop,
            random_flip=config.random_flip,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            num_workers=config.dataloader_num_workers,
            start=start,
            shuffle_buffer_size=config.shuffle_buffer_size,
            pin_memory=device.type == "cuda",
            decoded=decoded,  # the images decoded onto the device in step 2, if they were
            decode=run.decode,
        )
    resolved = {
        **run.resolved(),
        "max_train_steps": max_train_steps,
        "mixed_precision": accelerator.mixed_precision,
        "num_processes": accelerator.num_processes,
        "device": device.type,
        "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "time_budget_minutes": config.max_train_minutes if config.uses_time_budget else None,
        **{name: getattr(config, name) for name in RECIPE_FIELDS if name != "max_train_steps"},
        "channels_last": step_format.channels_last,
    }
    if accelerator.is_main_process:  # after every check: a refused run leaves an earlier run's files as they were
        write_config(output_dir / CONFIG_FILE, given, resolved)
        flat = {**config.to_dict(), **resolved}
        accelerator.init_trackers("hfddpm", config={k: v for k, v in flat.items() if isinstance(v, (int, float, str))})

    images_per_step = config.train_batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    resumed_step = global_step
    if resumed_images is None:
        resumed_images = global_step * images_per_step

    def images_seen(step: int) -> int:
        """Images trained on up to ``step`` (a resume with another number of processes changes the images/step)."""
        return resumed_images + (step - resumed_step) * images_per_step

    logger.info(
        f"Training {max_train_steps} steps from step {global_step}: {num_examples or 'streaming'} examples,"
        f" {accelerator.num_processes} process(es) x batch {config.train_batch_size} x accumulation"
        f" {config.gradient_accumulation_steps} = {images_per_step} images/step, resolution {run.resolution},"
        f" {run.num_classes or 'no'} classes, {engine.num_parameters:,} parameters"
        + (f", {resolved['cpu_threads']} CPU thread(s) per process;" if resolved["cpu_threads"] else ";")
        + f" {precision_why}."
        + (
            f" A time budget of {config.max_train_minutes:g} minutes sets the number of steps after the first ones."
            if budget
            else ""
        )
    )
    if given.train_batch_size is None:
        name, how = {
            "gpu": ("GPU", ": the recipe's images in larger batches"),
            "cpu": ("CPU", ": the recipe's images in smaller batches, twice the steps at about the same images/s"),
            "fallback": ("Fallback", ""),
        }[recipe_name]
        logger.info(
            f"{name} recipe: batch {config.train_batch_size}, learning rate {config.learning_rate:g}, warm-up"
            f" {config.lr_warmup_steps} steps, {recipe['max_train_steps']} steps, a grid every"
            f" {config.validation_steps} and a checkpoint every {config.checkpointing_steps}{how}"
            f" (--train_batch_size sets your own), since {recipe_why}."
        )
    # the bad-image fraction is judged once this many images were read (or the whole dataset, if smaller)
    min_read = min(BAD_EXAMPLES_MIN_READ, num_examples) if num_examples else BAD_EXAMPLES_MIN_READ

    eval_history = load_history(output_dir, up_to_step=global_step) if eval_steps or auto_eval else []
    evaluations_done = len(eval_history)  # the same on every process (the history is read from disk)

    def evaluation_due(step: int) -> bool:
        """Every --eval_steps; or, for --eval_count, at the first step past each of the shares 1/n, 2/n, ... of the
        run's length (which a time budget may still correct), the last at the end (after the loop)."""
        if auto_eval:
            k = evaluations_done + 1
            return k < config.eval_count and step >= math.ceil(k * max_train_steps / config.eval_count)
        return bool(eval_steps) and step % eval_steps == 0 and step < max_train_steps

    # what a time budget keeps in hand at ``step`` of a run planned to ``planned`` steps: the evaluations, grids and
    # checkpoints still to come (those due at ``step``, before they run, and those at the end included)
    def evaluations_left(step: int, planned: int) -> int:
        if auto_eval:
            return config.eval_count - evaluations_done
        return due_every(eval_steps, step, planned) + 1  # and the final one

    def grids_left(step: int, planned: int) -> int:
        return due_every(config.validation_steps, step, planned) + 1  # and the final one

    def checkpoints_left(step: int, planned: int) -> int:
        return due_every(config.checkpointing_steps, step, planned + 1)  # the last step's too

    eval_seconds = 0.0  # evaluation time: in a time budget, not in the images/s

    def evaluate(step: int) -> bool:
        """Evaluate; with --keep_best save the best state; returns whether to stop early (the same on every
        process)."""
        nonlocal eval_seconds
        start_time = clock()
        results = evaluate_ema(engine, accelerator, config, num_classes=run.num_classes, step=step)
        verdict = torch.zeros(2, device=device)  # (improved, stop)
        if results is not None:
            cost = clock() - start_time
            eval_history.append(json_safe({**results, "images_seen": images_seen(step), "eval_seconds": cost}))
            save_history(output_dir, eval_history, images_per_step)
            shown = {k: v for k, v in results.items() if isinstance(v, float) and not k.endswith("_seconds")}
            accelerator.log({f"eval/{k}": v for k, v in shown.items()}, step=step)
            accelerator.log({"eval/seconds": cost}, step=step)
            logger.info(
                f"Evaluation at step {step}: "
                + ", ".join(f"{k} {v:.4g}" for k, v in shown.items())
                + f" ({cost:.1f} s: sampling {results.get('sampling_seconds', 0):.1f} s, metrics"
                f" {results.get('metrics_seconds', 0):.1f} s; not counted in the images/s)"
            )
            if config.keep_best is not None:
                best, since = best_so_far(eval_history, config.keep_best)
                verdict[0] = float(best["step"] == step)
                verdict[1] = float(bool(config.early_stopping_patience) and since >= config.early_stopping_patience)
        improved, stop = broadcast(verdict, from_process=0).tolist()
        eval_seconds += clock() - start_time
        if improved:  # a complete checkpoint (it can be resumed), and the metric it is the best of
            state = training_state(step) | {"metric": config.keep_best, "value": eval_history[-1][config.keep_best]}
            save_checkpoint(accelerator, output_dir, step, state, 0, name="best")
            if accelerator.is_main_process:
                engine.pipeline().save_pretrained(output_dir / "best")
                logger.info(f"New best {config.keep_best} {state['value']:.4g} at step {step}: saved best/")
        if stop:
            logger.info(
                f"Early stopping at step {step}: {config.keep_best} did not improve beyond the noise (its 95%"
                f" intervals) in {config.early_stopping_patience} evaluations."
            )
        return bool(stop)

    def training_state(step: int) -> dict:
        """A checkpoint's training_state.json at ``step`` (every process takes part: positions and counts are
        gathered)."""
        all_positions = accelerator.gather(position.to(device)[None]).cpu().tolist()
        counts = accelerator.reduce(torch.tensor([bad_local, read_local], device=device), reduction="sum")
        return {
            "global_step": step,
            "data_positions": all_positions,
            "num_processes": accelerator.num_processes,
            "num_bad_images": bad_total + int(counts[0]),
            "num_read_images": read_total + int(counts[1]),
            "images_seen": images_seen(step),
            # the run's length, once known (a time budget plans it after the first steps)
            "max_train_steps": max_train_steps if budget is None or budget.planned else None,
            "lr_plan": engine.lr_plan,
            SETTINGS_KEY: settings,
        }

    # 5. the loop (a time budget keeps the time of the grids, checkpoints and evaluations to come in hand: sampling
    # calls now estimate the grids and evaluations, the first checkpoint is timed, and each one then measures them)
    if budget is not None:
        cost = sampling_cost(engine, config, num_classes=run.num_classes, clock=clock)
        budget.keep("grid", grids_left, cost.seconds(image_steps=engine.grid_image_steps(run.num_classes), calls=1))
        budget.keep("checkpoint", checkpoints_left)
        if eval_steps or auto_eval:
            rank, world = accelerator.process_index, accelerator.num_processes
            budget.keep("evaluation", evaluations_left, evaluation_seconds(cost, config, rank=rank, world_size=world))
    progress = tqdm(total=max_train_steps, initial=global_step, desc="train", disable=not accelerator.is_main_process)
    if isinstance(dataloader, ResidentImageBatches):
        logger.info(f"The dataset is decoded once and kept on {device} ({dataloader.images.nbytes / 2**20:.0f} MiB).")
    data_iter = iter(dataloader)
    position = torch.tensor(start)
    loss_sum = torch.zeros((), device=device)
    loss_count, bad_local, read_local = 0, 0, 0
    bad_named: list[str] = []  # the first broken examples this process read (row and path), for the stop message
    last = {"loss": None}
    first_step = global_step
    warmup_steps = min(10, max(1, (max_train_steps - first_step) // 5))
    wall_start = clock()
    paused = 0.0  # seconds spent on validation and checkpoints, not counted in images/s
    measure = None  # (time, paused, step) once the warm-up steps are done
    window = (clock(), global_step, 0.0)
    if budget is not None:
        budget.start(global_step, since=started)
    while global_step < max_train_steps:
        for micro in range(config.gradient_accumulation_steps):
            batch = next(data_iter)
            position = batch["position"]
            bad_local += int(batch["num_bad_images"])
            bad_named += batch.get("bad_examples", [])[: MAX_NAMED_BAD_EXAMPLES - len(bad_named)]
            read_local += int(batch["num_read_images"])
            loss_sum += engine.micro_step(batch["pixel_values"], batch.get("class_labels"), global_step, micro)
            loss_count += 1
        global_step += 1
        engine.end_step()
        progress.update(1)
        if config.compile and global_step == first_step + 1:
            logger.info(f"torch.compile ({config.compile_mode}): the first step took {clock() - wall_start:.1f} s")
        decides = budget is not None and budget.decides(global_step)
        if budget is not None:
            budget.observe(global_step)
        planned = budget.planned if decides else None
        if decides and accelerator.num_processes > 1:  # every process trains the length process 0 planned
            planned = budget.planned = int(broadcast(torch.tensor([planned], device=device), from_process=0).item())
        first_plan = planned is not None and global_step == budget.plan_step
        if first_plan or (planned is not None and planned != max_train_steps):
            if first_plan:
                engine.set_total_steps(planned)
            else:  # a correction: the speed since the last check says the plan was off by more than 1%
                logger.info(
                    f"The plan checked at step {global_step}: {budget.steps_per_second * images_per_step:.0f}"
                    f" images/s since step {budget.speed_from} (grids, checkpoints and evaluations"
                    f" apart) -> {planned} steps instead of {max_train_steps}; the rest of the LR schedule now"
                    " spans them"
                )
                engine.replan(global_step, planned)
            max_train_steps = planned
            progress.total = max_train_steps
            progress.refresh()
            resolved["max_train_steps"] = max_train_steps
            if accelerator.is_main_process:
                write_config(output_dir / CONFIG_FILE, given, resolved)
        if first_plan:
            logger.info(
                f"{precision_why};"
                f" {budget.steps_per_second * images_per_step:.0f} images/s; {config.max_train_minutes:g}-minute"
                f" budget -> {max_train_steps} steps"
                + (" (the recipe's full length)" if max_train_steps == budget.cap else "")
                + (
                    f"; evaluating {config.eval_metrics} {evaluations_left(global_step, max_train_steps)} times"
                    f" ({config.eval_num_images} samples, about {budget.work['evaluation'].seconds:.0f} s each, in"
                    " the budget)"
                    if "evaluation" in budget.work
                    else ""
                )
            )
        if global_step == first_step + warmup_steps:
            measure = (clock(), paused, global_step)

        if global_step % config.logging_steps == 0 or global_step == max_train_steps:
            stats = accelerator.reduce(
                torch.stack([loss_sum, torch.tensor(float(loss_count), device=device)]), reduction="sum"
            )
            # with the processes that have read all of their share of a stream once (its size is then known)
            read_once = int(position[0]) >= 1
            counts = accelerator.reduce(torch.tensor([bad_local, read_local, read_once], device=device), "sum")
            bad_total, read_total = bad_total + int(counts[0]), read_total + int(counts[1])
            bad_local = read_local = 0
            if not num_examples and int(counts[2]) == accelerator.num_processes:
                min_read = min(min_read, read_total)  # a stream smaller than BAD_EXAMPLES_MIN_READ: judged now
            now = clock()
            t0, s0, p0 = window
            images_per_second = (global_step - s0) * images_per_step / max(now - t0 - (paused - p0), 1e-9)
            window = (now, global_step, paused)
            last = {
                "loss": float(stats[0] / stats[1]),
                "lr": engine.lr_scheduler.get_last_lr()[0],
                "grad_norm": float(engine.grad_norm),
                "images_per_second": images_per_second,
                "skipped_images": bad_total,
            }
            if engine.ema is not None:
                last["ema_decay"] = engine.ema.cur_decay_value
            _stop_if_diverged(last["loss"], global_step, output_dir)
            loss_sum.zero_()
            loss_count = 0
            accelerator.log(last, step=global_step)
            progress.set_postfix(step=global_step, loss=f"{last['loss']:.4f}", img_s=f"{images_per_second:.0f}")
            if global_step < max_train_steps:  # at the end the pipeline is saved first, then this is reported
                check_bad_images(
                    bad_total, read_total, config.max_bad_image_fraction, min_read=min_read, examples=bad_named,
                    audio=run.mel is not None,
                )  # fmt: skip

        if config.checkpointing_steps and global_step % config.checkpointing_steps == 0:
            t = clock()
            if loss_count:  # never write a diverged state as a checkpoint
                _stop_if_diverged(float(accelerator.reduce(loss_sum, reduction="sum")), global_step, output_dir)
            state = training_state(global_step)
            path = save_checkpoint(accelerator, output_dir, global_step, state, config.checkpoints_total_limit)
            cost = clock() - t
            logger.info(f"Saved {path} ({cost:.1f} s)")
            paused += cost
            if budget is not None:
                budget.spent("checkpoint", cost)

        if evaluation_due(global_step):
            t = clock()
            evaluations_done += 1
            stop = evaluate(global_step)
            cost = clock() - t
            paused += cost
            if budget is not None:
                budget.spent("evaluation", cost)
            if stop:
                break

        if config.validation_steps and global_step % config.validation_steps == 0 and global_step < max_train_steps:
            t = clock()
            if accelerator.is_main_process:
                grid = engine.sample_grid(num_classes=run.num_classes)
                (output_dir / "samples").mkdir(parents=True, exist_ok=True)
                grid.save(output_dir / "samples" / f"step_{global_step:06d}.png")
                log_grid(accelerator, grid, global_step)
            cost = clock() - t
            paused += cost
            if budget is not None and accelerator.is_main_process:  # process 0 draws the grids and plans the run
                budget.spent("grid", cost)
    progress.close()

    # 6. save the EMA pipeline, the final grid, metrics and card
    accelerator.wait_for_everyone()
    wall_time = clock() - wall_start
    eval_in_loop = eval_seconds
    if measure is not None and global_step > measure[2]:
        t_measure = clock() - measure[0] - (paused - measure[1])
        train_images_per_second = (global_step - measure[2]) * images_per_step / max(t_measure, 1e-9)
    else:
        train_images_per_second = None
    if engine.ema is not None:
        # one line per process: equal checksums show that every process holds the same EMA weights
        checksum = sum(p.double().sum().item() for p in engine.ema.shadow_params)
        logger.info(f"EMA checksum of process {accelerator.process_index}: {checksum:.10e}", main_process_only=False)

    if (eval_steps or auto_eval) and not (eval_history and eval_history[-1]["step"] == global_step):
        evaluate(global_step)  # every process takes part; the final point of the curve
    if eval_history:
        logger.info(
            f"Evaluation during training took {eval_seconds:.1f} s in this run ({eval_in_loop:.1f} s of it inside the"
            f" {wall_time:.1f} s training loop, the rest at the end), left out of the images/s"
            + (", counted in the time budget." if budget is not None else ".")
        )
    if accelerator.is_main_process:
        final_unet = engine.ema_unet()
        engine.pipeline(final_unet).save_pretrained(output_dir)
        grid = engine.sample_grid(final_unet, num_classes=run.num_classes)
        (output_dir / "samples").mkdir(parents=True, exist_ok=True)
        grid.save(output_dir / "samples" / "final.png")
        log_grid(accelerator, grid, global_step)
        metrics = {
            "steps": global_step,
            "steps_this_run": global_step - first_step,
            "images_seen": images_seen(global_step),
            "wall_time_s": wall_time,
            "run_time_s": time.perf_counter() - started,  # from the start to the saved pipeline and final grid
            "train_images_per_second": train_images_per_second,
            "max_train_minutes": config.max_train_minutes if config.uses_time_budget else None,
            "planned_steps": max_train_steps,
            "final_loss": last["loss"],
            "skipped_images": bad_total,
            "num_processes": accelerator.num_processes,
            "device": device.type,
            "training_config": {**config.to_dict(), **resolved},
        }
        if eval_history:
            metrics["evaluations"] = eval_history
            metrics["eval_seconds"] = eval_seconds
            metrics["eval_seconds_in_loop"] = eval_in_loop  # inside wall_time_s (history and plot included)
        (output_dir / TRAIN_METRICS_FILE).write_text(json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")
        card_config = {
            **metrics["training_config"],
            "wall_time_s": round(wall_time, 1),
            "train_images_per_second": None if train_images_per_second is None else round(train_images_per_second),
        }
        _write_card(output_dir, config, card_config)
        logger.info(
            f"Saved the pipeline to {output_dir}"
            + (
                f" ({metrics['run_time_s']:.0f} s from the start, of a {config.max_train_minutes:g}-minute budget)"
                if budget is not None
                else ""
            )
        )
    # end_training destroys the process group: no process may get there while process 0 still saves
    accelerator.wait_for_everyone()
    engine.release()  # the DDP model goes before the process group (hfddpm.training.processes)
    end_training(accelerator)
    if config.push_to_hub and accelerator.is_main_process:
        from hfddpm.hub import push_to_hub

        repo_id = config.hub_model_id or output_dir.name
        url = push_to_hub(
            output_dir, repo_id, token=config.hub_token, private=config.hub_private_repo, token_flag=token_flag
        )
        logger.info(f"Uploaded to {url}")
    # the fraction of broken images is final now; the finished run is saved before this is reported
    check_bad_images(
        bad_total,
        read_total,
        config.max_bad_image_fraction,
        min_read=min(min_read, read_total or 1),
        examples=bad_named,
        audio=run.mel is not None,
    )
    return output_dir


def _latent_batches(
    run, config: TrainConfig, accelerator: Accelerator, start: tuple[int, int], off_device: str | None
):
    """A latent run's batches: the dataset encoded once (process 0 encodes and caches, the others then read the
    cache), scaled latents on the device, or in host memory for the reason ``off_device`` (:func:`resident_data`:
    above :data:`~hfddpm.data.RESIDENT_MAX_BYTES`, or ``--no_data_on_device``)."""
    from hfddpm.latents import encode_dataset, has_configured_scaling_factor, make_latent_batches

    device = accelerator.device
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
    with accelerator.main_process_first():
        encoded = encode_dataset(
            run.dataset,
            run.columns,
            run.vae,
            resolution=run.resolution,
            random_flip=config.random_flip,
            cache_dir=config.cache_dir,
            device=device,
            dtype=dtype,
            show_progress=accelerator.is_main_process,
        )
    verb = "Encoded the dataset into" if encoded.encoded else "Read the cached latents from"
    logger.info(
        f"{verb} {encoded.path}: {tuple(encoded.latents.shape)} (examples, views, channels, height, width), process"
        f" {accelerator.process_index}.",
        main_process_only=False,
    )
    check_bad_images(
        encoded.num_bad_images,
        len(run.dataset),
        config.max_bad_image_fraction,
        min_read=1,
        examples=encoded.bad_examples,
    )
    if not has_configured_scaling_factor(run.vae):
        # no scaling factor in the autoencoder's config: 1 / std of the latents, recorded in the saved vae/config.json
        run.vae.register_to_config(scaling_factor=1.0 / encoded.latent_std)
        logger.info(f"The autoencoder's config has no scaling_factor; measured 1/std = {1 / encoded.latent_std:.5f}.")
    run.vae.to(device).eval().requires_grad_(False)
    batches = make_latent_batches(
        encoded,
        run.vae,
        batch_size=config.train_batch_size,
        seed=config.seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        start=start,
        device=device,
        max_bytes=RESIDENT_MAX_BYTES if off_device is None else 0,  # as resident_data decided, before the recipe
    )
    size = f"{batches.latents.nbytes / 2**20:.0f} MiB"
    if batches.resident:
        logger.info(f"The scaled latents are kept on {device} ({size}).")
    else:
        logger.info(
            f"The scaled latents ({size}) stay in host memory ({off_device}), and each batch is copied to {device}."
        )
    return batches


def _check_audio_metrics(config: TrainConfig, mel) -> None:
    """Spectrograms are scored by the spoken_digits metrics (made with their settings), images by the others."""

    from hfddpm.evaluation.spoken_digits import check_spectrogram_settings

    chosen = parse_metrics(config.eval_metrics)
    if mel is None and "spoken_digits" in chosen:
        raise ValueError("--eval_metrics spoken_digits scores an audio run's spectrograms; this run trains on images.")
    if mel is not None:
        if "digits" in chosen:
            raise ValueError(
                "--eval_metrics digits scores MNIST-like images, not spectrograms; use --eval_metrics spoken_digits"
                " for an audio run."
            )
        if "spoken_digits" in chosen:
            check_spectrogram_settings(mel.config)


def _inception_unavailable(config: TrainConfig):
    """Why the FID/KID of ``--eval_metrics`` cannot use Inception-v3 in this run (a ``MetricUnavailableError``; the
    evaluations then compute them on the digit classifier's features: ``fid_digits``, ``kid_digits``), or ``None``
    when they can or none is asked."""
    from hfddpm.evaluation import MetricUnavailableError
    from hfddpm.evaluation.inception import find_inception_weights

    if not {"fid", "kid"} & set(parse_metrics(config.eval_metrics)):
        return None
    try:
        # train.py has no flags for them: the weights are read from torch hub's cache, the fallback is always digits
        find_inception_weights(weights_flag=None, fallback_flag=None)
    except MetricUnavailableError as err:
        return err
    return None


def _check_inception(config: TrainConfig, image_channels: int, unavailable) -> None:
    """FID/KID during training without Inception-v3 (``unavailable``, from :func:`_inception_unavailable`) fall back
    to the digit classifier's features, which suit grey images only: refused before training for colour images and
    for a ``--keep_best`` that would then never be computed."""
    if image_channels != 1:
        raise ValueError(
            f"--eval_metrics {config.eval_metrics}: {unavailable.reason} Their fallback during training, the digit"
            f" classifier's features, scores grey images, and this model makes {image_channels}-channel images:"
            " put the Inception weights in place, or evaluate with --eval_metrics dinov2."
        )
    if config.keep_best in ("fid", "kid") and config.keep_best in parse_metrics(config.eval_metrics):
        raise ValueError(
            f"--keep_best {config.keep_best}: {unavailable.reason} The evaluations compute {config.keep_best}_digits"
            f" (digit-classifier features) instead; pass --keep_best {config.keep_best}_digits."
        )


def _length_flag(config: TrainConfig, max_train_steps: int) -> str:
    """What set the run's length, in the user's terms."""
    if config.max_train_steps is not None:
        return f"--max_train_steps {max_train_steps}"
    if config.num_epochs is not None:
        return f"--num_epochs {config.num_epochs} ({max_train_steps} steps)"
    return f"the {max_train_steps} steps the time budget planned"


def _check_resume_length(
    config: TrainConfig, checkpoint: Path, step: int, max_train_steps: int, *, planned_by_budget: bool
) -> None:
    """A ``ValueError`` when the run would end before ``step``, which ``checkpoint`` has already reached."""
    if planned_by_budget or step <= max_train_steps:  # a time budget plans from the checkpoint's step on
        return
    raise ValueError(
        f"{_length_flag(config, max_train_steps)} ends before step {step}, which {checkpoint.name} has already"
        f" trained: a resume continues the run and cannot shorten it. Pass --max_train_steps {step} or more"
        f" ({step}: only save the pipeline), or start a new run with another --output_dir"
        " (--pretrained_model_name_or_path starts it from a saved pipeline)."
    )


def _finished(output_dir: Path, step: int, max_train_steps: int) -> bool:
    """Whether a checkpoint at ``step`` is the end of a run whose pipeline and metrics are already saved."""
    done = step >= max_train_steps
    return done and (output_dir / "model_index.json").is_file() and (output_dir / TRAIN_METRICS_FILE).is_file()


def interrupted_message(output_dir: str | Path) -> str:
    """What an interrupted run (Ctrl-C) kept, and how to go on.

    Example:
        >>> interrupted_message("no-such-run")
        'Interrupted: no checkpoint was written yet (--checkpointing_steps), so training starts again from step 0.'
    """
    kept = list_checkpoints(Path(output_dir) / "checkpoints")
    if not kept:
        return (
            "Interrupted: no checkpoint was written yet (--checkpointing_steps), so training starts again from step 0."
        )
    return (
        f"Interrupted: the newest checkpoint is {kept[-1]}; continue the run from it with the same command and"
        " --resume_from_checkpoint latest."
    )


def _stop_if_diverged(loss: float, step: int, output_dir: Path) -> None:
    if math.isfinite(loss):
        return
    kept = list_checkpoints(output_dir / "checkpoints")
    where = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was written yet"
    raise TrainingError(
        f"The loss became {loss} at step {step}: training diverged and was stopped; {where}, nothing else was"
        " saved. Lower --learning_rate, keep --max_grad_norm > 0, or try --mixed_precision no, then resume with"
        " --resume_from_checkpoint PATH or start again."
    )


def _card_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_card(output_dir: Path, config: TrainConfig, card_config: dict) -> None:
    """Write the model card, unless the existing one was edited or evaluated since training last wrote it. A card
    that hfddpm wrote for another pipeline class than the one saved (``stale_card``, e.g. a ``DDPMPipeline``'s card
    in a folder trained over with --overwrite_output_dir) is moved aside as ``push`` does (``set_aside_stale_card``:
    ``README.stale.md``) and replaced."""
    from hfddpm.hub import write_model_card
    from hfddpm.hub.card import set_aside_stale_card

    card, digest_file = output_dir / CARD_FILE, output_dir / ".hfddpm-card.sha256"
    if card.is_file() and (not digest_file.is_file() or digest_file.read_text().strip() != _card_digest(card)):
        stale = set_aside_stale_card(output_dir)
        if stale is None:
            logger.warning(f"{card} was edited or evaluated since training wrote it; it is kept as it is.")
            return
        logger.warning(stale[1])
    dataset = config.dataset_name or (config.train_data_dir and Path(config.train_data_dir).name)
    write_model_card(
        output_dir,
        training_config=card_config,
        dataset_name=dataset or EMBEDDED_DATASET_NAME,
        sample_grid="samples/final.png",
    )
    digest_file.write_text(_card_digest(card) + "\n")
