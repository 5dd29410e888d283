"""Reading results.json defensively: each part as a list or dict even when the run left it out, and row selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

from advbench.report.format import NA

def dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def population(row: dict[str, Any]) -> str:
    return str(row.get("population") or "successful")


def subset(row: dict[str, Any]) -> str:
    return str(row.get("subset") or "all")


def sweep_label(row: dict[str, Any]) -> str:
    """What tells a row from its twins at other points of the grid: its sweep point and its training seed."""
    sweep = row.get("sweep")
    parts = [f"{k}={v}" for k, v in sweep.items()] if isinstance(sweep, dict) else []
    if row.get("seed") is not None:
        parts.append(f"seed={row['seed']}")
    return ", ".join(parts)


def interp_label(value: Any) -> str:
    return NA if value in (None, "") else str(value)


def ordered(values: Iterable[Any]) -> list[Any]:
    seen: dict[Any, None] = {}
    for value in values:
        if value not in seen:
            seen[value] = None
    return list(seen)


@dataclass
class View:
    """The parts of results.json the page is made of, each a list or dict even when the run left it out."""

    results: dict[str, Any]
    victims: dict[str, Any]
    interpreters: list[dict[str, Any]]
    attacks: list[dict[str, Any]]
    detection: list[dict[str, Any]]
    worst_case: list[dict[str, Any]]
    victim_order: list[str]
    attack_order: list[str]
    any_sweep: bool

    @classmethod
    def of(cls, results: dict[str, Any]) -> "View":
        victims = mapping(results.get("victims"))
        attacks = dicts(results.get("attacks"))
        detection = [r for r in dicts(results.get("detection"))]
        victim_order = ordered([str(v) for v in victims]
                               + [str(r.get(k)) for r in detection for k in ("source", "target") if r.get(k)]
                               + [str(r.get("source")) for r in attacks if r.get("source")])
        attack_order = ordered([str(r.get("attack")) for r in attacks if r.get("attack") is not None]
                               + [str(r.get("attack")) for r in detection if r.get("attack") is not None])
        return cls(results, victims, dicts(results.get("interpreters")), attacks, detection,
                   dicts(results.get("worst_case")), victim_order, attack_order,
                   any(sweep_label(r) for r in detection))

    def rows(self, *, subset_: Optional[str] = "all", population_: Optional[str] = "successful",
             direct: Optional[bool] = None) -> list[dict[str, Any]]:
        out = []
        for row in self.detection:
            if subset_ is not None and subset(row) != subset_:
                continue
            if population_ is not None and population(row) != population_:
                continue
            if direct is not None and (row.get("source") == row.get("target")) != direct:
                continue
            out.append(row)
        return out

    def victim_key(self, name: Any) -> int:
        return self.victim_order.index(str(name)) if str(name) in self.victim_order else len(self.victim_order)

    def attack_key(self, name: Any) -> int:
        return self.attack_order.index(str(name)) if str(name) in self.attack_order else len(self.attack_order)

    def sort_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        detectors = ordered(str(r.get("detector")) for r in self.detection)
        interps = ordered(interp_label(r.get("interpreter")) for r in self.detection)
        return sorted(rows, key=lambda r: (self.victim_key(r.get("target")), self.victim_key(r.get("source")),
                                           detectors.index(str(r.get("detector"))),
                                           interps.index(interp_label(r.get("interpreter"))),
                                           sweep_label(r), self.attack_key(r.get("attack"))))

