"""Built-in datasets.

Registered lazily: each class's module (and torch) is imported when a run looks the component up, not when
advbench lists or loads its plugins. The name, aliases and description here are the class's own (a test in
tests/test_plugins.py checks that they agree).
"""

import advbench

# (name, "module:Class", aliases, description)
DATASETS = (
    ("cifar10", "advbench_datasets.cifar10:Cifar10", (),
     "CIFAR-10 (32x32 RGB, 10 classes) from the official python batches or an image-folder export"),
    ("digits", "advbench_datasets.digits:Digits", (),
     "UCI handwritten digits from scikit-learn (8x8 grey, 10 classes, no download)"),
)


@advbench.hookimpl
def register_datasets(register):
    for name, target, aliases, description in DATASETS:
        register(name, target, description=description, aliases=aliases)
