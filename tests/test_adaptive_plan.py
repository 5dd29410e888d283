"""Adaptive attacks in the stage graph: crafted against one fitted detector and its held-out threshold, scored like
any other attack, and reported beside the oblivious rows; cells that cannot run say why."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import advbench
from advbench import api, metrics, plugins
from conftest import load_results
from test_plan import small_digits

SEEN: dict[str, list] = {"thresholds": [], "detectors": []}


class Brightness(api.Detector):
    """Score = mean brightness: known, differentiable, fitted on nothing."""

    name = "zz-bright"
    description = "the image's mean brightness"
    adaptive_gradient = "exact"

    def score(self, env, x, ctx):
        return api.DetectorOutput(score=x.mean(dim=(1, 2, 3)))

    def attack_score(self, env, x, ctx):
        assert ctx.differentiable
        return x.mean(dim=(1, 2, 3))


class Opaque(api.Detector):
    """No differentiable score: its adaptive cells must say so."""

    name = "zz-opaque"
    description = "a detector with no attack_score"

    def score(self, env, x, ctx):
        return api.DetectorOutput(score=x.amax(dim=(1, 2, 3)))


class Darken(api.Attack):
    """Adaptive toy: PGD on the victim's loss, then darken the flagged ones, keeping a darker image only where it
    is still misclassified and now below the defence's threshold."""

    name = "zz-darken"
    description = "PGD on cross-entropy, then lower the brightness score where that keeps the label wrong"
    norm = "linf"
    knowledge = "adaptive"

    class Options(api.Options):
        eps: float = 0.3

    def run(self, model, x, y, ctx, defence):
        SEEN["thresholds"].append(defence.threshold)
        SEEN["detectors"].append(defence.detector)
        eps = self.options.eps
        adv = x.clone()
        for _ in range(10):
            adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(adv), y), adv)
            adv = torch.min(torch.max(adv.detach() + eps / 4 * grad.sign(), x - eps), x + eps).clamp(0, 1)
        best = adv.clone()
        for _ in range(10):
            adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(defence.score(adv).sum(), adv)
            adv = torch.min(torch.max(adv.detach() - eps / 8 * grad.sign(), x - eps), x + eps).clamp(0, 1)
            with torch.no_grad():
                better = (model(adv).argmax(1) != y) & ~defence.flagged(adv) & defence.flagged(best)
            best[better] = adv[better]
        return best


class Plugin:
    @advbench.hookimpl
    def register_detectors(register):
        register(Brightness)
        register(Opaque)

    @advbench.hookimpl
    def register_attacks(register):
        register(Darken)


@pytest.fixture
def toy_plugins():
    plugins.register_plugin(Plugin, name="zz-adaptive-toys")
    SEEN["thresholds"].clear()
    SEEN["detectors"].clear()
    yield
    plugins.unregister_plugin(Plugin)


def test_adaptive_attack_gets_the_held_out_threshold_and_is_reported_beside_oblivious(tmp_path, monkeypatch,
                                                                                     toy_plugins):
    from advbench.cli import main
    from advbench.plan import Settings, build_plan, data_node
    from advbench.stages import calibration_indices, load_dataset
    from advbench.suite import load_suite

    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "cache"))
    suite = small_digits(tmp_path, detectors={"zz-bright": {}, "zz-opaque": {}, "contrastive": {}},
                         attacks={"fgsm": {"plugin": "fgsm", "options": {"eps": 0.3}},
                                  "darken": {"plugin": "zz-darken"}})
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", suite, "--out", str(out), "--no-report", "--threads", "1"])
    assert result.exit_code == 0, result.output
    results = load_results(out)

    # the attacker was told the 5% threshold chosen on the calibration images, nothing from the evaluation set
    loaded = load_suite(suite)
    settings = Settings(cache_root=str(tmp_path / "cache"), seed=loaded.spec.seed)
    data = load_dataset(data_node(loaded, settings))
    plan = build_plan(loaded, data, settings)
    calibration = data.test_x[calibration_indices(plan.subset)].mean(dim=(1, 2, 3))
    expected = metrics.calibrated_threshold(calibration.numpy(), 0.05)
    # every detector with a differentiable score is attacked (contrastive too); the opaque one is not
    assert set(SEEN["detectors"]) == {"zz-bright", "contrastive"}
    told = [t for d, t in zip(SEEN["detectors"], SEEN["thresholds"]) if d == "zz-bright"]
    assert told and told == pytest.approx([expected] * len(told))

    rows = {(r["detector"], r["attack"], r["knowledge"]): r for r in results["security"]}
    oblivious, adaptive = rows[("zz-bright", "fgsm", "oblivious")], rows[("zz-bright", "darken", "adaptive")]
    assert oblivious["threshold"] == pytest.approx(expected) and adaptive["threshold"] == pytest.approx(expected)
    # an attacker who also lowers the score hides more misclassified inputs under the threshold than FGSM
    assert adaptive["success_under_detection"] > oblivious["success_under_detection"]
    assert adaptive["detected_share"] < oblivious["detected_share"]
    assert {c["check"] for c in results["sanity_checks"]} == {"eps-growth", "more-steps", "transfer-vs-whitebox"}
    # cells that cannot run are rows that say why, not gaps
    opaque = rows[("zz-opaque", "darken", "adaptive")]
    assert opaque["status"] == "unsupported" and "no differentiable score" in opaque["reason"]
    assert ("zz-opaque", "fgsm", "oblivious") in rows
    # the adaptive set is an attack row of its own, naming the detector it was crafted against
    crafted = [a for a in results["attacks"] if a.get("knowledge") == "adaptive"]
    assert sorted((a["attack"], a["detector"]) for a in crafted) == [("darken", "contrastive"), ("darken", "zz-bright")]
    detection = [r for r in results["detection"] if r["attack"] == "darken"]
    assert {r["detector"] for r in detection} == {"contrastive", "zz-bright"}
    assert all(r["knowledge"] == "adaptive" for r in detection)


def test_a_suite_whose_only_attack_is_adaptive_runs(tmp_path):
    """No oblivious attack: the adaptive cell still gets its detector's benign and calibration scores."""
    from conftest import advbench_cli

    suite = small_digits(tmp_path, detectors={"contrastive": {}},
                         attacks={"opgd": {"plugin": "opgd", "options": {"eps": 0.2, "alpha": 0.05, "steps": 5}}})
    advbench_cli("run", suite, "--out", str(tmp_path / "run"), "--threads", "1", "--no-report",
                 cache=tmp_path / "cache")
    results = load_results(tmp_path / "run")
    row, = [r for r in results["security"] if r["knowledge"] == "adaptive"]
    assert row["status"] == "ok" and row["n_correct"] > 0 and row["threshold"] is not None
    assert {r["attack"] for r in results["detection"]} == {"opgd"}


def test_transfer_security_rows_judge_success_by_the_target_victim(tmp_path):
    """A transferred input counts as a success only where the TARGET misclassifies it (its own labels)."""
    import yaml

    from conftest import advbench_cli

    raw = yaml.safe_load(open(small_digits(tmp_path, detectors={"contrastive": {}})))
    raw["victims"]["other"] = {"plugin": "small-cnn", "options": {"epochs": 2}}
    raw["evaluation"]["pairs"] = [{"source": "cnn", "target": "cnn"}, {"source": "other", "target": "cnn"}]
    raw["attacks"].pop("pgd")
    raw["attacks"]["opgd"] = {"plugin": "opgd", "options": {"eps": 0.2, "alpha": 0.05, "steps": 3}}
    path = tmp_path / "transfer.yaml"
    path.write_text(yaml.safe_dump(raw))
    advbench_cli("run", str(path), "--out", str(tmp_path / "run"), "--threads", "1", "--no-report",
                 cache=tmp_path / "cache")
    results = load_results(tmp_path / "run")
    crafted = next(a for a in results["attacks"] if a["source"] == "other" and a["attack"] == "fgsm")
    on_target = crafted["transfer"]["cnn"]
    row, = [r for r in results["security"] if r["source"] == "other" and r["attack"] == "fgsm"]
    assert row["n_correct"] == on_target["n_target_correct"]
    assert row["n_misclassified"] == on_target["n_fools_target"]
    adaptive = [r for r in results["security"] if r["source"] == "other" and r["knowledge"] == "adaptive"]
    assert adaptive and all(r["status"] == "not-applicable" for r in adaptive)
