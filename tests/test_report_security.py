"""The report's Security section: success under detection per target, a curve per detector, the sanity checks."""

from __future__ import annotations

import pytest

from advbench.report import render_report
from advbench.report.format import fmt
from advbench.security import eps_label, sanity_checks, sanity_warnings, unavailable_row
from test_report import EVIL_DETECTOR, HOSTILE, Page, make_results, write_run
from test_security import CELL, LINF, measured

EPS = [2 / 255, 8 / 255, 16 / 255]
NO_GRADIENT = "detector has no differentiable score"
TRANSFER_ONLY_WHITEBOX = "transfer pair: adaptive attacks run white-box on the target only"


def security_rows() -> list[dict]:
    rows = []
    for detector, interpreter in [("contrast", "lan"), (EVIL_DETECTOR, None)]:
        cell = {"detector": detector, "interpreter": interpreter, "target": "alexnet", "source": "alexnet"}
        # the oblivious attack's success falls from 2/255 to 8/255: a broken evaluation the checks must catch
        for eps, fooled in zip(EPS, [60, 20, 100]):
            rows.append(measured(misclassified=fooled, evaded=fooled // 2, eps=eps, **cell))
        for eps, fooled in zip(EPS, [70, 90, 100]):
            if interpreter is None:
                rows.append(unavailable_row(**{**CELL, **cell, "knowledge": "adaptive", "attack_plugin": "opgd"},
                                            attack=f"opgd@{eps_label(eps, 'linf')}", threat_model={**LINF, "eps": eps},
                                            status="unsupported", reason=NO_GRADIENT))
            else:
                rows.append(measured(misclassified=fooled, evaded=fooled - 5, eps=eps, knowledge="adaptive",
                                     attack_plugin="opgd", **cell))
        rows.append(measured(misclassified=30, evaded=10, eps=8 / 255, **{**cell, "source": "vgg"}))
        rows.append(unavailable_row(**{**CELL, **cell, "source": "vgg", "knowledge": "adaptive",
                                       "attack_plugin": "opgd"}, attack="opgd@8/255",
                                    threat_model={**LINF, "eps": 8 / 255}, status="not-applicable",
                                    reason=TRANSFER_ONLY_WHITEBOX))
    return rows


def with_security(results: dict, checks_in_warnings: bool = True) -> dict:
    results["security"] = security_rows()
    results["sanity_checks"] = sanity_checks(results["security"])
    if checks_in_warnings:
        results["warnings"] += sanity_warnings(results["sanity_checks"])
    return results


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    results = with_security(make_results())
    html = render_report(write_run(tmp_path_factory.mktemp("run"), results)).read_text(encoding="utf-8")
    return results, html, Page(html)


def shown(value: float, interval: list[float]) -> str:
    return f"{fmt(value)} [{fmt(interval[0])}, {fmt(interval[1])}]"


def test_table_puts_oblivious_beside_adaptive_per_budget(rendered):
    results, html, page = rendered
    assert '<section id="security"' in html and 'href="#security"' in html
    table = page.tables["table-security-0"]
    assert table["head_rows"][0][1:] == ["linf ε = 2/255", "linf ε = 8/255", "linf ε = 16/255"]
    view = page.records("table-security-0")
    assert [r["detector"] for r in view] == ["contrast", EVIL_DETECTOR]  # parsed back: the name itself
    # white-box first, oblivious before adaptive; the transfer pair at 8/255 only
    assert table["header"][2:] == ["pgd (oblivious)", "opgd (adaptive)"] * 2 + [
        "pgd (oblivious) from vgg", "opgd (adaptive) from vgg"] + ["pgd (oblivious)", "opgd (adaptive)"]
    budget_of = [None, None] + [EPS[0]] * 2 + [EPS[1]] * 4 + [EPS[2]] * 2
    by_cell = {(r["detector"], r["eps"], r["attack_plugin"], r["source"]): r for r in results["security"]}
    header = table["header"]
    for shown_row, detector in zip(table["rows"], ["contrast", EVIL_DETECTOR]):
        for column, cell_text in enumerate(shown_row[2:], start=2):
            label, eps = header[column], budget_of[column]
            plugin = label.split(" ")[0]
            row = by_cell[(detector, eps, plugin, "vgg" if "from vgg" in label else "alexnet")]
            if row["status"] == "ok":
                assert cell_text == shown(row["success_under_detection"], row["success_under_detection_ci"])
            else:
                assert cell_text == row["status"]
    assert f"<b>unsupported</b>: {NO_GRADIENT}" in html and TRANSFER_ONLY_WHITEBOX in html


def test_a_curve_per_detector_with_both_knowledge_levels(rendered):
    results, html, page = rendered
    curves = [f for f in page.figures if f["class"] == "security-curve"]
    assert len(curves) == 2 and all(f["svg"] == 1 for f in curves)
    # contrast: pgd oblivious, opgd adaptive and the transferred pgd; the other detector has no adaptive numbers
    assert 'id="fig-security-0" data-lines="3"' in html and 'id="fig-security-1" data-lines="2"' in html
    figure = html[html.index('id="fig-security-0"'):html.index('id="fig-security-1"')]
    assert "stroke-dasharray" in figure  # the oblivious lines are dashed


def test_failed_sanity_checks_are_listed_first_highlighted_and_warned(rendered):
    results, html, page = rendered
    checks = page.records("table-sanity-checks")
    failed = [c for c in results["sanity_checks"] if c["outcome"] == "fail"]
    assert failed and [c["outcome"] for c in checks[:len(failed)]] == ["fail"] * len(failed)
    assert page.tables["table-sanity-checks"]["rows"][0][1] == "fail"
    assert html.count('<tr class="check-fail">') == len(failed)
    assert {c["check"] for c in checks} == {"eps-growth", "more-steps", "transfer-vs-whitebox"}
    for line in sanity_warnings(results["sanity_checks"]):
        banner = html[html.index('id="warnings"'):html.index("</div>", html.index('id="warnings"'))]
        assert banner.count(line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")) == 1


def test_page_warns_of_failed_checks_the_writer_did_not_copy(tmp_path):
    results = with_security(make_results(), checks_in_warnings=False)
    html = render_report(write_run(tmp_path, results)).read_text(encoding="utf-8")
    assert "sanity check eps-growth failed for pgd (oblivious, linf, 10 steps) on alexnet" in html


def test_hostile_detector_names_are_escaped(rendered):
    results, html, page = rendered
    assert HOSTILE not in html and html.count("<script") == 1
    assert f"{EVIL_DETECTOR.split('<')[0]}&lt;script&gt;" in html


def test_section_is_absent_without_security_rows(tmp_path):
    html = render_report(write_run(tmp_path, make_results())).read_text(encoding="utf-8")
    assert '<section id="security"' not in html and 'href="#security"' not in html
    assert "table-sanity-checks" not in html
