from .attention_processor import FP32AttnProcessor, set_fp32_attention
from .unet_presets import UNET_PRESETS, build_unet, count_training_flops

__all__ = ["FP32AttnProcessor", "UNET_PRESETS", "build_unet", "count_training_flops", "set_fp32_attention"]
