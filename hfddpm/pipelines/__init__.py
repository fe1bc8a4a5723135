from .mel_hfddpm import HFDDPMMel
from .pipeline_hfddpm import HFDDPMPipeline
from .pipeline_hfddpm_audio import HFDDPMAudioPipeline, HFDDPMAudioPipelineOutput

__all__ = ["HFDDPMAudioPipeline", "HFDDPMAudioPipelineOutput", "HFDDPMMel", "HFDDPMPipeline"]
