# Copyright 2026 The hfddpm authors. Apache-2.0.
"""Upload a saved pipeline folder to the Hub: only the pipeline files and its card, with a clear retry on failure.

The files that make a pipeline are ``PIPELINE_FILES`` of ``hfddpm/pipelines/pipeline_hfddpm.py`` (what
``HFDDPMPipeline.from_pretrained`` downloads), plus ``README.md``, the sample grid and the images the card links to.
A diffusers pipeline (``DDPMPipeline``) is its ``model_index.json`` and component folders, without hfddpm's code.
A card hfddpm wrote for another pipeline than the folder holds (``stale_card``) is replaced; any other card is kept.
Only the folder's own files go up: a file that is a symbolic link to outside the folder is refused before anything is
sent (a link inside the folder is uploaded as the file it points to).
"""

import json
import logging
import re
import shlex
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, ModelCard, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects

from hfddpm.evaluation.registry import METRIC_REGISTRY
from hfddpm.files import write_file
from hfddpm.pipelines.pipeline_hfddpm import LOCAL_MODULES, PIPELINE_FILES

from .card import (
    REPO_MARKER,
    SAMPLE_GRID,
    format_value,
    read_json,
    read_metrics,
    set_aside_stale_card,
    stale_card,
    write_model_card,
)
from .checks import (
    check_pipeline_folder,
    check_repo_id,
    clean_token,
    hfddpm_pipeline_class,
    link_outside,
    named_components,
    no_token_message,
    pipeline_class_name,
    redact_token,
    token_source,
)

logger = logging.getLogger(__name__)

# Never uploaded, even inside a pipeline folder: training state and pickled torch files (hfddpm saves safetensors).
IGNORE_PATTERNS = [
    "checkpoints/*",
    "checkpoint-*",
    "logs/*",
    "*optimizer*",
    "random_states*",
    "*/random_states*",
    "*.pkl",
    "*.pt",
    "*.pth",
    "*.bin",
    "*.ckpt",
    "*__pycache__*",
    "*.pyc",
    ".*",
    "*/.*",
]


class PushToHubError(RuntimeError):
    """An upload to the Hub failed; the local folder is unchanged and ``retry_command`` pushes it again."""

    def __init__(self, message: str, *, repo_id: str, retry_command: str, status_code: int | None = None):
        super().__init__(message)
        self.repo_id = repo_id
        self.retry_command = retry_command
        self.status_code = status_code


def pipeline_files(output_dir) -> list[str]:
    """Files of ``output_dir`` that ``push_to_hub`` uploads (paths relative to it, sorted).

    The files matching ``PIPELINE_FILES`` (``model_index.json``, ``pipeline_hfddpm*.py``, ``unet/*``,
    ``scheduler/*``) for an hfddpm pipeline, ``model_index.json`` and the component folders for a diffusers one
    (``_allow_patterns``), ``README.md``, ``samples/final.png`` and the images the card links to, minus
    ``IGNORE_PATTERNS``. Component folders and hfddpm code that ``model_index.json`` does not name (left by an
    earlier save of another pipeline) are left out. A folder that is not a complete pipeline is refused
    (``check_pipeline_folder``), and so is one where a file to upload is a symbolic link to outside the folder
    (``ValueError`` naming each file and its target; ``link_outside``): only the folder's own files are uploaded.
    """
    root = Path(output_dir)
    check_pipeline_folder(root)
    index = read_json(root / "model_index.json")
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    files = set(filter_repo_objects(files, allow_patterns=_allow_patterns(index)))
    named = named_components(root)  # not a vae/ an earlier save of a latent model left behind
    files = {f for f in files if "/" not in f or f.split("/", 1)[0] in named}
    files -= _unused_component_code(index)  # not a scheduler/scheduling_hfddpm.py a DDPMScheduler was saved over
    readme = root / "README.md"
    if readme.is_file():
        files.add("README.md")
        for link in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", readme.read_text(encoding="utf-8")):
            if (
                "://" not in link
                and (root / link).is_file()
                and (root / link).resolve().is_relative_to(root.resolve())
            ):
                files.add(Path(link).as_posix())
    if (root / SAMPLE_GRID).is_file():
        files.add(SAMPLE_GRID)
    files = sorted(filter_repo_objects(files, ignore_patterns=IGNORE_PATTERNS))
    outside = {name: link_outside(root, root / name) for name in files}
    outside = [f"{name} -> {target}" for name, target in outside.items() if target is not None]
    if outside:
        raise ValueError(
            f"{root} links to files outside it: {'; '.join(outside)}. Only the folder's own files are uploaded:"
            " replace each link with a copy of the file it points to (or remove it), then push again."
        )
    return files


def default_commit_message(output_dir) -> tuple[str, str]:
    """Commit title and description carrying the training step and the metrics of ``output_dir``.

    Metrics come from ``train_metrics.json`` (``steps``, ``final_loss``), ``eval_metrics.json``/``metrics.json`` and
    the model card's model-index (where ``update_card_metrics`` puts evaluation results; not a card of another
    pipeline, ``stale_card``); the title names the scores of ``METRIC_REGISTRY``.
    """
    train, evaluation = read_metrics(output_dir)
    readme = Path(output_dir) / "README.md"
    if readme.is_file() and stale_card(output_dir) is None:
        card_results = ModelCard.load(readme, ignore_metadata_errors=True).data.eval_results or []
        evaluation = {**{r.metric_type: r.metric_value for r in card_results}, **evaluation}
    step = train.get("steps")
    index = read_json(Path(output_dir) / "model_index.json")
    plain = isinstance(index, dict) and not hfddpm_pipeline_class(index)  # a diffusers pipeline, e.g. DDPMPipeline
    title = f"Upload diffusers {pipeline_class_name(index)}" if plain else "Upload hfddpm pipeline"
    title += f" at step {step}" if step is not None else ""
    headline = {"final_loss": train["final_loss"]} if "final_loss" in train else {}
    for key, value in evaluation.items():
        metric = METRIC_REGISTRY.get(key)
        if metric is not None and metric.higher_is_better is not None:
            headline[key] = value
    numbers = [f"{k}={format_value(k, v)}" for k, v in headline.items() if isinstance(v, (int, float))]
    if numbers:
        title += ": " + ", ".join(numbers[:4])
    lines = []
    for name, values in (("Training", train), ("Evaluation", evaluation)):
        if values:
            lines.append(f"{name} metrics:")
            lines += [f"- {k}: {format_value(k, v)}" for k, v in values.items()]
    return title, "\n".join(lines)


def push_to_hub(
    output_dir, repo_id: str, *, token=None, private: bool = False, commit_message=None, token_flag: str | None = None
) -> str:
    """Upload the pipeline in ``output_dir`` to the Hub model repository ``repo_id`` (created when missing).

    Pushing again updates the repository in place: unchanged files are skipped and pipeline files that no longer
    exist locally (e.g. a component renamed since the last push) are deleted; other files in the repository stay.
    A missing ``README.md`` is written with ``write_model_card`` from the folder's ``training_config.json``, configs
    and metrics; the repository id in the card's usage snippets is set to ``repo_id``. An existing card is kept,
    except one that hfddpm wrote for another pipeline class than the folder now holds (``stale_card``: e.g. a
    diffusers ``DDPMPipeline`` saved over an hfddpm pipeline): it is moved to ``README.stale.md`` (not uploaded;
    ``README.stale-2.md``, ... when taken: ``set_aside_stale_card``), a card of the folder's pipeline is written in
    its place, and a warning says so.

    Args:
        output_dir: a training output folder or a ``save_pretrained`` folder.
        repo_id: ``"namespace/name"`` (or ``"name"`` for the token owner's namespace).
        token: a Hub token with write access; defaults to ``HF_TOKEN`` or the login saved by ``hf auth login`` (an
            empty token counts as none; one with whitespace, control or non-ASCII characters inside is refused).
        private: create the repository as private (an existing repository keeps its visibility).
        commit_message: defaults to the training step and metrics read from ``train_metrics.json``/``metrics.json``.
        token_flag: how the messages about a missing, malformed or refused token name the ``token`` argument
            (e.g. ``"hub_token="``); default: "the token argument". No command line takes a token (``hfddpm push``
            and train.py refuse one: ``token_flag_refused_message``).

    Returns:
        The URL of the repository.

    Raises:
        FileNotFoundError: ``output_dir`` is not a complete pipeline folder (``check_pipeline_folder``); nothing is
            uploaded.
        ValueError: ``repo_id`` is not a repository id (``check_repo_id``), the token is malformed
            (``clean_token``), or a file to upload links to outside ``output_dir`` (``pipeline_files``).
        PushToHubError: there is no token, or the Hub could not be reached or refused the upload (the message names
            the repository, the HTTP status and the ``hfddpm push`` command that retries); the local folder is left as
            it was.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"output_dir {output_dir} does not exist; train or save a pipeline there first.")
    # 1. local checks, before anything is sent: a loadable pipeline of the folder's own files, a repository id, a
    # well-formed token
    pipeline_files(output_dir)
    check_repo_id(repo_id)
    retry = f"hfddpm push {shlex.quote(str(output_dir))} --repo-id {shlex.quote(repo_id)}"
    retry += " --private" if private else ""
    source = token_source(token, token_flag=token_flag)
    token = clean_token(token)
    if source is None:
        raise PushToHubError(
            f"{no_token_message(repo_id, token_flag=token_flag)} Then retry with:\n    {retry}",
            repo_id=repo_id,
            retry_command=retry,
        )
    # 2. the commit: message and description carry the training step and metrics
    if commit_message is None:
        commit_message, commit_description = default_commit_message(output_dir)
    else:
        commit_description = None

    # 3. create the repository, point the card at it, upload the pipeline files and delete stale ones
    api = HfApi(token=token)
    readme = output_dir / "README.md"
    readme_before = readme.read_bytes() if readme.is_file() else None
    set_aside = None
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        repo_id = repo_url.repo_id
        # a card hfddpm wrote for another pipeline is moved aside; _prepare_card writes the card of what it holds
        set_aside, replaced = set_aside_stale_card(output_dir, pushed=True) or (None, None)
        _prepare_card(output_dir, repo_id)
        files = pipeline_files(output_dir)
        remote = api.list_repo_files(repo_id)
        patterns = [*PIPELINE_FILES, *_allow_patterns(read_json(output_dir / "model_index.json"))]
        stale = [path for path in remote if _is_pipeline_path(path, patterns) and path not in files]
        logger.info(f"Uploading {len(files)} files of {output_dir} to {repo_id} ({len(stale)} stale files to delete)")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=output_dir,
            allow_patterns=[_escape_pattern(p) for p in files],
            ignore_patterns=list(IGNORE_PATTERNS),
            delete_patterns=[_escape_pattern(p) for p in stale] or None,
            commit_message=commit_message,
            commit_description=commit_description,
        )
    except (httpx2.HTTPError, OfflineModeIsEnabled) as err:
        _restore(readme, readme_before, set_aside)
        raise _push_error(err, output_dir, repo_id, retry, api.endpoint, source, token or get_token()) from None
    except BaseException:
        _restore(readme, readme_before, set_aside)
        raise
    if set_aside:
        logger.warning(replaced)
    return str(repo_url)


def _is_pipeline_path(path: str, patterns: list[str]) -> bool:
    """Whether a file of the repository belongs to the pipeline that push_to_hub manages, whose files match
    ``patterns`` (else it is left alone)."""
    return path == SAMPLE_GRID or bool(list(filter_repo_objects([path], allow_patterns=patterns)))


def _allow_patterns(index: dict) -> list[str]:
    """The files of a pipeline, as Hub allow-patterns: ``PIPELINE_FILES`` for hfddpm's pipelines; for a diffusers
    pipeline, whose code is in diffusers, its ``model_index.json`` and the folders of the components it names."""
    if hfddpm_pipeline_class(index):
        return list(PIPELINE_FILES)
    return ["model_index.json", *(f"{name}/*" for name in index if not name.startswith("_"))]


def _unused_component_code(index: dict) -> set[str]:
    """The code files of hfddpm's components (``LOCAL_MODULES``, e.g. ``scheduler/scheduling_hfddpm.py``) that
    ``model_index.json`` does not name as the component's module: an earlier save left them, the pipeline does not
    use them."""
    unused = set()
    for name, entry in index.items():
        if name.startswith("_"):
            continue
        module = entry[0] if isinstance(entry, list) and entry else None
        module = module.rsplit(".", 1)[-1] if isinstance(module, str) else None
        unused |= {f"{name}/{stem}.py" for stem in LOCAL_MODULES if stem != module}
    return unused


def _escape_pattern(path: str) -> str:
    """An fnmatch pattern that matches exactly ``path``."""
    return re.sub(r"([*?\[])", r"[\1]", path)


def _prepare_card(output_dir: Path, repo_id: str) -> None:
    """Write a card if there is none, and point the usage snippets of an hfddpm card at ``repo_id``."""
    readme = output_dir / "README.md"
    if not readme.is_file():
        _, evaluation = read_metrics(output_dir)
        write_model_card(output_dir, metrics=evaluation)
    text = readme.read_text(encoding="utf-8")
    marker = REPO_MARKER.search(text)
    if marker is None or json.loads(marker.group(1)) == repo_id:
        return
    old, new = marker.group(1), json.dumps(repo_id)
    card = ModelCard(text)
    card.text = card.text.replace(marker.group(0), f"<!-- hfddpm:repo_id {new} -->")
    card.text = card.text.replace(f"from_pretrained({old}", f"from_pretrained({new}")
    if card.data.eval_results:
        card.data.model_name = repo_id.split("/")[-1]
    write_file(readme, str(card))


def _restore(path: Path, content: bytes | None, set_aside: Path | None = None) -> None:
    """Put back ``path`` as it was: the stale card moved to ``set_aside`` (``set_aside_stale_card``) moved back, else
    ``content`` (``None``: no file)."""
    if set_aside is not None:
        set_aside.replace(path)
    elif content is None:
        path.unlink(missing_ok=True)
    elif not path.is_file() or path.read_bytes() != content:
        write_file(path, content)


def _push_error(
    err: Exception, output_dir: Path, repo_id: str, retry: str, endpoint: str, token_from: str, token: str | None
) -> PushToHubError:
    """The error of a failed upload: what failed, what to check, the command that retries; never ``token``, in any
    form (the HTTP client's and the Hub's messages may quote the request's headers)."""
    status = None
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        reason = err.server_message or err.response.reason_phrase
        what = f"the Hub answered HTTP {status} {err.response.reason_phrase}: {reason.strip().rstrip('.')}"
    elif isinstance(err, OfflineModeIsEnabled):
        what = "HF_HUB_OFFLINE is set; unset it (or set HF_HUB_OFFLINE=0) to upload"
    else:
        what = f"could not reach {endpoint} ({type(err).__name__}: {err})"
    hint = {
        401: f" Check that the token from {token_from} is valid and has write access.",
        403: " The token has no write access to this namespace; use your own namespace or a token with access.",
        404: " Check the repository id and namespace.",
    }.get(status, "")
    message = (
        f"Pushing {output_dir} to the Hub repository {repo_id!r} failed: {redact_token(what, token)}.{hint}\n"
        f"Nothing in {output_dir} was changed. Retry with:\n    {retry}"
    )
    return PushToHubError(message, repo_id=repo_id, retry_command=retry, status_code=status)
