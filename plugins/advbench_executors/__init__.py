"""Built-in executors. The ray executor imports ray only when it opens, so registering it needs no ray."""

import advbench

from advbench_executors.local import LocalExecutor
from advbench_executors.processes import ProcessesExecutor
from advbench_executors.ray_executor import RayExecutor


@advbench.hookimpl
def register_executors(register):
    register(LocalExecutor)
    register(ProcessesExecutor)
    register(RayExecutor)
