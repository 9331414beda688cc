"""Drive a headless Debian Chromium through the Chrome DevTools Protocol over a websocket.

The synchronous client starts Chromium with a fresh profile, opens tabs, navigates, runs
JavaScript, clicks with real mouse events, types, and captures screenshots.
Chromium listens for DevTools on a free port of 127.0.0.1 that it writes to ``DevToolsActivePort``
in the profile folder.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

CHROMIUM = Path("/usr/bin/chromium")

START_TIMEOUT_SECONDS = 30.0
COMMAND_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
POLL_INTERVAL_SECONDS = 0.25

# Without the networking flags Chromium keeps trying to reach Google's hosts, which this closed
# network refuses. Running as root needs --no-sandbox.
HEADLESS_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


class BrowserError(AssertionError):
    """Chromium failed to start, a DevTools command failed, or a page condition did not hold in time."""


class DevToolsConnection:
    """One websocket to Chromium's browser endpoint, with commands sent to a tab through a session id.

    Only command responses are read. Events that arrive while waiting for one are discarded.
    """

    def __init__(self, websocket_url: str) -> None:
        self._exit_stack = contextlib.ExitStack()
        # Screenshots come back base64-encoded in one message, several megabytes for a large page.
        self._websocket: ClientConnection = self._exit_stack.enter_context(
            connect(websocket_url, max_size=None, proxy=None)
        )
        self._ids = itertools.count(1)

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session_id: str | None = None,
        timeout_seconds: float = COMMAND_TIMEOUT_SECONDS,
    ) -> dict[str, Any]:
        """Send one command and return its ``result``.

        :raises BrowserError: when Chromium returns an error or no response arrives in time.
        """
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        self._websocket.send(json.dumps(message))

        deadline = time.monotonic() + timeout_seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError(f"DevTools command {method} got no response within {timeout_seconds:.0f} s.")
            try:
                incoming = json.loads(self._websocket.recv(timeout=remaining))
            except TimeoutError:
                continue
            if incoming.get("id") != message_id:
                continue
            if "error" in incoming:
                raise BrowserError(f"DevTools command {method} failed: {incoming['error']}")
            return incoming.get("result", {})

    def close(self) -> None:
        self._exit_stack.close()


class Page:
    """One browser tab, attached through a flat DevTools session."""

    def __init__(self, connection: DevToolsConnection, target_id: str, session_id: str) -> None:
        self._connection = connection
        self._target_id = target_id
        self._session_id = session_id

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._connection.send(method, params, self._session_id)

    def close(self) -> None:
        self._connection.send("Target.closeTarget", {"targetId": self._target_id})

    def set_viewport(self, width: int, height: int) -> None:
        """Set the viewport to ``width`` by ``height`` CSS pixels, which is also the size of a screenshot."""
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    # Navigation and JavaScript

    def navigate(self, url: str, timeout_seconds: float = COMMAND_TIMEOUT_SECONDS) -> None:
        """Load ``url`` and wait until the document has loaded (scripts may still be rendering)."""
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"Navigation to {url} failed: {result['errorText']}")
        self.wait_for("document.readyState === 'complete'", timeout_seconds, f"{url} to load")

    def evaluate(self, expression: str) -> Any:
        """Evaluate a JavaScript expression in the page, await it if it is a promise, and return its JSON value.

        :raises BrowserError: when the expression throws.
        """
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            description = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript failed: {description}\nExpression: {expression}")
        return result["result"].get("value")

    def wait_for(
        self,
        expression: str,
        timeout_seconds: float,
        description: str,
        details: Callable[[], str] | None = None,
    ) -> Any:
        """Evaluate ``expression`` until it returns a truthy value, and return that value.

        A DOM node counts as ``True``, so ``expression`` may be a ``querySelector`` call.

        :raises BrowserError: after ``timeout_seconds``, naming ``description``, the page's URL and
            the start of its visible text, plus ``details()`` when given.
        """
        # A node has no JSON value, and returning one by value fails with "Object reference chain is too long".
        as_json = f"(() => {{ const value = ({expression}); return value instanceof Node ? true : value; }})()"
        deadline = time.monotonic() + timeout_seconds
        while True:
            value = self.evaluate(as_json)
            if value:
                return value
            if time.monotonic() > deadline:
                message = (
                    f"Timed out after {timeout_seconds:.0f} s waiting for {description}.\n"
                    f"Page URL: {self.evaluate('location.href')}\n"
                    f"Page text: {self.visible_text()[:2000]}"
                )
                if details is not None:
                    message += "\n" + details()
                raise BrowserError(message)
            time.sleep(POLL_INTERVAL_SECONDS)

    def wait_for_animations(self, timeout_seconds: float = COMMAND_TIMEOUT_SECONDS) -> None:
        """Wait until no finite CSS animation or transition runs, such as an accordion section opening.

        Animations that repeat forever, such as loading spinners, are not waited for.
        """
        self.wait_for(
            "document.getAnimations().every(animation => animation.playState !== 'running'"
            " || animation.effect?.getComputedTiming().endTime === Infinity)",
            timeout_seconds,
            "the page's animations to finish",
        )

    def visible_text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    # Input

    def click_at(self, x: float, y: float) -> None:
        """Press and release the left mouse button at a point of the viewport, in CSS pixels."""
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for event_type in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {"type": event_type, "x": x, "y": y, "button": "left", "buttons": 1, "clickCount": 1},
            )

    def click(self, element_expression: str, description: str) -> None:
        """Scroll an element into view and click its centre with mouse events, as a person would.

        :param element_expression: JavaScript that evaluates to the element, or to null when it is missing.
        """
        box = self.evaluate(
            f"""(() => {{
                const element = {element_expression};
                if (!element) return null;
                element.scrollIntoView({{block: 'center', inline: 'center'}});
                const rectangle = element.getBoundingClientRect();
                return {{x: rectangle.left + rectangle.width / 2, y: rectangle.top + rectangle.height / 2,
                         width: rectangle.width, height: rectangle.height}};
            }})()"""
        )
        if not box:
            raise BrowserError(f"Cannot click {description}: no such element.\nPage text: {self.visible_text()[:2000]}")
        if box["width"] == 0 or box["height"] == 0:
            raise BrowserError(f"Cannot click {description}: the element has no size, so it is not rendered.")
        self.click_at(box["x"], box["y"])

    def type_text(self, text: str) -> None:
        """Type text into the focused element, as an input method would insert it."""
        self.send("Input.insertText", {"text": text})

    # Screenshots

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the whole page, beyond the viewport too, and return its path.

        A fixed-position element such as a modal dialog is cut at the viewport's edge.
        """
        result = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(result["data"]))
        return path


class Chromium:
    """A headless Chromium process with a profile of its own, and the DevTools connection to it."""

    def __init__(self, profile_directory: Path, log_path: Path, executable: Path = CHROMIUM) -> None:
        self.profile_directory = profile_directory
        self.log_path = log_path
        profile_directory.mkdir(parents=True, exist_ok=True)
        self._log_file = log_path.open("ab")
        self.process = subprocess.Popen(
            [str(executable), *HEADLESS_FLAGS, f"--user-data-dir={profile_directory}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self.connection = DevToolsConnection(self._wait_for_websocket_url())
        except BaseException:
            self.stop()
            raise

    def _wait_for_websocket_url(self) -> str:
        """Return the browser's DevTools websocket URL, once Chromium has written ``DevToolsActivePort``.

        The file contains the port on its first line and the browser endpoint's path on its second.
        """
        port_file = self.profile_directory / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrowserError(f"Chromium exited at start with code {self.process.returncode}:\n{self.log_tail()}")
            lines = port_file.read_text(encoding="utf-8").splitlines() if port_file.exists() else []
            if len(lines) >= 2:
                return f"ws://127.0.0.1:{lines[0].strip()}{lines[1].strip()}"
            time.sleep(POLL_INTERVAL_SECONDS)
        raise BrowserError(
            f"Chromium wrote no DevToolsActivePort within {START_TIMEOUT_SECONDS:.0f} s:\n{self.log_tail()}"
        )

    def new_page(self, width: int, height: int) -> Page:
        """Open a blank tab with a viewport of ``width`` by ``height`` CSS pixels."""
        target = self.connection.send("Target.createTarget", {"url": "about:blank"})
        attached = self.connection.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self.connection, target["targetId"], attached["sessionId"])
        page.set_viewport(width, height)
        return page

    def log_tail(self, lines: int = 40) -> str:
        self._log_file.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Close the browser, and kill its process group if it does not exit in time."""
        connection = getattr(self, "connection", None)
        if connection is not None and self.process.poll() is None:
            try:
                connection.send("Browser.close", timeout_seconds=STOP_TIMEOUT_SECONDS)
            except Exception:  # The process group is killed below either way.
                pass
            connection.close()
        try:
            self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(STOP_TIMEOUT_SECONDS)
        self._log_file.close()
