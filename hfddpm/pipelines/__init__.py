from .pipeline_hfddpm import HFDDPMPipeline

__all__ = ["HFDDPMPipeline"]
