"""Resumable checkpoints: atomic saves, finding the one to resume, and the accelerate hooks that write the UNet and
its EMA as ``save_pretrained`` folders.

A checkpoint ``output_dir/checkpoints/checkpoint-<step>`` holds ``accelerator.save_state`` (optimizer, LR schedule,
RNG states), ``unet/``, ``unet_ema/`` and ``training_state.json`` (step, data positions, image counts and the run's
settings that a resume must keep, :func:`check_resume`).

Example:
    >>> from pathlib import Path
    >>> list_checkpoints(Path("no-such-folder"))
    []
"""

import json
import os
import pickle
import shutil
from pathlib import Path

import torch
from accelerate.utils import load as load_state_file
from diffusers.training_utils import EMAModel
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_FILE = "training_state.json"
# training_state.json's record of the settings a resume must keep (hfddpm.training.config.RESUME_FIELDS)
SETTINGS_KEY = "settings"
# UNet settings a resume may not change, with the flags that decide them (the others: --preset or --unet_config)
MODEL_SETTING_FLAGS = {
    "num_class_embeds": "class-conditional training: --class_conditional, --label_column and the dataset's labels",
    "sample_size": "--resolution",
    "in_channels": "the images' channels, or --vae",
    "out_channels": "the images' channels, or --vae",
}


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are not listed)."""
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in checkpoint_dir.iterdir():
        step = path.name[len(CHECKPOINT_PREFIX) :]
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX) and step.isdigit():
            found.append((int(step), path))
    return [p for _, p in sorted(found)]


def _numbered_step(path: Path) -> int:
    """The step in the name of a numbered checkpoint (one of :func:`list_checkpoints`)."""
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def checkpoint_step(path: Path) -> int:
    """The step checkpoint ``path`` was saved at."""
    return read_training_state(path)["global_step"]


def resolve_resume_path(resume_from_checkpoint: str | None, output_dir: str) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint`` names: ``"latest"`` (None when there is none yet), a checkpoint of
    ``output_dir/checkpoints`` by name (``checkpoint-500``, as diffusers' ``train_unconditional.py`` takes it) or a
    folder.

    Example:
        >>> resolve_resume_path("latest", "no-such-run") is None
        True
    """
    if resume_from_checkpoint is None:
        return None
    checkpoint_dir = Path(output_dir) / "checkpoints"
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(checkpoint_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if len(path.parts) == 1 and (checkpoint_dir / path / TRAINING_STATE_FILE).is_file():
        return checkpoint_dir / path
    if not (path / TRAINING_STATE_FILE).is_file():
        names = [p.name for p in [*list_checkpoints(checkpoint_dir), checkpoint_dir / f"{CHECKPOINT_PREFIX}best"]]
        found = [name for name in names if (checkpoint_dir / name / TRAINING_STATE_FILE).is_file()]
        raise FileNotFoundError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a checkpoint folder (no"
            f" {TRAINING_STATE_FILE}) nor a checkpoint of {checkpoint_dir}"
            + (f" ({', '.join(found)})" if found else " (it has none)")
            + f"; pass 'latest', a checkpoint name such as checkpoint-500 or a folder such as {checkpoint_dir}"
            "/checkpoint-500."
        )
    return path


def earlier_run(output_dir: Path) -> tuple[str | None, bool]:
    """What an earlier run left in ``output_dir`` that a new run would replace (a saved pipeline, checkpoints), in
    words (None when there is neither), and whether it can be resumed (it has checkpoints)."""
    found = []
    if (output_dir / "model_index.json").is_file():
        found.append("a saved pipeline")
    checkpoints = list_checkpoints(output_dir / "checkpoints")
    if checkpoints:
        found.append(f"checkpoints up to {checkpoints[-1].name}")
    return " and ".join(found) or None, bool(checkpoints)


def read_training_state(path: Path) -> dict:
    return json.loads((path / TRAINING_STATE_FILE).read_text())


def damaged_files(path: Path) -> list[str]:
    """The files of checkpoint ``path`` that cannot be read in full (e.g. truncated by a full disk) or are not what
    training writes: the UNet and its EMA as safetensors (a pickle in their place is never opened), accelerate's
    states (``*.bin``, ``*.pkl``) as tensors and numbers only (torch's ``weights_only`` load, as accelerate's)."""
    bad = []
    for file in sorted(path.rglob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    f.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError):
            bad.append(str(file.relative_to(path)))
    for name in ("unet", "unet_ema"):
        if (name == "unet" or (path / name).is_dir()) and not (path / name / SAFETENSORS_WEIGHTS_NAME).is_file():
            bad.append(f"{name}/{SAFETENSORS_WEIGHTS_NAME}")
    for file in sorted([*path.glob("*.bin"), *path.glob("*.pkl")]):
        try:
            load_state_file(file, map_location="cpu", mmap=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError):
            bad.append(file.name)
    if not (path / TRAINING_STATE_FILE).is_file():
        bad.append(TRAINING_STATE_FILE)
    return bad


def check_checkpoint(path: Path) -> None:
    """A ``ValueError`` naming the damaged files of ``path`` and the intact checkpoints beside it, if any is."""
    bad = damaged_files(path)
    if not bad:
        return
    others = [p for p in list_checkpoints(path.parent) if p != path and not damaged_files(p)]
    hint = (
        f"Intact checkpoints: {', '.join(str(p) for p in others)}; resume from one with --resume_from_checkpoint"
        " PATH, or delete the damaged one."
        if others
        else "No other checkpoint is intact: start again without --resume_from_checkpoint."
    )
    raise ValueError(
        f"Checkpoint {path} is damaged: {', '.join(bad)} cannot be read (truncated, or not what training wrote)."
        f" {hint}"
    )


def save_checkpoint(
    accelerator, output_dir: Path, step: int, training_state: dict, total_limit: int, *, name: str | None = None
) -> Path:
    """``accelerator.save_state`` into a temporary folder, renamed to ``checkpoint-<step>`` (or ``checkpoint-<name>``,
    e.g. ``checkpoint-best``) once complete (a kill during the save never leaves a broken checkpoint); older numbered
    ones beyond ``total_limit`` (0: keep all) are removed. Named checkpoints are not listed by
    :func:`list_checkpoints` and never pruned."""
    checkpoint_dir = Path(output_dir) / "checkpoints"
    suffix = name if name is not None else str(step)
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{suffix}"
    tmp = checkpoint_dir / f".tmp-{CHECKPOINT_PREFIX}{suffix}"
    if accelerator.is_main_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for stale in checkpoint_dir.glob(f".tmp-{CHECKPOINT_PREFIX}*"):
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINING_STATE_FILE).write_text(json.dumps(training_state, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        if total_limit and name is None:
            for old in list_checkpoints(checkpoint_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def match_optimizer_layout(optimizer) -> None:
    """Give each parameter's optimizer state (AdamW's moments) the memory layout of the parameter, after a resume.

    The memory format is measured again when a run resumes (``hfddpm.training.step_format``), and a checkpoint's
    moments keep the layout they were saved in (``Optimizer.load_state_dict`` moves dtype and device only): fused
    AdamW refuses moments of another layout on CUDA and updates wrongly with them on a CPU.

    Example:
        >>> conv = torch.nn.Conv2d(2, 4, 3)
        >>> optimizer = torch.optim.AdamW(conv.parameters())
        >>> optimizer.state[conv.weight]["exp_avg"] = torch.zeros(4, 2, 3, 3).to(memory_format=torch.channels_last)
        >>> match_optimizer_layout(optimizer)
        >>> optimizer.state[conv.weight]["exp_avg"].stride() == conv.weight.stride()
        True
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def plain_model(accelerator, model):
    """The module itself under ``accelerator.prepare``'s wrappers and ``torch.compile``, whose parameters (and state
    dict names) are the model's. accelerate unwraps DistributedDataParallel or a compiled module, not a compiled
    module inside DistributedDataParallel (``--compile`` with several processes): that one is taken off here."""
    model = accelerator.unwrap_model(model, keep_torch_compile=False)
    return getattr(model, "_orig_mod", model)


def register_checkpoint_hooks(accelerator, ema: EMAModel | None) -> None:
    """Checkpoints hold the UNet and its EMA as ``save_pretrained`` folders (``unet/``, ``unet_ema/``)."""

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            if ema is not None:
                ema.save_pretrained(os.path.join(output_dir, "unet_ema"))
            for model in models:
                plain_model(accelerator, model).save_pretrained(os.path.join(output_dir, "unet"))
        while weights:
            weights.pop()

    def load_model_hook(models, input_dir):
        # check_resume made sure the checkpoint holds this model (and its EMA, if this run keeps one)
        model = plain_model(accelerator, models.pop())
        model.load_state_dict(load_file(os.path.join(input_dir, "unet", SAFETENSORS_WEIGHTS_NAME)))
        if ema is not None:
            # EMAModel.save_pretrained wrote the averaged weights and, in config.json next to the UNet's settings,
            # the EMA's own state (decay, optimization_step, ...): both are read here, without a UNet built from it
            folder = Path(input_dir) / "unet_ema"
            averaged = load_file(folder / SAFETENSORS_WEIGHTS_NAME)
            config = json.loads((folder / "config.json").read_text())
            state = {key: config[key] for key in ema.state_dict() if key in config}
            shadow = [averaged[name] for name, _ in model.named_parameters()]
            ema.load_state_dict({**state, "shadow_params": shadow})
            ema.to(accelerator.device)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def check_resume(path: Path, *, settings: dict, unet_config, use_ema: bool) -> str | None:
    """A ``ValueError``, before anything is loaded, when checkpoint ``path`` cannot continue the run as it is now set
    up: a resume continues the same run. Refused: a state without data positions (a ``checkpoint-best`` of an older
    hfddpm), another UNet than ``unet_config`` (this run's), no EMA while ``use_ema``, and ``settings`` (this run's
    values of ``hfddpm.training.config.RESUME_FIELDS``) other than those the checkpoint recorded; the message names
    each difference, both values and the ways on. Returns a note to log when the checkpoint records no settings
    (written by an older hfddpm): they are not compared then.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / TRAINING_STATE_FILE).write_text('{"global_step": 4, "metric": "fd_digits", "value": 3.0}')
        >>> check_resume(folder, settings={}, unet_config={}, use_ema=False)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ... cannot be resumed: its training_state.json holds only ['global_step', 'metric', 'value'] ...
    """
    state = read_training_state(path)
    new_run = _new_run_hint(path)
    # 1. a complete state (checkpoint-best of hfddpm <= 2026-11 saved the step and the metric only)
    if "data_positions" not in state:
        raise ValueError(
            f"{path} cannot be resumed: its {TRAINING_STATE_FILE} holds only {sorted(state)} (a checkpoint-best of"
            " an older hfddpm kept the weights, not the data order and counts). Resume from a numbered checkpoint,"
            f" or {new_run}."
        )
    # 2. the same UNet
    saved_model = _json_config(json.loads((path / "unet" / "config.json").read_text()))
    model = _json_config(unet_config)
    differ = [key for key in sorted(saved_model.keys() & model.keys()) if saved_model[key] != model[key]]
    if differ:
        details = "; ".join(
            f"{key} {saved_model[key]!r} -> {model[key]!r}"
            + (f" ({MODEL_SETTING_FLAGS[key]})" if key in MODEL_SETTING_FLAGS else "")
            for key in differ
        )
        raise ValueError(
            f"{path.name} holds another UNet than this run builds (the checkpoint's -> this run's: {details}). A"
            " resume continues the same run: resume"
            f" with the model flags it was trained with (--preset or --unet_config, the same data and labels), or"
            f" {new_run}."
        )
    # 3. an EMA to continue (one that this run does not keep, --no_use_ema, is left unread)
    has_ema = (path / "unet_ema").is_dir()
    if use_ema and not has_ema:
        raise ValueError(
            f"{path.name} was saved without EMA (--no_use_ema), and this run keeps one (--use_ema, the default):"
            f" resume with --no_use_ema, or {new_run}."
        )
    # 4. the settings its optimizer, LR schedule, EMA and RNG states belong to
    saved = state.get(SETTINGS_KEY)
    if saved is None:
        return (
            f"{path.name} records no training settings (written by an older hfddpm): this run's flags are not"
            " compared with it."
        )
    differ = [
        name
        for name, value in settings.items()
        if name in saved and saved[name] != value and not (name.startswith("ema_") and not (use_ema and has_ema))
    ]
    if differ:
        was = " ".join(f"--{name} {saved[name]}" for name in differ)
        now = " ".join(f"--{name} {settings[name]}" for name in differ)
        raise ValueError(
            f"{path.name} was trained with {was}; this run has {now}. A resume continues the same run: the"
            " checkpoint's optimizer, LR schedule, EMA and RNG states belong to the settings it was trained with"
            " (they would override a new value, or train something else than the run began). Resume with"
            f" {was}, or {new_run}."
        )
    return None


def later_checkpoints(output_dir: Path, step: int) -> list[Path]:
    """The numbered checkpoints of ``output_dir`` saved after ``step``: a resume from a checkpoint of that step would
    abandon them (and ``--checkpoints_total_limit`` would prune the new ones first).

    Example:
        >>> later_checkpoints(Path("no-such-run"), 500)
        []
    """
    return [p for p in list_checkpoints(Path(output_dir) / "checkpoints") if _numbered_step(p) > step]


def delete_checkpoints_after(output_dir: Path, step: int) -> list[Path]:
    """Delete the checkpoints of ``output_dir`` saved after ``step`` (the numbered ones and ``checkpoint-best``);
    returns them."""
    checkpoint_dir = Path(output_dir) / "checkpoints"
    best = checkpoint_dir / f"{CHECKPOINT_PREFIX}best"
    later = [p for p in list_checkpoints(checkpoint_dir) if _numbered_step(p) > step]
    if (best / TRAINING_STATE_FILE).is_file() and checkpoint_step(best) > step:
        later.append(best)
    for path in later:
        shutil.rmtree(path)
    return later


def _json_config(config) -> dict:
    """A model config as its config.json holds it (lists, not tuples), without diffusers' private keys."""
    return {k: v for k, v in json.loads(json.dumps(dict(config))).items() if not k.startswith("_")}


def _new_run_hint(path: Path) -> str:
    """The way on when checkpoint ``path`` cannot be resumed as asked: a new run from its run's saved pipeline."""
    run_dir = path.parent.parent
    pipeline = run_dir / "best" if path.name == f"{CHECKPOINT_PREFIX}best" else run_dir
    if (pipeline / "model_index.json").is_file():
        return (
            f"start a new run from its saved pipeline with --pretrained_model_name_or_path {pipeline} and another"
            " --output_dir"
        )
    return (
        "start a new run with another --output_dir (--pretrained_model_name_or_path starts it from a saved pipeline,"
        " which a run writes when it ends)"
    )


def rescale_positions(positions, num_processes: int, streaming: bool) -> list:
    """Data positions of a checkpoint written with another number of processes: map-style datasets continue at the
    same fraction of the epoch, streams restart the epoch of process 0."""
    epoch, offset = positions[0]
    if streaming:
        return [[epoch, 0]] * num_processes
    return [[epoch, offset * len(positions) // num_processes]] * num_processes
