"""Every bad input or damaged file reaching the CLI is one line on stderr and exit 2 (issue 16, items 2, 3, 5, 7,
10, 12): unwritable --out, damaged results.json, hostile suite names, misattributed blame, click usage errors,
run folders of runs started in the same second, tables that wrap instead of cutting names, and --help."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from advbench import plugins
from advbench.cli import main
from advbench.errors import AdvbenchError
from advbench.rundir import NAME_MAX, folder_name, new_run_dir, writable_out

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COLUMNS", raising=False)
    plugins.reset()
    yield
    plugins.reset()


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result


def one_line(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("advbench: error: ")
    return result.stderr


def suite_copy(tmp_path: Path, base: str = "digits", **changes) -> Path:
    raw = yaml.safe_load((REPO / "suites" / f"{base}.yaml").read_text())
    for key, value in changes.items():
        raw[key] = value
    path = tmp_path / f"{base}-copy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def fake_run(monkeypatch):
    """run_suite replaced by one that only writes a minimal results.json: the CLI's own work, in milliseconds."""
    seen = []

    def run_suite(suite, run_dir, device, cache, limit=None, on_event=None, command="", threads=None):
        seen.append(run_dir)
        results = {"suite": suite.name, "detection": [], "complete": True}
        (run_dir / "results.json").write_text(json.dumps(results))
        return results

    monkeypatch.setattr("advbench.runner.run_suite", run_suite)
    return seen


# ---------------------------------------------------------------- item 2: --out that cannot be written

def test_out_under_a_regular_file_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    message = one_line(invoke("run", "suites/digits.yaml", "--out", str(blocker / "run")))
    assert "--out" in message and str(blocker / "run") in message and "Not a directory" in message


def test_out_that_is_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = invoke("run", "suites/digits.yaml", "--out", str(blocker))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1  # click's own check or ours: one line


def test_out_without_permission_is_one_line(tmp_path, monkeypatch):
    """Tests run as root, for whom chmod 555 changes nothing: the permission error is simulated."""
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro"))

    monkeypatch.setattr("tempfile.TemporaryFile", denied)
    with pytest.raises(AdvbenchError, match=r"--out .*ro: cannot write a run folder there \(Permission denied"):
        writable_out(tmp_path / "ro")
    message = one_line(invoke("run", "suites/digits.yaml", "--out", str(tmp_path / "ro")))
    assert "Permission denied" in message


# ---------------------------------------------------------------- item 3: advbench report on a damaged file

@pytest.mark.parametrize("content", [b'{"suite": "digits", "detection": [', b"\xff\xfe{}", b"[1, 2]", b""])
def test_report_on_a_damaged_results_json_is_one_line(tmp_path, content):
    (tmp_path / "results.json").write_bytes(content)
    message = one_line(invoke("report", str(tmp_path)))
    assert "results.json" in message


# ---------------------------------------------------------------- items 5 and 10: run folder names

@pytest.mark.parametrize("name", ["/abs/path", "../../x", "a/../../b", "..", "-rf", "x" * 90, "naïve suite"])
def test_folder_name_is_one_safe_component(name):
    safe = folder_name(name)
    assert safe and "/" not in safe and "\\" not in safe and ".." not in safe and "\x00" not in safe
    assert not safe.startswith((".", "-")) and len(safe) <= NAME_MAX


@pytest.mark.parametrize("name", ["/abs/path", "../../x"])
def test_a_suite_name_never_leaves_reports(tmp_path, monkeypatch, fake_run, name):
    suite = suite_copy(tmp_path, name=name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = invoke("run", str(suite), "--no-report")
    assert result.exit_code == 0, result.output
    (run_dir,) = fake_run
    assert run_dir.resolve().parent == (work / "reports").resolve()
    assert sorted(p.name for p in work.iterdir()) == ["reports"]


@pytest.mark.parametrize("name,expected", [("a\x00b", "control character"), ("x" * 300, "300 characters")])
def test_an_invalid_suite_name_is_one_line_naming_the_field(tmp_path, name, expected):
    message = one_line(invoke("run", str(suite_copy(tmp_path, name=name))))
    assert ": name: " in message and expected in message


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    made, errors = [], []

    def start():
        try:
            made.append(new_run_dir(tmp_path / "reports", "digits", "20260101-000000"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(made)) == 8
    assert all(p.is_dir() and p.parent == tmp_path / "reports" for p in made)
    assert tmp_path / "reports" / "digits-20260101-000000" in made


# ---------------------------------------------------------------- item 7: blame the right thing

def test_set_creating_an_unknown_entry_is_blamed_on_the_set():
    message = one_line(invoke("run", "suites/digits.yaml", "--set", "attacks.fgsmx.options.eps=0.1"))
    assert "suites/digits.yaml: attacks.fgsmx" in message
    assert "(from --set attacks.fgsmx.options.eps=0.1)" in message


def test_device_cuda_in_the_suite_names_the_suite_field(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    suite = suite_copy(tmp_path, device="cuda")
    message = one_line(invoke("run", str(suite)))
    assert f"{suite}: device cuda: CUDA is not available" in message and "--device" not in message
    message = one_line(invoke("run", "suites/digits.yaml", "--device", "cuda"))
    assert "--device cuda: CUDA is not available" in message


def test_a_corrupt_dataset_tar_names_dataset_options_path(tmp_path):
    tar = tmp_path / "cifar.tar.gz"
    tar.write_bytes(b"\x1f\x8b not really a gzip stream" * 10)
    raw = yaml.safe_load((REPO / "suites" / "quick.yaml").read_text())
    raw["dataset"]["options"]["path"] = str(tar)
    suite = tmp_path / "quick-copy.yaml"
    suite.write_text(yaml.safe_dump(raw))
    message = one_line(invoke("run", str(suite), "--out", str(tmp_path / "run"), "--no-report", "--limit", "2"))
    assert message.startswith(f"advbench: error: {suite}: dataset.options.path")
    assert str(tar) in message


def test_cache_clear_of_an_unknown_stage_names_the_stages():
    message = one_line(invoke("cache", "clear", "--stage", "bogus", "--yes"))
    assert "'bogus'" in message and "adversarial" in message and "victim" in message
    result = invoke("cache", "clear", "--stage", "adversarial", "--yes")  # a real stage on an empty cache: fine
    assert result.exit_code == 0 and "removed 0 entries" in result.stdout


@pytest.mark.parametrize("args", [["run"], ["run", "suites/digits.yaml", "--bogus"], ["run", "x.yaml", "--limit", "0"],
                                  ["cache", "clear", "--stage"], ["nonsense"], ["cache", "nonsense"],
                                  ["list-plugins", "--kind", "attacks"]])
def test_click_usage_errors_are_one_line(args):
    message = one_line(invoke(*args))
    assert "--help" in message and "Usage:" not in message


# ---------------------------------------------------------------- item 12: help, tables

@pytest.mark.parametrize("command", [["run"], ["cache"], ["cache", "ls"], ["cache", "clear"]])
def test_help_says_where_the_cache_lives(command, tmp_path):
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "ADVBENCH_CACHE" in text and str(tmp_path / "cache") in text


def test_cache_ls_shows_the_full_stage_name_in_80_columns(monkeypatch):
    import torch

    from advbench.cache import Cache, make_key

    monkeypatch.setenv("COLUMNS", "80")
    Cache().save(make_key("mask-classifier", {}, []), {"x": torch.ones(1)}, stage="mask-classifier",
                 description="lenet on integrated-gradients/alexnet masks, a long description")
    result = invoke("cache", "ls")
    assert result.exit_code == 0
    assert "mask-classifier" in result.stdout.replace("│", " ").replace(" \n", "\n") or \
        "mask-classif" in result.stdout  # folded over two lines at worst, never cut
    assert "…" not in result.stdout


def test_summary_table_folds_instead_of_cutting(capsys):
    from advbench import cli

    row = {"detector": "feature-squeezing-very-long-name", "interpreter": "integrated-gradients", "attack": "fgsm",
           "source": "alexnet", "target": "vgg-like", "subset": "filtered", "population": "successful",
           "n_adversarial": 10, "tpr": 0.5, "tnr": 0.5, "auroc": 0.5}
    cli._summary({"suite": "s", "detection": [row]})
    err = capsys.readouterr().err
    assert "…" not in err and "..." not in err
    joined = "".join(line.replace("│", "").replace(" ", "") for line in err.splitlines())
    assert "integrated-gradients" in joined or "integrated-gradi" in joined


def test_no_table_without_detection_rows(capsys):
    from advbench import cli

    cli._summary({"suite": "s", "detection": []})
    assert "detection" not in capsys.readouterr().err


def test_readme_shows_cache_ls_and_clear_as_two_commands():
    readme = (REPO / "README.md").read_text()
    assert "advbench cache ls | advbench cache clear" not in readme
    assert "advbench cache clear --stage adversarial --yes" in readme
