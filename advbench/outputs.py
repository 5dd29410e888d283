"""Writing a run folder's outputs: results.json (checked against advbench.results), one CSV per table and
gallery.pt, each written atomically so a reader never sees half a file."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from advbench.results import SCHEMA_VERSION, validate_results
from advbench.security import IDENTITY

log = logging.getLogger("advbench.outputs")


CSV_TABLES = {
    "victims.csv": ("victims", ["victim", "plugin", "clean_accuracy"]),
    "interpreters.csv": ("interpreters", ["victim", "interpreter", "plugin", "mask_classifier",
                                          "mask_classifier_accuracy", "n_accuracy_masks", "majority_class_share",
                                          "n_train_masks", "match_to", "match_target_accuracy", "match_accuracy",
                                          "match_epochs"]),
    "attacks.csv": ("attacks", ["attack", "plugin", "knowledge", "detector", "interpreter", "norm", "eps", "quantize",
                                "targeted", "steps", "source", "n", "n_correct", "n_success", "success_rate",
                                "success_rate_correct", "quantization_undone", "mean_linf", "mean_l2", "mean_l0",
                                "median_linf", "median_l2", "median_l0"]),
    "detection.csv": ("detection", ["detector", "interpreter", "attack", "knowledge", "protocol", "fit_attack",
                                    "source", "target", "subset", "population", "benign_population", "n_adversarial",
                                    "n_benign", "tpr", "tpr_ci_low", "tpr_ci_high", "tnr", "tnr_ci_low",
                                    "tnr_ci_high", "auroc", "auroc_ci_low", "auroc_ci_high",
                                    "tpr_cal_1", "fpr_cal_1", "tpr_cal_5", "fpr_cal_5", "tpr_cal_10", "fpr_cal_10",
                                    "tpr_at_fpr_1", "tpr_at_fpr_5", "tpr_at_fpr_10", "tnr_at_tpr_90", "tnr_at_tpr_95",
                                    "mask_invariance", "recovery_rate"]),
    "worst_case.csv": ("worst_case", ["detector", "interpreter", "fit_attack", "source", "target", "subset",
                                      "n_pairs", "auroc", "auroc_ci_low", "auroc_ci_high", "tpr", "tnr"]),
    "security.csv": ("security", ["detector", "interpreter", "target", "source", "attack", "attack_plugin", "knowledge",
                                  "norm", "eps", "quantize", "targeted", "steps", "gradient", "fit_attack", "threshold",
                                  "fpr", "status", "reason", "n", "n_correct", "n_misclassified", "n_evaded",
                                  "success_rate", "success_rate_ci_low", "success_rate_ci_high",
                                  "success_under_detection", "success_under_detection_ci_low",
                                  "success_under_detection_ci_high", "robust_accuracy_detection_aware",
                                  "robust_accuracy_detection_aware_ci_low", "robust_accuracy_detection_aware_ci_high",
                                  "detected_share", "detected_share_ci_low", "detected_share_ci_high"]),
    "sanity_checks.csv": ("sanity_checks", ["check", "outcome", *IDENTITY, "detail"]),
    "comparisons.csv": ("comparisons", ["attack", "source", "target", "subset", "population", "best", "other",
                                        "auroc_best", "auroc_other", "delta", "delta_ci_low", "delta_ci_high",
                                        "p_value", "significant"]),
    # written only where the run has the section: with seeds, with a sweep, with detectors fitted per attack
    "controls.csv": ("controls", ["attack", "source", "target", "subset", "population", "detector", "control",
                                  "auroc", "auroc_control", "delta", "delta_ci_low", "delta_ci_high", "p_value",
                                  "verdict"]),
    "unseen.csv": ("unseen", ["detector", "interpreter", "fit_attack", "attack", "source", "target", "subset",
                              "population", "n_adversarial", "n_benign", "auroc", "auroc_ci_low", "auroc_ci_high",
                              "tpr_cal_1", "fpr_cal_1", "tpr_cal_5", "fpr_cal_5", "tpr_cal_10", "fpr_cal_10",
                              "tpr", "tnr"]),
    "seed_summary.csv": ("seed_summary", ["section", "victim", "detector", "interpreter", "attack", "knowledge",
                                          "source", "target", "subset", "population", "metric", "n_seeds", "mean",
                                          "std", "min", "max"]),
    "validation.csv": ("validation", ["detector", "interpreter", "attack", "knowledge", "source", "target",
                                      "subset", "population", "n_adversarial", "n_benign", "tpr", "tnr", "auroc",
                                      "auroc_ci_low", "auroc_ci_high"]),
    "sweep_choice.csv": ("sweep_choice", ["detector", "interpreter", "attack", "source", "target", "n_points",
                                          "validation_auroc", "evaluation_auroc", "evaluation_auroc_ci_low",
                                          "evaluation_auroc_ci_high"]),
}
OPTIONAL_TABLES = ("seed_summary", "validation", "sweep_choice", "unseen", "controls")


def write_outputs(run_dir: Path, results: dict[str, Any], gallery: list) -> None:
    """results.json, one CSV per table (the seed and swept fields as extra columns) and gallery.pt; each written
    atomically.

    results.json carries ``schema_version`` and is checked against advbench.results.Results. A results dict
    that breaks the contract (a plugin's column of the wrong type) is written anyway, as it is, with a warning
    naming the field: a schema slip must not lose hours of results.
    """
    _atomic_text(run_dir / "results.json", json.dumps(checked_results(results), indent=1, allow_nan=False))
    sweep_fields = results.get("sweep_fields") or []
    for filename, (key, columns) in CSV_TABLES.items():
        if key in OPTIONAL_TABLES and results.get(key) is None:
            continue
        rows = results.get(key) or []
        if isinstance(rows, dict):
            rows = [{"victim": name, **row} for name, row in rows.items()]
        columns = columns + (["seed"] if any(isinstance(row, dict) and "seed" in row for row in rows) else [])
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns + sweep_fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            flat = dict(row)
            flat.update(row.get("sweep") or {})
            for nested in ("threat_model", "scope"):  # a record's fields become columns, the row's own kept first
                flat.update({k: v for k, v in (row.get(nested) or {}).items() if k not in flat})
            flat.update({f"match_{k}": v for k, v in (row.get("accuracy_match") or {}).items()})
            for name, value in row.items():  # an interval is two columns a spreadsheet can read
                if name.endswith("_ci"):
                    flat[f"{name}_low"], flat[f"{name}_high"] = value or (None, None)
            writer.writerow({k: ("" if flat.get(k) is None else flat.get(k)) for k in columns + sweep_fields})
        _atomic_text(run_dir / filename, buffer.getvalue())
    if gallery:
        tmp = run_dir / ".gallery.pt.tmp"
        torch.save(gallery, tmp)
        tmp.replace(run_dir / "gallery.pt")


def checked_results(results: dict[str, Any]) -> dict[str, Any]:
    """What results.json will hold: ``results`` as plain JSON data (non-finite floats as null, tensors as
    lists), with ``schema_version``, validated; unvalidated, with a logged warning, when it breaks the schema."""
    plain = json.loads(json.dumps(_finite(results), default=_json_default, allow_nan=False))
    if "schema_version" not in plain:
        plain = {"schema_version": SCHEMA_VERSION, **plain}
    try:
        return validate_results(plain)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}"
                             for error in exc.errors()[:5])
        more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        log.warning("results.json does not match schema %s, written unchecked: %s%s", plain["schema_version"],
                    problems, more)
        return plain


def _finite(value: Any) -> Any:
    """NaN and infinities become null: browsers' JSON.parse rejects them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
