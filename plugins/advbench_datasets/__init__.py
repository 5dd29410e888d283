"""Built-in datasets."""

import advbench

from advbench_datasets.cifar10 import Cifar10
from advbench_datasets.digits import Digits


@advbench.hookimpl
def register_datasets(register):
    register(Cifar10)
    register(Digits)
