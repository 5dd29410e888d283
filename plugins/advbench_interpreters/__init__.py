"""Built-in interpreters: the LAN of Nguyen et al. 2017 and gradient-based baselines (one class per module)."""

import advbench

from advbench_interpreters.gradcam import GradCAM
from advbench_interpreters.gradient import GradientSaliency
from advbench_interpreters.integrated_gradients import IntegratedGradients
from advbench_interpreters.lan import LatentAttentionNetwork
from advbench_interpreters.lan_per_sample import LANPerSample
from advbench_interpreters.raw_pixels import RawPixels
from advbench_interpreters.smoothgrad import SmoothGrad

__all__ = ["GradCAM", "GradientSaliency", "IntegratedGradients", "LANPerSample", "LatentAttentionNetwork",
           "RawPixels", "SmoothGrad"]


@advbench.hookimpl
def register_interpreters(register):
    for cls in (GradientSaliency, SmoothGrad, IntegratedGradients, GradCAM, LatentAttentionNetwork, LANPerSample,
                RawPixels):
        register(cls)
