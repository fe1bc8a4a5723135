"""hfddpm.training.TrainingEngine on its own: the step compiled with torch.compile equals the eager one, and what
it exports is a plain diffusers UNet."""

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from diffusers.utils import make_image_grid
from safetensors.torch import load_file

from hfddpm import HFDDPMPipeline, build_unet
from hfddpm.training import TrainConfig, TrainingEngine, build_scheduler


def _engine(compile: bool) -> TrainingEngine:
    config = TrainConfig(preset="tiny", compile=compile, mixed_precision="no", max_train_steps=3).validate()
    torch.manual_seed(0)
    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16, num_class_embeds=11)
    return TrainingEngine(
        config, unet, build_scheduler(config), Accelerator(cpu=True), max_train_steps=3, class_conditional=True
    )


def test_the_compiled_step_equals_the_eager_step(tmp_path):
    batch = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    labels = torch.tensor([0, 3, 7, 9])
    engines = {name: _engine(compile=name == "compiled") for name in ("eager", "compiled")}
    losses = {}
    for name, engine in engines.items():
        losses[name] = [engine.micro_step(batch, labels, global_step=s).item() for s in range(3)]
        engine.end_step()
    assert type(engines["compiled"].model).__name__ == "OptimizedModule"
    torch.testing.assert_close(losses["compiled"], losses["eager"], rtol=1e-4, atol=1e-5)
    eager, compiled = (dict(engines[n].unwrapped.named_parameters()) for n in ("eager", "compiled"))
    assert eager.keys() == compiled.keys()
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5, msg=key)
    # the exported pipeline is a plain UNet2DModel: no "_orig_mod." in its weights
    engines["compiled"].pipeline().save_pretrained(tmp_path / "pipe")
    keys = load_file(str(tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors")).keys()
    assert not [k for k in keys if "_orig_mod" in k]
    assert HFDDPMPipeline.from_pretrained(tmp_path / "pipe").unet.config.num_class_embeds == 11


def test_the_class_grid_samples_with_the_validation_guidance():
    engine = _engine(compile=False)
    assert engine.config.validation_guidance_scale == 1.5  # the default: measured, see the README
    engine.config.validation_images_per_class = 2
    grid = np.asarray(engine.sample_grid(num_classes=3))
    assert grid.shape[:2] == (3 * 16, 2 * 16)  # one row per class
    # the same images from the pipeline the grid uses, called by hand: DPM-Solver++, labels per row, the run's seed
    pipe = engine.pipeline(sampler="dpmsolver++")
    by_hand = {}
    for guidance in (1.5, 1.0):
        images = pipe(
            batch_size=6,
            class_labels=[0, 0, 1, 1, 2, 2],
            guidance_scale=guidance,
            num_inference_steps=engine.config.validation_inference_steps,
            generator=torch.Generator("cpu").manual_seed(engine.config.seed),
            output_type="pil",
        ).images
        by_hand[guidance] = np.asarray(make_image_grid(images, rows=3, cols=2))
    np.testing.assert_array_equal(grid, by_hand[1.5])
    assert np.abs(grid.astype(int) - by_hand[1.0]).max() > 0  # guidance changes the grid


def test_cuda_graph_modes_refuse_gradient_accumulation():
    # a CUDA graph's next run overwrites the gradients kept across micro-batches: refused before any step
    for mode in ("reduce-overhead", "max-autotune"):
        with pytest.raises(ValueError, match=f"--compile_mode {mode} runs the step as CUDA graphs") as error:
            TrainConfig(compile=True, compile_mode=mode, gradient_accumulation_steps=2).validate()
        assert "use --compile_mode default or max-autotune-no-cudagraphs, or --gradient_accumulation_steps 1" in str(
            error.value
        )
    for mode in ("default", "max-autotune-no-cudagraphs"):
        TrainConfig(compile=True, compile_mode=mode, gradient_accumulation_steps=2).validate()
    TrainConfig(compile=False, compile_mode="reduce-overhead", gradient_accumulation_steps=2).validate()


def _resident_digits_on_the_gpu():
    """100 embedded digits kept on the GPU, in batches of 16 (the resident path train.py takes there)."""
    from hfddpm.data import ResidentImageBatches, load_mnist_5k, make_train_dataloader, resolve_columns

    digits = load_mnist_5k().select(range(0, 5000, 50)).flatten_indices()
    loader = make_train_dataloader(
        digits, resolve_columns(digits, "image", "label"), resolution=28, channels=1, batch_size=16, seed=0,
        resident_device="cuda",
    )  # fmt: skip
    assert isinstance(loader, ResidentImageBatches) and loader.images.device.type == "cuda"
    return iter(loader)


def _gpu_engine(config: TrainConfig) -> TrainingEngine:
    """A class-conditional engine of the tiny preset at 28 px (a quick compile), bf16 on the GPU."""
    torch.manual_seed(0)
    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=28, num_class_embeds=11)
    return TrainingEngine(
        config, unet, build_scheduler(config), Accelerator(mixed_precision="bf16"), max_train_steps=10,
        class_conditional=True,
    )  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_training_step_on_resident_batches_never_waits_for_the_gpu():
    """No host-device synchronisation per step: torch raises on the synchronising CUDA calls it detects in "error"
    mode."""
    batches = _resident_digits_on_the_gpu()
    engine = _gpu_engine(TrainConfig(mixed_precision="bf16").validate())
    for step in range(2):  # the first steps allocate and tune (cuDNN) outside the checked ones
        batch = next(batches)
        engine.micro_step(batch["pixel_values"], batch["class_labels"], global_step=step)
        engine.end_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(2, 5):
            batch = next(batches)
            engine.micro_step(batch["pixel_values"], batch["class_labels"], global_step=step)
            engine.end_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_latents_above_the_cap_reach_the_gpu_without_waiting_as_the_same_batches():
    """Latents over ``max_bytes`` stay in host memory; each batch is copied through pinned memory, with no
    host-device synchronisation, and equals the batch of latents kept on the GPU."""
    from hfddpm.data import EpochShardSampler
    from hfddpm.latents import LatentBatches

    latents, labels = torch.randn(40, 2, 4, 8, 8), torch.arange(40) % 10

    def batches(max_bytes):
        sampler = EpochShardSampler(40, seed=0)
        kwargs = dict(batch_size=16, scale=0.5, shift=0.1, seed=0, device="cuda", max_bytes=max_bytes)
        return LatentBatches(latents, labels, sampler, **kwargs)

    on_gpu, on_host = batches(latents.nbytes), batches(0)
    assert on_gpu.resident and on_gpu.latents.is_cuda and not on_host.resident and not on_host.latents.is_cuda
    reference, host = iter(on_gpu), iter(on_host)
    next(host)  # the first batch allocates the pinned block outside the checked ones
    next(reference)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        checked = [(next(reference), next(host)) for _ in range(5)]  # past an epoch boundary
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for a, b in checked:
        assert b["pixel_values"].is_cuda and b["class_labels"].is_cuda
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["class_labels"], b["class_labels"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_step_and_resident_batches_on_the_gpu():
    # last of the gpu tests (gpu_check.sh runs them under a time limit): its compile is the slow part
    batch = next(_resident_digits_on_the_gpu())
    engine = _gpu_engine(TrainConfig(compile=True, compile_mode="reduce-overhead", mixed_precision="bf16").validate())
    losses = [engine.micro_step(batch["pixel_values"], batch["class_labels"], global_step=s) for s in range(5)]
    assert all(torch.isfinite(loss) for loss in losses) and losses[0].device.type == "cuda"


PLAIN_MODEL_CHILD = """
import socket, sys
import torch, torch.distributed as dist
from accelerate import Accelerator
from torch.nn.parallel import DistributedDataParallel
from hfddpm import build_unet
from hfddpm.training.checkpoint import plain_model

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
wrapped = DistributedDataParallel(torch.compile(unet))  # --compile with several processes: compiled, then DDP
accelerator = Accelerator(cpu=True)
assert accelerator.unwrap_model(wrapped, keep_torch_compile=False) is not unet  # accelerate stops at the compiled one
assert plain_model(accelerator, wrapped) is unet and plain_model(accelerator, unet) is unet
assert set(plain_model(accelerator, wrapped).state_dict()) == set(unet.state_dict())  # no _orig_mod. names
del wrapped
dist.destroy_process_group()
print("plain")
"""


def test_the_plain_model_is_found_under_ddp_around_a_compiled_one(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "child.py"
    script.write_text(PLAIN_MODEL_CHILD)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "plain", result.stderr[-3000:]


def test_a_resume_in_another_memory_format_continues_the_optimizer_exactly():
    import copy

    from hfddpm.training.checkpoint import match_optimizer_layout

    torch.manual_seed(0)
    x = torch.randn(2, 2, 8, 8)
    saved = torch.nn.Conv2d(2, 4, 3).to(memory_format=torch.channels_last)  # the run that wrote the checkpoint
    optimizer = torch.optim.AdamW(saved.parameters(), fused=True)  # the engine's AdamW
    saved(x).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    state, weights = copy.deepcopy(optimizer.state_dict()), copy.deepcopy(saved.state_dict())
    saved(x).sum().backward()
    optimizer.step()  # its next step, uninterrupted
    for match, exact in ((True, True), (False, False)):
        resumed = torch.nn.Conv2d(2, 4, 3)  # the resume measured another format: contiguous
        resumed.load_state_dict(weights)
        again = torch.optim.AdamW(resumed.parameters(), fused=True)
        again.load_state_dict(copy.deepcopy(state))  # the moments keep the checkpoint's channels_last layout
        if match:
            match_optimizer_layout(again)
        resumed(x).sum().backward()
        again.step()
        assert torch.equal(resumed.weight, saved.weight) == exact  # unmatched: an update of the wrong size
