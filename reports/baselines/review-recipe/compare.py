"""Our training recipe against the Aldahdooh et al. review's, on one network: print the detection rows of two runs
of the same suite shape side by side, with the difference of their AUROCs.

The two runs attack different victims (alexnet trained two ways), so their adversarial inputs differ and the
difference is unpaired: its 95% interval combines the two DeLong intervals as independent normal errors, which
is conservative where the runs share their benign images. From the repository root, after both runs:
    python reports/baselines/review-recipe/compare.py
Any two runs of one suite shape, e.g. FGSM at 8/255 rounded against ART's 8/256 unrounded (../fgsm-art/):
    python reports/baselines/review-recipe/compare.py --theirs reports/baselines/fgsm-art/results.json \
        --ours-protocols --labels "8/255 rounded" "8/256 unrounded"
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from advbench.errors import AdvbenchError
from advbench.metrics import Z95
from advbench.rescore import run_script

HERE = Path(__file__).resolve().parent


def read_json(path: Path) -> object:
    """A results.json or protocol JSON; a missing or unreadable one is an AdvbenchError (one line, exit 2)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AdvbenchError(f"{path}: no such file: run the command it comes from first (see this script's help)")
    except (OSError, ValueError) as exc:
        raise AdvbenchError(f"{path}: not a readable JSON file ({exc})")


def rows(path: Path) -> tuple[dict, dict[tuple[str, str], dict]]:
    run = read_json(path)
    picked = {(d["detector"], d["attack"]): d for d in run["detection"]
              if d["population"] == "successful" and d["protocol"] == "seen" and d["source"] == d["target"]}
    return run, picked


def auroc_text(row: dict) -> str:
    low, high = row["auroc_ci"]
    return f"{row['auroc']:.3f} [{low:.2f}, {high:.2f}]"


def tpr_text(row: dict) -> str:
    low, high = row["tpr_ci"]
    return f"{row['tpr']:.2f} [{low:.2f}, {high:.2f}] at {row['operating_point']['fpr']:.3f}"


def protocol_text(row: dict) -> str:
    """A row of kd_protocol.json or ma_protocol.json: AUROC, and DR and FPR at the regression's 0.5."""
    (dr_low, dr_high), (fpr_low, fpr_high) = row["dr_ci"], row["fpr_ci"]
    return (f"{auroc_text(row)}; DR {row['dr']:.2f} [{dr_low:.2f}, {dr_high:.2f}] at FPR {row['fpr']:.3f} "
            f"[{fpr_low:.3f}, {fpr_high:.3f}]")


def difference_text(first: dict, second: dict) -> str:
    standard_error = math.hypot(*((r["auroc_ci"][1] - r["auroc_ci"][0]) / (2 * Z95) for r in (first, second)))
    delta = second["auroc"] - first["auroc"]
    return f"{delta:+.3f} [{delta - Z95 * standard_error:+.3f}, {delta + Z95 * standard_error:+.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", type=Path, default=HERE.parent / "fit-size" / "results.json")
    parser.add_argument("--theirs", type=Path, default=HERE / "results.json")
    parser.add_argument("--ours-protocols", type=Path, nargs="*",
                        default=[HERE.parent / "kd_protocol.json", HERE.parent / "fit-size" / "ma_protocol.json"])
    parser.add_argument("--theirs-protocols", type=Path, nargs="*",
                        default=[HERE / "kd_protocol.json", HERE / "ma_protocol.json"])
    parser.add_argument("--labels", nargs=2, default=["our recipe", "the review's"], metavar=("OURS", "THEIRS"))
    args = parser.parse_args()
    first, second = args.labels
    if args.ours_protocols and len(args.ours_protocols) != len(args.theirs_protocols):
        raise AdvbenchError(f"--ours-protocols and --theirs-protocols: {len(args.ours_protocols)} and "
                            f"{len(args.theirs_protocols)} files; give one of each per protocol, in the same order")
    ours_run, ours = rows(args.ours)
    theirs_run, theirs = rows(args.theirs)
    accuracy = lambda run: ", ".join(f"{v['clean_accuracy']:.2%}" for v in run["victims"].values())  # noqa: E731
    print(f"clean accuracy: {first} {accuracy(ours_run)}, {second} {accuracy(theirs_run)}")
    for run, label in ((ours_run, first), (theirs_run, second)):
        print(f"{label}: " + ", ".join(f"{a['attack']} {a['n_success']} of {a['n']} (correct inputs "
                                       f"{a['success_rate_correct']:.3f})" for a in run["attacks"]))
    print(f"| detector | attack | AUROC, {first} | AUROC, {second} | difference | TPR at the calibrated 5% "
          f"threshold (FPR on the evaluation images), {first} | the same, {second} |")
    print("|---|---|---|---|---|---|---|")
    for key in sorted(set(ours) & set(theirs)):
        a, b = ours[key], theirs[key]
        print(f"| {key[0]} | {key[1]} | {auroc_text(a)} | {auroc_text(b)} | {difference_text(a, b)} | "
              f"{tpr_text(a)} | {tpr_text(b)} |")
    if not args.ours_protocols:
        return
    print()
    print(f"| scored as the review's code scores it | attack | {first} | {second} | difference |")
    print("|---|---|---|---|---|")
    for ours_file, theirs_file in zip(args.ours_protocols, args.theirs_protocols):
        detector = "kd-bu" if "kd" in ours_file.name else "lid"
        theirs_rows = {(r["attack"], r["protocol"]): r for r in read_json(theirs_file)}
        for a in read_json(ours_file):
            b = theirs_rows.get((a["attack"], a["protocol"]))
            if b is not None:
                print(f"| {detector}, {a['protocol']} | {a['attack']} | {protocol_text(a)} | {protocol_text(b)} | "
                      f"{difference_text(a, b)} |")


if __name__ == "__main__":
    run_script(main)
