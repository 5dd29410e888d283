"""Built-in detectors."""

import advbench


@advbench.hookimpl
def register_detectors(register):
    pass
