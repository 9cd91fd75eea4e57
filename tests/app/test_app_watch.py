"""Watches (issue #19 item 5): each captioned frame is scored against the user's watch texts with
the loaded matching model; a watch fires with hysteresis and a cool-down, is highlighted, saves a
snapshot tagged with it, and is posted as JSON to a real local HTTP server; a dead endpoint does
not stall captions; models that cannot match are said plainly; ``blip-cam --watch`` prints one JSON
line per event, headless. (MQTT: test_app_watch_mqtt.py.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from app_fakes import FakeLoader, FakeModel, FakeSource

from app.arguments import parse_args
from app.notify import validate_url
from app.watch_controller import NO_MATCHER
from app.watches import Watch, WatchError, WatchEvent, WatchRules, validate_watch

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "assets" / "blip-scenes-demo"
RED_CIRCLE_SCENES = {4, 6, 8, 11}  # the scenes among seeds 0..13 whose captions say "a red circle"


# --- rules ---------------------------------------------------------------------------------------


def test_a_watch_fires_once_per_visit_and_not_within_its_cool_down():
    rules = WatchRules(fire_itm=0.5, rearm_itm=0.3, itc_gate=0.2, cooldown_s=10)
    w = Watch("a cat")
    assert not w.update(0.45, 0.5, 0, rules)  # below the threshold
    assert w.update(0.8, 0.5, 1, rules)  # fires
    assert not w.update(0.9, 0.5, 2, rules) and not w.update(0.4, 0.5, 3, rules)  # disarmed, not yet low
    assert not w.update(0.2, 0.5, 4, rules) and w.armed  # low again: re-armed
    assert not w.update(0.9, 0.5, 5, rules)  # but within the cool-down
    assert w.update(0.9, 0.5, 11.5, rules)  # after it
    w2 = Watch("a dog")
    assert not w2.update(0.99, 0.1, 0, rules)  # ITC gate: an unrelated text embedding does not fire


def test_watch_text_and_notify_url_are_checked():
    assert validate_watch("  a person\n at the door ") == "a person at the door"
    for bad in ("", "   ", "x" * 121, "a cat\x00", "a \u202ecat"):
        with pytest.raises(WatchError):
            validate_watch(bad)
    assert validate_url(" http://127.0.0.1:8123/hook ") == "http://127.0.0.1:8123/hook"
    for bad in ("", "file:///etc/passwd", "ftp://host/x", "http://", "http://host:port/", "http://a b/",
                "https://host/\x07", "javascript:alert(1)"):
        with pytest.raises(ValueError):
            validate_url(bad)
    assert parse_args(["--watch", "a red circle", "--watch", "a red circle"]).watches == ("a red circle",)
    with pytest.raises(SystemExit):
        parse_args(["--notify-url", "file:///etc/passwd"])


def test_event_json_is_one_ascii_line():
    event = WatchEvent("a caf\u00e9\nat night", 0.81234567, 0.4, "a caption", {"index": 3}, "2026-01-01T00:00:00+00:00",
                       "/tmp/x.jpg")
    line = event.to_json()
    assert "\n" not in line and line.isascii()
    assert json.loads(line) == {"watch": "a caf\u00e9\nat night", "itm": 0.8123, "itc": 0.4, "caption": "a caption",
                                "frame": {"index": 3}, "time": "2026-01-01T00:00:00+00:00", "snapshot": "/tmp/x.jpg"}


# --- a real HTTP endpoint --------------------------------------------------------------------------


class Endpoint:
    """A real local http.server that records the JSON bodies POSTed to it."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, self.headers["Content-Type"], json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/blip-cam/event"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    e = Endpoint()
    yield e
    e.close()


def colour_window(make_window, colours=("red", "blue"), **kwargs):
    window = make_window(FakeSource(colours=colours, interval=0.02), loader=FakeLoader(FakeModel(**kwargs)))
    window.watcher.rules = WatchRules(cooldown_s=0.0)
    return window


def wait_captions(qtbot, window, n):
    for _ in range(n):
        qtbot.waitSignal(window.caption_shown, timeout=5000).wait()


def test_a_watch_fires_on_matching_frames_only_snapshots_and_posts(qtbot, make_window, endpoint, tmp_path):
    window = colour_window(make_window)
    events = []
    window.watch_fired.connect(events.append)
    window.watch_panel.url.setText(endpoint.url)
    window.watch_panel.url.editingFinished.emit()
    window.watch_panel.entry.setText("something blue")
    window.watch_panel.add_button.click()
    assert window.watcher.watches.keys() == {"something blue"} and window.watch_panel.entry.text() == ""
    wait_captions(qtbot, window, 8)  # red frames: silent
    assert events == [] and endpoint.received == []

    source = window.capture.source
    source.next_colour()  # blue
    qtbot.waitUntil(lambda: len(events) == 1, timeout=5000)
    wait_captions(qtbot, window, 8)  # still blue: hysteresis keeps it at one event
    assert len(events) == 1
    event = events[0]
    assert event.watch == "something blue" and event.itm >= 0.5 and "blue" in event.caption
    assert window.watch_panel.is_highlighted("something blue")
    assert any(line.startswith("watch: something blue (ITM 0.90)") for line in window.preview.overlay_text())
    sidecar = json.loads(Path(event.snapshot).with_suffix(".json").read_text())
    assert sidecar["watch"] == {"text": "something blue", "itm": 0.9, "itc": 0.5} and "blue" in sidecar["caption"]
    qtbot.waitUntil(lambda: len(endpoint.received) == 1, timeout=5000)
    path, content_type, body = endpoint.received[0]
    assert path == "/blip-cam/event" and content_type == "application/json"
    assert body == json.loads(event.to_json())

    source.next_colour()  # red: re-armed
    wait_captions(qtbot, window, 4)
    source.next_colour()  # blue again: a second visit, a second event (no cool-down here)
    qtbot.waitUntil(lambda: len(events) == 2 and len(endpoint.received) == 2, timeout=5000)


def test_a_dead_endpoint_does_not_stall_captions(qtbot, make_window):
    dead = socket.socket()  # accepts connections (backlog) and never answers
    dead.bind(("127.0.0.1", 0))
    dead.listen(8)
    try:
        window = colour_window(make_window, colours=("blue",))
        window.watcher.set_url(f"http://127.0.0.1:{dead.getsockname()[1]}/hook")
        events = []
        window.watch_fired.connect(events.append)
        window.watcher.add("a blue thing")
        qtbot.waitUntil(lambda: len(events) == 1, timeout=5000)
        # the post now hangs for its 5 s timeout; captions go on at their usual pace meanwhile
        t0 = time.monotonic()
        wait_captions(qtbot, window, 20)
        assert time.monotonic() - t0 < 3.0
        assert window.watcher.notifier.sent == 0
    finally:
        dead.close()


def test_models_that_cannot_match_are_said_plainly(qtbot, make_window):
    window = colour_window(make_window, tasks=("caption", "vqa"))
    window.watcher.add("a red thing")
    assert window.watch_panel.status.text() == NO_MATCHER
    wait_captions(qtbot, window, 3)  # captions go on; nothing is scored
    assert window.watcher.watches["a red thing"].itm == 0.0


def test_bad_watch_text_is_refused_in_the_panel(qtbot, make_window):
    window = colour_window(make_window)
    window.watch_panel.entry.setText("   ")
    window.watch_panel.add_button.click()
    assert window.watcher.watches == {} and "Type what to watch for" in window.watch_panel.status.text()


# --- the demo model on generated scenes ------------------------------------------------------------


@pytest.mark.skipif(not (DEMO / "config.json").exists(), reason="the bundled demo model is not built")
def test_the_demo_model_fires_on_scenes_that_match_and_not_on_others(qtbot, make_window):
    from app.sources.scenes_source import ScenesSource

    source = ScenesSource(interval=0.3)
    window = make_window(source)  # the demo model (model_loader)
    window.watcher.rules = WatchRules(cooldown_s=0.0)
    events = []
    window.watch_fired.connect(events.append)
    window.watcher.add("a red circle")
    source.seed = 0  # from the first scene, now that the model is loaded
    qtbot.waitUntil(lambda: window.latest_frame is not None and window.latest_frame.meta.get("seed", 0) >= 13,
                    timeout=20_000)
    seeds = {e.frame["seed"] for e in events}
    assert {4, 6} <= seeds <= RED_CIRCLE_SCENES, seeds
    assert all(e.snapshot and Path(e.snapshot).exists() for e in events)


@pytest.mark.skipif(not (DEMO / "config.json").exists(), reason="the bundled demo model is not built")
def test_headless_watch_prints_one_json_line_per_event(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["HOME"] = str(tmp_path)
    run = subprocess.Popen([sys.executable, "-m", "app", "--watch", "a red circle", "--source", "scenes",
                            "--interval", "1.5", "--model", str(DEMO), "--snapshot-dir", str(tmp_path / "snaps"),
                            "--settings", str(tmp_path / "s.ini")], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(120, run.send_signal, (signal.SIGINT,))  # no event in 2 minutes: end it
    guard.start()
    try:
        line = run.stdout.readline()  # blocks until the first event (or the app ended)
    finally:
        guard.cancel()
        run.send_signal(signal.SIGINT)
        try:
            _, err = run.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            run.kill()
            _, err = run.communicate()
    assert line, f"no event; stderr:\n{err[-2000:]}"
    event = json.loads(line)
    assert event["watch"] == "a red circle" and event["itm"] >= 0.5 and event["frame"]["source"] == "scenes"
    assert event["frame"]["seed"] in RED_CIRCLE_SCENES and event["time"]
    assert json.loads(Path(event["snapshot"]).with_suffix(".json").read_text())["watch"]["text"] == "a red circle"
    assert run.returncode == 0
