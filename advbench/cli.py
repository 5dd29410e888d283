"""The ``advbench`` command: run, list-plugins, report, cache."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import webbrowser
from datetime import datetime
from pathlib import Path
from typing import Optional

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from advbench import __version__
from advbench.errors import AdvbenchError, DataError

console = Console(stderr=True)
DEVICES = ("auto", "cpu", "cuda")


def fail(message: str) -> None:
    """One line on stderr, exit status 2, no traceback."""
    click.echo(f"advbench: error: {' '.join(str(message).split())}", err=True)
    sys.exit(2)


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AdvbenchError as exc:
            fail(str(exc))


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="advbench")
def main() -> None:
    """Benchmark detectors of adversarial inputs to image classifiers."""


@main.command("list-plugins")
@click.option("--kind", type=click.Choice(["dataset", "victim", "interpreter", "attack", "detector", "executor"]),
              help="Show only components of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def list_plugins(kind: Optional[str], as_json: bool) -> None:
    """Every registered component: kind, name, providing distribution and version, description."""
    from advbench import plugins

    rows = plugins.components(kind)
    if as_json:
        click.echo(json.dumps([{"kind": r.kind, "name": r.name, "aliases": list(r.aliases),
                                "distribution": r.distribution, "version": r.version,
                                "description": r.description} for r in rows], indent=1))
        return
    table = Table(title="advbench plugins")
    for column in ("kind", "name", "distribution", "version"):
        table.add_column(column, overflow="fold")  # wrap, never cut: a name is what a suite writes
    table.add_column("description")
    for r in rows:
        name = r.name + (f"\n({', '.join(r.aliases)})" if r.aliases else "")
        table.add_row(r.kind, name, r.distribution, r.version, r.description)
    out = Console()
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        out = Console(width=120)  # piped (grep, a file): rich's 80-column default would fold names
    out.print(table)


def _progress_events(progress: Progress):
    """Progress events from the stage nodes (wherever they run) as rich bars: one per stage kind, one per loop."""
    stage_bars: dict[str, object] = {}
    loops: dict[str, object] = {}

    def on_event(event: dict) -> None:
        kind = event.get("type")
        if kind == "plan":
            for stage, count in event["stages"].items():
                stage_bars[stage] = progress.add_task(f"[bold]{escape(stage)}[/] nodes", total=count)
        elif kind == "node" and event.get("stage") in stage_bars:
            progress.advance(stage_bars[event["stage"]])
        elif kind == "start":
            loops[event["id"]] = progress.add_task(escape(str(event.get("description", ""))), total=event.get("total"))
        elif kind == "advance" and event.get("id") in loops:
            progress.advance(loops[event["id"]], event.get("advance", 1))
        elif kind == "end" and event.get("id") in loops:
            progress.update(loops.pop(event["id"]), visible=False)
    return on_event


@main.command()
@click.argument("suite_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--device", type=click.Choice(DEVICES), default=None,
              help="auto uses CUDA when present (default: the suite's device field).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default: reports/<suite>-<time>/).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Cap the evaluation and detector-fitting test images at N each.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Override the suite's seed.")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override a suite field, e.g. --set attacks.fgsm.options.eps=0.05 (repeatable).")
@click.option("--open", "open_report", is_flag=True, help="Open the report in a browser when a display is there.")
@click.option("--no-report", is_flag=True, help="Write results only, no HTML page.")
@click.option("--executor", "executor_name", default=None, metavar="NAME",
              help="Run the plan's nodes with this executor plugin (local, processes, ray, ...); short for "
                   "--set executor.plugin=NAME.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads per worker (default: the cores this process may use, shared by the executor's "
                   "workers; OMP_NUM_THREADS is honoured).")
def run(suite_file: Path, device: Optional[str], out_dir: Optional[Path], limit: Optional[int], seed: Optional[int],
        overrides: tuple[str, ...], open_report: bool, no_report: bool, executor_name: Optional[str],
        threads: Optional[int]) -> None:
    """Run the grid SUITE_FILE describes and write results.json, CSV tables and index.html."""

    from advbench.cache import Cache
    from advbench.runner import resolve_device, run_suite
    from advbench.suite import load_suite

    extra = list(overrides)
    if executor_name is not None:
        extra.insert(0, f"executor.plugin={executor_name}")
    if seed is not None:
        extra.append(f"seed={seed}")
    suite = load_suite(suite_file, extra)
    chosen = resolve_device(device or suite.spec.device)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = out_dir or Path("reports") / f"{suite.name}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    # the thread count changes float reductions and so trained weights: it is part of what repeats a run
    omp_prefix = f"OMP_NUM_THREADS={shlex.quote(os.environ['OMP_NUM_THREADS'])} " if os.environ.get("OMP_NUM_THREADS") else ""
    command = omp_prefix + "advbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    _configure_logging(run_dir)
    cache = Cache()
    banner = f"advbench {__version__}: suite {suite.name} on {chosen}, run folder {run_dir}, cache {cache.root}"
    logging.getLogger("advbench").info(banner)
    # On a terminal: a banner and live bars. Piped (CI, scripts): nothing but warnings and errors on stderr,
    # so a failure is exactly one line there (rich would otherwise wrap the banner and leave a blank line).
    interactive = console.is_terminal
    if interactive:
        console.print(escape(banner), soft_wrap=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console, transient=True, disable=not interactive)
    interrupted = False
    try:
        with progress:
            results = run_suite(suite, run_dir, device or suite.spec.device, cache, limit=limit,
                                on_event=_progress_events(progress), command=command, threads=threads)
    except KeyboardInterrupt:
        interrupted = True
        results = json.loads((run_dir / "results.json").read_text())
    except DataError as exc:  # raised by a dataset plugin at load time: say which suite file to fix
        message = str(exc)
        raise DataError(message if suite.source in message else f"{suite.source}: {message}") from None
    page = None
    if not no_report:
        from advbench.report import render_report

        page = render_report(run_dir)
    _summary(results)
    if interrupted:
        console.print(f"[yellow]interrupted[/]: partial results in {run_dir}; run the same command to resume "
                      "from the cache")
        sys.exit(130)
    where = page or run_dir / "results.json"
    if open_report and page is not None and _has_display():
        webbrowser.open(page.resolve().as_uri())
    click.echo(str(where))


def _has_display() -> bool:
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _configure_logging(run_dir: Path) -> None:
    logger = logging.getLogger("advbench")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    file_handler = logging.FileHandler(run_dir / "run.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(file_handler)
    screen = RichHandler(console=console, show_path=False, level=logging.WARNING)
    logger.addHandler(screen)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _summary(results: dict) -> None:
    table = Table(title=f"detection ({results.get('suite')})")
    for column in ("detector", "interpreter", "attack", "source->target", "subset", "n adv", "TPR", "TNR", "AUROC"):
        table.add_column(column)
    for r in results.get("detection", []):
        if r.get("population") != "successful":
            continue
        table.add_row(r["detector"], r.get("interpreter") or "-", r["attack"], f"{r['source']}->{r['target']}",
                      r["subset"], str(r.get("n_adversarial")), _fmt(r.get("tpr")), _fmt(r.get("tnr")),
                      _fmt(r.get("auroc")))
    console.print(table)


@main.command("plan")
@click.argument("suite_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Cap the evaluation and detector-fitting test images at N each (as `run --limit`).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Override the suite's seed.")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a suite field (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the nodes as a JSON list.")
def plan_command(suite_file: Path, limit: Optional[int], seed: Optional[int], overrides: tuple[str, ...],
                 as_json: bool) -> None:
    """Show the stage graph SUITE_FILE makes: every node, its stage, its inputs, and whether it is cached.

    Computes nothing but the dataset's load (its shapes and sizes shape the plan).
    """
    from advbench.cache import Cache
    from advbench.plan import Settings, build_plan, data_node
    from advbench.stages import load_dataset
    from advbench.suite import load_suite

    extra = list(overrides) + ([f"seed={seed}"] if seed is not None else [])
    suite = load_suite(suite_file, extra)
    cache = Cache()
    settings = Settings(cache_root=str(cache.root), device=suite.spec.device, batch_size=suite.spec.batch_size,
                        seed=suite.spec.seed)
    data = load_dataset(data_node(suite, settings))
    graph = build_plan(suite, data, settings, limit)
    rows = [{"key": node.key, "stage": node.stage, "label": node.label, "inputs": list(node.inputs),
             "plugin": (node.plugin or {}).get("name"), "resources": node.resources,
             "cached": cache.contains(key)} for key, node in graph.nodes.items()]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    table = Table(title=f"plan of {escape(suite.name)}: {len(rows)} nodes, "
                        f"{sum(r['cached'] for r in rows)} cached, cache {escape(str(cache.root))}")
    for column in ("node", "stage", "label", "inputs", "cached"):
        table.add_column(column, overflow="fold")
    short = {r["key"]: r["key"][:10] for r in rows}
    for r in rows:
        table.add_row(r["key"][:10], r["stage"], escape(r["label"]), " ".join(short.get(k, k[:10]) for k in r["inputs"]),
                      "yes" if r["cached"] else "[bold]no[/]")
    out = Console()
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        out = Console(width=160)
    out.print(table)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
def report(run_dir: Path) -> None:
    """Re-render RUN_DIR/index.html from its results.json, computing nothing."""
    if not (run_dir / "results.json").is_file():
        raise AdvbenchError(f"{run_dir}: no results.json here; give the folder of an advbench run")
    from advbench.report import render_report

    click.echo(str(render_report(run_dir)))


@main.group()
def cache() -> None:
    """Show or clear stored artifacts (trained models, adversarial sets, scores)."""


@cache.command("ls")
@click.option("--json", "as_json", is_flag=True)
def cache_ls(as_json: bool) -> None:
    """List cache entries by stage."""
    from advbench.cache import Cache

    store = Cache()
    entries = store.entries()
    if as_json:
        click.echo(json.dumps([vars(e) for e in entries], indent=1))
        return
    table = Table(title=f"cache {store.root}")
    for column in ("key", "stage", "size", "created", "description"):
        table.add_column(column)
    for e in sorted(entries, key=lambda e: e.created):
        table.add_row(e.key[:12], e.stage, _size(e.size), datetime.fromtimestamp(e.created).strftime("%Y-%m-%d %H:%M"),
                      e.description)
    Console().print(table)
    click.echo(f"{len(entries)} entries, {_size(sum(e.size for e in entries))}")


@cache.command("clear")
@click.option("--stage", default=None, help="Only entries of this stage (victim, adversarial, scores, ...).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(stage: Optional[str], yes: bool) -> None:
    """Remove cache entries."""
    from advbench.cache import Cache

    store = Cache()
    what = f"{stage} entries" if stage else "every entry"
    if not yes and not click.confirm(f"remove {what} under {store.root}?", default=False):
        return
    click.echo(f"removed {store.clear(stage)} entries")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


if __name__ == "__main__":
    main()
