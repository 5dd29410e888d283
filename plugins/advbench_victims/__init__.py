"""Built-in victims: classifiers with their training recipes (also usable as mask classifiers)."""

import advbench

from advbench_victims.alexnet import AlexNet
from advbench_victims.lenet import LeNet
from advbench_victims.small_cnn import SmallCnn
from advbench_victims.vgg_like import VggLike


@advbench.hookimpl
def register_victims(register):
    for cls in (AlexNet, VggLike, LeNet, SmallCnn):
        register(cls)
