"""Built-in victims: classifiers with their training recipes (also usable as mask classifiers).

Registered lazily: each class's module (and torch) is imported when a run looks the component up, not when
advbench lists or loads its plugins. The name, aliases and description here are the class's own (a test in
tests/test_plugins.py checks that they agree).
"""

import advbench

# (name, "module:Class", aliases, description)
VICTIMS = (
    ("alexnet", "advbench_victims.alexnet:AlexNet", (),
     "AlexNet-style CNN (3 conv+BN blocks, 3 linear layers), the paper's f1"),
    ("vgg-like", "advbench_victims.vgg_like:VggLike", ("vgg",),
     "VGG-style CNN (3 stages of 2 conv+BN), more accurate than alexnet; the transfer source"),
    ("review-cnn", "advbench_victims.review_cnn:ReviewCnn", (),
     "the Aldahdooh et al. review's CIFAR-10 CNN (conv stages with dropout, linear 512 features)"),
    ("lenet", "advbench_victims.lenet:LeNet", (),
     "LeNet-5; the paper's mask classifier f2, or a victim for small inputs"),
    ("small-cnn", "advbench_victims.small_cnn:SmallCnn", (),
     "Two conv+BN blocks and two linear layers, for tiny images (digits)"),
)


@advbench.hookimpl
def register_victims(register):
    for name, target, aliases, description in VICTIMS:
        register(name, target, description=description, aliases=aliases)
