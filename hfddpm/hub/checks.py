# Copyright 2026 The hfddpm authors. Apache-2.0.
"""Checks that run before an upload, without contacting the Hub: is the folder a loadable pipeline
(``check_pipeline_folder``), are the repository id and a token there (``check_push_settings``).

``push_to_hub`` runs both before it uploads anything; a training run can call ``check_push_settings`` at startup so
that a bad ``--hub_model_id`` or a missing token stops it before it trains, not after.
"""

import json
import os
from pathlib import Path

from diffusers import ModelMixin
from huggingface_hub import constants, get_token
from huggingface_hub.utils import validate_repo_id

from hfddpm.pipelines.pipeline_hfddpm import COMPONENTS, LOCAL_MODULES, LOCAL_PIPELINES, OPTIONAL_COMPONENTS

# Components that are models: their folder holds safetensors weights besides the config.
MODEL_COMPONENTS = tuple(
    name for name, (bases, _) in COMPONENTS.items() if all(issubclass(b, ModelMixin) for b in bases)
)
REQUIRED_COMPONENTS = tuple(name for name in COMPONENTS if name not in OPTIONAL_COMPONENTS)
# The libraries that diffusers loads a component of a pipeline from by name, without code from the folder.
LOADABLE_LIBRARIES = ("diffusers", "transformers")


def check_pipeline_folder(output_dir) -> None:
    """Raise unless ``output_dir`` holds a pipeline that loads: ``model_index.json``, and for each of its non-null
    components a subfolder with its config (``config.json`` or ``*_config.json``), the safetensors weights of models
    (``unet``, ``vae``) and the code of hfddpm's own classes (``pipeline_hfddpm*.py``,
    ``scheduler/scheduling_hfddpm.py``, ``mel/mel_hfddpm.py``). A diffusers pipeline (``DDPMPipeline``,
    ``DiTPipeline``) has the components it names, each from ``LOADABLE_LIBRARIES``, with safetensors weights where
    the folder holds a model's ``config.json``. Only files are looked at; nothing is loaded.

    Example:
        >>> import tempfile
        >>> from hfddpm import HFDDPMPipeline, HFDDPMScheduler, build_unet
        >>> folder = tempfile.mkdtemp()
        >>> unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
        >>> HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler()).save_pretrained(folder)
        >>> check_pipeline_folder(folder)  # complete: no error
        >>> import shutil; shutil.rmtree(f"{folder}/unet")
        >>> check_pipeline_folder(folder)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: ... is not a complete pipeline folder: unet/ is missing ...

    Raises:
        FileNotFoundError: a file is missing; the message names each incomplete component folder.
        ValueError: ``model_index.json`` is not a JSON object, or names a pipeline class from code that is neither
            hfddpm's nor diffusers' (``["my_pipeline", "MyPipeline"]``), or a diffusers pipeline's component that
            diffusers cannot load by itself (a ``DDPMPipeline`` with hfddpm's scheduler).
    """
    root = Path(output_dir)
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(
            f"{root} has no model_index.json: it is not a saved pipeline. Point at a training output folder (or a"
            " folder written by HFDDPMPipeline.save_pretrained)."
        )
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{index_path} is not valid JSON ({err}); save the pipeline again.") from None
    if not isinstance(index, dict):
        raise ValueError(f"{index_path} must hold a JSON object of components, got {type(index).__name__}.")

    # 1. the pipeline's code: hfddpm's ships in the folder (all import pipeline_hfddpm.py), diffusers' in diffusers
    problems = []
    class_name = index.get("_class_name")
    if isinstance(class_name, list) and not hfddpm_pipeline_class(index):
        raise ValueError(
            f"{index_path} names the pipeline {_describe(class_name)}, whose code is not hfddpm's or diffusers': only"
            f" hfddpm's pipelines ({', '.join(f'{m}.py' for m in LOCAL_PIPELINES)}) and diffusers' own (e.g."
            " DDPMPipeline) are pushed. Upload this folder with huggingface_hub.HfApi().upload_folder instead."
        )
    if hfddpm_pipeline_class(index):
        for module in dict.fromkeys((class_name[0], "pipeline_hfddpm")):
            if not (root / f"{module}.py").is_file():
                problems.append(f"{module}.py (the code of {class_name[-1]}) is missing")
    # 2. every component the index names: its folder, config, weights and code
    hfddpm_pipeline = hfddpm_pipeline_class(index) is not None
    for name in REQUIRED_COMPONENTS if hfddpm_pipeline else ():
        if not _is_set(index.get(name)):
            problems.append(f"model_index.json names no {name}")
    for name, entry in index.items():
        if name.startswith("_") or not _is_set(entry):
            continue
        library = entry[0] if isinstance(entry, list) else None
        if not hfddpm_pipeline and library not in LOADABLE_LIBRARIES:
            # e.g. a DDPMPipeline saved with HFDDPMScheduler: diffusers would need hfddpm (or remote code) to load it
            raise ValueError(
                f"{index_path} names {name} = {_describe(entry)}, which diffusers loads only from"
                f" {' or '.join(LOADABLE_LIBRARIES)} for a {pipeline_class_name(index)}: the upload would not load"
                " without hfddpm. Save the model as an hfddpm pipeline, which ships its code (e.g."
                " HFDDPMPipeline(unet=..., scheduler=...).save_pretrained(folder)), or use a diffusers component."
            )
        folder = root / name
        if not folder.is_dir():
            problems.append(f"{name}/ is missing (model_index.json names {name} = {_describe(entry)})")
            continue
        missing = []
        if not [p for p in folder.glob("*config.json") if p.name == "config.json" or p.name.endswith("_config.json")]:
            missing.append("a config (config.json or *_config.json)")
        is_model = name in MODEL_COMPONENTS if hfddpm_pipeline else (folder / "config.json").is_file()
        if is_model and not any(folder.glob("*.safetensors")):
            missing.append("its weights (*.safetensors)")
        module = entry[0] if isinstance(entry, list) else None
        if module in LOCAL_MODULES and not (folder / f"{module}.py").is_file():
            missing.append(f"its code ({module}.py)")
        if missing:
            problems.append(f"{name}/ lacks {' and '.join(missing)}")
    if problems:
        raise FileNotFoundError(
            f"{root} is not a complete pipeline folder: {'; '.join(problems)}. It would not load after the upload;"
            " push the folder that training (or HFDDPMPipeline.save_pretrained) wrote, with all of its component"
            " folders."
        )


def check_repo_id(repo_id) -> None:
    """Raise ``ValueError`` unless ``repo_id`` is a Hub model repository id: ``"namespace/name"``, or ``"name"`` for
    the token owner's namespace (``huggingface_hub``'s rule, checked locally).

    Example:
        >>> check_repo_id("user/hfddpm-mnist")
        >>> check_repo_id("user/my model")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: repo_id='user/my model' is not a Hub repository id ('namespace/name' or 'name'): ...
    """
    try:
        if not isinstance(repo_id, str):
            raise ValueError(f"a repository id is a string, got {type(repo_id).__name__}")
        validate_repo_id(repo_id)
    except ValueError as err:
        raise ValueError(
            f"repo_id={repo_id!r} is not a Hub repository id ('namespace/name' or 'name'): {err}"
        ) from None


# The environment variables huggingface_hub reads a token from, in its order.
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def token_flag_refused_message(flag: str, *, printed_by: str | None = None) -> str:
    """Why a token flag on a command line (``--hub_token`` of train.py, ``--token`` of ``hfddpm push``) is refused,
    and what to do instead; the token itself is never part of it. ``printed_by`` names the launcher that ran this
    command and prints its command line, token included, as the refused run stops (``accelerate launch`` does for
    every process that exits non-zero): the message then says the token is exposed.

    Example:
        >>> token_flag_refused_message("--token")  # doctest: +ELLIPSIS
        '--token puts the token on the command line, where `ps` and the shell history show it: set HF_TOKEN ...'
        >>> token_flag_refused_message("--hub_token", printed_by="accelerate launch")  # doctest: +ELLIPSIS
        '... `accelerate launch` prints this command line, token included, as this run stops: treat the token ...'
    """
    message = (
        f"{flag} puts the token on the command line, where `ps` and the shell history show it: set HF_TOKEN in the"
        " environment or run `hf auth login` instead (the flag is refused, its value was not used)."
    )
    if printed_by:
        message += (
            f" `{printed_by}` prints this command line, token included, as this run stops: treat the token as"
            " exposed and replace it (https://huggingface.co/settings/tokens)."
        )
    return message


def clean_token(token, source: str = "the token argument"):
    """``token`` with surrounding whitespace removed; ``None`` for an empty one (so it counts as not given).

    A token with whitespace, a control character or a non-ASCII character inside (e.g. a line break, pasted from a
    two-line file) is refused with a ``ValueError`` naming ``source`` (where the token came from) and never the
    token: the Hub would refuse it, and the HTTP client's error would show it.

    Example:
        >>> clean_token(" hf_abc\\n")
        'hf_abc'
        >>> clean_token("hf_abc\\ndef", "HF_TOKEN")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: The token from HF_TOKEN contains a line break: ...
    """
    if not isinstance(token, str):
        return token
    token = token.strip()
    problems = (
        ("a line break", lambda c: c in "\r\n"),
        ("whitespace", str.isspace),
        ("a control character", lambda c: not c.isprintable()),
        ("a non-ASCII character", lambda c: not c.isascii()),
    )
    for problem, found in problems:
        if any(found(c) for c in token):
            raise ValueError(
                f"The token from {source} contains {problem}: a Hugging Face token is one line of ASCII letters,"
                " digits and '_'. Copy it again from https://huggingface.co/settings/tokens (one line), then set"
                " HF_TOKEN or run `hf auth login`."
            )
    return token or None


def token_source(token=None, *, token_flag: str | None = None) -> str | None:
    """Where the token of a push comes from, in words (``None``: there is none): the ``token`` argument (named by
    ``token_flag``), else ``HF_TOKEN``, else the saved login (``huggingface_hub.get_token``). The token itself is
    never returned; a malformed one is refused (``clean_token``).

    Raises:
        ValueError: the token has whitespace, a control or non-ASCII character inside; the message names where it
            came from.
    """
    argument = token_flag or "the token argument"
    if clean_token(token, argument) is not None:
        return argument
    variable = next((name for name in TOKEN_VARIABLES if os.environ.get(name)), None)  # the one huggingface_hub reads
    # checked here: huggingface_hub would join the lines of a token with a line break into another token
    if variable is not None and clean_token(os.environ[variable], variable) is not None:
        return variable
    return None if get_token() is None else "the login saved by `hf auth login`"


def no_token_message(repo_id: str, *, token_flag: str | None = None) -> str:
    """What to do when there is no token to push to ``repo_id``; ``token_flag`` names the argument of the Python
    call that takes one (e.g. ``"token="``), if any. A command line takes no token (``token_flag_refused_message``).
    """
    given = f", or pass {token_flag}" if token_flag else ""
    return f"No Hugging Face token to push to {repo_id!r}: set HF_TOKEN or run `hf auth login`{given}."


def check_push_settings(repo_id, token=None, *, token_flag: str | None = None, offline: bool | None = None) -> None:
    """Check, without contacting the Hub, the settings of a later ``push_to_hub``: ``repo_id`` is a repository id
    (``check_repo_id``), a token is available (the ``token`` argument, ``HF_TOKEN`` or the saved login; an empty
    token counts as none, a malformed one is refused, ``clean_token``) and the Hub may be reached (``offline``,
    default ``HF_HUB_OFFLINE``, is not set), so that a run can stop before it trains rather than fail to upload at
    the end. ``token_flag`` names the ``token`` argument in the messages.

    Example:
        >>> check_push_settings("user/hfddpm-mnist", token="hf_xxx", offline=False)  # a run with --push_to_hub
        >>> check_push_settings("user/hfddpm mnist", token="hf_xxx")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: repo_id='user/hfddpm mnist' is not a Hub repository id ('namespace/name' or 'name'): ...
        >>> check_push_settings("user/hfddpm-mnist", token="hf_xxx", offline=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: HF_HUB_OFFLINE is set, so the run could not be pushed to 'user/hfddpm-mnist' at the end: ...

    Raises:
        ValueError: the repository id is not one, there is no token or it is malformed, or the Hub is off; the
            message says which and what to do.
    """
    check_repo_id(repo_id)
    if token_source(token, token_flag=token_flag) is None:
        raise ValueError(no_token_message(repo_id, token_flag=token_flag))
    if constants.HF_HUB_OFFLINE if offline is None else offline:
        raise ValueError(
            f"HF_HUB_OFFLINE is set, so the run could not be pushed to {repo_id!r} at the end: unset it (or set"
            " HF_HUB_OFFLINE=0) to push, or leave out --push_to_hub and push the saved folder later with"
            " `hfddpm push OUTPUT_DIR --repo-id ...`."
        )


def redact_token(text: str, token: str | None) -> str:
    """``text`` with ``token`` replaced by ``hf_***`` in every form an error message may quote it: as is, or escaped
    as in the ``repr`` of a str or of bytes (``'hf_a\\nb'``, ``b'hf_a\\xc3\\xa9'``).

    Example:
        >>> redact_token("Illegal header value b'Bearer hf_ab\\\\ncd'", "hf_ab\\ncd")
        "Illegal header value b'Bearer hf_***'"
    """
    if not token:
        return text
    forms = {
        token,
        repr(token)[1:-1],
        ascii(token)[1:-1],
        repr(token.encode("utf-8", "backslashreplace"))[2:-1],
    }
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "hf_***")
    return text


def link_outside(root, path) -> Path | None:
    """Where ``path`` leads when it is a symbolic link (or lies in a linked folder) whose target is outside the folder
    ``root``; ``None`` for a file of ``root``. A tampered folder's ``unet/notes.txt -> ~/.ssh/id_rsa`` would
    otherwise be uploaded, or a linked ``README.md`` copied into a card.

    Example:
        >>> import os, tempfile
        >>> root, elsewhere = tempfile.mkdtemp(), tempfile.mkdtemp()
        >>> os.symlink(f"{elsewhere}/token", f"{root}/notes.txt")
        >>> link_outside(root, f"{root}/notes.txt") == Path(elsewhere).resolve() / "token"
        True
        >>> print(link_outside(root, f"{root}/README.md"))  # not a link
        None
    """
    target = Path(os.path.realpath(path))
    return None if target.is_relative_to(os.path.realpath(root)) else target


def hfddpm_pipeline_class(index: dict) -> str | None:
    """The name of the hfddpm pipeline class that a ``model_index.json`` (read as a dict) names, whose code ships in
    the folder (``LOCAL_PIPELINES``); ``None`` for any other pipeline, e.g. a plain diffusers ``DDPMPipeline``.

    Example:
        >>> hfddpm_pipeline_class({"_class_name": ["pipeline_hfddpm_audio", "HFDDPMAudioPipeline"]})
        'HFDDPMAudioPipeline'
        >>> print(hfddpm_pipeline_class({"_class_name": "DDPMPipeline"}))
        None
    """
    entry = index.get("_class_name")
    if isinstance(entry, list) and entry and entry[0] in LOCAL_PIPELINES:
        return str(entry[-1])
    return None


def pipeline_class_name(index: dict) -> str:
    """The pipeline class a ``model_index.json`` (read as a dict) names, without its module: ``"DDPMPipeline"`` for
    ``"_class_name": "DDPMPipeline"``, ``"HFDDPMPipeline"`` for ``["pipeline_hfddpm", "HFDDPMPipeline"]``."""
    entry = index.get("_class_name")
    return str(entry[-1] if isinstance(entry, list) and entry else entry)


def named_components(output_dir) -> set[str]:
    """The components the ``model_index.json`` of ``output_dir`` names (entries that are not ``[null, null]``): a
    ``vae/`` or ``mel/`` an earlier save left beside a pipeline that has none is not part of it."""
    index = json.loads((Path(output_dir) / "model_index.json").read_text(encoding="utf-8"))
    return {name for name, entry in index.items() if not name.startswith("_") and _is_set(entry)}


def _is_set(entry) -> bool:
    """Whether a model_index.json entry names a component (``[null, null]`` and ``null`` do not)."""
    if isinstance(entry, list):
        return any(item is not None for item in entry)
    return entry is not None


def _describe(entry) -> str:
    return ".".join(str(item) for item in entry) if isinstance(entry, list) else str(entry)
