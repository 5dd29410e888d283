"""Compute each thing once: f1's and f2's logits on an image set are one node (``forwards``) every reader shares.

The mask-labels, accuracy, transfer and scores nodes of detectors that score from logits read them; their keys
are those they had before the shared nodes existed, and their values are the same bit for bit.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from advbench import plugins
from advbench.api import DetectorEnv, RunContext
from advbench.testing import _world
from conftest import advbench_cli, load_results


# ---------------------------------------------------------------------- score_forwards == score


@pytest.mark.parametrize("name", ["contrastive", "msp", "label-only"])
def test_score_forwards_gives_exactly_what_score_gives(name):
    world = _world.world()
    victim, f2 = world.fresh_victim(torch.device("cpu")), world.fresh_mask_classifier(torch.device("cpu"))

    def explain(x: torch.Tensor) -> torch.Tensor:
        return _world.saliency(victim, x)

    env = DetectorEnv(victim, world.train_x, world.train_y, world.num_classes, explain=explain, mask_classifier=f2)
    reg = plugins.lookup("detector", name)
    assert reg.cls.scores_from_forwards
    detector = reg.cls()
    ctx = RunContext(seed=3)
    detector.fit(env, world.test_x[:40], world.adversarial_x, ctx)
    x = torch.cat([world.test_x, world.adversarial_x])
    by_score = detector.score(env, x, ctx)
    with torch.no_grad():
        f1_logits = victim(x)
        f2_logits = f2(explain(x).detach()) if reg.cls.needs_interpreter else None
    by_forwards = detector.score_forwards(f1_logits, f2_logits)
    assert torch.equal(by_score.score, by_forwards.score)
    assert (by_score.flag is None) == (by_forwards.flag is None)
    if by_score.flag is not None:
        assert torch.equal(by_score.flag, by_forwards.flag)
    assert by_score.score.std() > 0  # a real score, not a constant both paths would agree on


# ---------------------------------------------------------------------- the plan: new nodes, the old keys


def _digits_plan(tmp_path: Path, *overrides: str):
    from advbench.cache import Cache
    from advbench.plan import build_plan, data_node
    from advbench.runner import make_executor, run_settings
    from advbench.stages import load_dataset
    from advbench.suite import load_suite

    suite = load_suite(Path(__file__).resolve().parents[1] / "suites" / "digits.yaml", list(overrides))
    settings = run_settings(suite, Cache(tmp_path / "cache"), "cpu", 1, make_executor(suite))
    return build_plan(suite, load_dataset(data_node(suite, settings)), settings)


def test_readers_keep_their_keys_and_read_the_shared_forwards(tmp_path):
    from advbench.cache import make_key
    from advbench.plan import numerics as run_numerics
    from advbench.plan import tensor_digest
    from advbench.stages import test_order

    plan = _digits_plan(tmp_path, "evaluation.n_mask_eval=400")
    nodes = plan.nodes
    entry = plan.points[0].interpreters[0]
    f2 = entry["f2"]
    numerics = run_numerics(f2.settings)
    # the keys the readers had before the forwards nodes existed (their formula, unchanged)
    assert entry["eval_labels"] == make_key("mask-labels", {"set": "eval", "subset": plan.subset_key,
                                                            "numerics": numerics}, [f2.key])
    idx = test_order(plan.subset)[:400]
    assert entry["accuracy_labels"] == make_key("mask-labels", {"set": "accuracy", "subset": tensor_digest(idx),
                                                                "numerics": numerics}, [f2.key])
    for d in plan.points[0].detections:
        assert d["labels"] == make_key("mask-labels", {"set": "adversarial", "numerics": numerics},
                                       [f2.key, d["attack_key"]])
    for key in (entry["eval_labels"], entry["accuracy_labels"]):
        (forwards,) = nodes[key].inputs
        assert nodes[forwards].stage == "forwards" and nodes[forwards].params["f2"].key == f2.key
    scores = [n for n in nodes.values() if n.stage == "scores"]
    assert scores and all(n.params["forwards"] for n in scores)  # contrastive scores from logits
    for n in scores:
        for part, shared in n.params["forwards"].items():
            assert shared["f1"] in n.inputs and shared["f2"] in n.inputs
    # one forwards node per (model, image set): the benign images' f1 and f2 logits serve every reader
    sets = Counter((n.params.get("victim", n.params.get("f2")).key, repr(sorted(n.params["images"].items(),
                                                                                key=str)))
                   for n in nodes.values() if n.stage == "forwards")
    assert sets and max(sets.values()) == 1


# ---------------------------------------------------------------------- a run computes each forward once


def _set_size(images: str) -> int:
    return int(re.match(r"[^\[]+\[(\d+)\]@", images).group(1))


def test_digits_run_forwards_each_model_on_each_image_set_once(tmp_path):
    """digits with a second oblivious attack, msp beside the contrastive detector and f2's accuracy on 400 test
    images: across the run's stage records no (model, image set) pair is forwarded twice, and each once in full."""
    out = tmp_path / "run"
    advbench_cli("run", "suites/digits.yaml", "--out", str(out), "--no-report", "--threads", "1",
                 "--set", "attacks.pgd.plugin=pgd", "--set", "attacks.pgd.options.eps=0.2",
                 "--set", "attacks.pgd.options.steps=5", "--set", "detectors.msp.plugin=msp",
                 "--set", "evaluation.n_mask_eval=400", cache=tmp_path / "cache")
    results = load_results(out)
    assert results["complete"]
    records = [r for r in results["stages"] if r.get("forwards")]
    seen: Counter = Counter()
    for record in records:
        for pair, n in record["forwards"].items():
            seen[pair] += 1
            assert n == _set_size(pair.split("|")[1]), (record["label"], pair, n)
    assert seen and max(seen.values()) == 1, [p for p, c in seen.items() if c > 1]
    sets = Counter(pair.split("|")[1].split("[")[0] for pair in seen)
    # f1 and f2 (and g) on the evaluation and calibration images, on each attack's adversarial set, f2's accuracy set
    assert sets["eval"] == 3 and sets["calibration"] == 3 and sets["test-order"] == 2 and sets["eval+fit"] == 1
    assert sets["adversarial"] >= 3 * 3
    labels = [r for r in results["stages"] if r["stage"] == "masks" and "labels" in r["label"]]
    assert labels and all(not r["forwards"] for r in labels)  # read from the shared logits, computed nothing


def test_a_cache_filled_before_the_shared_forwards_is_not_recomputed_for_them(tmp_path):
    """Forwards nodes only feed other nodes: where every reader is cached (a cache filled before the forwards
    nodes existed, here: the forwards entries removed), the run computes none of them and gives the same rows."""
    from advbench.cache import Cache

    args = ("run", "suites/digits.yaml", "--no-report", "--threads", "1")
    advbench_cli(*args, "--out", str(tmp_path / "first"), cache=tmp_path / "cache")
    cache = Cache(str(tmp_path / "cache"))
    first = load_results(tmp_path / "first")
    plan = json.loads(advbench_cli("plan", "suites/digits.yaml", "--threads", "1", "--json",
                                   cache=tmp_path / "cache").stdout)
    forwards = [n["key"] for n in plan if n["stage"] == "forwards"]
    assert forwards and all(n["cached"] for n in plan)
    for key in forwards:
        cache.remove(key)
    advbench_cli(*args, "--out", str(tmp_path / "again"), cache=tmp_path / "cache")
    again = load_results(tmp_path / "again")
    assert not [r for r in again["stages"] if r["stage"] == "forwards"]  # neither computed nor read
    assert [r["label"] for r in again["stages"] if not r["cached"] and r["stage"] != "data"] == []
    assert again["detection"] == first["detection"] and again["security"] == first["security"]
