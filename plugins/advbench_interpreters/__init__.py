"""Built-in interpreters: the LAN of Nguyen et al. 2017 and gradient-based baselines (one class per module).

Registered lazily: each class's module (and torch) is imported when a run looks the component up, not when
advbench lists or loads its plugins. The name, aliases and description here are the class's own (a test in
tests/test_plugins.py checks that they agree).
"""

import importlib

import advbench

# (name, "module:Class", aliases, description)
INTERPRETERS = (
    ("gradient", "advbench_interpreters.gradient:GradientSaliency", (),
     "Vanilla gradient saliency |d logit_pred / dx| (Simonyan et al. 2014), channel max, 1 channel"),
    ("smoothgrad", "advbench_interpreters.smoothgrad:SmoothGrad", (),
     "SmoothGrad: gradient saliency averaged over Gaussian-noised copies (Smilkov et al. 2017), 1 channel"),
    ("integrated-gradients", "advbench_interpreters.integrated_gradients:IntegratedGradients", ("ig",),
     "Integrated Gradients from a black or mean baseline (Sundararajan et al. 2017), |attr|, 1 channel"),
    ("gradcam", "advbench_interpreters.gradcam:GradCAM", ("grad-cam",),
     "Grad-CAM on the last Conv2d (or a named layer), upsampled to the input (Selvaraju et al. 2017)"),
    ("lan", "advbench_interpreters.lan:LatentAttentionNetwork", ("latent-attention",),
     "Latent Attention Network mask generator trained against the frozen victim (Grimm et al. 2017)"),
    ("lan-per-sample", "advbench_interpreters.lan_per_sample:LANPerSample", (),
     "Latent-attention mask optimized directly for each input (Grimm et al. 2017, per-image variant)"),
    ("raw-pixels", "advbench_interpreters.raw_pixels:RawPixels", (),
     "Control: the mask is the image itself, so f2 is a second classifier on raw pixels"),
)

__all__ = ["GradCAM", "GradientSaliency", "IntegratedGradients", "LANPerSample", "LatentAttentionNetwork", "RawPixels",
           "SmoothGrad"]


def __getattr__(name: str):
    """``from advbench_interpreters import <Class>`` still works; the class's module is imported then."""
    for _, target, _, _ in INTERPRETERS:
        module, _, cls = target.partition(":")
        if cls == name:
            return getattr(importlib.import_module(module), cls)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@advbench.hookimpl
def register_interpreters(register):
    for name, target, aliases, description in INTERPRETERS:
        register(name, target, description=description, aliases=aliases)
