"""Parameter count and training FLOPs per image of every UNet preset (torch.utils.flop_counter).

python benchmarks/bench_presets.py            # prints a markdown table, writes benchmarks/results/presets.json
python benchmarks/bench_presets.py --presets tiny,mnist --out /tmp/presets.json
"""

import argparse
import json
from pathlib import Path

import torch

from hfddpm import UNET_PRESETS, build_unet, count_training_flops


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(UNET_PRESETS), help=f"comma-separated, of {list(UNET_PRESETS)}")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "presets.json"), help="json file")
    args = parser.parse_args(argv)
    args.names = [n.strip() for n in args.presets.split(",") if n.strip()]
    unknown = [n for n in args.names if n not in UNET_PRESETS]
    if unknown or not args.names:
        parser.error(f"--presets {args.presets!r}: unknown {unknown}; choose from {list(UNET_PRESETS)}")
    return args


def main(args):
    torch.manual_seed(0)
    rows = []
    for name in args.names:
        config = UNET_PRESETS[name]
        unet = build_unet(name)
        params = sum(p.numel() for p in unet.parameters())
        flops = count_training_flops(unet, batch_size=1)
        size = config["sample_size"]
        rows.append(
            {
                "preset": name,
                "resolution": f"{size}x{size}x{config['in_channels']}",
                "parameters": params,
                "train_gflops_per_image": round(flops / 1e9, 3),
            }
        )
        del unet
    print("| preset | resolution | parameters | training GFLOPs / image (fwd+bwd) |")
    print("|---|---|---:|---:|")
    for r in rows:
        params = f"{r['parameters'] / 1e6:.2f}M"
        print(f"| `{r['preset']}` | {r['resolution']} | {params} | {r['train_gflops_per_image']:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main(parse_args())
