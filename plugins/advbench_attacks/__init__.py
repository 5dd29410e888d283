"""Built-in attacks: FGSM, BIM, PGD (l-inf), C&W and DeepFool (l2), JSMA (l0); and the adaptive ones, which also
read the defence: OPGD and joint PGD (l-inf).

Registered lazily: each class's module (and torch) is imported when a run looks the component up, not when
advbench lists or loads its plugins. The name, aliases and description here are the class's own (a test in
tests/test_plugins.py checks that they agree).
"""

import importlib

import advbench

# (name, "module:Class", aliases, description)
ATTACKS = (
    ("fgsm", "advbench_attacks.fgsm:FGSM", (),
     "Fast Gradient Sign Method (Goodfellow et al. 2015), one l-inf step of size eps"),
    ("bim", "advbench_attacks.bim:BIM", ("i-fgsm",),
     "Basic Iterative Method / iterative FGSM (Kurakin et al. 2016), l-inf"),
    ("pgd", "advbench_attacks.pgd:PGD", (),
     "Projected Gradient Descent with random start (Madry et al. 2018), l-inf"),
    ("cw", "advbench_attacks.cw:CarliniWagnerL2", ("cw-l2", "carlini-wagner"),
     "Carlini & Wagner l2 attack with binary search over c (Carlini & Wagner 2017), via foolbox"),
    ("deepfool", "advbench_attacks.deepfool:DeepFool", (),
     "DeepFool l2 (Moosavi-Dezfooli et al. 2016), via foolbox"),
    ("jsma", "advbench_attacks.jsma:JSMA", (),
     "Jacobian-based Saliency Map Attack (Papernot et al. 2016), l0, random target; batched"),
    ("opgd", "advbench_attacks.opgd:OPGD", (),
     "Orthogonal PGD on victim and detector (Bryniarski et al. 2022), adaptive, l-inf"),
    ("joint-pgd", "advbench_attacks.joint_pgd:JointPGD", (),
     "PGD on CE(f1) + lambda * detector term, ADV^2 form for interpretations (Zhang et al. 2020), l-inf"),
)

__all__ = ["BIM", "CarliniWagnerL2", "DeepFool", "FGSM", "JSMA", "JointPGD", "OPGD", "PGD"]


def __getattr__(name: str):
    """``from advbench_attacks import <Class>`` still works; the class's module is imported then."""
    for _, target, _, _ in ATTACKS:
        module, _, cls = target.partition(":")
        if cls == name:
            return getattr(importlib.import_module(module), cls)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@advbench.hookimpl
def register_attacks(register):
    for name, target, aliases, description in ATTACKS:
        register(name, target, description=description, aliases=aliases)
