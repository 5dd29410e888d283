"""Built-in executors. The ray executor imports ray only when it opens, so registering it needs no ray.

Registered lazily: each class's module (and torch) is imported when a run looks the component up, not when
advbench lists or loads its plugins. The name, aliases and description here are the class's own (a test in
tests/test_plugins.py checks that they agree).
"""

import advbench

# (name, "module:Class", aliases, description)
EXECUTORS = (
    ("local", "advbench_executors.local:LocalExecutor", (),
     "Runs the plan's nodes one after another in this process (the default)"),
    ("processes", "advbench_executors.processes:ProcessesExecutor", (),
     "Pickles every node and runs it in a pool of spawned processes on this machine"),
    ("ray", "advbench_executors.ray_executor:RayExecutor", (),
     "Runs each node as a Ray task on a local Ray instance or a cluster (optional extra: ray)"),
)


@advbench.hookimpl
def register_executors(register):
    for name, target, aliases, description in EXECUTORS:
        register(name, target, description=description, aliases=aliases)
