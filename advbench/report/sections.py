"""Sections that plugins add to the report through the ``report_sections`` hook: collected, checked, placed.

Each plugin's hook implementation is called on its own copy of results.json, so one plugin that fails or
mutates its argument takes nothing from the others; a failure becomes a line in the page's "Problems while
building this report" banner. A section's body is rendered here, by the report's own autoescaping jinja2
environment, so values from results.json are escaped whatever the plugin returns (except the legacy ``html``).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Optional

import jinja2
from markupsafe import Markup

from advbench.report.format import Column, Table, count, is_number, num, text

ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
DEFAULT_PLACE = "before:run"
# the body an item may carry, in the order it is shown
_BODY_TEMPLATE = """{% from "macros.html" import table %}
{% if lead %}<p class="lead">{{ lead }}</p>
{% endif %}{{ rendered }}{% for t in tables %}
{% if t.note %}<h3>{{ t.note }}</h3>
{% endif %}{{ table(t) }}{% endfor %}{% if html is not none %}<div class="plugin-html">{{ html }}</div>
{% endif %}"""


def _cell(value: Any):
    if isinstance(value, bool) or not is_number(value):
        return text(value)
    return count(value) if isinstance(value, int) else num(value)


def as_table(value: Any, index: int, section_id: str) -> Table:
    """A ``Table`` as is, or one built from ``{"columns": [str], "rows": [[value]], "caption", "title", "id"}``."""
    if isinstance(value, Table):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"a table must be an advbench.report.format.Table or a dict, not {type(value).__name__}")
    rows = [[_cell(v) for v in row] for row in value.get("rows") or []]
    columns = [Column(str(c), "num" if rows and all(i < len(r) and "num" in r[i].cls for r in rows) else "")
               for i, c in enumerate(value.get("columns") or [])]
    table_id = str(value.get("id") or f"{section_id}-table-{index}")
    return Table(table_id if ID.match(table_id) else f"{section_id}-table-{index}", columns, rows,
                 str(value.get("caption") or ""), note=str(value.get("title") or ""))


def _calls(results: dict[str, Any], run_dir: Path) -> tuple[list[tuple[str, Any]], list[str]]:
    """(plugin name, reply) per hook implementation, in pluggy's call order; a failing one becomes a problem."""
    from advbench import plugins

    pm = plugins.get_manager()
    replies, problems = [], []
    args = {"results": results, "run_dir": str(run_dir)}
    for impl in reversed(pm.hook.report_sections.get_hookimpls()):
        if getattr(impl, "hookwrapper", False) or getattr(impl, "wrapper", False):
            continue
        name = pm.get_name(impl.plugin) or repr(impl.plugin)
        try:
            kwargs = {k: copy.deepcopy(v) for k, v in args.items() if k in impl.argnames}
            replies.append((name, impl.function(**kwargs)))
        except Exception as exc:
            problems.append(f"the report_sections hook of a plugin failed: {type(exc).__name__}: {exc} "
                            f"(plugin {name})")
    return replies, problems


def collect(results: dict[str, Any], run_dir: Path, env: jinja2.Environment,
            taken: set[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every plugin's sections as ``{"id", "title", "place", "body"}`` (``body`` rendered markup), and problems.

    ``taken``: the ids the page already uses; a section asking for one of them gets a numeric suffix.
    """
    replies, problems = _calls(results, run_dir)
    sections: list[dict[str, Any]] = []
    unnamed = 0
    taken = set(taken)
    for plugin, reply in replies:
        if reply is None:
            continue
        for item in reply if isinstance(reply, (list, tuple)) else [reply]:
            if not isinstance(item, dict) or "title" not in item:
                problems.append(f"a report_sections reply was ignored: expected a dict with a 'title', "
                                f"got {item!r:.80}")
                continue
            wanted = item.get("id")
            if isinstance(wanted, str) and ID.match(wanted):
                section_id = wanted
            else:
                section_id, unnamed = f"plugin-section-{unnamed}", unnamed + 1
            base, n = section_id, 2
            while section_id in taken:
                section_id, n = f"{base}-{n}", n + 1
            try:
                body = _body(item, section_id, env)
            except Exception as exc:
                problems.append(f"a report section of plugin {plugin} could not be drawn: "
                                f"{type(exc).__name__}: {exc}")
                continue
            taken.add(section_id)
            place = item.get("place")
            sections.append({"id": section_id, "title": str(item["title"]),
                             "place": place if isinstance(place, str) else DEFAULT_PLACE, "body": body})
    return sections, problems


def _body(item: dict[str, Any], section_id: str, env: jinja2.Environment) -> Markup:
    rendered: Optional[Markup] = None
    if item.get("template") is not None:
        context = item.get("context") or {}
        if not isinstance(context, dict):
            raise TypeError("'context' must be a dict")
        rendered = Markup(env.from_string(str(item["template"])).render(**context))
    tables = [as_table(t, i, section_id) for i, t in enumerate(item.get("tables") or [])]
    html = Markup(str(item["html"])) if item.get("html") is not None else None
    return Markup(env.from_string(_BODY_TEMPLATE).render(lead=item.get("lead"), rendered=rendered, tables=tables,
                                                         html=html))


def _follows(section_id: str, anchor: str, parent: dict[str, str]) -> bool:
    """Whether ``section_id`` was placed after ``anchor``, directly or after a section placed after it."""
    while section_id in parent:
        section_id = parent[section_id]
        if section_id == anchor:
            return True
    return False


def arrange(sections: list[dict[str, Any]], core: list[str]) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
    """The page's section ids in order, and the plugin sections to draw after each built-in one ("" = first).

    A section's ``place`` is "before:<id>" or "after:<id>" of a built-in or another plugin's section; sections
    at the same place keep the order they were returned in. An unknown place falls back to "before:run".
    """
    order = list(core)
    parent: dict[str, str] = {}  # section id -> the id it was placed after
    pending = list(sections)
    while pending:
        left = []
        for section in pending:
            how, _, anchor = section["place"].partition(":")
            if how not in ("before", "after") or anchor not in order:
                left.append(section)
                continue
            at = order.index(anchor)
            if how == "before":
                order.insert(at, section["id"])
            else:  # after the anchor and after whatever was already placed after it, directly or in a chain
                at += 1
                while at < len(order) and _follows(order[at], anchor, parent):
                    at += 1
                order.insert(at, section["id"])
                parent[section["id"]] = anchor
        if len(left) == len(pending):  # no anchor among what is left: the default place
            for section in left:
                section["place"] = DEFAULT_PLACE
            if DEFAULT_PLACE.split(":")[1] not in order:
                order += [s["id"] for s in left]
                break
        pending = left
    by_id = {s["id"]: s for s in sections}
    slots: dict[str, list[dict[str, Any]]] = {name: [] for name in ["", *core]}
    current = ""
    for section_id in order:
        if section_id in by_id:
            slots[current].append(by_id[section_id])
        else:
            current = section_id
    return order, slots
