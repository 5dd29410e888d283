"""The plan: a suite as a graph of pure, picklable stage nodes, run the same by any executor."""

from __future__ import annotations

import json
import pickle

import pytest
import yaml

from conftest import REPO, advbench_cli, load_results

SECTIONS = ("victims", "interpreters", "attacks", "detection", "worst_case", "warnings", "dataset", "evaluation")


def small_digits(tmp_path, **changes) -> str:
    """suites/digits.yaml with shorter training and a second attack: a grid of ~20 nodes in seconds."""
    suite = yaml.safe_load((REPO / "suites" / "digits.yaml").read_text())
    suite["victims"]["cnn"]["options"]["epochs"] = 3
    suite["mask_classifier"]["options"]["epochs"] = 3
    suite["attacks"]["pgd"] = {"plugin": "pgd", "options": {"eps": 0.2, "steps": 3}}
    suite["attacks"].pop("opgd")  # oblivious grids here; tests/test_adaptive_plan.py covers adaptive attacks
    suite["detectors"]["label-only"] = {}
    suite["evaluation"].update(n_eval=120, n_fit=80)
    suite.update(changes)
    path = tmp_path / "digits-small.yaml"
    path.write_text(yaml.safe_dump(suite))
    return str(path)


def test_every_node_is_plain_picklable_data_in_dependency_order(tmp_path):
    from advbench.plan import Settings, build_plan, data_node
    from advbench.stages import load_dataset
    from advbench.suite import load_suite

    suite = load_suite(small_digits(tmp_path, sweep={"attacks.fgsm.options.eps": [0.1, 0.2]}))
    settings = Settings(cache_root=str(tmp_path / "cache"), seed=suite.spec.seed)
    plan = build_plan(suite, load_dataset(data_node(suite, settings)), settings)
    seen: set[str] = set()
    for key, node in plan.nodes.items():
        assert node.key == key
        assert all(i in seen for i in node.inputs), node.label  # inputs come first
        seen.add(key)
        copy = pickle.loads(pickle.dumps(node))
        assert copy == node and copy.params.keys() == node.params.keys()
    assert len(plan.points) == 2
    # the two eps points share everything but the attack and what reads it: shared nodes appear once
    stages = [n.stage for n in plan.nodes.values()]
    assert stages.count("victim") == 1 and stages.count("mask-classifier") == 1
    adversarial = [n.label for n in plan.nodes.values() if n.stage == "adversarial" and " against " not in n.label]
    validation = [label for label in adversarial if "validation" in label]
    assert len(adversarial) - len(validation) == 3  # fgsm at two eps, and pgd once: both points share it
    assert len(validation) == 3  # the same sets on the validation images, where the sweep chooses its point
    assert len(plan.points[0].galleries) == 1 and not plan.points[1].galleries


def test_plan_command_shows_what_is_cached(tmp_path):
    suite = small_digits(tmp_path)
    cold = json.loads(advbench_cli("plan", suite, "--json", cache=tmp_path / "cache").stdout)
    assert cold and not any(row["cached"] for row in cold)
    assert {"victim", "mask-classifier", "adversarial-chunk", "adversarial", "scores", "gallery"} <= \
        {row["stage"] for row in cold}
    advbench_cli("run", suite, "--out", str(tmp_path / "run"), "--no-report", cache=tmp_path / "cache")
    warm = json.loads(advbench_cli("plan", suite, "--json", cache=tmp_path / "cache").stdout)
    assert [r["key"] for r in warm] == [r["key"] for r in cold]
    assert all(row["cached"] for row in warm)
    table = advbench_cli("plan", suite, cache=tmp_path / "cache").stdout
    assert f"{len(cold)} nodes, {len(cold)} cached" in table


def _records(results: dict) -> list[tuple]:
    return sorted((s["stage"], s["label"], s["cached"]) for s in results["stages"])


@pytest.mark.slow
def test_spawned_process_pool_gives_the_local_run_identically(tmp_path):
    """Every node pickled into a spawned worker: the same sections and the same stage records as in-process."""
    suite = small_digits(tmp_path)
    advbench_cli("run", suite, "--out", str(tmp_path / "local"), "--no-report", "--threads", "1",
                 cache=tmp_path / "cache-local")
    advbench_cli("run", suite, "--out", str(tmp_path / "pool"), "--no-report", "--threads", "1",
                 "--executor", "processes", cache=tmp_path / "cache-pool")
    local, pool = load_results(tmp_path / "local"), load_results(tmp_path / "pool")
    for section in SECTIONS:
        assert pool[section] == local[section], section
    assert _records(pool) == _records(local)
    assert pool["executor"]["plugin"] == "processes" and pool["complete"]
    # a warm rerun computes nothing, in either executor
    advbench_cli("run", suite, "--out", str(tmp_path / "pool-warm"), "--no-report", "--threads", "1",
                 "--executor", "processes", cache=tmp_path / "cache-pool")
    warm = load_results(tmp_path / "pool-warm")
    assert all(s["cached"] for s in warm["stages"] if s["stage"] != "data")
    assert warm["detection"] == local["detection"]


def test_a_victim_loaded_from_its_own_checkpoint_gives_the_trained_runs_results(tmp_path):
    """A checkpoint node is read from its file by whoever needs it (never stored, never run as a stage): the
    trained victim's weights, saved and loaded back, give the same detection numbers."""
    import torch

    from advbench.cache import Cache

    cache = tmp_path / "cache"
    suite = small_digits(tmp_path)
    advbench_cli("run", suite, "--out", str(tmp_path / "trained"), "--no-report", "--threads", "1", cache=cache)
    victim = next(e for e in Cache(cache).entries() if e.stage == "victim")
    state = Cache(cache).load(victim.key)["state_dict"]
    torch.save(state, tmp_path / "cnn.pt")
    raw = yaml.safe_load(open(suite))
    raw["victims"]["cnn"]["checkpoint"] = str(tmp_path / "cnn.pt")
    (tmp_path / "from-checkpoint.yaml").write_text(yaml.safe_dump(raw))
    advbench_cli("run", str(tmp_path / "from-checkpoint.yaml"), "--out", str(tmp_path / "loaded"), "--no-report",
                 "--threads", "1", cache=cache)
    trained, loaded = load_results(tmp_path / "trained"), load_results(tmp_path / "loaded")
    assert not any(s["stage"] == "victim" for s in loaded["stages"])  # nothing trained
    for section in ("victims", "attacks", "detection", "interpreters"):
        assert loaded[section] == trained[section], section


def test_the_thread_count_is_part_of_the_keys_and_of_the_recorded_command(tmp_path):
    """Float sums run in another order with another thread count, so trained weights differ: a run with two
    threads does not reuse one-thread models from the same cache, and each run's command says its count."""
    suite = small_digits(tmp_path)
    cache = tmp_path / "cache"
    advbench_cli("run", suite, "--out", str(tmp_path / "one"), "--no-report", cache=cache,
                 env_extra={"OMP_NUM_THREADS": "1"})
    one = load_results(tmp_path / "one")
    assert one["host"]["torch_threads"] == 1 and one["command"].endswith("--threads 1")
    advbench_cli("run", suite, "--out", str(tmp_path / "two"), "--no-report", "--threads", "2", cache=cache)
    two = load_results(tmp_path / "two")
    assert two["host"]["torch_threads"] == 2 and two["command"].count("--threads") == 1
    assert not any(s["cached"] for s in two["stages"] if s["stage"] != "data")


def test_an_entry_with_a_sound_hash_but_the_wrong_content_is_recomputed_and_every_stage_is_logged(tmp_path):
    """An entry some other code stored under a key (valid sha256, wrong fields) is discarded with one warning and
    computed again; run.log names every node's start and end, the dataset's load included."""
    from advbench.cache import Cache

    suite = small_digits(tmp_path)
    cache = tmp_path / "cache"
    advbench_cli("run", suite, "--out", str(tmp_path / "first"), "--no-report", "--threads", "1", cache=cache)
    store = Cache(cache)
    accuracy = next(e for e in store.entries() if e.stage == "metrics")
    store.save(accuracy.key, {"acc": 0.5}, stage="metrics", description="not what the stage writes")
    proc = advbench_cli("run", suite, "--out", str(tmp_path / "second"), "--no-report", "--threads", "1", cache=cache)
    second = load_results(tmp_path / "second")
    assert second["victims"] == load_results(tmp_path / "first")["victims"]
    assert [s["cached"] for s in second["stages"] if s["stage"] == "metrics"] == [False]
    assert "unusable" in proc.stderr or "recomput" in proc.stderr
    log = (tmp_path / "first" / "run.log").read_text()
    assert "data digits: loading" in log
    for stage in ("victim", "adversarial", "scores", "masks", "gallery"):
        assert any(line.split(": ", 1)[-1].startswith(f"{stage} ") and ": start" in line
                   for line in log.splitlines()), stage


def test_a_detector_fitted_per_attack_is_also_read_on_attacks_it_never_saw(tmp_path):
    """label-only learns from adversarial examples. Seen: one model per attack, each read on its own attack
    (the detection rows). Unseen: the model fitted on evaluation.unseen_fit reads the other attacks (the unseen
    rows), and its scores, one model throughout, make the worst case; contrastive keeps its own worst case."""
    import torch

    from advbench.cache import Cache
    from advbench.plan import Settings, build_plan, data_node
    from advbench.stages import load_dataset
    from advbench.suite import load_suite

    path = small_digits(tmp_path, evaluation={**yaml.safe_load(open(small_digits(tmp_path)))["evaluation"],
                                              "unseen_fit": "pgd"})
    advbench_cli("run", path, "--out", str(tmp_path / "run"), "--no-report", "--threads", "1",
                 cache=tmp_path / "cache")
    results = load_results(tmp_path / "run")
    seen = [r for r in results["detection"] if r["detector"] == "label-only"]
    assert {(r["attack"], r["fit_attack"], r["protocol"]) for r in seen} == {("fgsm", "fgsm", "seen"),
                                                                             ("pgd", "pgd", "seen")}
    unseen = results["unseen"]
    assert {(r["detector"], r["attack"], r["fit_attack"], r["protocol"]) for r in unseen} == \
        {("label-only", "fgsm", "pgd", "unseen")}
    assert all(r["protocol"] is None for r in results["detection"] if r["detector"] == "contrastive")
    assert {(w["detector"], w["fit_attack"]) for w in results["worst_case"]} == {("contrastive", None),
                                                                                  ("label-only", "pgd")}
    assert not any(w.startswith("worst case not computed") for w in results["warnings"])
    row = next(w for w in results["worst_case"] if w["detector"] == "label-only")
    assert row["auroc_ci"][0] <= row["auroc"] <= row["auroc_ci"][1]
    assert "unseen.csv" in {p.name for p in (tmp_path / "run").iterdir()}

    # the unseen row is the pgd model's scores on fgsm's inputs: its benign scores and calibration are the pgd
    # model's, its adversarial set is fgsm's
    suite = load_suite(path)
    settings = Settings(cache_root=str(tmp_path / "cache"), seed=suite.spec.seed, threads=1)
    plan = build_plan(suite, load_dataset(data_node(suite, settings)), settings)
    entries = {(d["attack"], d["protocol"]): d for d in plan.points[0].detections if d["detector"] == "label-only"}
    crossed, pgd, fgsm = entries[("fgsm", "unseen")], entries[("pgd", "seen")], entries[("fgsm", "seen")]
    assert crossed["benign"] == pgd["benign"] and crossed["calibration"] == pgd["calibration"]
    assert crossed["attack_key"] == fgsm["attack_key"] and crossed["adversarial"] != fgsm["adversarial"]
    node = plan.nodes[crossed["adversarial"]]
    assert node.params["fit_key"] == plan.nodes[pgd["adversarial"]].params["fit_key"]
    cache = Cache(str(tmp_path / "cache"))
    mine = cache.load(crossed["adversarial"])["adversarial"]["score"]
    own = cache.load(fgsm["adversarial"])["adversarial"]["score"]
    assert mine.shape == own.shape and not torch.equal(mine, own)  # another model: other scores


def test_unseen_fit_must_name_an_oblivious_attack(tmp_path):
    path = small_digits(tmp_path, evaluation={**yaml.safe_load(open(small_digits(tmp_path)))["evaluation"],
                                              "unseen_fit": "cw"})
    result = advbench_cli("run", path, "--no-report", cache=tmp_path / "cache", check=False)
    assert result.returncode == 2
    assert "evaluation.unseen_fit" in result.stderr and "'cw' is not an oblivious attack" in result.stderr
    assert "fgsm, pgd" in result.stderr and "Traceback" not in result.stderr


def test_a_control_f2_is_trained_only_to_the_accuracy_it_is_matched_to(tmp_path):
    """raw-pixels' f2 matched to gradcam's: training stops at the epoch whose accuracy on the calibration images
    is nearest gradcam's f2's there (from below or above), and the row says how far it got."""
    suite = yaml.safe_load(open(small_digits(tmp_path)))
    suite["mask_classifier"]["options"]["epochs"] = 20
    path = small_digits(tmp_path, interpreters={"gradcam": {}, "raw-pixels": {"match_accuracy": "gradcam"}},
                        detectors={"contrastive": {}}, mask_classifier=suite["mask_classifier"])
    advbench_cli("run", path, "--out", str(tmp_path / "run"), "--no-report", "--threads", "1",
                 cache=tmp_path / "cache")
    rows = {r["interpreter"]: r for r in load_results(tmp_path / "run")["interpreters"]}
    match = rows["raw-pixels"]["accuracy_match"]
    assert rows["gradcam"].get("accuracy_match") is None
    assert match["to"] == "gradcam" and match["stopped"] and 1 <= match["epochs"] < 20
    assert abs(match["accuracy"] - match["target_accuracy"]) <= 0.1
    # trained in full, the same f2 reads the raw images better than the matched one does
    full = small_digits(tmp_path, interpreters={"gradcam": {}, "raw-pixels": {}}, detectors={"contrastive": {}},
                        mask_classifier=suite["mask_classifier"])
    advbench_cli("run", full, "--out", str(tmp_path / "full"), "--no-report", "--threads", "1",
                 cache=tmp_path / "cache")
    unmatched = {r["interpreter"]: r for r in load_results(tmp_path / "full")["interpreters"]}["raw-pixels"]
    assert unmatched["mask_classifier_accuracy"] > rows["raw-pixels"]["mask_classifier_accuracy"]


@pytest.mark.parametrize("interpreters,message", [
    ({"gradient": {}, "raw-pixels": {"match_accuracy": "lan"}}, "'lan' is not another interpreter of this suite; "
                                                                "allowed: gradient"),
    ({"gradient": {"match_accuracy": "gradient"}}, "'gradient' is not another interpreter"),
])
def test_match_accuracy_names_another_interpreter(tmp_path, interpreters, message):
    path = small_digits(tmp_path, interpreters=interpreters)
    result = advbench_cli("run", path, "--no-report", cache=tmp_path / "cache", check=False)
    assert result.returncode == 2 and "match_accuracy" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_controls_run_beside_the_interpretation(tmp_path):
    """raw-pixels makes f2 a second classifier on the images (the contrastive rule without interpretation);
    msp scores the victim's own confidence. Both are ordinary plugins in the same grid."""
    import torch

    from advbench_detectors.max_softmax import MaxSoftmax
    from advbench_interpreters.raw_pixels import RawPixels
    from advbench.api import DetectorEnv, RunContext

    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(RawPixels().explain(None, torch.nn.Identity(), x, RunContext()), x)
    victim = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    out = MaxSoftmax().score(DetectorEnv(victim, x, torch.zeros(5, dtype=torch.long), 3), x, RunContext())
    assert torch.allclose(out.score, 1 - torch.softmax(victim(x), 1).amax(1)) and out.flag is None

    suite = small_digits(tmp_path, interpreters={"gradient": {}, "raw-pixels": {}},
                         detectors={"contrastive": {}, "msp": {}})
    advbench_cli("run", suite, "--out", str(tmp_path / "run"), "--no-report", "--threads", "1",
                 cache=tmp_path / "cache")
    results = load_results(tmp_path / "run")
    rows = results["detection"]
    assert {(r["detector"], r["interpreter"]) for r in rows} == {("contrastive", "gradient"),
                                                                 ("contrastive", "raw-pixels"), ("msp", None)}
    assert all(0 <= r["auroc"] <= 1 for r in rows if r["auroc"] is not None)
    # the interpretation against each control, paired on the same inputs; the verdict follows the interval
    compared = [r for r in results["controls"] if r["subset"] == "all" and r["population"] == "successful"]
    assert {(r["attack"], r["detector"], r["control"]) for r in compared} == {
        (a, "contrastive/gradient", c) for a in ("fgsm", "pgd") for c in ("msp", "contrastive/raw-pixels")}
    auroc = {(r["detector"], r["interpreter"], r["attack"]): r["auroc"] for r in rows
             if r["subset"] == "all" and r["population"] == "successful"}
    for r in compared:
        low, high = r["delta_ci"]
        assert r["verdict"] == ("beats" if low > 0 else "worse" if high < 0 else "within noise")
        assert r["auroc"] == auroc[("contrastive", "gradient", r["attack"])]
        assert r["delta"] == pytest.approx(r["auroc"] - r["auroc_control"], abs=1e-5)


def test_every_detector_is_read_at_thresholds_chosen_on_calibration_images_only(tmp_path, monkeypatch):
    """A detector whose score is known (an image's mean brightness): its thresholds equal those computed from the
    held-out calibration images alone, and another attack (other evaluation scores) leaves them where they are."""
    import numpy as np
    import torch
    from click.testing import CliRunner

    import advbench
    from advbench import api, metrics, plugins
    from advbench.cli import main
    from advbench.plan import Settings, build_plan, data_node
    from advbench.stages import calibration_indices, load_dataset
    from advbench.suite import load_suite

    class Brightness(api.Detector):
        name = "zz-brightness"
        description = "the image's mean brightness"

        def score(self, env, x, ctx):
            return api.DetectorOutput(score=x.mean(dim=(1, 2, 3)))

    class Plugin:
        @advbench.hookimpl
        def register_detectors(register):
            register(Brightness)

    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "cache"))
    plugins.register_plugin(Plugin, name="zz-brightness-plugin")
    try:
        thresholds = []
        for eps in (0.1, 0.3):
            suite = small_digits(tmp_path, detectors={"zz-brightness": {}})
            out = tmp_path / f"run-{eps}"
            result = CliRunner().invoke(main, ["run", suite, "--out", str(out), "--no-report", "--threads", "1",
                                               "--set", f"attacks.fgsm.options.eps={eps}"])
            assert result.exit_code == 0, result.output
            rows = [r for r in load_results(out)["detection"] if r["attack"] == "fgsm" and r["subset"] == "all"]
            thresholds.append({name: point["threshold"] for name, point in rows[0]["calibrated"].items()})
        loaded = load_suite(suite)
        settings = Settings(cache_root=str(tmp_path / "cache"), seed=loaded.spec.seed)
        data = load_dataset(data_node(loaded, settings))
        plan = build_plan(loaded, data, settings)
        calibration = data.test_x[calibration_indices(plan.subset)].mean(dim=(1, 2, 3)).numpy()
    finally:
        plugins.unregister_plugin(Plugin)
    assert len(calibration) == 200
    expected = {f"fpr_{n}": metrics.calibrated_threshold(calibration, q) for n, q in metrics.CALIBRATED_FPRS.items()}
    assert thresholds[0] == pytest.approx(expected) and thresholds[1] == thresholds[0]
    assert np.isclose(expected["fpr_5"], np.sort(calibration)[::-1][10])
    del torch


def test_transfer_rows_count_positives_on_the_target_too(tmp_path):
    """Inputs crafted on one victim and judged by another's detector: the attacks table says how many also fool
    the target, and transfer rows come for both populations (fool the source; fool the target)."""
    raw = yaml.safe_load(open(small_digits(tmp_path)))
    raw["victims"]["other"] = {"plugin": "small-cnn", "options": {"epochs": 2}}
    raw["evaluation"]["pairs"] = [{"source": "cnn", "target": "cnn"}, {"source": "other", "target": "cnn"}]
    raw["detectors"] = {"contrastive": {}}
    raw["attacks"].pop("pgd")
    path = tmp_path / "transfer.yaml"
    path.write_text(yaml.safe_dump(raw))
    advbench_cli("run", str(path), "--out", str(tmp_path / "run"), "--threads", "1", cache=tmp_path / "cache")
    results = load_results(tmp_path / "run")
    crafted = next(a for a in results["attacks"] if a["source"] == "other")
    on_target = crafted["transfer"]["cnn"]
    assert 0 <= on_target["transfer_rate"] <= 1 and on_target["n_fools_target"] <= on_target["n_target_correct"]
    assert "transfer" not in next(a for a in results["attacks"] if a["source"] == "cnn")  # cnn->other is no pair
    rows = [r for r in results["detection"] if r["source"] == "other" and r["subset"] == "all"]
    by_population = {r["population"]: r for r in rows}
    assert set(by_population) == {"successful", "attacked", "fools-target"}
    assert by_population["fools-target"]["n_adversarial"] == on_target["n_fools_target"]
    assert not any(r["population"] == "fools-target" for r in results["detection"] if r["source"] == r["target"])
    page = (tmp_path / "run" / "index.html").read_text()
    assert "table-transfer-target" in page and "transfer to cnn" in page


@pytest.mark.parametrize("command", ["run", "plan"])
def test_an_unknown_executor_is_blamed_on_the_option(tmp_path, command):
    proc = advbench_cli(command, "suites/digits.yaml", "--executor", "nosuch", cache=tmp_path / "cache", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "advbench: error: --executor nosuch: unknown executor; installed: local, processes, ray"]


def test_benign_population_is_natural_by_default_and_paired_on_request(tmp_path):
    """Natural: every evaluation image is a negative (what a deployed detector meets), misclassified ones included;
    paired: only the originals of the adversarial inputs a row counts. Same scores, other negatives."""
    runs = {}
    for benign in ("natural", "paired"):
        raw = yaml.safe_load(open(small_digits(tmp_path)))
        raw["evaluation"]["benign"] = benign
        path = tmp_path / f"{benign}.yaml"
        path.write_text(yaml.safe_dump(raw))
        advbench_cli("run", str(path), "--out", str(tmp_path / benign), "--threads", "1", "--no-report",
                     cache=tmp_path / "cache")
        runs[benign] = {(r["detector"], r["interpreter"], r["attack"], r["subset"], r["population"]): r
                        for r in load_results(tmp_path / benign)["detection"]}
    attacks = {a["attack"]: a for a in load_results(tmp_path / "natural")["attacks"]}
    for key, natural in runs["natural"].items():
        paired = runs["paired"][key]
        assert natural["n_adversarial"] == paired["n_adversarial"]
        if key[3] == "all":
            assert natural["n_benign"] == attacks[key[2]]["n"]
        assert paired["n_benign"] == paired["n_adversarial"]
        assert natural["benign_population"] == "natural" and paired["benign_population"] == "paired"


# ---------------------------------------------------------------------------------------------------------
# the batch size in the keys: only where a component's result depends on it


class PerBatchNoise:
    """A throwaway plugin: an attack that declares its images depend on the batch (noise drawn per batch)."""

    import advbench as _advbench

    @staticmethod
    @_advbench.hookimpl
    def register_attacks(register):
        from pydantic import Field

        from advbench.api import Attack, Options as BaseOptions

        class BatchNoise(Attack):
            name = "zz-batch-noise"
            description = "test: noise drawn once per batch"
            norm = "linf"
            batch_dependent = True

            class Options(BaseOptions):
                eps: float = Field(0.1, ge=0.0, le=1.0)

            def run(self, model, x, y, ctx):
                raise AssertionError("planned only")

        register(BatchNoise)


def _plan_at(path: str, tmp_path, *overrides: str):
    from advbench.plan import Settings, build_plan, data_node
    from advbench.stages import load_dataset
    from advbench.suite import load_suite

    suite = load_suite(path, list(overrides))
    settings = Settings(cache_root=str(tmp_path / "cache"), batch_size=suite.spec.batch_size, seed=suite.spec.seed)
    return suite, settings, build_plan(suite, load_dataset(data_node(suite, settings)), settings)


def _attack_keys(plan) -> dict[str, str]:
    return {a["attack"]: a["key"] for a in plan.points[0].attacks}


@pytest.fixture
def batch_noise():
    from advbench import plugins

    plugins.register_plugin(PerBatchNoise, name="zz-batch-noise-plugin")
    yield
    plugins.unregister_plugin(PerBatchNoise)


def test_batch_size_leaves_the_keys_of_attacks_that_do_not_depend_on_it(tmp_path, batch_noise):
    path = small_digits(tmp_path, attacks={
        "fgsm": {"plugin": "fgsm", "options": {"eps": 0.2}},
        "pgd-plain": {"plugin": "pgd", "options": {"eps": 0.2, "steps": 3, "random_start": False}},
        "pgd": {"plugin": "pgd", "options": {"eps": 0.2, "steps": 3}},  # random start drawn per batch
        "noise": {"plugin": "zz-batch-noise"}})
    at_128 = _attack_keys(_plan_at(path, tmp_path)[2])
    at_64 = _attack_keys(_plan_at(path, tmp_path, "batch_size=64")[2])
    at_32 = _attack_keys(_plan_at(path, tmp_path, "batch_size=32")[2])
    for independent in ("fgsm", "pgd-plain"):
        assert at_64[independent] == at_128[independent] == at_32[independent], independent
    for dependent in ("pgd", "noise"):
        assert len({at_128[dependent], at_64[dependent], at_32[dependent]}) == 3, dependent


def test_attack_keys_at_the_default_batch_size_are_those_made_before(tmp_path, batch_noise):
    """The formula every attack set's key had before the batch size could leave it: a cache filled then (at the
    default 128) is read, not recomputed. At another batch size a batch-independent attack keeps that key."""
    from advbench.cache import make_key
    from advbench.plan import identity, numerics
    from advbench.threat import TEMPLATE_REVISION

    path = small_digits(tmp_path, attacks={
        "fgsm": {"plugin": "fgsm", "options": {"eps": 0.2}},
        "pgd": {"plugin": "pgd", "options": {"eps": 0.2, "steps": 3}},
        "noise": {"plugin": "zz-batch-noise"}})
    for overrides, batch in (((), {"fgsm": 128, "pgd": 128, "noise": 128}),
                             (("batch_size=64",), {"fgsm": 128, "pgd": 64, "noise": 64})):
        suite, settings, plan = _plan_at(path, tmp_path, *overrides)
        victim = plan.points[0].victims["cnn"]["victim"]
        for entry in plan.points[0].attacks:
            name = entry["attack"]
            reg, options = suite.component("attacks", name)
            config = {"options": options.model_dump(mode="json"), "seed": 0, "batch_size": batch[name],
                      "salt": ["attack", name, "cnn"], "subset": plan.subset_key, "numerics": numerics(settings),
                      "threat": suite.threat(name), "template": TEMPLATE_REVISION}
            assert entry["key"] == make_key("adversarial", config, [victim], identity(reg)), (overrides, name)


def test_a_fit_that_trains_with_the_run_batch_size_keys_it_away_from_the_default(tmp_path):
    """The LAN trains with the run's batch size unless its own option sets one: its fitted state's key holds the
    batch size then (left out at the default 128, as before); with its own batch size it does not move."""
    from advbench.cache import make_key
    from advbench.plan import identity, numerics

    base = {"epochs": 1, "width": 16}
    path = small_digits(tmp_path, interpreters={"lan": {"plugin": "lan", "options": base},
                                                "lan-own": {"plugin": "lan", "options": {**base, "batch_size": 50}}})

    def fitted(*overrides: str) -> dict[str, str]:
        return {e["interpreter"]: e["interp"]["key"] for e in _plan_at(path, tmp_path, *overrides)[2].points[0].interpreters}

    at_128, at_64 = fitted(), fitted("batch_size=64")
    assert at_64["lan-own"] == at_128["lan-own"]
    assert at_64["lan"] != at_128["lan"]
    suite, settings, plan = _plan_at(path, tmp_path)  # at 128: the key as it was made before
    reg, options = suite.component("interpreters", "lan")
    fit_options = {k: v for k, v in options.model_dump(mode="json").items() if k not in reg.cls.explain_options}
    config = {"options": fit_options, "seed": 0, "salt": ["interpreter", "cnn", "lan"], "numerics": numerics(settings)}
    assert at_128["lan"] == make_key("interpreter", config, [plan.points[0].victims["cnn"]["victim"]], identity(reg))


def test_two_interpreters_sharing_a_checkpoint_f2_keep_their_own_mask_labels(tmp_path):
    """A mask classifier loaded from a checkpoint has one key whatever masks it reads: the labels it gives each
    interpreter's masks (f2's accuracy, the benign and adversarial mask labels) are still separate nodes, keyed
    on the logits they read, so the second interpreter never reads the first one's labels from the cache."""
    checkpoint = tmp_path / "f2.pt"
    checkpoint.write_bytes(b"planning hashes the file; nothing loads it")
    path = small_digits(tmp_path, interpreters={"gradient": {"plugin": "gradient"},
                                                "smoothgrad": {"plugin": "smoothgrad", "options": {"n_samples": 2}}},
                        mask_classifier={"plugin": "lenet", "checkpoint": str(checkpoint)})
    plan = _plan_at(path, tmp_path)[2]
    point = plan.points[0]
    by_interp = {e["interpreter"]: e for e in point.interpreters}
    assert by_interp["gradient"]["f2"].key == by_interp["smoothgrad"]["f2"].key  # one checkpoint node
    assert by_interp["gradient"]["eval_labels"] != by_interp["smoothgrad"]["eval_labels"]
    adversarial = {}
    for row in point.detections:
        if row["labels"] is not None:
            adversarial.setdefault(row["attack"], {})[row["interpreter"]] = row["labels"]
    assert adversarial and all(len(set(labels.values())) == len(labels) == 2 for labels in adversarial.values())
    # every labels node reads the logits of its own interpreter's masks
    for key in (by_interp["gradient"]["eval_labels"], by_interp["smoothgrad"]["eval_labels"]):
        forwards = plan.nodes[plan.nodes[key].inputs[0]]
        assert forwards.stage == "forwards" and forwards.params["interp"]["name"] in by_interp
