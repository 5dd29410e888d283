"""How the report prints values: the Cell/Column/Table a template draws, and fixed-digit number formatting.

Report plugins build their tables from these too, so every number on the page is printed the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

NA = "—"
NA_TITLE = "not computed or does not apply"
NOT_COMPUTED = "not computed"
DIGITS = 3


@dataclass
class Cell:
    text: str
    cls: str = ""
    title: str = ""


@dataclass
class Column:
    label: str
    cls: str = ""
    title: str = ""


@dataclass
class Table:
    id: str
    columns: list[Column]
    rows: list[list[Cell]]
    caption: str = ""
    groups: list[tuple[str, int, str]] = field(default_factory=list)  # (label, colspan, css class)
    note: str = ""
    row_cls: list[str] = field(default_factory=list)  # a css class per body row ("" for none)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value: Any, digits: int = DIGITS) -> str:
    """How every metric is printed: fixed ``digits`` decimals; "—" for null, NaN or a non-number."""
    return f"{value:.{digits}f}" if is_number(value) else NA


def num(value: Any, digits: int = DIGITS, cls: str = "") -> Cell:
    if not is_number(value):
        return Cell(NA, "num na", NA_TITLE)
    return Cell(fmt(value, digits), ("num " + cls).strip())


def count(value: Any) -> Cell:
    if is_number(value):
        return Cell(str(int(value)) if float(value).is_integer() else fmt(value), "num")
    return Cell(NA, "num na", NA_TITLE)


def text(value: Any, cls: str = "") -> Cell:
    if value is None or value == "":
        return Cell(NA, ("na " + cls).strip(), NA_TITLE)
    return Cell(str(value), cls)


def seconds(value: Any) -> str:
    if not is_number(value):
        return NA
    value = float(value)
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(round(value)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def period(started: Any, finished: Any) -> str:
    """"2024-01-01 10:00:00 → 10:12:34 UTC" from two ISO times; the raw strings when they do not parse."""
    import datetime as dt

    def parse(value: Any) -> Optional[dt.datetime]:
        try:
            return dt.datetime.fromisoformat(str(value))
        except ValueError:
            return None

    a, b = parse(started), parse(finished)
    if a is None or b is None or a.tzinfo != b.tzinfo:
        return f"{started or NA} → {finished or NA}"
    zone = "" if a.tzinfo is None else (" UTC" if a.utcoffset() == dt.timedelta(0) else a.strftime(" %z"))
    end = b.strftime("%H:%M:%S") if a.date() == b.date() else b.strftime("%Y-%m-%d %H:%M:%S")
    return f"{a.strftime('%Y-%m-%d %H:%M:%S')} → {end}{zone}"
