"""The ``advbench`` command: run, list-plugins, report, cache, doctor."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
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


class _UsageLine(click.ClickException):
    """A click usage error shown as one line (click's own is four: usage, hint, blank, error)."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"advbench: error: {' '.join(self.format_message().split())}", err=True)


def _one_line_usage(exc: click.UsageError) -> click.ClickException:
    if type(exc).__name__ == "NoArgsIsHelpError":  # `advbench` alone prints the help: keep it
        return exc
    where = exc.ctx.command_path if exc.ctx is not None else "advbench"
    return _UsageLine(f"{where}: {exc.format_message()} (see {where} --help)")


class _Group(click.Group):
    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _one_line_usage(exc) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AdvbenchError as exc:
            fail(str(exc))
        except click.UsageError as exc:
            raise _one_line_usage(exc) from None


def cache_location() -> str:
    """Where the cache lives, for --help (computed when shown, so it follows ADVBENCH_CACHE)."""
    from advbench.cache import CACHE_ENV, default_root  # cheap: the cache module imports torch only when used

    how = f"from {CACHE_ENV}" if os.environ.get(CACHE_ENV) else f"set {CACHE_ENV} to use another folder"
    return f"{default_root()} ({how})"


class _CacheHelp:
    """Adds 'Cache: <where>' to a command's --help."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)  # type: ignore[misc]
        formatter.write_paragraph()
        formatter.write_text(f"Cache: {cache_location()}. Every stage's artifacts (trained models, masks, "
                             "adversarial sets, scores) are stored there and reused.")


class _CacheHelpCommand(_CacheHelp, click.Command):
    pass


class _CacheHelpGroup(_CacheHelp, click.Group):
    pass


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="advbench")
def main() -> None:
    """Benchmark detectors of adversarial inputs to image classifiers."""


@main.command("list-plugins")
@click.option("--kind", type=click.Choice(["dataset", "victim", "interpreter", "attack", "detector", "executor"]),
              help="Show only components of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def list_plugins(kind: Optional[str], as_json: bool) -> None:
    """Every registered component: kind, name, providing distribution and version, description.

    A plugin that could not be loaded is listed as a "broken" row with its error (in --json: "broken": true and
    "error"); skip it with ADVBENCH_DISABLE_PLUGINS=<distribution or entry-point name>.
    """
    from advbench import plugins

    rows = plugins.components(kind)
    # with --kind: the broken plugins that registered (or tried to) that kind, and those that never got that far
    broken = [b for b in plugins.broken() if kind is None or not b.names or kind in {k for k, _ in b.names}]
    if as_json:
        listed = [{"kind": r.kind, "name": r.name, "aliases": list(r.aliases), "distribution": r.distribution,
                   "version": r.version, "description": r.description, "broken": False} for r in rows]
        listed += [{"kind": "broken", "name": b.entry_point, "aliases": [], "distribution": b.distribution,
                    "version": b.version, "description": "", "broken": True, "error": b.error,
                    "components": [{"kind": k, "name": n} for k, n in b.names]} for b in broken]
        click.echo(json.dumps(listed, indent=1))
        return
    table = Table(title="advbench plugins")
    for column in ("kind", "name", "distribution", "version"):
        table.add_column(column, overflow="fold")  # wrap, never cut: a name is what a suite writes
    table.add_column("description")
    for r in rows:  # names and descriptions are plain text: '[/oops]' must print as written, not as markup
        name = r.name + (f"\n({', '.join(r.aliases)})" if r.aliases else "")
        table.add_row(r.kind, escape(name), escape(r.distribution), escape(r.version), escape(r.description))
    for b in broken:
        table.add_row("[red]broken[/]", escape(b.entry_point), escape(b.distribution), escape(b.version),
                      escape(f"skipped: {b.error}; skip it with {plugins.DISABLE_ENV}={b.disable_name}"))
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


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, kill, a scheduler, CI cancellation): handled like Ctrl-C, with the signal's exit status."""


@contextlib.contextmanager
def _signals():
    """SIGINT and SIGTERM raise a KeyboardInterrupt (so run_suite writes partial results); a second one exits at
    once with 128 + its number. A signal the run inherited as ignored (a background job) stays ignored."""
    received: list[int] = []

    def handler(signum, frame):
        if received:  # impatient: leave now, without the page
            click.echo(f"advbench: {signal.Signals(signum).name} again: stopping now", err=True)
            raise SystemExit(128 + signum)
        received.append(signum)
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN:
            continue
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread (an embedding program): leave signals alone
            pass
    try:
        yield received
    finally:
        if not received:  # after a signal, keep ours to the end: a late second one still exits 128 + n
            for signum, old in previous.items():
                signal.signal(signum, old)


@main.command(cls=_CacheHelpCommand)
@click.argument("suite_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--device", type=click.Choice(DEVICES), default=None,
              help="auto uses CUDA when present (default: the suite's device field).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default: a new reports/<suite>-<time>/).")
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
    """Run the grid SUITE_FILE describes and write results.json, CSV tables and index.html.

    Ctrl-C or SIGTERM stops the run, keeps what was computed (results.json with complete: false, and the
    page) and exits with 130 or 143; running the same command again resumes from the cache.
    """
    state: dict[str, Path] = {}
    with _signals() as received:
        try:
            _run(suite_file, device, out_dir, limit, seed, overrides, open_report, no_report, executor_name, threads,
                 received, state)
        except KeyboardInterrupt:  # before run_suite wrote results, or while the page was drawn
            status = 128 + (received[0] if received else signal.SIGINT)
            run_dir = state.get("run_dir")
            if run_dir is not None and (run_dir / "results.json").is_file():
                click.echo(f"advbench: interrupted; results so far in {run_dir}; run the same command to resume "
                           "from the cache", err=True)
            else:
                click.echo("advbench: interrupted before anything was computed; nothing to keep", err=True)
            sys.exit(status)


def _run(suite_file: Path, device: Optional[str], out_dir: Optional[Path], limit: Optional[int], seed: Optional[int],
         overrides: tuple[str, ...], open_report: bool, no_report: bool, executor_name: Optional[str],
         threads: Optional[int], received: list[int], state: dict[str, Path]) -> None:
    from advbench.cache import Cache
    from advbench.devices import resolve_device
    from advbench.rundir import new_run_dir, writable_out
    from advbench.runner import run_suite
    from advbench.suite import load_suite

    extra = list(overrides)
    if executor_name is not None:
        extra.insert(0, _executor_override(executor_name))
    if seed is not None:
        extra.append(f"seed={seed}")
    suite = load_suite(suite_file, extra)
    chosen = resolve_device(device, "--device") if device else resolve_device(suite.spec.device,
                                                                              f"{suite.source}: device")
    if out_dir is not None:
        run_dir = writable_out(out_dir)
    else:
        run_dir = new_run_dir(Path("reports"), suite.name, datetime.now().strftime("%Y%m%d-%H%M%S"))
    state["run_dir"] = run_dir
    # the thread count changes float reductions and so trained weights: it is part of what repeats a run
    omp_prefix = f"OMP_NUM_THREADS={shlex.quote(os.environ['OMP_NUM_THREADS'])} " if os.environ.get("OMP_NUM_THREADS") else ""
    command = omp_prefix + "advbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        _configure_logging(run_dir)
    except OSError as exc:
        raise AdvbenchError(f"--out {run_dir}: cannot write run.log there ({exc.strerror or exc})") from None
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
    except KeyboardInterrupt as exc:
        interrupted = True
        name = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT (Ctrl-C)"
        results = _read_results(run_dir)
        # run.log only: the screen gets one 'interrupted' line below
        logging.getLogger("advbench").info("%s: stopped; %s", name, f"partial results in {run_dir}"
                                           if results is not None else "nothing computed yet")
        if results is None:
            raise  # nothing written yet: the caller says so in one line
    except DataError as exc:  # raised by a dataset plugin at load time: say which suite file and field to fix
        raise DataError(_data_message(str(exc), suite)) from None
    except OSError as exc:  # the run folder stopped being writable (disk full, removed, permissions)
        if exc.filename and str(run_dir) in str(exc.filename):
            raise AdvbenchError(f"--out {run_dir}: cannot write {exc.filename} ({exc.strerror or exc})") from None
        _page_after_failure(run_dir, no_report)
        raise
    except Exception:  # a stage failed: run_suite wrote what was computed; the page shows it, then the error
        _page_after_failure(run_dir, no_report)
        raise
    page = None
    if not no_report:
        from advbench.report import render_report

        page = render_report(run_dir)
    _summary(results)
    if interrupted:
        console.print(f"[yellow]interrupted[/]: partial results in {escape(str(run_dir))}; run the same command to "
                      "resume from the cache", soft_wrap=True)
        sys.exit(128 + (received[0] if received else signal.SIGINT))
    where = page or run_dir / "results.json"
    if open_report and page is not None and _has_display():
        webbrowser.open(page.resolve().as_uri())
    click.echo(str(where))
    for failure in results.get("failed") or []:  # the rest of the grid ran; these cells did not
        click.echo(f"advbench: failed: {failure['label']}: {failure['error']}", err=True)
    if results.get("failed"):
        sys.exit(1)


def _executor_override(name: str) -> str:
    """``--executor NAME`` as the suite field it sets, checked here so an unknown name is blamed on the option."""
    from advbench import plugins

    if name not in plugins.registry()["executor"]:  # names and aliases
        raise AdvbenchError(f"--executor {name}: unknown executor; installed: {', '.join(plugins.names('executor'))}")
    return f"executor.plugin={name}"


def _page_after_failure(run_dir: Path, no_report: bool) -> None:
    """index.html for a run that failed after writing results.json (complete: false), so what was computed can
    be read; a page that cannot be drawn must not hide the run's own error."""
    if no_report or _read_results(run_dir) is None:
        return
    try:
        from advbench.report import render_report

        render_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - the run's error is the one to report
        logging.getLogger("advbench").warning("no page for the failed run: %s", exc)


def _read_results(run_dir: Path) -> Optional[dict]:
    """The run folder's results.json, or None when it is not there (yet) or not readable."""
    try:
        return json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None


def _data_message(message: str, suite) -> str:
    """A dataset plugin's message, prefixed with the suite file and the field that names the data."""
    options = (suite.raw.get("dataset") or {}).get("options") if isinstance(suite.raw.get("dataset"), dict) else None
    path = options.get("path") if isinstance(options, dict) else None
    if "dataset." not in message:
        field = "dataset.options.path" if path is not None else "dataset"
        message = f"{field}: {message}"
    return message if suite.source in message else f"{suite.source}: {message}"


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


def _wide_console(**kwargs) -> Console:
    """Piped (grep, a file) and no COLUMNS: 120 columns, not rich's 80, so names fold less."""
    out = Console(**kwargs)
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        out = Console(width=120, **kwargs)
    return out


def _summary(results: dict) -> None:
    rows = [r for r in results.get("detection", []) if r.get("population") == "successful"]
    if not rows:  # an interrupted run before any detection: no empty table
        return
    table = Table(title=f"detection ({escape(str(results.get('suite')))})")
    for column in ("detector", "interpreter", "attack", "source->target", "subset", "n adv", "TPR", "TNR", "AUROC"):
        table.add_column(column, overflow="fold", no_wrap=False)  # wrap, never cut a name to 'contr...'
    for r in rows:
        table.add_row(*(escape(str(v)) for v in (r["detector"], r.get("interpreter") or "-", r["attack"],
                                                 f"{r['source']}->{r['target']}", r["subset"],
                                                 r.get("n_adversarial"))),
                      _fmt(r.get("tpr")), _fmt(r.get("tnr")), _fmt(r.get("auroc")))
    _wide_console(stderr=True).print(table)


@main.command("plan")
@click.argument("suite_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Cap the evaluation and detector-fitting test images at N each (as `run --limit`).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Override the suite's seed.")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a suite field (repeatable).")
@click.option("--device", type=click.Choice(DEVICES), default=None, help="As `run --device`.")
@click.option("--executor", "executor_name", default=None, metavar="NAME", help="As `run --executor`.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="As `run --threads`.")
@click.option("--json", "as_json", is_flag=True, help="Print the nodes as a JSON list.")
def plan_command(suite_file: Path, limit: Optional[int], seed: Optional[int], overrides: tuple[str, ...],
                 device: Optional[str], executor_name: Optional[str], threads: Optional[int], as_json: bool) -> None:
    """Show the stage graph SUITE_FILE makes: every node, its stage, its inputs, and whether it is cached.

    Computes nothing but the dataset's load (its shapes and sizes shape the plan). Give it the options the run
    will get (--threads, --executor, --device change the numerics, and so the keys).
    """
    from advbench.cache import Cache
    from advbench.plan import build_plan, data_node
    from advbench.devices import resolve_device
    from advbench.runner import make_executor, run_settings, with_batch_size
    from advbench.stages import load_dataset
    from advbench.suite import load_suite

    extra = ([_executor_override(executor_name)] if executor_name else []) + list(overrides) + \
        ([f"seed={seed}"] if seed is not None else [])
    suite = load_suite(suite_file, extra)
    cache = Cache()
    settings = run_settings(suite, cache, device or suite.spec.device, threads, make_executor(suite))
    data = load_dataset(data_node(suite, settings))
    settings = with_batch_size(settings, suite, data, resolve_device(settings.device, "device"))
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
        table.add_row(r["key"][:10], escape(r["stage"]), escape(r["label"]), " ".join(short.get(k, k[:10]) for k in r["inputs"]),
                      "yes" if r["cached"] else "[bold]no[/]")
    out = Console()
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        out = Console(width=160)
    out.print(table)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
def report(run_dir: Path) -> None:
    """Re-render RUN_DIR/index.html from its results.json, computing nothing."""
    results = run_dir / "results.json"
    if not results.is_file():
        raise AdvbenchError(f"{run_dir}: no results.json here; give the folder of an advbench run")
    try:
        document = json.loads(results.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise AdvbenchError(f"{results}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise AdvbenchError(f"{results}: not UTF-8 text (byte {exc.start}); an advbench run writes UTF-8 JSON") from None
    except ValueError as exc:
        raise AdvbenchError(f"{results}: not valid JSON ({exc}); truncated or edited? rerun the suite to rewrite "
                            "it") from None
    if not isinstance(document, dict):
        raise AdvbenchError(f"{results}: holds a JSON {type(document).__name__}, not the results object of a run")
    from advbench.report import render_report

    try:
        page = render_report(run_dir)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        raise AdvbenchError(f"{results}: not the results of an advbench run ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:120]})") from None
    except OSError as exc:
        raise AdvbenchError(f"{run_dir}: cannot write index.html ({exc.strerror or exc})") from None
    click.echo(str(page))


@main.group(cls=_CacheHelpGroup)
def cache() -> None:
    """Show or clear stored artifacts (trained models, adversarial sets, scores)."""


@cache.command("ls", cls=_CacheHelpCommand)
@click.option("--json", "as_json", is_flag=True)
def cache_ls(as_json: bool) -> None:
    """List cache entries by stage; damaged entries are listed as such (cache clear removes them)."""
    from advbench.cache import Cache

    store = Cache()
    entries = store.entries()
    if as_json:
        click.echo(json.dumps([vars(e) for e in entries], indent=1))
        return
    table = Table(title=f"cache {escape(str(store.root))}")
    for column in ("key", "stage", "size", "created", "description"):
        table.add_column(column, overflow="fold", no_wrap=False)  # the stage is what `cache clear --stage` takes
    for e in sorted(entries, key=lambda e: e.created):
        table.add_row(escape(e.key[:12]), escape(e.stage or "-"), _size(e.size), _when(e.created),
                      escape(f"DAMAGED: {e.problem}" if e.problem else str(e.description)))
    _wide_console().print(table)
    damaged = sum(1 for e in entries if e.problem)
    note = f"; {damaged} damaged (advbench cache clear --yes removes them)" if damaged else ""
    click.echo(f"{len(entries)} entries, {_size(sum(e.size for e in entries))}{note}")


@cache.command("clear", cls=_CacheHelpCommand)
@click.option("--stage", default=None, help="Only entries of this stage (dataset-decode, victim, mask-classifier, "
              "metrics, interpreter, masks, adversarial, scores), and every damaged entry.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(stage: Optional[str], yes: bool) -> None:
    """Remove cache entries."""
    from advbench.cache import STAGES, Cache

    store = Cache()
    entries = store.entries()
    if stage is not None:
        present = sorted({e.stage for e in entries if e.stage})
        if stage not in STAGES and stage not in present:
            raise AdvbenchError(f"cache clear --stage {stage!r}: no such stage; stages: {', '.join(STAGES)}"
                                + (f" (in this cache: {', '.join(present)})" if present else " (this cache is empty)"))
    what = f"{stage} entries" if stage else "every entry"
    if not yes and not click.confirm(f"remove {what} under {store.root}?", default=False):
        return
    damaged = sum(1 for e in entries if e.problem)
    removed = store.clear(stage)
    click.echo(f"removed {removed} entries" + (f" ({damaged} damaged)" if damaged else ""))


@main.command()
@click.option("--suite", "suite_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Check this suite's data path instead of the shipped suites/*.yaml (repeatable).")
def doctor(suite_files: tuple[Path, ...]) -> None:
    """Check the environment: torch and torchvision, CUDA, the cache folder, the plugins, the data paths of the
    shipped suites. One line per check; exit 0 when all is well, 1 when something needs fixing."""
    from advbench.doctor import run_checks

    checks = run_checks(list(suite_files) or None)
    for check in checks:
        click.echo(f"{'ok' if check.ok else 'PROBLEM':7} {check.name}: {check.message}")
    problems = sum(1 for c in checks if not c.ok)
    click.echo(f"{problems} problem(s) to fix" if problems else "all checks passed")
    sys.exit(1 if problems else 0)


def _when(timestamp: float) -> str:
    try:
        return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):
        return "?"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@main.command("new-plugin")
@click.argument("kind")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="Where to create the package folder advbench-NAME.")
def new_plugin(kind: str, name: str, directory: Path) -> None:
    """Scaffold an installable plugin package: advbench-NAME with one KIND class, a conformance test, a README.

    KIND is one of dataset, victim, interpreter, attack, detector, executor; NAME is what a suite will write
    (lowercase words joined by hyphens, e.g. my-method).
    """
    from advbench.scaffold import scaffold

    try:
        root = scaffold(kind, name, directory)
    except AdvbenchError as exc:
        fail(str(exc))
    click.echo(f"created {root}: pip install -e {root} && python -m pytest -q {root / 'tests'}")


if __name__ == "__main__":
    main()
