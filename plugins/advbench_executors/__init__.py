"""Built-in executors."""

import advbench

from advbench_executors.local import LocalExecutor


@advbench.hookimpl
def register_executors(register):
    register(LocalExecutor)
