"""Mixed precision: the float32 attention processor and how train.py picks its default precision."""

import pytest
import torch
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from hfddpm import build_unet
from hfddpm.models.attention_processor import FP32AttnProcessor, set_fp32_attention
from hfddpm.training import cpu_has_native_bf16, default_mixed_precision


def _unet(seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)


def test_fp32_processor_is_diffusers_sdpa_attention_in_float32():
    torch.manual_seed(0)
    attn = Attention(64, heads=2, dim_head=32, norm_num_groups=16, residual_connection=True, bias=True,
                     upcast_softmax=True, _from_deprecated_attn_block=True)  # fmt: skip
    x = torch.randn(3, 64, 5, 5)
    attn.set_processor(AttnProcessor2_0())
    reference = attn(x)
    attn.set_processor(FP32AttnProcessor())
    torch.testing.assert_close(attn(x), reference, rtol=0, atol=0)  # float32 in, identical computation
    # under bf16 autocast the block computes in float32 and rounds once to the input's dtype; the stock processor
    # computes in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        upcast = attn(x.bfloat16())
        attn.set_processor(AttnProcessor2_0())
        stock = attn(x.bfloat16())
    expected = attn(x.bfloat16().float()).bfloat16()
    assert upcast.dtype == torch.bfloat16
    torch.testing.assert_close(upcast, expected, rtol=0, atol=0)
    assert (stock.float() - expected.float()).abs().max() > 0


def test_set_fp32_attention_covers_every_attention_block_and_keeps_outputs_and_config():
    unet, plain = _unet(), _unet()
    blocks = [m for m in unet.modules() if isinstance(m, Attention)]
    assert set_fp32_attention(unet) == len(blocks) == 4
    assert all(isinstance(m.processor, FP32AttnProcessor) for m in blocks)
    assert unet.config == plain.config
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 900])
    torch.testing.assert_close(unet(x, t).sample, plain(x, t).sample, rtol=0, atol=0)


def test_bf16_training_step_with_fp32_attention_tracks_float32():
    """One forward/backward in bf16 autocast: finite gradients on every parameter, close to float32's."""
    unet, plain = _unet(), _unet()
    set_fp32_attention(unet)
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([1, 100, 500, 999])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = unet(x, t).sample.float().pow(2).mean()
    loss.backward()
    plain(x, t).sample.pow(2).mean().backward()
    for name, p in unet.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    grads = torch.cat([p.grad.flatten() for p in unet.parameters()])
    reference = torch.cat([q.grad.flatten() for q in plain.parameters()])
    assert torch.nn.functional.cosine_similarity(grads, reference, dim=0) > 0.99


@pytest.mark.parametrize(
    "flags, native",
    [
        ("fpu vme avx512f avx512_bf16 avx512_vnni", True),
        ("fpu avx512f amx_bf16 amx_tile", True),
        ("fpu sse avx2 avx512f avx512bw", False),
    ],
)
def test_cpu_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(str(info)) is native
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is False


def test_default_precision_per_device(monkeypatch):
    import hfddpm.training.precision

    monkeypatch.setattr(hfddpm.training.precision, "cpu_has_native_bf16", lambda: True)
    assert default_mixed_precision("cpu") == "bf16"
    monkeypatch.setattr(hfddpm.training.precision, "cpu_has_native_bf16", lambda: False)
    assert default_mixed_precision(torch.device("cpu")) == "no"
    assert default_mixed_precision("mps") == "no"
    # a GPU that only emulates bf16 (T4, V100) trains float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert default_mixed_precision("cuda") == "no"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert default_mixed_precision("cuda:0") == "bf16"


@pytest.mark.parametrize(
    "device, precision, switched", [("cpu", "bf16", 4), ("cpu", "no", 0), ("cuda", "bf16", 0), ("cuda:0", "fp16", 0)]
)
def test_prepare_attention_upcasts_only_on_cpu_under_mixed_precision(device, precision, switched):
    from hfddpm.training import prepare_attention

    unet = _unet()
    assert prepare_attention(unet, device, precision) == switched
    processors = {type(m.processor) for m in unet.modules() if isinstance(m, Attention)}
    assert processors == ({FP32AttnProcessor} if switched else {AttnProcessor2_0})


def test_cuda_math_is_set_and_restored_by_name():
    from hfddpm.training.precision import set_cuda_math, train_cuda_math

    previous = set_cuda_math(train_cuda_math(allow_tf32=False))
    try:
        assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
        assert torch.backends.cudnn.benchmark is True
    finally:
        assert set_cuda_math(previous) == train_cuda_math(allow_tf32=False)
    assert torch.backends.cudnn.benchmark == previous["cudnn_benchmark"]
    with pytest.raises(ValueError, match=r"Unknown CUDA math flag\(s\) \['tf32'\]; valid: \['cudnn_benchmark'"):
        set_cuda_math({"tf32": True})
