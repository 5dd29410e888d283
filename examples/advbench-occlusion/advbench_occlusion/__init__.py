"""advbench-occlusion: registers the interpreter 'occlusion' with advbench."""

import advbench

from advbench_occlusion.occlusion import Occlusion

__all__ = ["Occlusion"]


@advbench.hookimpl
def register_interpreters(register):
    register(Occlusion)
