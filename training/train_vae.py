"""Train a small diffusers AutoencoderKL for latent diffusion; the folder it saves is what --vae of train.py takes.

    accelerate launch training/train_vae.py --output_dir digit-vae          # the embedded digits, 32 px -> 8x8x4
    python training/train.py --vae digit-vae --preset latent8 --resolution 32 --output_dir digit-ldm

Flags: `python training/train_vae.py --help`. The training itself lives in hfddpm.training.vae.
"""

import argparse

from hfddpm.training.vae import VAETrainConfig, train_vae


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    VAETrainConfig.add_arguments(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    try:
        train_vae(VAETrainConfig.from_args(args))
    except (ValueError, FileNotFoundError) as err:
        # Bad input: the message names the bad value and the fix; a traceback would only bury it (as train.py)
        raise SystemExit(f"train_vae.py: error: {err}") from None


if __name__ == "__main__":
    main(parse_args())
