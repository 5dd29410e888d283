"""advbench: a plugin-based benchmark for detecting adversarial inputs to image classifiers."""

from advbench.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
