# Copyright 2026 The hfddpm authors. Apache-2.0.
"""Share trained pipelines on the Hugging Face Hub: model cards (``card.py``), uploads with a clear retry when they
fail (``upload.py``).

Example:
    >>> from hfddpm.hub import push_to_hub, update_card_metrics, write_model_card
    >>> write_model_card("outputs/mnist", training_config={"preset": "mnist", "max_train_steps": 2000},
    ...                  dataset_name="mnist")                                    # doctest: +SKIP
    >>> update_card_metrics("outputs/mnist/README.md", {"fd_digits": 3.1})       # doctest: +SKIP
    >>> push_to_hub("outputs/mnist", "user/hfddpm-mnist")                         # doctest: +SKIP
    'https://huggingface.co/user/hfddpm-mnist'

Before uploading anything, ``push_to_hub`` checks locally (``checks.py``) that the folder is a complete pipeline
(``check_pipeline_folder``), the repository id is one and a token is there (``check_push_settings``, which a training
run can also call before it starts).

Only the pipeline is uploaded: the files of ``PIPELINE_FILES`` (``model_index.json``, ``pipeline_hfddpm*.py``,
``unet/``, ``scheduler/``), ``README.md`` and the sample grid. Checkpoints, logs, optimizer states and pickled torch
files stay local. The token (argument, ``HF_TOKEN`` or the saved login) is handed to ``huggingface_hub`` and never
printed, logged or written to a file.
"""

from hfddpm.pipelines.pipeline_hfddpm import PIPELINE_FILES, is_repo_id

from .card import (
    CARD_TEMPLATE_NAME,
    CONFIG_ROWS,
    EVAL_METRICS_FILES,
    SAMPLE_GRID,
    TRAIN_METRICS_FILE,
    card_template_path,
    count_parameters,
    read_metrics,
    read_training_settings,
    update_card_metrics,
    update_model_card,
    write_model_card,
)
from .checks import check_pipeline_folder, check_push_settings, check_repo_id
from .upload import IGNORE_PATTERNS, PushToHubError, default_commit_message, pipeline_files, push_to_hub

__all__ = [
    "CARD_TEMPLATE_NAME",
    "CONFIG_ROWS",
    "EVAL_METRICS_FILES",
    "IGNORE_PATTERNS",
    "PIPELINE_FILES",
    "SAMPLE_GRID",
    "TRAIN_METRICS_FILE",
    "PushToHubError",
    "card_template_path",
    "check_pipeline_folder",
    "check_push_settings",
    "check_repo_id",
    "count_parameters",
    "default_commit_message",
    "is_repo_id",
    "pipeline_files",
    "push_to_hub",
    "read_metrics",
    "read_training_settings",
    "update_card_metrics",
    "update_model_card",
    "write_model_card",
]
