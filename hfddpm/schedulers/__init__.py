from .scheduling_hfddpm import HFDDPMScheduler, HFDDPMSchedulerOutput

__all__ = ["HFDDPMScheduler", "HFDDPMSchedulerOutput"]
