"""Sending watch events out, each kind of endpoint on a thread of its own: an HTTP POST of JSON
here, MQTT in ``app.mqtt``. No Qt.

An endpoint is outside the app's control: it may be down, slow or never answer. Events go
through a bounded queue (the oldest waiting one is dropped when it is full) to one thread that
delivers with a timeout, so a dead endpoint costs that thread its timeout per event and never
touches captioning or the GUI. The URL is user input: only http and https, with a host, no
spaces or control characters; redirects are not followed (a POST must not wander elsewhere).
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections import deque
from typing import Callable
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

MAX_URL_CHARS = 2048
POST_TIMEOUT = 5.0  # s per event: long enough for a slow LAN box, short enough to catch up
MAX_WAITING = 16


def validate_url(url: str) -> str:
    """``url`` stripped, or ValueError saying what is wrong with it."""
    url = url.strip() if isinstance(url, str) else ""
    if not url:
        raise ValueError("the notify URL is empty")
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"the notify URL is longer than {MAX_URL_CHARS} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ValueError("the notify URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as e:
        raise ValueError(f"the notify URL is malformed: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the notify URL must be http:// or https:// with a host, e.g. http://192.168.1.5:8123/hook")
    return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class QueuedSender:
    """Delivers each event (a dict) with ``_deliver`` on its own thread. ``on_result(ok, message)``
    is called on that thread after each attempt; ``sent`` / ``failed`` / ``dropped`` count them."""

    name = "endpoint"

    def __init__(self, timeout: float, on_result: Callable[[bool, str], None] | None = None):
        self.timeout, self.on_result = timeout, on_result
        self._cond = threading.Condition()
        self._waiting: deque[dict] = deque()
        self._stopping = False
        self.sent = self.failed = self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def send(self, event: dict) -> None:
        """Queue ``event``; never blocks."""
        with self._cond:
            if self._stopping:
                return
            if len(self._waiting) >= MAX_WAITING:
                self._waiting.popleft()
                self.dropped += 1
            self._waiting.append(event)
            self._cond.notify()

    def shutdown(self, timeout: float | None = 0.5) -> None:
        """Drop what waits; a post in flight ends at its own timeout (the thread is a daemon)."""
        with self._cond:
            self._stopping = True
            self._waiting.clear()
            self._cond.notify_all()
        if timeout is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._waiting:
                    self._cond.wait()
                if self._stopping:
                    return
                event = self._waiting.popleft()
            ok, message = self._deliver(event)
            if ok:
                self.sent += 1
            else:
                self.failed += 1
                log.warning("notify %s: %s", self.name, message)
            if self.on_result is not None:
                self.on_result(ok, message)

    def _deliver(self, event: dict) -> tuple[bool, str]:
        """(delivered?, what happened): never raises."""
        raise NotImplementedError


class HttpNotifier(QueuedSender):
    """POSTs each event as JSON to ``url``."""

    def __init__(self, url: str, timeout: float = POST_TIMEOUT, on_result: Callable[[bool, str], None] | None = None):
        self.url = self.name = validate_url(url)
        self._opener = urllib.request.build_opener(_NoRedirect)
        super().__init__(timeout, on_result)

    def _deliver(self, event: dict) -> tuple[bool, str]:
        body = json.dumps(event, ensure_ascii=True).encode("ascii")
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "blip-cam"})
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return True, f"notified {self.url} ({response.status})"
        except urllib.error.HTTPError as e:
            return False, f"{self.url} answered {e.code} {e.reason}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            return False, f"could not notify {self.url}: {reason}"
