from .unet_presets import UNET_PRESETS, build_unet, count_training_flops

__all__ = ["UNET_PRESETS", "build_unet", "count_training_flops"]
