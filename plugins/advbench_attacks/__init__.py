"""Built-in attacks."""

import advbench


@advbench.hookimpl
def register_attacks(register):
    pass
