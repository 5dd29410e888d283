"""Built-in detectors."""

import advbench

from advbench_detectors.contrastive import Contrastive
from advbench_detectors.feature_squeezing import FeatureSqueezing
from advbench_detectors.kd_bu import KdBu
from advbench_detectors.label_only import LabelOnly
from advbench_detectors.lid import Lid
from advbench_detectors.mahalanobis import Mahalanobis
from advbench_detectors.max_softmax import MaxSoftmax

DETECTORS = (Contrastive, LabelOnly, FeatureSqueezing, KdBu, Lid, Mahalanobis, MaxSoftmax)


@advbench.hookimpl
def register_detectors(register):
    for cls in DETECTORS:
        register(cls)
