from .pipeline_hfddpm import HFDDPMPipeline
from .pipeline_hfddpm_img2img import HFDDPMImg2ImgPipeline
from .pipeline_hfddpm_inpaint import HFDDPMInpaintPipeline

__all__ = ["HFDDPMImg2ImgPipeline", "HFDDPMInpaintPipeline", "HFDDPMPipeline"]
