"""The executors against the contract in advbench.api.Executor, with toy stage functions and toy nodes.

Stage functions here are module-level so they pickle by reference, as the real ones in advbench.stages do.
The processes executor pickles every node into spawned processes; the ray tests share one local Ray
instance (2 CPUs) started by the executor itself, and are skipped where ray is not installed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

import advbench
from advbench.errors import AdvbenchError
from advbench.plan import Node, Settings
from advbench_executors.local import LocalExecutor
from advbench_executors.processes import ProcessesExecutor
from advbench_executors.ray_executor import RayExecutor

PICKLED: list[str] = []  # tags of the nodes pickled in this (the driver's) process


class PickleWitness:
    """A node parameter that notes, in the process that pickles it, that its node was pickled."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self):
        PICKLED.append(self.tag)
        return (PickleWitness, (self.tag,))


# ---------------------------------------------------------------------------------------------------------
# toy stage functions: fn(node, emit) -> record


def toy_stage(node: Node, emit) -> dict:
    start = time.time()
    emit({"node": node.key, "event": "start", "time": start})
    if "barrier" in node.params:  # wait (a while) until `parties` nodes have started: they run at once or fail
        folder, parties = Path(node.params["barrier"]), node.params["parties"]
        (folder / node.key).touch()
        while len(list(folder.iterdir())) < parties:
            if time.time() - start > 60:
                raise TimeoutError(f"{node.key}: the other nodes did not start within 60 s")
            time.sleep(0.02)
    time.sleep(node.params.get("sleep", 0.0))
    emit({"node": node.key, "event": "progress", "done": 1, "total": 1, "time": time.time()})
    end = time.time()
    emit({"node": node.key, "event": "end", "time": end})
    return {"key": node.key, "value": sum(node.params.get("values", ())), "pid": os.getpid(),
            "start": start, "end": end, "advbench": advbench.__file__}


def failing_stage(node: Node, emit) -> dict:
    emit({"node": node.key, "event": "start"})
    raise ValueError(f"boom in {node.key}")


def dies_once_stage(node: Node, emit) -> dict:
    marker = Path(node.params["marker"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)  # the worker process dies mid-task, as on an out-of-memory kill
    emit({"node": node.key, "event": "end"})
    return {"key": node.key, "pid": os.getpid(), "first_pid": int(marker.read_text())}


def interrupted_stage(node: Node, emit) -> dict:
    raise KeyboardInterrupt


def make_nodes(tmp_path: Path, n: int, **params) -> list[Node]:
    settings = Settings(cache_root=str(tmp_path))
    return [Node(key=f"k{i}", stage="toy", label=f"toy {i}", settings=settings,
                 params={"values": list(range(i + 1)), **params}, resources={"cpus": 1}) for i in range(n)]


class Events:
    """An on_event that keeps each event with the time it reached the driver."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.items: list[tuple[float, dict]] = []

    def __call__(self, event: dict) -> None:
        assert os.getpid() == self.pid  # called in the driver's process
        self.items.append((time.time(), event))

    def of(self, key: str, kind: str) -> list[tuple[float, dict]]:
        return [(t, e) for t, e in self.items if e.get("node") == key and e.get("event") == kind]


def run_all(executor, fn, nodes, events: Events) -> dict:
    """Submit every node and collect them all."""
    for node in nodes:
        executor.submit(fn, node)
    return collect(executor, len(nodes), events)


def collect(executor, n: int, events: Events, timeout: float = 0.5, limit: float = 120) -> dict:
    """Wait until n nodes came back, each once; check each node's events arrived before its record."""
    results: dict = {}
    deadline = time.monotonic() + limit
    while len(results) < n:
        assert time.monotonic() < deadline, f"only {sorted(node.key for node in results)} came back"
        for node, out in executor.wait(timeout):
            assert node not in results, f"{node.key} came back twice"
            if isinstance(out, dict):
                assert events.of(node.key, "end"), f"{node.key}'s events came after its record"
            results[node] = out
    assert executor.wait(0) == []  # nothing left
    return results


def pure(record: dict) -> dict:
    return {k: v for k, v in record.items() if k in ("key", "value")}


# ---------------------------------------------------------------------------------------------------------
# local


def test_local_runs_in_submission_order_with_live_events(tmp_path):
    nodes = make_nodes(tmp_path, 3, sleep=0.05)
    events = Events()
    executor = LocalExecutor()
    executor.open(events)
    assert executor.slots == 1
    assert executor.wait(0) == []  # nothing submitted: returns at once
    for node in nodes:
        executor.submit(toy_stage, node)
    order = []
    for _ in nodes:
        [(node, record)] = executor.wait()
        order.append(node.key)
        assert record["pid"] == os.getpid()
        (seen, _), = events.of(node.key, "start")
        assert seen <= record["end"]  # the start event reached on_event while the node still ran
    assert order == [n.key for n in nodes]
    executor.close()


def test_local_returns_exceptions_but_not_keyboard_interrupt(tmp_path):
    good, bad, stop = make_nodes(tmp_path, 3)
    executor = LocalExecutor()
    executor.open(Events())
    executor.submit(failing_stage, bad)
    executor.submit(toy_stage, good)
    executor.submit(interrupted_stage, stop)
    [(node, exc)] = executor.wait()
    assert node == bad and isinstance(exc, ValueError) and "boom in k1" in str(exc)
    [(node, record)] = executor.wait()
    assert node == good and record["value"] == 0
    with pytest.raises(KeyboardInterrupt):
        executor.wait()
    executor.close()


def test_processes_pickles_every_node_into_spawned_workers(tmp_path):
    nodes = make_nodes(tmp_path, 4, sleep=0.2)
    nodes = [Node(**{**vars(n), "params": {**n.params, "witness": PickleWitness(n.key)}}) for n in nodes]
    events = Events()
    executor = ProcessesExecutor(workers=2)
    assert executor.slots == 2
    executor.open(events)
    try:
        PICKLED.clear()
        results = run_all(executor, toy_stage, nodes, events)
    finally:
        executor.close()
    assert set(results) == set(nodes)
    assert sorted(PICKLED) == sorted(n.key for n in nodes)  # each node was pickled, once
    pids = {r["pid"] for r in results.values()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    local, local_events = LocalExecutor(), Events()
    local.open(local_events)
    expected = run_all(local, toy_stage, nodes, local_events)
    assert {n.key: pure(r) for n, r in results.items()} == {n.key: pure(r) for n, r in expected.items()}
    for node in nodes:
        assert [e["event"] for _, e in events.items if e["node"] == node.key] == ["start", "progress", "end"]


def test_processes_returns_exceptions_and_honours_timeout(tmp_path):
    slow, bad = make_nodes(tmp_path, 2, sleep=1.5)
    events = Events()
    executor = ProcessesExecutor(workers=1)
    executor.open(events)
    try:
        executor.submit(toy_stage, slow)
        start = time.monotonic()
        assert executor.wait(timeout=0.1) == []  # the slow node is still running (or its worker starting)
        assert time.monotonic() - start < 1.0
        executor.submit(failing_stage, bad)
        results = collect(executor, 2, events)
    finally:
        executor.close()
    assert results[slow]["key"] == "k0"
    assert isinstance(results[bad], ValueError) and "boom in k1" in str(results[bad])
    assert events.of("k1", "start")


# ---------------------------------------------------------------------------------------------------------
# ray


def test_ray_is_imported_only_when_opened_and_missing_ray_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    executor = RayExecutor()  # constructing (and registering: list-plugins) needs no ray
    assert executor.slots == 1 and RayExecutor(num_cpus=3).slots == 3
    with pytest.raises(AdvbenchError) as info:
        executor.open(Events())
    assert str(info.value) == "executor ray: ray is not installed; pip install -e '.[ray]'"


# one local instance for the module, started (and at the end shut down) by a RayExecutor


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    owner = RayExecutor(num_cpus=2)
    with pytest.MonkeyPatch.context() as patch:
        # Ray workers import stage functions by module name: make this test module importable there
        # (advbench's own stages are installed on every machine)
        path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
        patch.setenv("PYTHONPATH", path)
        owner.open(Events())
    assert ray.is_initialized()
    yield ray
    owner.close()
    assert not ray.is_initialized()  # close shuts down the Ray its open started


def test_ray_runs_nodes_concurrently_and_returns_every_record(ray_instance, tmp_path):
    # a cold worker pool starts its second worker a few seconds late: the barrier holds the first node until
    # the second runs too, so the spans overlap exactly when the executor lets them run at once
    (tmp_path / "barrier").mkdir()
    nodes = make_nodes(tmp_path, 2, sleep=1.0, barrier=str(tmp_path / "barrier"), parties=2)
    events = Events()
    executor = RayExecutor()
    executor.open(events)
    try:
        assert executor.slots == 2
        results = run_all(executor, toy_stage, nodes, events)
    finally:
        executor.close()
    assert ray_instance.is_initialized()  # it joined the running instance, so it leaves it running
    assert set(results) == set(nodes) and os.getpid() not in {r["pid"] for r in results.values()}
    assert {r["advbench"] for r in results.values()} == {advbench.__file__}  # the workers run this checkout
    assert [pure(results[n]) for n in nodes] == [{"key": "k0", "value": 0}, {"key": "k1", "value": 1}]
    spans = [(r["start"], r["end"]) for r in results.values()]
    at_once = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert at_once >= 2, spans


def test_ray_returns_exceptions_and_retries_a_dead_worker(ray_instance, tmp_path):
    good, bad, dying = make_nodes(tmp_path, 3, marker=str(tmp_path / "died-once"))
    events = Events()
    executor = RayExecutor(max_retries=2)
    executor.open(events)
    try:
        executor.submit(failing_stage, bad)
        executor.submit(dies_once_stage, dying)
        executor.submit(toy_stage, good)
        results = collect(executor, 3, events)
    finally:
        executor.close()
    assert results[good]["value"] == 0
    assert isinstance(results[bad], ValueError) and "boom in k1" in str(results[bad])
    assert events.of("k1", "start")
    record = results[dying]
    assert isinstance(record, dict), record
    assert record["first_pid"] != record["pid"]  # the first worker died; Ray ran the task again elsewhere


def test_ray_probe_fails_in_one_line_when_the_cache_is_not_visible(ray_instance, tmp_path):
    [node] = make_nodes(tmp_path / "not-there", 1)
    executor = RayExecutor()
    executor.open(Events())
    try:
        with pytest.raises(AdvbenchError) as info:
            executor.submit(toy_stage, node)
    finally:
        executor.close()
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "not-there") in message and "ADVBENCH_CACHE" in message
