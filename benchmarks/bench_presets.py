"""Parameter count and training FLOPs per image of every UNet preset (torch.utils.flop_counter).

python benchmarks/bench_presets.py            # prints a markdown table, writes benchmarks/results/presets.json
"""

import json
from pathlib import Path

import torch

from hfddpm import UNET_PRESETS, build_unet, count_training_flops


def main():
    torch.manual_seed(0)
    rows = []
    for name, config in UNET_PRESETS.items():
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
    out = Path(__file__).parent / "results" / "presets.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
