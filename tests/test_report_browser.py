"""The report in a real browser: headless Chromium driven over the DevTools protocol (stdlib only).

Chromium is started with ``--remote-debugging-pipe`` (DevTools messages on file descriptors 3 and 4, each a JSON
object ended by a NUL byte), loads the rendered page from a file:// URL and reports every console message, script
exception, log entry and network request. The test fails on any console or log error, on any request that is
not the page itself or a data: URI, on an image that did not decode, and checks a full-page screenshot.
Skipped when no Chromium is installed.
"""

from __future__ import annotations

import base64
import fcntl
import importlib.util
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CANDIDATES = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]


def find_chromium() -> str | None:
    if os.path.exists("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _builders():
    """make_results / make_gallery / write_run from test_report.py, however pytest imports test modules."""
    source = Path(__file__).with_name("test_report.py")
    spec = importlib.util.spec_from_file_location("_advbench_report_fixtures", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe."""

    def __init__(self, chromium: str, profile: Path, timeout: float = 60.0) -> None:
        self.timeout = timeout
        cmd_read, self._cmd_write = os.pipe()  # we write commands; Chromium reads fd 3
        self._res_read, res_write = os.pipe()  # Chromium writes fd 4; we read replies and events
        # move the child's ends above 10 so bash (dash takes one-digit fds only) can put them on
        # 3 and 4 in any order; no preexec_fn, which is unsafe with threads
        child_read = fcntl.fcntl(cmd_read, fcntl.F_DUPFD, 10)
        child_write = fcntl.fcntl(res_write, fcntl.F_DUPFD, 10)
        os.close(cmd_read)
        os.close(res_write)
        shell = f'exec 3<&{child_read} 4>&{child_write} {child_read}<&- {child_write}>&-; exec "$0" "$@"'
        args = [shutil.which("bash") or "/bin/bash", "-c", shell, chromium, "--headless", "--no-sandbox",
                "--disable-gpu", "--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-default-apps", "--mute-audio",
                "--hide-scrollbars", "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, pass_fds=(child_read, child_write))
        cmd_read, res_write = child_read, child_write
        os.close(cmd_read)
        os.close(res_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def close(self) -> None:
        try:
            self.send("Browser.close", wait=False)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._cmd_write, self._res_read):
            try:
                os.close(fd)
            except OSError:
                pass

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from Chromium over the DevTools pipe")
            ready, _, _ = select.select([self._res_read], [], [], left)
            if ready:
                chunk = os.read(self._res_read, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the DevTools pipe (exit code {self.proc.poll()})")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, wait: bool = True) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._cmd_write, json.dumps(message).encode() + b"\0")
        if not wait:
            return {}
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float | None = None) -> dict:
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            event = self._read_message(deadline)
            if "method" in event:
                self.events.append(event)
                if event["method"] == method and event.get("sessionId") == session:
                    return event

    def drain(self, seconds: float) -> None:
        """Collect events for a moment (late requests or console messages after the load event)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                event = self._read_message(deadline)
                if "method" in event:
                    self.events.append(event)
        except TimeoutError:
            pass

    def evaluate(self, expression: str, session: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the browser check cannot run")
    return path


@pytest.fixture(scope="module")
def page_in_browser(chromium, tmp_path_factory):
    fixtures = _builders()
    results = fixtures.make_results()
    run = fixtures.write_run(tmp_path_factory.mktemp("run"), results, fixtures.make_gallery())
    from advbench.report import render_report

    page = render_report(run)
    url = page.resolve().as_uri()
    tools = DevTools(chromium, tmp_path_factory.mktemp("profile"))
    try:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable", session=session)
        tools.send("Emulation.setDeviceMetricsOverride",
                   {"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, session)
        tools.send("Page.navigate", {"url": url}, session)
        tools.wait_for("Page.loadEventFired", session)
        tools.drain(0.5)
        checks = {
            "scripts": tools.evaluate("document.scripts.length", session),
            "roc_svgs": tools.evaluate("document.querySelectorAll('figure.roc svg').length", session),
            "images": tools.evaluate("document.images.length", session),
            "images_decoded": tools.evaluate(
                "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)", session),
            "embedded": tools.evaluate("JSON.stringify(JSON.parse(document.getElementById('results').textContent))",
                                       session),
            "scroll_width": tools.evaluate("document.documentElement.scrollWidth", session),
            "title": tools.evaluate("document.title", session),
        }
        metrics = tools.send("Page.getLayoutMetrics", session=session)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        height = int(min(size["height"], 16000))
        shot = tools.send("Page.captureScreenshot",
                          {"format": "png", "captureBeyondViewport": True,
                           "clip": {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1}}, session)
        screenshot = tmp_path_factory.mktemp("shot") / "report.png"
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        tools.drain(0.2)
        events = [e for e in tools.events if e.get("sessionId") == session]
    finally:
        tools.close()
    return {"results": results, "url": url, "events": events, "checks": checks, "screenshot": screenshot,
            "height": height}


def test_no_console_errors_or_exceptions(page_in_browser):
    problems = []
    for event in page_in_browser["events"]:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            problems.append(f"console.{params.get('type')}: {params.get('args')}")
        elif method == "Runtime.exceptionThrown":
            problems.append(f"exception: {params.get('exceptionDetails')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
            entry = params["entry"]
            problems.append(f"log {entry.get('level')} ({entry.get('source')}): {entry.get('text')} "
                            f"{entry.get('url', '')}")
        elif method == "Network.loadingFailed":
            problems.append(f"loading failed: {params.get('errorText')}")
    assert problems == []


def test_no_request_leaves_the_file(page_in_browser):
    urls = [e["params"]["request"]["url"] for e in page_in_browser["events"]
            if e["method"] == "Network.requestWillBeSent"]
    assert page_in_browser["url"] in urls, "the DevTools session saw the page load"
    outside = [u for u in urls if u != page_in_browser["url"] and not u.startswith("data:")]
    assert outside == []


def test_page_renders_in_browser(page_in_browser):
    checks = page_in_browser["checks"]
    assert checks["scripts"] == 1  # only the JSON data block
    assert checks["roc_svgs"] == 4
    assert checks["images"] > 0 and checks["images_decoded"] is True
    assert json.loads(checks["embedded"]) == page_in_browser["results"]
    assert checks["scroll_width"] <= 1280, "nothing overflows the page horizontally"
    assert "<script>alert(1)</script>" in checks["title"]  # shown as text, never run


def test_screenshot_is_non_trivial(page_in_browser):
    from PIL import Image, ImageStat

    path = page_in_browser["screenshot"]
    assert path.stat().st_size > 50_000
    image = Image.open(path).convert("RGB")
    assert image.size[0] == 1280 and image.size[1] == page_in_browser["height"] > 3000
    stats = ImageStat.Stat(image.resize((128, max(1, image.size[1] // 10))))
    assert max(stats.stddev) > 20, "the page is not blank"
    colours = image.resize((256, 256)).getcolors(256 * 256)
    assert colours is None or len(colours) > 200
    if os.environ.get("ADVBENCH_KEEP_SCREENSHOT"):
        shutil.copy(path, os.environ["ADVBENCH_KEEP_SCREENSHOT"])
