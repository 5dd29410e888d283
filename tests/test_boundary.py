"""The harness checks what every plugin returns: a broken plugin fails its own cells, one line names it, and the
rest of the grid runs, with results.json and the page written."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner

import advbench
from advbench import api, boundary, plugins
from advbench.cli import main
from test_plan import small_digits

PLUGIN = {"kind": "interpreter", "name": "zz-bad", "distribution": "advbench-zz", "version": "9.9"}


class WrongShape(api.Interpreter):
    name = "zz-wrong-shape"
    description = "masks of a quarter of the input's size"

    def explain(self, state, victim, x, ctx):
        return torch.rand(len(x), x.shape[1], x.shape[2] // 2, x.shape[3] // 2, device=x.device)


class NaNMasks(api.Interpreter):
    name = "zz-nan-masks"
    description = "masks full of NaN"

    def explain(self, state, victim, x, ctx):
        return torch.full((len(x), 1, *x.shape[2:]), float("nan"), device=x.device)


class FlatScores(api.Detector):
    name = "zz-2d-scores"
    description = "returns one score column too many"

    def score(self, env, x, ctx):
        return api.DetectorOutput(score=torch.zeros(len(x), 2, device=x.device))


class RaisingDetector(api.Detector):
    name = "zz-raising"
    description = "raises while scoring"

    def score(self, env, x, ctx):
        raise ValueError("broken on purpose")


class Plugin:
    @advbench.hookimpl
    def register_interpreters(register):
        register(WrongShape)
        register(NaNMasks)

    @advbench.hookimpl
    def register_detectors(register):
        register(FlatScores)
        register(RaisingDetector)


@pytest.fixture
def broken_plugins():
    plugins.register_plugin(Plugin, name="zz-broken-plugins")
    yield
    plugins.unregister_plugin(Plugin)


def run(tmp_path, monkeypatch, **changes):
    raw = yaml.safe_load(open(small_digits(tmp_path)))
    raw["attacks"].pop("pgd")
    raw.update(changes)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "run"), "--threads", "1"])
    return result, json.loads((tmp_path / "run" / "results.json").read_text())


def test_checks_name_the_plugin_and_what_was_wrong():
    x = torch.rand(4, 3, 8, 8)
    with pytest.raises(boundary.PluginOutputError, match=r"interpreter 'zz-bad' \(advbench-zz 9.9\): explain "
                                                         r"returned masks of shape \(4, 3, 4, 4\)"):
        boundary.check_masks(PLUGIN, torch.rand(4, 3, 4, 4), x)
    with pytest.raises(boundary.PluginOutputError, match="NaN"):
        boundary.check_masks(PLUGIN, torch.full((4, 1, 8, 8), float("nan")), x)
    with pytest.raises(boundary.PluginOutputError, match=r"masks in \[2, 2\]; allowed: \[0, 1\]"):
        boundary.check_masks(PLUGIN, torch.full((4, 1, 8, 8), 2.0), x)
    assert boundary.check_masks(PLUGIN, torch.rand(4, 1, 8, 8), x).shape == (4, 1, 8, 8)
    with pytest.raises(boundary.PluginOutputError, match="same shape"):
        boundary.check_adversarial(PLUGIN, torch.rand(4, 3, 8, 7), x)
    with pytest.raises(boundary.PluginOutputError, match=r"scores of shape \(4, 2\)"):
        boundary.check_scores(PLUGIN, api.DetectorOutput(torch.zeros(4, 2)), 4)
    with pytest.raises(boundary.PluginOutputError, match="flags"):
        boundary.check_scores(PLUGIN, api.DetectorOutput(torch.zeros(4), torch.zeros(4)), 4)
    with pytest.raises(boundary.PluginOutputError, match=r"\(3, 10\) logits"):
        boundary.check_logits(PLUGIN, torch.zeros(3, 9), 3, 10)


@pytest.mark.parametrize("bad", ["zz-wrong-shape", "zz-nan-masks"])
def test_a_broken_interpreter_fails_its_cells_and_the_grid_goes_on(tmp_path, monkeypatch, broken_plugins, bad):
    result, results = run(tmp_path, monkeypatch, interpreters={"gradient": {}, bad: {}},
                          detectors={"contrastive": {}, "label-only": {}})
    assert result.exit_code == 1
    failed, = results["failed"]
    assert failed["error"].startswith(f"interpreter '{bad}' (")
    assert "mask-classifier" not in failed["stage"] and failed["skipped"]  # f2 and the rest never ran on it
    assert results["complete"] is False and any(m.startswith("failed: ") for m in results["missing"])
    interpreters = {r["interpreter"] for r in results["interpreters"]}
    assert interpreters == {"gradient"}  # the good interpreter's cells are all there
    detectors = {(r["detector"], r["interpreter"]) for r in results["detection"]}
    assert detectors == {("contrastive", "gradient"), ("label-only", None)}
    page = (tmp_path / "run" / "index.html").read_text()
    assert bad in page and "incomplete" in page.lower()
    assert f"failed: {bad} on cnn" in result.output or "failed:" in result.output


@pytest.mark.parametrize("bad, message", [("zz-2d-scores", "scores of shape"),
                                          ("zz-raising", "ValueError: broken on purpose")])
def test_a_broken_detector_fails_its_cells_and_the_others_are_scored(tmp_path, monkeypatch, broken_plugins, bad,
                                                                     message):
    result, results = run(tmp_path, monkeypatch, detectors={"label-only": {}, bad: {}},
                          description="A <b>small</b> grid with a broken detector")
    assert result.exit_code == 1
    assert results["failed"] and all(message in f["error"] and f"'{bad}'" in f["error"] for f in results["failed"])
    assert {r["detector"] for r in results["detection"]} == {"label-only"}
    assert results["description"] == "A <b>small</b> grid with a broken detector"
    page = (tmp_path / "run" / "index.html").read_text()
    assert "A &lt;b&gt;small&lt;/b&gt; grid with a broken detector" in page
