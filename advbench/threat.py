"""The attack template: what the harness does around every attack's ``run`` (see ``advbench.api.Attack``).

Placeholder: the template's body lands with the threat-model work (issue 11, item 1).
"""

from __future__ import annotations

from typing import Any, Optional

# bumped whenever the template changes what an attack returns: part of every attack's cache key
TEMPLATE_REVISION = "1"


def run_attack(attack: Any, model: Any, x: Any, y: Any, ctx: Any, threat: Any, defence: Optional[Any] = None) -> Any:
    raise NotImplementedError("the attack template is not written yet")
