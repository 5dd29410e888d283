"""Built-in victims."""

import advbench


@advbench.hookimpl
def register_victims(register):
    pass
