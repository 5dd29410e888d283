"""An honest protocol: seeds repeat the grid on the same images, a sweep chooses its point on validation images."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from conftest import REPO, advbench_cli, load_results


def tiny_digits(tmp_path, **changes) -> str:
    """suites/digits.yaml cut to seconds: two training epochs, FGSM only, the label-only control beside the
    contrastive detector, 60 evaluation, 40 fitting and 60 calibration images."""
    suite = yaml.safe_load((REPO / "suites" / "digits.yaml").read_text())
    suite["victims"]["cnn"]["options"]["epochs"] = 2
    suite["mask_classifier"]["options"]["epochs"] = 2
    del suite["attacks"]["opgd"]
    suite["detectors"]["label-only"] = {}
    suite["evaluation"].update(n_eval=60, n_fit=40, n_calibration=60)
    suite.update(changes)
    path = tmp_path / f"tiny-{len(list(tmp_path.glob('tiny-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(suite))
    return str(path)


def plan_of(path: str, tmp_path):
    from advbench.plan import Settings, build_plan, data_node
    from advbench.stages import load_dataset
    from advbench.suite import load_suite

    suite = load_suite(path)
    settings = Settings(cache_root=str(tmp_path / "cache"), seed=suite.spec.seed, threads=1)
    return build_plan(suite, load_dataset(data_node(suite, settings)), settings)


# ---------------------------------------------------------------------------------------------------------
# seeds


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seeds")
    suite = tiny_digits(tmp, seeds=[0, 1])
    advbench_cli("run", suite, "--out", str(tmp / "run"), "--threads", "1", cache=tmp / "cache")
    return suite, tmp, load_results(tmp / "run")


def test_seeds_train_other_victims_on_the_same_images(seeded_run):
    suite, tmp, results = seeded_run
    assert results["seeds"] == [0, 1] and results["seed"] == 0 and results["evaluation"]["split_seed"] == 0
    plan = plan_of(suite, tmp)
    assert [p.seed for p in plan.points] == [0, 1]
    victims = [p.victims["cnn"]["victim"] for p in plan.points]
    assert victims[0] != victims[1]  # trained under its own seed
    # ... on the same images: every node that reads test images reads one split, recorded once
    specs = [n.params["images"] for n in plan.nodes.values() if "images" in n.params]
    specs = [spec for s in specs for spec in (s.values() if "set" not in s else [s])]  # a scores node's sets
    assert len(specs) > 10 and len({repr(spec["subset"]) for spec in specs}) == 1
    indices = results["evaluation"]["indices"]
    assert len(indices["eval"]) == 60 and len(indices["fit"]) == 40 and len(indices["calibration"]) == 60
    accuracy = {p["seed"]: p["victims"]["cnn"]["clean_accuracy"] for p in results["points"]}
    assert set(accuracy) == {0, 1} and accuracy[0] != accuracy[1]
    assert results["victims"]["cnn"]["clean_accuracy"] == accuracy[0]  # the first seed's, as a one-seed run
    for section in ("interpreters", "attacks", "detection", "security"):
        assert {r["seed"] for r in results[section]} == {0, 1}, section
    assert {r["n"] for r in results["attacks"]} == {60}
    header = (tmp / "run" / "detection.csv").read_text().splitlines()[0].split(",")
    assert header[-1] == "seed" and (tmp / "run" / "seed_summary.csv").exists()
    page = (tmp / "run" / "index.html").read_text()
    assert 'id="table-seed-detection"' in page and "Across seeds" in page


def test_seed_summary_is_numpy_mean_and_sample_std_over_the_seeds(seeded_run):
    _, _, results = seeded_run
    summary = results["seed_summary"]
    checked = 0
    for row in results["detection"]:
        if row["seed"] != 0:
            continue
        identity = ("detector", "interpreter", "attack", "knowledge", "source", "target", "subset", "population")
        same = [r for r in results["detection"] if all(r[f] == row[f] for f in identity)]
        for metric in ("auroc", "tpr_cal_5", "fpr_cal_5"):
            values = np.array([r[metric] for r in same if r[metric] is not None])
            found = [s for s in summary if s["section"] == "detection" and s["metric"] == metric
                     and all(s[f] == row[f] for f in identity)]
            if not len(values):
                assert not found
                continue
            (s,) = found
            assert s["n_seeds"] == len(values) == 2 and s["seeds"] == [0, 1]
            assert s["mean"] == pytest.approx(values.mean(), abs=1e-12)
            assert s["std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
            assert (s["min"], s["max"]) == (values.min(), values.max())
            checked += 1
    assert checked >= 6
    victims = [s for s in summary if s["section"] == "victims"]
    values = np.array([p["victims"]["cnn"]["clean_accuracy"] for p in results["points"]])
    assert victims[0]["mean"] == pytest.approx(values.mean()) and victims[0]["std"] == pytest.approx(values.std(ddof=1))
    assert {s["section"] for s in summary} == {"victims", "interpreters", "detection", "security"}


def test_a_suite_without_seeds_keeps_its_keys(tmp_path):
    """Seeds go through the plan's one-seed path: ``seeds: [0]`` is the suite without seeds, node for node, and
    the first seed of several computes exactly those nodes (its cache is the one-seed run's)."""
    plain = plan_of(tiny_digits(tmp_path), tmp_path)
    assert list(plan_of(tiny_digits(tmp_path, seeds=[0]), tmp_path).nodes) == list(plain.nodes)
    several = plan_of(tiny_digits(tmp_path, seeds=[0, 3]), tmp_path)
    assert set(plain.nodes) < set(several.nodes)
    assert not any("validation" in n.label for n in plain.nodes.values())  # no sweep: no validation images
    other = plan_of(tiny_digits(tmp_path, seed=3), tmp_path)
    assert not set(other.nodes) & set(plain.nodes)  # a seed of its own splits other images: nothing shared


@pytest.mark.parametrize("value, path", [("[]", "seeds"), ("[0, 0]", "seeds.1"), ("[1, -2]", "seeds.1"),
                                         ("[yes]", "seeds.0"), ("[0.5]", "seeds.0"), ("3", "seeds")])
def test_bad_seeds_are_one_line_errors(tmp_path, value, path):
    from advbench.cli import main

    result = CliRunner().invoke(main, ["plan", tiny_digits(tmp_path), "--set", f"seeds={value}"])
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert f": {path}: " in errors[0] and "Traceback" not in result.output


@pytest.mark.parametrize("changes, message", [
    ({"seeds": [1, 2], "seed": 3}, "seed: found 3 beside seeds [1, 2]"),
    ({"seeds": [0, 1], "sweep": {"attacks.fgsm.options.eps": [0.1, 0.2]}}, "seeds: cannot be combined with sweep"),
])
def test_seeds_beside_another_seed_or_a_sweep_are_refused(tmp_path, changes, message):
    from advbench.errors import SuiteError
    from advbench.suite import load_suite

    with pytest.raises(SuiteError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_suite(tiny_digits(tmp_path, **changes))


# ---------------------------------------------------------------------------------------------------------
# the validation split of a sweep

SWEEP = {"attacks.fgsm.options.eps": [0.1, 0.2]}
EVALUATION = {"pairs": [{"source": "cnn", "target": "cnn"}], "n_eval": 60, "n_fit": 40, "n_calibration": 60}


def test_validation_images_are_disjoint_from_the_other_splits(tmp_path):
    import torch

    from advbench.stages import calibration_indices, subset_indices, validation_indices

    plan = plan_of(tiny_digits(tmp_path, sweep=SWEEP), tmp_path)
    eval_idx, fit_idx = subset_indices(plan.subset)
    splits = [eval_idx, fit_idx, calibration_indices(plan.subset), validation_indices(plan.subset)]
    assert [len(s) for s in splits] == [60, 40, 60, 200]
    joined = torch.cat(splits)
    assert len(set(joined.tolist())) == len(joined)
    # validation adds nodes and moves none: the same suite without it has a subset of the keys
    without = plan_of(tiny_digits(tmp_path, sweep=SWEEP, evaluation={**EVALUATION, "n_validation": 0}), tmp_path)
    assert set(without.nodes) < set(plan.nodes)
    assert not any("validation" in n.label for n in without.nodes.values())


def test_a_sweep_reports_the_point_chosen_on_validation(tmp_path):
    suite = tiny_digits(tmp_path, sweep=SWEEP, evaluation={**EVALUATION, "n_validation": 50})
    advbench_cli("run", suite, "--out", str(tmp_path / "run"), "--threads", "1", cache=tmp_path / "cache")
    results = load_results(tmp_path / "run")
    indices = results["evaluation"]["indices"]
    assert len(indices["validation"]) == 50 and not set(indices["validation"]) & set(
        indices["eval"] + indices["fit"] + indices["calibration"])
    validation = results["validation"]
    assert {r["n_benign"] for r in validation} == {50} and {r["subset"] for r in validation} == {"all"}
    assert {json_key(r["sweep"]) for r in validation} == {json_key({k: v}) for k, vs in SWEEP.items() for v in vs}
    for choice in results["sweep_choice"]:
        rows = [r for r in validation if (r["detector"], r["attack"], r["population"]) ==
                (choice["detector"], choice["attack"], "successful") and r["auroc"] is not None]
        assert choice["validation_auroc"] == max(r["auroc"] for r in rows)
        reported = [r for r in results["detection"] if (r["detector"], r["attack"], r["sweep"], r["subset"],
                    r["population"]) == (choice["detector"], choice["attack"], choice["sweep"], "all", "successful")]
        assert choice["evaluation_auroc"] == reported[0]["auroc"] and choice["evaluation_auroc_ci"] == \
            reported[0]["auroc_ci"]
    assert (tmp_path / "run" / "sweep_choice.csv").exists()


def json_key(sweep: dict) -> str:
    import json

    return json.dumps(sweep, sort_keys=True)


def _rows(aurocs: list[float], **extra) -> list[dict]:
    return [{"detector": "d", "interpreter": None, "attack": "a", "source": "v", "target": "v", "subset": "all",
             "population": "successful", "sweep": {"x": i}, "auroc": auroc, "auroc_ci": [auroc - 0.1, auroc + 0.1],
             **extra} for i, auroc in enumerate(aurocs)]


def test_the_choice_reads_validation_rows_only():
    from advbench.selection import sweep_choice

    evaluation = _rows([0.9, 0.6, 0.7])
    (choice,) = sweep_choice(_rows([0.6, 0.8, 0.7]), evaluation)
    assert choice["sweep"] == {"x": 1} and choice["validation_auroc"] == 0.8
    assert choice["evaluation_auroc"] == 0.6 and choice["evaluation_auroc_ci"] == [0.5, 0.7]  # read, not chosen
    # other validation scores move the choice; other evaluation scores do not
    assert sweep_choice(_rows([0.6, 0.8, 0.95]), evaluation)[0]["sweep"] == {"x": 2}
    assert sweep_choice(_rows([0.6, 0.8, 0.7]), _rows([0.1, 0.2, 0.99]))[0]["sweep"] == {"x": 1}
    # other populations, subsets and adaptive rows are not compared
    noise = _rows([0.99, 0.1, 0.1], population="attacked") + _rows([0.99, 0.1, 0.1], knowledge="adaptive")
    assert sweep_choice(_rows([0.6, 0.8, 0.7]) + noise, evaluation)[0]["sweep"] == {"x": 1}
    assert sweep_choice(_rows([0.5, 0.5]), evaluation)[0]["tied"]
