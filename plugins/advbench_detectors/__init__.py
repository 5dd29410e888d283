"""Built-in detectors.

Registered lazily: each class's module (and torch) is imported when a run looks the component up, not when
advbench lists or loads its plugins. The name, aliases and description here are the class's own (a test in
tests/test_plugins.py checks that they agree).
"""

import advbench

# (name, "module:Class", aliases, description)
DETECTORS = (
    ("contrastive", "advbench_detectors.contrastive:Contrastive", (),
     "Nguyen et al. 2017: flag when the mask classifier's label differs from the victim's"),
    ("label-only", "advbench_detectors.label_only:LabelOnly", (),
     "Control: logistic regression on the victim's one-hot predicted label"),
    ("feature-squeezing", "advbench_detectors.feature_squeezing:FeatureSqueezing", (),
     "Xu et al. 2018: L1 change of the softmax under bit-depth reduction, median smoothing and non-local means"),
    ("dknn", "advbench_detectors.dknn:DeepKnn", ("deep-knn",),
     "Papernot & McDaniel 2018: 1 - conformal credibility from per-layer kNN label agreement"),
    ("kd-bu", "advbench_detectors.kd_bu:KdBu", (),
     "Feinman et al. 2017: class kernel density + MC-dropout uncertainty, logistic regression"),
    ("lid", "advbench_detectors.lid:Lid", (),
     "Ma et al. 2018: per-layer local intrinsic dimensionality, logistic regression"),
    ("mahalanobis", "advbench_detectors.mahalanobis:Mahalanobis", (),
     "Lee et al. 2018: Mahalanobis distance at every conv block and the penultimate layer, regression"),
    ("msp", "advbench_detectors.max_softmax:MaxSoftmax", ("max-softmax",),
     "Hendrycks & Gimpel 2017: 1 - the victim's maximum softmax probability (a control)"),
)


@advbench.hookimpl
def register_detectors(register):
    for name, target, aliases, description in DETECTORS:
        register(name, target, description=description, aliases=aliases)
