"""hfddpm: pixel-space and latent diffusion models on the Hugging Face stack.

Example:
    >>> import hfddpm
    >>> pipe = hfddpm.HFDDPMPipeline(unet=hfddpm.build_unet("mnist"), scheduler=hfddpm.HFDDPMScheduler())
    >>> sorted(hfddpm.UNET_PRESETS)
    ['celebahq256', 'cifar10', 'flowers64', 'latent32', 'latent8', 'mel256', 'mel64', 'mnist', 'tiny']
"""

__version__ = "0.1.0"

from .models.unet_presets import UNET_PRESETS, build_unet, count_training_flops
from .pipelines.mel_hfddpm import HFDDPMMel
from .pipelines.pipeline_hfddpm import HFDDPMPipeline
from .pipelines.pipeline_hfddpm_audio import HFDDPMAudioPipeline, HFDDPMAudioPipelineOutput
from .pipelines.pipeline_hfddpm_img2img import HFDDPMImg2ImgPipeline
from .pipelines.pipeline_hfddpm_inpaint import HFDDPMInpaintPipeline
from .schedulers.scheduling_hfddpm import HFDDPMScheduler, HFDDPMSchedulerOutput

__all__ = [
    "HFDDPMAudioPipeline",
    "HFDDPMAudioPipelineOutput",
    "HFDDPMImg2ImgPipeline",
    "HFDDPMInpaintPipeline",
    "HFDDPMMel",
    "HFDDPMPipeline",
    "HFDDPMScheduler",
    "HFDDPMSchedulerOutput",
    "UNET_PRESETS",
    "build_unet",
    "count_training_flops",
    "__version__",
]
