"""advbench.rescore: the cached attack sets a protocol script re-scores are the run's own, and the rates it
reports at a threshold are counted exactly."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from advbench.cache import Cache
from advbench.rescore import add_run_arguments, cached_attack_sets, threshold_result
from advbench.errors import AdvbenchError
from conftest import REPO, load_results


def test_cached_sets_are_the_run_s_attacked_images(digits_run, digits_cache, monkeypatch):
    results = load_results(digits_run)
    parser = argparse.ArgumentParser()
    add_run_arguments(parser, suite=str(REPO / "suites" / "digits.yaml"), limit=0,
                      threads=results["host"]["torch_threads"], out=Path("unused.json"))
    args = parser.parse_args([])
    monkeypatch.chdir(REPO)  # the suite names its data relative to the repository root
    sets = list(cached_attack_sets(args, Cache(digits_cache)))
    assert [s.attack for s in sets] == ["fgsm"]  # the oblivious attack of the evaluation + fitting images
    fgsm = sets[0]
    assert len(fgsm.x) == len(fgsm.x_adv) == 300 + 200  # n_eval, then n_fit
    assert float((fgsm.x_adv - fgsm.x).abs().max()) <= 0.2 + 1e-6  # inside the suite's eps ball
    row = next(a for a in results["attacks"] if a["attack"] == "fgsm")
    assert int(fgsm.success[:300].sum()) == row["n_success"]  # the evaluation images come first
    assert int((fgsm.pred_clean[:300] == fgsm.y[:300]).sum()) == row["n_correct"]


def test_a_run_that_is_not_cached_is_an_error_not_a_recomputation(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    add_run_arguments(parser, suite=str(REPO / "suites" / "digits.yaml"), limit=0, threads=1, out=tmp_path / "o")
    monkeypatch.chdir(REPO)
    with pytest.raises(AdvbenchError, match=r"digits.yaml: fgsm on cnn is not in the cache .*: run the suite first"):
        next(cached_attack_sets(parser.parse_args([]), Cache(tmp_path / "empty-cache")))


@pytest.mark.parametrize("script", ["reports/lid-diagnosis/ma_protocol.py", "reports/baselines/kd_protocol.py"])
def test_a_protocol_script_given_a_bad_suite_says_so_in_one_line(script, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, script, "--suite", str(tmp_path / "nope.yaml")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"advbench: error: {tmp_path / 'nope.yaml'}: no such suite file"]


def test_threshold_rates_and_auroc_are_counted_exactly():
    benign = np.array([0.1, 0.2, 0.6, 0.3])
    adversarial = np.array([0.7, 0.4, 0.9])
    out = threshold_result(benign, adversarial)
    assert out["dr"] == pytest.approx(2 / 3) and out["fpr"] == pytest.approx(1 / 4)
    assert out["auroc"] == pytest.approx(11 / 12)  # 11 of the 12 (benign, adversarial) pairs ordered right
    assert (out["n_benign"], out["n_adversarial"]) == (4, 3)
    lo, hi = out["dr_ci"]
    assert lo < 2 / 3 < hi


def test_the_recipe_comparison_reads_the_committed_runs_and_names_a_missing_file(tmp_path):
    import subprocess
    import sys

    script = "reports/baselines/review-recipe/compare.py"
    proc = subprocess.run([sys.executable, script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # the README's row, recomputed from the two committed results.json files
    assert ("| kd-bu | fgsm | 0.577 [0.55, 0.60] | 0.596 [0.57, 0.62] | +0.019 [-0.018, +0.056] |"
            in proc.stdout)
    missing = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, script, "--theirs", str(missing)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"advbench: error: {missing}: no such file: run the command it comes from first (see this script's help)"]
