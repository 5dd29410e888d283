"""End-to-end runs on real data: digits (the embedded default) and a small CIFAR-10 subset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CIFAR_TAR, REPO, advbench_cli, load_results

CONTRACT = {
    "top": ["suite", "advbench_version", "seed", "device", "started", "wall_seconds", "victims", "interpreters",
            "attacks", "detection"],
    "interpreters": ["victim", "interpreter", "mask_classifier_accuracy"],
    "attacks": ["attack", "source", "n", "success_rate", "mean_linf", "mean_l2", "mean_l0"],
    "detection": ["detector", "interpreter", "attack", "source", "target", "n_adversarial", "n_benign", "tpr", "tnr",
                  "auroc", "mask_invariance", "recovery_rate", "subset"],
}


def kill_once_stored(proc: subprocess.Popen, cache: Path, stage: str, poll: float) -> None:
    """kill -9 a run (its whole process group) as soon as its cache holds an entry of ``stage``."""
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(json.loads(m.read_text()).get("stage") == stage for m in cache.glob("*/*.json")):
                break
            time.sleep(poll)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()


def test_digits_run_writes_the_results_contract(digits_run):
    results = load_results(digits_run)
    for key in CONTRACT["top"]:
        assert key in results, key
    assert results["complete"] is True
    assert results["suite"] == "digits"
    assert results["victims"]["cnn"]["clean_accuracy"] > 0.9  # a real, trained victim
    for section in ("interpreters", "attacks", "detection"):
        assert results[section], section
        for row in results[section]:
            for key in CONTRACT[section]:
                assert key in row, (section, key)
    attack = results["attacks"][0]
    assert attack["n"] == 300 and 0 < attack["success_rate"] <= 1
    # FGSM moves every pixel by eps = 0.2; rounded onto the digits' 1/16 grid, that is 3 steps
    assert attack["mean_linf"] == pytest.approx(3 / 16, abs=1e-6)
    assert attack["threat_model"] == {"norm": "linf", "eps": 0.2, "quantize": True, "targeted": False, "levels": 16}
    assert attack["eps"] == 0.2 and attack["quantization_undone"] >= 0
    assert attack["median_linf"] == pytest.approx(3 / 16, abs=1e-6)
    row = next(r for r in results["detection"] if r["subset"] == "all" and r["population"] == "successful")
    # positives are the successful adversarial inputs; negatives every natural evaluation image (the default)
    assert row["n_adversarial"] == attack["n_success"] and row["n_benign"] == attack["n"] == 300
    assert row["benign_population"] == "natural" and results["evaluation"]["benign"] == "natural"
    assert 0 <= row["tpr"] <= 1 and 0 <= row["tnr"] <= 1 and 0 <= row["auroc"] <= 1
    for name in ("results.json", "detection.csv", "attacks.csv", "victims.csv", "interpreters.csv", "run.log",
                 "index.html", "gallery.pt"):
        assert (digits_run / name).is_file(), name


def test_csv_tables_match_results_json(digits_run):
    import csv

    results = load_results(digits_run)
    with open(digits_run / "detection.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(results["detection"])
    for csv_row, row in zip(rows, results["detection"]):
        assert float(csv_row["auroc"]) == pytest.approx(row["auroc"])
        assert csv_row["attack"] == row["attack"] and csv_row["subset"] == row["subset"]


def test_second_run_reuses_every_stage_and_a_changed_field_recomputes_only_its_dependents(digits_run, digits_cache,
                                                                                          tmp_path):
    first = load_results(digits_run)
    again = tmp_path / "again"
    start = time.perf_counter()
    advbench_cli("run", "suites/digits.yaml", "--out", str(again), "--no-report", cache=digits_cache)
    assert time.perf_counter() - start < 60
    second = load_results(again)
    assert all(stage["cached"] for stage in second["stages"] if stage["stage"] != "data"), second["stages"]
    assert second["detection"] == first["detection"]

    changed = tmp_path / "changed"
    advbench_cli("run", "suites/digits.yaml", "--out", str(changed), "--no-report",
                 "--set", "attacks.fgsm.options.eps=0.25", cache=digits_cache)
    third = load_results(changed)
    recomputed = {s["stage"] for s in third["stages"] if not s["cached"] and s["stage"] != "data"}
    reused = {s["stage"] for s in third["stages"] if s["cached"]}
    # the gallery shows adversarial examples, so it depends on the attack too; so do f1's and f2's logits on them
    assert recomputed <= {"adversarial", "forwards", "scores", "masks", "gallery"}, recomputed
    assert {"victim", "mask-classifier"} <= reused
    assert third["attacks"][0]["mean_linf"] == pytest.approx(0.25, abs=1e-4)


def test_killed_run_resumes_to_the_same_results(digits_run, tmp_path):
    """Kill -9 in the middle (after the victim is stored), run again, compare with the uninterrupted run."""
    cache = tmp_path / "cache"
    env = {**os.environ, "ADVBENCH_CACHE": str(cache)}
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "advbench.cli", "run", "suites/digits.yaml", "--out", str(out),
                             "--no-report"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    kill_once_stored(proc, cache, "victim", poll=0.2)
    resumed = tmp_path / "resumed"
    advbench_cli("run", "suites/digits.yaml", "--out", str(resumed), "--no-report", cache=cache)
    results = load_results(resumed)
    victim_stage = next(s for s in results["stages"] if s["stage"] == "victim")
    assert victim_stage["cached"]  # the work done before the kill was kept
    assert results["detection"] == load_results(digits_run)["detection"]


def test_corrupt_cache_entry_is_recomputed_with_the_same_results(digits_run, digits_cache, tmp_path):
    # damage the stored victim of the session's cache copy, then run again
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(digits_cache, cache)
    victim_meta = next(m for m in cache.glob("*/*.json") if json.loads(m.read_text()).get("stage") == "victim")
    payload = victim_meta.with_suffix(".pt")
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF
    payload.write_bytes(bytes(data))
    out = tmp_path / "run"
    proc = advbench_cli("run", "suites/digits.yaml", "--out", str(out), "--no-report", cache=cache)
    results = load_results(out)
    assert not next(s for s in results["stages"] if s["stage"] == "victim")["cached"]
    assert "corrupt" in proc.stderr
    assert results["detection"] == load_results(digits_run)["detection"]


@pytest.mark.skipif(not CIFAR_TAR.exists(), reason=f"CIFAR-10 export not found at {CIFAR_TAR}")
def test_small_cifar10_run_through_the_real_loader(tmp_path):
    suite = tmp_path / "cifar-small.yaml"
    suite.write_text(f"""
name: cifar-small
seed: 0
dataset:
  plugin: cifar10
  options: {{path: {json.dumps(str(CIFAR_TAR))}, train_limit: 2000, test_limit: 400}}
victims:
  alexnet: {{plugin: alexnet, options: {{epochs: 2, width: 16}}}}
interpreters:
  lan: {{plugin: lan, options: {{epochs: 1, width: 128}}}}
mask_classifier: {{plugin: lenet, options: {{epochs: 2}}}}
attacks:
  fgsm: {{plugin: fgsm, options: {{eps: 0.03}}}}
detectors:
  contrastive: {{}}
evaluation:
  pairs: [{{source: alexnet, target: alexnet}}]
  n_eval: 100
  n_fit: 50
""")
    out = tmp_path / "run"
    advbench_cli("run", str(suite), "--out", str(out), "--no-report", cache=tmp_path / "cache")
    results = load_results(out)
    assert results["dataset"]["n_train"] == 2000 and results["dataset"]["n_test"] == 400
    assert results["dataset"]["classes"][0] == "airplane"
    assert results["victims"]["alexnet"]["clean_accuracy"] > 0.2  # well above chance after two short epochs
    assert results["interpreters"][0]["mask_channels"] in (1, 3)
    assert results["attacks"][0]["n"] == 100
    assert any(r["detector"] == "contrastive" for r in results["detection"])


def test_interrupted_run_keeps_and_reports_what_it_computed(tmp_path):
    """Ctrl-C mid-run: exit 130, results.json marked incomplete with what is missing, and a page that says so."""
    cache = tmp_path / "cache"
    out = tmp_path / "interrupted"
    env = {**os.environ, "ADVBENCH_CACHE": str(cache)}
    # a background job inherits SIGINT ignored: the child restores the default itself, so the test does not
    # depend on how pytest was launched
    proc = subprocess.Popen([sys.executable, "-m", "advbench.cli", "run", "suites/digits.yaml", "--out", str(out)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    # the first masks are computed once the victim is trained and its accuracy recorded
    while time.time() < deadline and proc.poll() is None:
        if any(json.loads(m.read_text()).get("stage") == "masks" for m in cache.glob("*/*.json")):
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    results = load_results(out)
    assert results["complete"] is False
    assert results["victims"]["cnn"]["clean_accuracy"] > 0.9  # computed before the interruption, kept
    assert any("detection" in item for item in results["missing"])
    page = (out / "index.html").read_text()
    assert "incomplete" in page.lower()


def test_runs_with_different_limits_share_a_cache_without_mixing_subsets(digits_run, digits_cache, tmp_path):
    """Stages computed on the evaluation images are keyed on that subset: a --limit run after a full one
    reuses the trained models but never the full run's per-image results."""
    out = tmp_path / "limited"
    advbench_cli("run", "suites/digits.yaml", "--out", str(out), "--no-report", "--limit", "40", cache=digits_cache)
    results = load_results(out)
    assert results["evaluation"]["n_eval"] == 40
    assert results["attacks"][0]["n"] == 40
    assert all(r["n_benign"] <= 40 for r in results["detection"])
    cached = {s["stage"] for s in results["stages"] if s["cached"]}
    assert {"victim", "mask-classifier"} <= cached


def test_f2_accuracy_on_more_test_masks_than_the_limit_attacks(digits_run, digits_cache, tmp_path):
    """evaluation.n_mask_eval measures f2 on its own count of test images, whatever --limit caps; the
    interpreters row says how many (an interpreter's own n_mask_eval wins over evaluation's)."""
    out = tmp_path / "mask-eval"
    advbench_cli("run", "suites/digits.yaml", "--out", str(out), "--no-report", "--limit", "40",
                 "--set", "evaluation.n_mask_eval=500", "--set", "interpreters.gradient.n_mask_eval=300",
                 cache=digits_cache)
    results = load_results(out)
    full = load_results(digits_run)
    assert results["evaluation"]["n_eval"] == 40
    row, = results["interpreters"]
    assert row["n_accuracy_masks"] == 300
    assert full["interpreters"][0]["n_accuracy_masks"] == full["evaluation"]["n_eval"]
    stage = next(s for s in results["stages"] if "f2 accuracy on 300 test masks" in s["label"])
    assert not stage["cached"]
    # the mask classifier is the full run's (the limit does not change training)
    assert next(s for s in results["stages"] if s["stage"] == "mask-classifier")["cached"]
    assert 0.0 <= row["mask_classifier_accuracy"] <= 1.0
    assert row["mask_classifier_accuracy"] * 300 == pytest.approx(round(row["mask_classifier_accuracy"] * 300),
                                                                  abs=1e-3)


def test_gallery_stores_only_the_shown_images(digits_run):
    """torch.save of a tensor view writes its whole storage: the gallery must hold copies, not views."""
    import torch

    gallery = torch.load(digits_run / "gallery.pt", weights_only=True)
    shown = sum(t.numel() * t.element_size() for entry in gallery for part in ("per_class", "examples")
                for t in entry[part].values() if isinstance(t, torch.Tensor))
    assert (digits_run / "gallery.pt").stat().st_size < 4 * shown + 200_000


def test_a_kill_during_victim_training_resumes_from_the_last_finished_epoch(tmp_path):
    """Training stages keep their last finished epoch in the cache (stage 'progress'): kill -9 mid-training,
    run again, and the victim continues from that epoch to the same weights and numbers as an unbroken run."""
    import yaml

    raw = yaml.safe_load((REPO / "suites" / "digits.yaml").read_text())
    raw["victims"]["cnn"]["options"]["epochs"] = 40
    raw["mask_classifier"]["options"]["epochs"] = 3
    raw["evaluation"].update(n_eval=100, n_fit=50)
    suite = tmp_path / "digits-long.yaml"
    suite.write_text(yaml.safe_dump(raw))
    advbench_cli("run", str(suite), "--out", str(tmp_path / "whole"), "--no-report", "--threads", "1",
                 cache=tmp_path / "cache-whole")
    cache = tmp_path / "cache"
    env = {**os.environ, "ADVBENCH_CACHE": str(cache)}
    proc = subprocess.Popen([sys.executable, "-m", "advbench.cli", "run", str(suite), "--out", str(tmp_path / "killed"),
                             "--no-report", "--threads", "1"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    kill_once_stored(proc, cache, "progress", poll=0.02)
    resumed = tmp_path / "resumed"
    advbench_cli("run", str(suite), "--out", str(resumed), "--no-report", "--threads", "1", cache=cache)
    log = (resumed / "run.log").read_text()
    assert "victims.cnn: resuming after epoch" in log
    results = load_results(resumed)
    assert results["victims"] == load_results(tmp_path / "whole")["victims"]
    assert results["detection"] == load_results(tmp_path / "whole")["detection"]
    assert not any(json.loads(m.read_text()).get("stage") == "progress" for m in cache.glob("*/*.json"))


def test_two_concurrent_runs_on_one_fresh_cache_compute_each_stage_once(tmp_path):
    """Each node is computed under its cache key's lock: the second run waits for a stage the first is
    computing and then reuses it, so every stage is computed once in all, and both runs report the same."""
    cache = tmp_path / "cache"
    env = {**os.environ, "ADVBENCH_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-m", "advbench.cli", "run", "suites/digits.yaml", "--out",
                               str(tmp_path / name), "--no-report", "--threads", "1"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name in ("first", "second")]
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-2000:]
    first, second = load_results(tmp_path / "first"), load_results(tmp_path / "second")
    def records(results: dict) -> dict[tuple[str, str], bool]:
        return {(s["stage"], s["label"]): s["cached"] for s in results["stages"] if s["stage"] != "data"}

    ours, theirs = records(first), records(second)
    assert ours.keys() == theirs.keys()
    # every stage computed by exactly one of the two runs; the other's record shows the hit
    assert all(ours[k] != theirs[k] for k in ours), (ours, theirs)
    for section in ("victims", "interpreters", "attacks", "detection", "worst_case"):
        assert first[section] == second[section], section


def test_another_batch_size_or_auto_on_the_cpu_recomputes_nothing_digits_uses(digits_run, digits_cache, tmp_path):
    """digits' attacks (FGSM, OPGD without a random start), interpreter and detector do not depend on the batch
    size: at 64 every stage is read from the cache the default run filled. ``auto`` on the CPU resolves to 128,
    says so in run.log and results.json, and the recorded command names the number."""
    first = load_results(digits_run)
    assert first["host"]["batch_size"] == 128 and "batch_size_requested" not in first["host"]
    for value, batch in (("64", 64), ("auto", 128)):
        out = tmp_path / value
        advbench_cli("run", "suites/digits.yaml", "--out", str(out), "--no-report", "--device", "cpu",
                     "--set", f"batch_size={value}", cache=digits_cache)
        results = load_results(out)
        assert all(stage["cached"] for stage in results["stages"] if stage["stage"] != "data"), value
        assert results["detection"] == first["detection"]
        assert results["host"]["batch_size"] == batch
        if value == "auto":
            assert results["host"]["batch_size_requested"] == "auto"
            assert results["command"].endswith("--set batch_size=128")
            log = (out / "run.log").read_text()
            assert sum("batch_size: auto resolves to 128 on the cpu" in line for line in log.splitlines()) == 1
