"""Attention in float32 inside a mixed-precision (autocast) region.

PyTorch's CPU flash attention is slow in bfloat16: on the ``mnist`` preset its backward pass took about ten times
as long in bf16 as in fp32 and ate most of what bf16 convolutions gain (``benchmarks/bench_train_throughput.py``).
Low-resolution UNets attend over few tokens (49 at 7x7), so attention costs little in fp32 while the convolutions,
which dominate, still run in bf16. ``training/train.py`` applies this on CPU whenever mixed precision is on.

Processors are runtime state, not config: a saved UNet is unchanged and loads with plain diffusers.

Example:
    >>> import torch
    >>> from hfddpm import build_unet
    >>> from hfddpm.models.attention_processor import FP32AttnProcessor, set_fp32_attention
    >>> unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    >>> set_fp32_attention(unet)  # attention modules switched
    4
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     out = unet(torch.randn(2, 1, 16, 16), torch.tensor([3, 500])).sample
    >>> out.shape
    torch.Size([2, 1, 16, 16])
"""

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


class FP32AttnProcessor(AttnProcessor2_0):
    """diffusers' SDPA attention processor with autocast switched off: the whole attention block (norm, q/k/v and
    output projections, scaled dot-product attention) runs in float32 and returns the input's dtype."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        def fp32(x):
            return x.float() if x is not None and x.is_floating_point() else x

        with torch.autocast(hidden_states.device.type, enabled=False):
            out = super().__call__(
                attn,
                fp32(hidden_states),
                fp32(encoder_hidden_states),
                fp32(attention_mask),
                fp32(temb),
                *args,
                **kwargs,
            )
        return out.to(hidden_states.dtype)


def set_fp32_attention(model: torch.nn.Module) -> int:
    """Give every diffusers ``Attention`` module of ``model`` an :class:`FP32AttnProcessor`; returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(FP32AttnProcessor())
            count += 1
    return count
