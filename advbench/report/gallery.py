"""The mask gallery: gallery.pt's images and masks as PNG data URIs with f1/f2 labels, one block per entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from advbench.report import figures
from advbench.report.format import NA
from advbench.report.view import dicts, mapping

def _array(value: Any) -> Any:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if hasattr(value, "float") and value.dtype.is_floating_point:
            value = value.float()
        return value.numpy()
    return value


def _labels(value: Any) -> list[int]:
    value = _array(value)
    if value is None:
        return []
    try:
        return [int(v) for v in list(value)]
    except (TypeError, ValueError):
        return []


def _tile(x: Any, mask: Any, i: int, name: Callable[[Optional[int]], str], f1: list[int], f2: list[int],
          y: Optional[int] = None, head: str = "", success: Optional[bool] = None) -> dict[str, Any]:
    image = figures.image_data_uri(x[i]) if x is not None and i < len(x) else None
    mask_uri = figures.image_data_uri(mask[i]) if mask is not None and i < len(mask) else None
    a = f1[i] if i < len(f1) else None
    b = f2[i] if i < len(f2) else None
    return {"head": head, "image": image, "mask": mask_uri, "y": name(y), "f1": name(a), "f2": name(b),
            "f1_wrong": y is not None and a is not None and a != y,
            "disagree": a is not None and b is not None and a != b, "success": success}


def gallery_blocks(run_dir: Path, results: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """(blocks, note): one block per (victim, interpreter) entry of gallery.pt; note says why there are none."""
    path = run_dir / "gallery.pt"
    if not path.exists():
        return [], "not computed: the run folder has no gallery.pt."
    try:
        import torch

        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        return [], f"gallery.pt could not be read: {type(exc).__name__}: {exc}"
    entries = dicts(data if isinstance(data, list) else [data])
    dataset_classes = mapping(results.get("dataset")).get("classes")
    blocks = []
    for entry in entries:
        classes = entry.get("classes") or (dataset_classes if isinstance(dataset_classes, list) else [])
        classes = [str(c) for c in classes] if isinstance(classes, (list, tuple)) else []

        def name(i: Optional[int], classes: list[str] = classes) -> str:
            if i is None:
                return NA
            return classes[i] if 0 <= i < len(classes) else str(i)

        block: dict[str, Any] = {"victim": str(entry.get("victim", NA)),
                                 "interpreter": str(entry.get("interpreter", NA)),
                                 "per_class": [], "examples": [], "attacks": [], "error": ""}
        try:
            per = mapping(entry.get("per_class"))
            x, mask = _array(per.get("x")), _array(per.get("mask"))
            y, f1, f2 = _labels(per.get("y")), _labels(per.get("f1")), _labels(per.get("f2"))
            for i in range(len(x) if x is not None else 0):
                block["per_class"].append(_tile(x, mask, i, name, f1, f2, y=y[i] if i < len(y) else None,
                                                head=name(y[i]) if i < len(y) else ""))
            ex = mapping(entry.get("examples"))
            x, mask = _array(ex.get("x")), _array(ex.get("mask"))
            y, f1, f2 = _labels(ex.get("y")), _labels(ex.get("f1")), _labels(ex.get("f2"))
            adversarial = mapping(ex.get("adversarial"))
            block["attacks"] = [str(a) for a in adversarial]
            for i in range(len(x) if x is not None else 0):
                label = y[i] if i < len(y) else None
                row = [_tile(x, mask, i, name, f1, f2, y=label, head="benign")]
                for attack, adv in adversarial.items():
                    adv = mapping(adv)
                    success = _labels(adv.get("success"))
                    row.append(_tile(_array(adv.get("x")), _array(adv.get("mask")), i, name,
                                     _labels(adv.get("f1")), _labels(adv.get("f2")), y=label, head=str(attack),
                                     success=bool(success[i]) if i < len(success) else None))
                block["examples"].append({"y": name(label), "tiles": row})
        except Exception as exc:
            block["error"] = f"part of this gallery entry could not be drawn: {type(exc).__name__}: {exc}"
        blocks.append(block)
    if not blocks:
        return [], "not computed: gallery.pt holds no entries."
    return blocks, ""

