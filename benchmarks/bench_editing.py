"""Editing quality of a trained class-conditional digit pipeline: RePaint inpainting and SDEdit label changes.

(a) Inpainting: the lower half of ``--num-images`` held-out digits (the digit classifier's held-out split of MNIST-5k,
the same number of each class) is masked and repainted by ``HFDDPMInpaintPipeline`` given each digit's label. Reports
the digit classifier's accuracy on the results and FD-digits between the results and the original digits, next to the
same numbers for the originals and for the masked inputs (lower half black); writes a picture (original, masked,
inpainted).

(b) Image-to-image: ``--img2img-images`` held-out digits are edited by ``HFDDPMImg2ImgPipeline`` towards another
label (each digit's label plus a seeded random offset 1-9, mod 10) at several strengths and guidance scales. Reports
the share the classifier reads as the target label ("label-change accuracy") and as the original label; writes a
plot and a picture of one digit per class across strengths.

    python benchmarks/bench_editing.py hfddpm-mnist
    python benchmarks/bench_editing.py hfddpm-mnist --num-images 200 --img2img-images 100 --bf16
"""

import argparse
import time

import numpy as np
import torch
from common import RESULTS_DIR, environment, markdown_table, write_json
from diffusers.utils import make_image_grid

from hfddpm import HFDDPMImg2ImgPipeline, HFDDPMInpaintPipeline
from hfddpm.evaluation import classify_digits, feature_statistics, frechet_distance, load_mnist_5k
from hfddpm.evaluation.digits import HELDOUT_PER_CLASS, NUM_DIGIT_CLASSES
from hfddpm.pipelines.pipeline_hfddpm_inpaint import repaint_schedule


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="a trained class-conditional digit pipeline folder")
    parser.add_argument("--num-images", type=int, default=1000, help="held-out digits to inpaint (multiple of 10)")
    parser.add_argument("--num-inference-steps", type=int, default=25)
    parser.add_argument("--jump-length", type=int, default=5)
    parser.add_argument("--jump-n-sample", type=int, default=2)
    parser.add_argument(
        "--img2img-images", type=int, default=200, help="held-out digits per strength (multiple of 10)"
    )
    parser.add_argument("--img2img-steps", type=int, default=25)
    parser.add_argument("--strengths", default="0,0.2,0.4,0.6,0.8,1.0")
    parser.add_argument("--guidance-scales", default="1,3", help="img2img guidance scales (inpainting uses 1)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast around the pipeline calls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip", choices=["inpaint", "img2img"], default=None)
    parser.add_argument("--out", default="editing", help="file stem under benchmarks/results/")
    return parser.parse_args(argv)


def heldout_digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n / 10`` held-out digits of every class (the split is sorted by class, 100 each)."""
    if n % NUM_DIGIT_CLASSES or not 0 < n <= NUM_DIGIT_CLASSES * HELDOUT_PER_CLASS:
        raise ValueError(f"the number of images must be a multiple of 10 in [10, 1000], got {n}")
    images, labels = load_mnist_5k("heldout")
    per_class = n // NUM_DIGIT_CLASSES
    index = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(NUM_DIGIT_CLASSES)])
    return images[index], labels[index]


def scores(images: torch.Tensor, labels: torch.Tensor, reference_features: torch.Tensor | None = None) -> dict:
    """Classifier accuracy against ``labels`` and, with reference features, FD-digits against them."""
    features, probs = classify_digits(images)
    result = {"accuracy": float((probs.argmax(-1) == labels).double().mean())}
    if reference_features is not None:
        mu, sigma = feature_statistics(features.double().numpy())
        mu_ref, sigma_ref = feature_statistics(reference_features.double().numpy())
        result["fd_digits"] = frechet_distance(mu, sigma, mu_ref, sigma_ref)
    return result


def batched(call, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """``call(slice, generator)`` over batches of ``batch_size``; batch ``i`` is seeded with ``seed + i``."""
    out = []
    for i, start in enumerate(range(0, n, batch_size)):
        part = slice(start, min(start + batch_size, n))
        out.append(call(part, torch.Generator().manual_seed(seed + i)).float().cpu())
    return torch.cat(out)


def to_pil(images: torch.Tensor):
    return [img for img in HFDDPMInpaintPipeline.numpy_to_pil(images.permute(0, 2, 3, 1).numpy())]


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.bf16)
    inpaint = HFDDPMInpaintPipeline.from_pretrained(args.pipeline).to(device)
    inpaint.set_progress_bar_config(disable=True)
    img2img = HFDDPMImg2ImgPipeline.from_pipe(inpaint)
    img2img.set_progress_bar_config(disable=True)
    payload = {"args": vars(args), "environment": environment()}

    if args.skip != "inpaint":
        # (a) inpaint the lower half given the label
        images, labels = heldout_digits(args.num_images)
        mask = torch.zeros(1, 1, *images.shape[-2:])
        mask[..., images.shape[-2] // 2 :, :] = 1
        masked = images * (1 - mask)
        steps = repaint_schedule(args.num_inference_steps, args.jump_length, args.jump_n_sample)
        model_calls = int((np.diff(steps) > 0).sum())

        def repaint(part, generator):
            with autocast:
                return inpaint(
                    images[part],
                    mask,
                    num_inference_steps=args.num_inference_steps,
                    jump_length=args.jump_length,
                    jump_n_sample=args.jump_n_sample,
                    class_labels=labels[part],
                    generator=generator,
                    output_type="pt",
                ).images

        start = time.perf_counter()
        inpainted = batched(repaint, len(images), args.batch_size, args.seed)
        seconds = time.perf_counter() - start
        reference = classify_digits(images)[0]
        rows = {
            "originals": scores(images, labels, reference),
            "masked inputs (lower half black)": scores(masked, labels, reference),
            "RePaint, given the label": scores(inpainted, labels, reference),
        }
        payload["inpaint"] = {
            "num_images": len(images),
            "model_calls_per_image": model_calls,
            "seconds": seconds,
            "results": rows,
        }
        print(
            f"\nInpainting the lower half of {len(images)} held-out digits ({args.num_inference_steps} steps,"
            f" jump_length {args.jump_length}, jump_n_sample {args.jump_n_sample}: {model_calls} model calls per"
            f" image, {seconds:.0f} s)\n"
        )
        print(markdown_table(["images", "classifier accuracy", "FD-digits vs originals"], [
            [name, r["accuracy"], r["fd_digits"]] for name, r in rows.items()
        ]))  # fmt: skip
        # one digit per class: original, masked, inpainted
        per_class = len(images) // NUM_DIGIT_CLASSES
        show = torch.arange(NUM_DIGIT_CLASSES) * per_class
        grid = torch.cat([images[show], masked[show], inpainted[show]])
        png = RESULTS_DIR / f"{args.out}_inpaint.png"
        make_image_grid(to_pil(grid), rows=3, cols=NUM_DIGIT_CLASSES).resize((NUM_DIGIT_CLASSES * 56, 3 * 56), 0).save(
            png
        )
        write_json(f"{args.out}.json", payload)

    if args.skip != "img2img":
        # (b) change the label at several strengths
        images, labels = heldout_digits(args.img2img_images)
        offsets = torch.randint(1, NUM_DIGIT_CLASSES, labels.shape, generator=torch.Generator().manual_seed(args.seed))
        targets = (labels + offsets) % NUM_DIGIT_CLASSES
        strengths = [float(s) for s in args.strengths.split(",")]
        guidance_scales = [float(g) for g in args.guidance_scales.split(",")]
        records, edited = [], {}
        start = time.perf_counter()
        for guidance_scale in guidance_scales:
            for strength in strengths:

                def edit(part, generator, strength=strength, guidance_scale=guidance_scale):
                    with autocast:
                        return img2img(
                            images[part],
                            strength=strength,
                            num_inference_steps=args.img2img_steps,
                            class_labels=targets[part],
                            guidance_scale=guidance_scale,
                            generator=generator,
                            output_type="pt",
                        ).images

                out = batched(edit, len(images), args.batch_size, args.seed)
                edited[(guidance_scale, strength)] = out
                record = {
                    "guidance_scale": guidance_scale,
                    "strength": strength,
                    "target_accuracy": scores(out, targets)["accuracy"],
                    "original_label_share": scores(out, labels)["accuracy"],
                }
                records.append(record)
                print(
                    f"img2img guidance {guidance_scale:g} strength {strength:.2f}: target label"
                    f" {record['target_accuracy']:.3f}, original label {record['original_label_share']:.3f}",
                    flush=True,
                )
                write_json(f"{args.out}.json", {**payload, "img2img": {"partial": True, "results": records}})
        seconds = time.perf_counter() - start
        payload["img2img"] = {
            "num_images": len(images),
            "seconds": seconds,
            "original_accuracy": scores(images, labels)["accuracy"],
            "results": records,
        }
        print(
            f"\nChanging the label of {len(images)} held-out digits ({args.img2img_steps}-step schedule,"
            f" {seconds:.0f} s)\n"
        )
        print(markdown_table(["guidance", "strength", "target label accuracy", "original label share"], [
            [r["guidance_scale"], r["strength"], r["target_accuracy"], r["original_label_share"]] for r in records
        ]))  # fmt: skip
        plot_label_change(records, guidance_scales, args.out)
        # one digit per class across strengths (largest guidance), first column the input
        per_class = len(images) // NUM_DIGIT_CLASSES
        show = torch.arange(NUM_DIGIT_CLASSES) * per_class
        columns = [images[show]] + [edited[(guidance_scales[-1], s)][show] for s in strengths]
        grid = torch.stack(columns, dim=1).flatten(0, 1)
        make_image_grid(to_pil(grid), rows=NUM_DIGIT_CLASSES, cols=len(columns)).resize(
            (len(columns) * 56, NUM_DIGIT_CLASSES * 56), 0
        ).save(RESULTS_DIR / f"{args.out}_img2img.png")
        payload["img2img"]["picture_targets"] = targets[show].tolist()
        write_json(f"{args.out}.json", payload)
    print(f"\nWrote {RESULTS_DIR / args.out}.json and its pictures")


def plot_label_change(records: list[dict], guidance_scales: list[float], out: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    for g in guidance_scales:
        rows = [r for r in records if r["guidance_scale"] == g]
        x = [r["strength"] for r in rows]
        ax.plot(x, [r["target_accuracy"] for r in rows], marker="o", label=f"target label, guidance {g:g}")
        ax.plot(x, [r["original_label_share"] for r in rows], marker=".", ls="--", label=f"original label, {g:g}")
    ax.set_xlabel("strength")
    ax.set_ylabel("share of edited digits")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("img2img label change (digit classifier)", fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / f"{out}_label_change.png")
    plt.close(fig)


if __name__ == "__main__":
    main(parse_args())
