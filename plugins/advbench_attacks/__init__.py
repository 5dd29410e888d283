"""Built-in attacks: FGSM, BIM, PGD (l-inf), C&W and DeepFool (l2), JSMA (l0)."""

import advbench

from advbench_attacks.bim import BIM
from advbench_attacks.cw import CarliniWagnerL2
from advbench_attacks.deepfool import DeepFool
from advbench_attacks.fgsm import FGSM
from advbench_attacks.jsma import JSMA
from advbench_attacks.pgd import PGD

__all__ = ["BIM", "CarliniWagnerL2", "DeepFool", "FGSM", "JSMA", "PGD"]


@advbench.hookimpl
def register_attacks(register):
    for cls in (FGSM, BIM, PGD, CarliniWagnerL2, DeepFool, JSMA):
        register(cls)
