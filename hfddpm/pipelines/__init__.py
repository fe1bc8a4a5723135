from .mel_hfddpm import HFDDPMMel
from .pipeline_hfddpm import HFDDPMPipeline
from .pipeline_hfddpm_audio import HFDDPMAudioPipeline, HFDDPMAudioPipelineOutput
from .pipeline_hfddpm_img2img import HFDDPMImg2ImgPipeline
from .pipeline_hfddpm_inpaint import HFDDPMInpaintPipeline

__all__ = [
    "HFDDPMAudioPipeline",
    "HFDDPMAudioPipelineOutput",
    "HFDDPMImg2ImgPipeline",
    "HFDDPMInpaintPipeline",
    "HFDDPMMel",
    "HFDDPMPipeline",
]
