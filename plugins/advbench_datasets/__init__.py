"""Built-in datasets."""

import advbench


@advbench.hookimpl
def register_datasets(register):
    pass
