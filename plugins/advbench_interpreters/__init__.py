"""Built-in interpreters."""

import advbench


@advbench.hookimpl
def register_interpreters(register):
    pass
