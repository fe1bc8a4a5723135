"""Resumable checkpoints: atomic saves, finding the one to resume, and the accelerate hooks that write the UNet and
its EMA as ``save_pretrained`` folders.

A checkpoint ``output_dir/checkpoints/checkpoint-<step>`` holds ``accelerator.save_state`` (optimizer, LR schedule,
RNG states), ``unet/``, ``unet_ema/`` and ``training_state.json`` (step, data positions, image counts).

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

from accelerate.utils import load as load_state_file
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors import SafetensorError, safe_open

from hfddpm.pipelines.pipeline_hfddpm import load_model

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_FILE = "training_state.json"


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


def resolve_resume_path(resume_from_checkpoint: str | None, output_dir: str) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint`` names: ``"latest"`` (None when there is none yet) or a folder."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(Path(output_dir) / "checkpoints")
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not (path / TRAINING_STATE_FILE).is_file():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {str(path)!r} is not a checkpoint folder (no {TRAINING_STATE_FILE}); pass"
            f" 'latest' or a folder such as {output_dir}/checkpoints/checkpoint-500."
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


def register_checkpoint_hooks(accelerator, ema: EMAModel | None) -> None:
    """Checkpoints hold the UNet and its EMA as ``save_pretrained`` folders (``unet/``, ``unet_ema/``)."""

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            if ema is not None:
                ema.save_pretrained(os.path.join(output_dir, "unet_ema"))
            for model in models:
                accelerator.unwrap_model(model, keep_torch_compile=False).save_pretrained(
                    os.path.join(output_dir, "unet")
                )
        while weights:
            weights.pop()

    def load_model_hook(models, input_dir):
        if ema is not None:
            # EMAModel.save_pretrained wrote the averaged weights and, in config.json, the EMA's own state
            folder = os.path.join(input_dir, "unet_ema")
            averaged = load_model(UNet2DModel, folder)
            config = UNet2DModel.load_config(folder)
            state = {key: config[key] for key in ema.state_dict() if key in config}
            ema.load_state_dict({**state, "shadow_params": [p.detach() for p in averaged.parameters()]})
            ema.to(accelerator.device)
        while models:
            model = accelerator.unwrap_model(models.pop(), keep_torch_compile=False)
            model.load_state_dict(load_model(UNet2DModel, input_dir, subfolder="unet").state_dict())

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def rescale_positions(positions, num_processes: int, streaming: bool) -> list:
    """Data positions of a checkpoint written with another number of processes: map-style datasets continue at the
    same fraction of the epoch, streams restart the epoch of process 0."""
    epoch, offset = positions[0]
    if streaming:
        return [[epoch, 0]] * num_processes
    return [[epoch, offset * len(positions) // num_processes]] * num_processes
