"""Built-in executors."""

import advbench

from advbench_executors.local import LocalExecutor
from advbench_executors.processes import ProcessesExecutor


@advbench.hookimpl
def register_executors(register):
    register(LocalExecutor)
    register(ProcessesExecutor)
