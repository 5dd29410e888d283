"""Suite validation as a user meets it: `advbench run` on a bad suite prints one line naming the file and the
field, exits with status 2, shows no traceback and runs nothing. Driven through click's CliRunner, plus one real
subprocess for the exit status and stderr as a shell sees them."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml
from click.testing import CliRunner

from advbench import plugins
from advbench.cli import main
from advbench.errors import SuiteError
from advbench.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "suites" / "digits.yaml"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    logger = logging.getLogger("advbench")
    handlers, level = list(logger.handlers), logger.level
    threads = torch.get_num_threads()  # `advbench run` may raise it for the whole process
    yield
    torch.set_num_threads(threads)
    for handler in list(logger.handlers):  # `advbench run` attaches a run.log handler: close it
        if handler not in handlers:
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(level)


def digits() -> dict[str, Any]:
    return yaml.safe_load(DIGITS.read_text())


def write(tmp_path: Path, raw: Any, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
    return path


def mutated(change: Callable[[dict], None]) -> dict:
    raw = copy.deepcopy(digits())
    change(raw)
    return raw


def run_cli(path: Path, *args: str, out: Path):
    return CliRunner().invoke(main, ["run", str(path), "--no-report", "--out", str(out), *args])


def assert_one_line_error(result, path: Path, field: str, *needles: str) -> str:
    """Exit 2, exactly one line on stderr, naming the file and the field; returns the message."""
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and result.stderr.endswith("\n"), result.stderr
    message = lines[0]
    assert message.startswith("advbench: error: "), message
    assert str(path) in message, message
    assert field in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def set_(path: str, value: Any) -> Callable[[dict], None]:
    def change(raw: dict) -> None:
        node = raw
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[parts[-1]] = value
    return change


def rename_top(old: str, new: str) -> Callable[[dict], None]:
    def change(raw: dict) -> None:
        raw[new] = raw.pop(old)
    return change


ATTACKS = ", ".join(sorted({"bim", "cw", "deepfool", "fgsm", "jsma", "joint-pgd", "opgd", "pgd"}))

# (id, change to the digits suite, field path the message names, further text it must contain)
BAD = [
    ("unknown-top-level-key", rename_top("seed", "seeed"), "seeed",
     ["unknown key", "allowed: name, description, seed", "did you mean 'seed'?"]),
    ("unknown-nested-key", set_("evaluation.n_evl", 10), "evaluation.n_evl", ["did you mean 'n_eval'?"]),
    ("unknown-plugin-option", set_("attacks.fgsm.options.epz", 0.1), "attacks.fgsm.options.epz",
     ["unknown key", "allowed: eps", "did you mean 'eps'?", "fgsm"]),
    ("unknown-victim-option", set_("victims.cnn.options.epoch", 3), "victims.cnn.options.epoch",
     ["small-cnn", "epochs", "did you mean 'epochs'?"]),
    ("wrong-type", set_("batch_size", "lots"), "batch_size", ["'lots'", "integer"]),
    ("batch-size-word", set_("batch_size", "max"), "batch_size",
     ["found 'max'", "allowed: an integer from 1 to 65536, or auto"]),
    ("batch-size-range", set_("batch_size", 0), "batch_size", ["found 0", "allowed: an integer from 1 to 65536"]),
    ("wrong-type-nested", set_("evaluation.n_eval", [1, 2]), "evaluation.n_eval", ["[1, 2]", "integer"]),
    ("wrong-type-option", set_("attacks.fgsm.options.eps", "big"), "attacks.fgsm.options.eps", ["'big'", "number"]),
    ("wrong-choice", set_("device", "tpu"), "device", ["'tpu'", "'auto'", "'cpu'", "'cuda'"]),
    ("out-of-range-option", set_("attacks.fgsm.options.eps", 2), "attacks.fgsm.options.eps",
     ["found 2", "less than or equal to 1", "fgsm"]),
    ("out-of-range-field", set_("evaluation.n_eval", 0), "evaluation.n_eval", ["found 0", "greater than or equal to 1"]),
    ("unknown-plugin", set_("attacks.fgsm.plugin", "fgsn"), "attacks.fgsm.plugin",
     ["unknown attack 'fgsn'", f"installed: {ATTACKS}", "did you mean 'fgsm'?"]),
    ("unknown-plugin-from-key", set_("detectors", {"contrastiv": {}}), "detectors.contrastiv.plugin",
     ["did you mean 'contrastive'?"]),
    ("empty-attacks", set_("attacks", {}), "attacks", ["found {}", "at least 1"]),
    ("empty-pairs", set_("evaluation.pairs", []), "evaluation.pairs", ["found []", "at least 1"]),
    ("empty-victims", set_("victims", {}), "victims", ["at least 1"]),
    ("missing-section", lambda raw: raw.pop("dataset"), "dataset", ["required field is missing"]),
    ("pair-names-undefined-victim", set_("evaluation.pairs", [{"source": "cnn", "target": "vgg"}]),
     "evaluation.pairs.0.target", ["'vgg'", "defined: cnn"]),
    ("pair-missing-target", set_("evaluation.pairs", [{"source": "cnn"}]), "evaluation.pairs.0.target",
     ["required field is missing"]),
    ("detector-needs-an-interpreter", lambda raw: raw.pop("interpreters"), "interpreters",
     ["a detector needs an interpreter", "gradient"]),
    ("checkpoint-on-an-attack", set_("attacks.fgsm.checkpoint", "x.pt"), "attacks.fgsm.checkpoint",
     ["only for victims and mask_classifier"]),
    ("n-mask-eval-on-a-victim", set_("victims.cnn.n_mask_eval", 100), "victims.cnn.n_mask_eval",
     ["allowed only for interpreters"]),
    ("sweep-invalid-value", set_("sweep", {"attacks.fgsm.options.eps": [0.1, 5]}), "attacks.fgsm.options.eps",
     ["found 5", "less than or equal to 1", "sweep point"]),
    ("sweep-grid-not-a-mapping", set_("sweep", [{"attacks.fgsm.options.eps": [0.1]}, 3]), "sweep.1",
     ["found 3", "a list of such mappings"]),
    ("sweep-grid-value-not-a-list", set_("sweep", [{"attacks.fgsm.options.eps": 0.1}]),
     "sweep.0.attacks.fgsm.options.eps", ["found 0.1", "valid list"]),
    ("sweep-not-a-list", set_("sweep", {"attacks.fgsm.options.eps": 0.1}), "sweep.attacks.fgsm.options.eps",
     ["valid list"]),
    ("sweep-unknown-field", set_("sweep", {"attacks.fgsm.options.epz": [0.1]}), "attacks.fgsm.options.epz",
     ["did you mean 'eps'?", "sweep point"]),
    # the threat model (issue 11): the harness's, checked against every attack it applies to
    ("threat-unknown-norm", set_("threat_model", {"norm": "l3"}), "threat_model.norm",
     ["'l3'", "'linf', 'l2' or 'l0'"]),
    ("threat-unknown-norm-per-attack", set_("attacks.fgsm.threat_model", {"norm": "linf2"}),
     "attacks.fgsm.threat_model.norm", ["'linf2'", "'linf', 'l2' or 'l0'"]),
    ("threat-unknown-key", set_("threat_model", {"epz": 0.1}), "threat_model.epz", ["did you mean 'eps'?"]),
    ("threat-negative-eps", set_("threat_model", {"eps": -0.1}), "threat_model.eps",
     ["found -0.1", "allowed: a number >= 0, null (unbounded) or a non-empty list"]),
    ("threat-negative-eps-in-a-list", set_("attacks.fgsm.threat_model", {"eps": [0.1, -1]}),
     "attacks.fgsm.threat_model.eps.1", ["found -1", "a number >= 0"]),
    ("threat-eps-not-a-number", set_("threat_model", {"eps": "8/255"}), "threat_model.eps", ["found '8/255'"]),
    ("threat-linf-eps-above-1", set_("attacks.fgsm.threat_model", {"eps": 2}), "attacks.fgsm.threat_model.eps",
     ["found 2 for the linf norm", "allowed: a number in [0, 1]"]),
    ("threat-norm-the-attack-does-not-use", set_("threat_model", {"norm": "l2"}), "threat_model.norm",
     ["found 'l2'", "attack 'fgsm' (plugin 'fgsm') attacks under linf", "allowed: linf"]),
    ("threat-targeted-unsupported", set_("threat_model", {"targeted": True}), "threat_model.targeted",
     ["attack 'fgsm' (plugin 'fgsm') does not support targeted attacks", "allowed: false"]),
    ("threat-eps-disagrees-with-the-option", set_("threat_model", {"eps": 0.1}), "attacks.fgsm.options.eps",
     ["found 0.2", "disagrees with the threat model's eps 0.1 (threat_model.eps)", "set eps in threat_model"]),
    ("threat-model-on-a-victim", set_("victims.cnn.threat_model", {"eps": 0.1}), "victims.cnn.threat_model",
     ["allowed only for attacks"]),
]


@pytest.mark.parametrize("change,field,needles", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_invalid_suite_is_one_line_exit_2_before_anything_runs(tmp_path, change, field, needles):
    path = write(tmp_path, mutated(change))
    out = tmp_path / "out"
    result = run_cli(path, out=out)
    assert_one_line_error(result, path, field, *needles)
    assert not out.exists()  # validated in full before the run folder is even made
    assert not (tmp_path / "cache").exists()


def test_the_digits_suite_itself_is_valid():
    suite = load_suite(DIGITS)
    assert suite.name == "digits"
    reg, options = suite.component("attacks", "fgsm")
    assert reg.name == "fgsm" and options.eps == digits()["attacks"]["fgsm"]["options"]["eps"]
    assert suite.component("detectors", "contrastive")[0].name == "contrastive"  # plugin defaults to the key
    assert suite.component("executor")[0].name == "local"


def test_malformed_yaml_names_line_and_column(tmp_path):
    path = write(tmp_path, "name: x\nvictims: [cnn\n  seed: 3\n")
    message = assert_one_line_error(run_cli(path, out=tmp_path / "out"), path, "malformed YAML")
    assert "line 3, column" in message


def test_tab_indented_yaml(tmp_path):
    path = write(tmp_path, "name: x\nvictims:\n\tcnn: {}\n")
    message = assert_one_line_error(run_cli(path, out=tmp_path / "out"), path, "malformed YAML")
    assert "line 3" in message


@pytest.mark.parametrize("text,needle", [("- a\n- b\n", "found list"), ("", "found NoneType")])
def test_a_suite_that_is_not_a_mapping(tmp_path, text, needle):
    path = write(tmp_path, text)
    assert_one_line_error(run_cli(path, out=tmp_path / "out"), path, "must be a mapping", needle)


def test_a_missing_suite_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert_one_line_error(run_cli(path, out=tmp_path / "out"), path, "no such suite file")


# ---------------------------------------------------------------------------------------------------------
# --set and --seed


def test_valid_overrides_change_the_field():
    suite = load_suite(DIGITS, ["attacks.fgsm.options.eps=0.05", "evaluation.n_eval=7", "seed=3",
                                "victims.cnn.epochs=2",  # shorthand for victims.cnn.options.epochs
                                "evaluation.pairs.0.target=cnn", "description=hello world"])
    assert suite.component("attacks", "fgsm")[1].eps == 0.05
    assert suite.component("victims", "cnn")[1].epochs == 2
    assert suite.spec.evaluation.n_eval == 7 and suite.spec.seed == 3
    assert suite.spec.description == "hello world"
    assert load_suite(DIGITS).component("attacks", "fgsm")[1].eps != 0.05  # the file itself is untouched
    again = load_suite(DIGITS).with_overrides(["attacks.fgsm.eps=0.07"])
    assert again.component("attacks", "fgsm")[1].eps == 0.07


def test_a_valid_override_reaches_the_run(tmp_path):
    """The override is what the run uses: the dataset plugin reports the overridden (missing) path."""
    raw = mutated(set_("dataset", {"plugin": "cifar10", "options": {"path": str(tmp_path / "in-the-file.tar.gz")}}))
    path = write(tmp_path, raw)
    wanted = tmp_path / "from-the-command-line.tar.gz"
    result = run_cli(path, "--set", f"dataset.options.path={wanted}", out=tmp_path / "out")
    message = assert_one_line_error(result, path, "dataset.options.path", str(wanted))
    assert "in-the-file" not in message


@pytest.mark.parametrize("override,field,needles", [
    ("attacks.fgsm.options.eps=3", "attacks.fgsm.options.eps", ["found 3", "--set attacks.fgsm.options.eps=3"]),
    ("attacks.fgsm.eps=-1", "attacks.fgsm.options.eps", ["found -1", "--set attacks.fgsm.eps=-1"]),
    ("evaluation.n_eval=abc", "evaluation.n_eval", ["'abc'", "--set evaluation.n_eval=abc"]),
    ("victims.cnn.options.epoch=3", "victims.cnn.options.epoch", ["did you mean 'epochs'?"]),
    ("seeed=1", "seeed", ["did you mean 'seed'?", "--set seeed=1"]),
    ("evaluation.pairs.4.target=cnn", "evaluation.pairs.4", ["allowed 0..0"]),
    ("attacks.fgsm.options.eps", "--set attacks.fgsm.options.eps", ["path.to.field=value"]),
])
def test_invalid_override_fails_validation_naming_the_field(tmp_path, override, field, needles):
    out = tmp_path / "out"
    result = run_cli(DIGITS, "--set", override, out=out)
    assert_one_line_error(result, DIGITS, field, *needles)
    assert not out.exists()


def test_an_invalid_override_among_valid_ones_is_the_one_named(tmp_path):
    result = run_cli(DIGITS, "--set", "attacks.fgsm.options.eps=0.05", "--set", "batch_size=0",
                     out=tmp_path / "out")
    message = assert_one_line_error(result, DIGITS, "batch_size", "--set batch_size=0")
    assert "eps" not in message


def test_seed_option_is_checked_by_click(tmp_path):
    result = run_cli(DIGITS, "--seed", "-1", out=tmp_path / "out")
    assert result.exit_code == 2 and "Traceback" not in result.output and "--seed" in result.stderr


# ---------------------------------------------------------------------------------------------------------
# sweeps


def test_a_valid_sweep_expands_to_validated_points(tmp_path):
    path = write(tmp_path, mutated(set_("sweep", {"attacks.fgsm.options.eps": [0.1, 0.3], "seed": [0, 1]})))
    points = load_suite(path).points()
    assert [values for values, _ in points] == [
        {"attacks.fgsm.options.eps": 0.1, "seed": 0}, {"attacks.fgsm.options.eps": 0.1, "seed": 1},
        {"attacks.fgsm.options.eps": 0.3, "seed": 0}, {"attacks.fgsm.options.eps": 0.3, "seed": 1}]
    for values, suite in points:
        assert suite.component("attacks", "fgsm")[1].eps == values["attacks.fgsm.options.eps"]
        assert suite.spec.seed == values["seed"] and not suite.spec.sweep


def test_a_list_of_grids_runs_each_grid_once_and_names_every_field(tmp_path):
    """One field at a time around the suite's setting: the shared base point runs once; a field a grid does not
    vary shows the suite's value, a plugin option the suite leaves out its plugin default."""
    raw = mutated(set_("sweep", [{"attacks.fgsm.options.eps": [0.1, 0.3]},
                                 {"mask_classifier.options.lr": [0.01, 0.05]}]))
    raw["attacks"]["fgsm"]["options"] = {"eps": 0.1}
    raw["mask_classifier"]["options"].pop("lr", None)
    suite = load_suite(write(tmp_path, raw))
    default_lr = suite.component("mask_classifier")[1].lr
    assert default_lr == 0.05  # the lenet recipe's own default; the second grid repeats it on purpose
    assert suite.sweep_fields() == ["attacks.fgsm.options.eps", "mask_classifier.options.lr"]
    points = suite.points()
    assert [values for values, _ in points] == [
        {"attacks.fgsm.options.eps": 0.1, "mask_classifier.options.lr": default_lr},
        {"attacks.fgsm.options.eps": 0.3, "mask_classifier.options.lr": default_lr},
        {"attacks.fgsm.options.eps": 0.1, "mask_classifier.options.lr": 0.01}]
    for values, point in points:
        assert point.component("attacks", "fgsm")[1].eps == values["attacks.fgsm.options.eps"]
        assert point.component("mask_classifier")[1].lr == values["mask_classifier.options.lr"]


def test_an_invalid_value_in_a_later_grid_fails_at_load_time(tmp_path):
    path = write(tmp_path, mutated(set_("sweep", [{"attacks.fgsm.options.eps": [0.1]},
                                                  {"mask_classifier.options.epochs": [5, 0]}])))
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert info.value.source == str(path) and info.value.path == "mask_classifier.options.epochs"
    assert "sweep point" in info.value.message


def test_an_invalid_sweep_value_fails_at_load_time(tmp_path):
    path = write(tmp_path, mutated(set_("sweep", {"attacks.fgsm.options.eps": [0.1, 5]})))
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert info.value.source == str(path) and info.value.path == "attacks.fgsm.options.eps"
    assert "5" in info.value.message


# ---------------------------------------------------------------------------------------------------------
# a missing data path: found by the dataset plugin when the run loads it, still one line and exit 2


def missing_data_suite(tmp_path: Path) -> tuple[Path, Path]:
    missing = tmp_path / "no" / "cifar-10-python.tar.gz"
    raw = mutated(set_("dataset", {"plugin": "cifar10", "options": {"path": str(missing)}}))
    return write(tmp_path, raw, "cifar-missing.yaml"), missing


def test_missing_data_path_is_one_line_exit_2(tmp_path):
    path, missing = missing_data_suite(tmp_path)
    result = run_cli(path, out=tmp_path / "out")
    assert_one_line_error(result, path, "dataset.options.path", str(missing), "does not exist",
                          "cifar-10-python.tar.gz")


def test_missing_data_path_in_a_real_process(tmp_path):
    """As a shell sees it: exit status 2, exactly one line on stderr, no traceback."""
    path, missing = missing_data_suite(tmp_path)
    env = {**os.environ, "ADVBENCH_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    env.pop(plugins.DISABLE_ENV, None)
    proc = subprocess.run([sys.executable, "-m", "advbench.cli", "run", str(path), "--no-report",
                           "--out", str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("advbench: error: ") and str(path) in lines[0]
    assert "dataset.options.path" in lines[0] and str(missing) in lines[0]
    assert proc.stdout == ""


def test_batch_size_auto_is_accepted_in_the_file_and_from_set(tmp_path):
    assert load_suite(DIGITS, ["batch_size=auto"]).spec.batch_size == "auto"
    assert load_suite(write(tmp_path, mutated(set_("batch_size", "auto")))).spec.batch_size == "auto"
    assert load_suite(DIGITS, ["batch_size=64"]).spec.batch_size == 64
