"""The HTML report of a run folder: ``render_report(run_dir)`` writes ``<run_dir>/index.html``."""

from advbench.report.render import render_report

__all__ = ["render_report"]
