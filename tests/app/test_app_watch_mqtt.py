"""Watch events over MQTT in Home Assistant's conventions: the packets, topic-safe ids, and a real
mosquitto broker started by the test, with mosquitto_sub listening, receiving the discovery config,
the attributes and the state of a watch that fired in the app."""

from __future__ import annotations

import json
import queue
import shutil
import socket
import subprocess
import threading
import time

import pytest
from app_fakes import FakeLoader, FakeModel, FakeSource

from app.arguments import parse_args
from app.mqtt import messages, object_id, parse_broker
from app.watches import WatchRules

TOOLS = ("mosquitto", "mosquitto_sub", "mosquitto_pub")


def test_topics_and_ids():
    oid = object_id("a cat/+# on the mat")
    assert oid.startswith("a_cat_on_the_mat_") and all(c.isalnum() or c == "_" for c in oid)
    assert object_id("a cat") != object_id("a  cat!")  # different texts, different sensors
    assert parse_broker("192.168.1.5") == ("192.168.1.5", 1883) and parse_broker("ha.local:1884") == ("ha.local", 1884)
    for bad in ("", "host:port", "host:0", "ho st", "host/x:1883"):
        with pytest.raises(ValueError):
            parse_broker(bad)
    with pytest.raises(SystemExit):
        parse_args(["--mqtt", "ho st"])
    topics = [t for t, _, _ in messages({"watch": "a/b#", "itm": 0.9})]
    assert topics[0].startswith("homeassistant/binary_sensor/blipcam/") and "#" not in "".join(topics)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker(tmp_path):
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install mosquitto mosquitto-clients; .ci/run does)")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    process = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < end, "mosquitto did not start listening"
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(5)


class Subscriber:
    """mosquitto_sub on blipcam/# and homeassistant/#, its lines ("topic payload") in a queue."""

    def __init__(self, port: int):
        self.port = port
        self.process = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-v",
                                         "-t", "blipcam/#", "-t", "homeassistant/#"],
                                        stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line.rstrip("\n")) for line in self.process.stdout],
                         daemon=True).start()

    def wait_subscribed(self) -> None:
        """Publish probes until one comes back, so nothing later is missed."""
        end = time.monotonic() + 10
        while time.monotonic() < end:
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port), "-t", "blipcam/probe",
                            "-m", "probe"], check=True, timeout=5)
            try:
                if self.lines.get(timeout=0.3) == "blipcam/probe probe":
                    return
            except queue.Empty:
                pass
        raise AssertionError("mosquitto_sub never subscribed")

    def take(self, n: int, timeout: float = 10) -> dict:
        got = {}
        end = time.monotonic() + timeout
        while len(got) < n:
            line = self.lines.get(timeout=max(0.01, end - time.monotonic()))
            topic, _, payload = line.partition(" ")
            if topic != "blipcam/probe":
                got[topic] = payload
        return got

    def close(self):
        self.process.terminate()
        self.process.wait(5)


def test_a_fired_watch_reaches_home_assistant_topics_on_a_real_broker(qtbot, make_window, broker):
    subscriber = Subscriber(broker)
    try:
        subscriber.wait_subscribed()
        window = make_window(FakeSource(colours=("blue",)), loader=FakeLoader(FakeModel()))
        window.watcher.rules = WatchRules(cooldown_s=0.0)
        window.watch_panel.mqtt.setText(f"127.0.0.1:{broker}")
        window.watch_panel.mqtt.editingFinished.emit()
        events = []
        window.watch_fired.connect(events.append)
        window.watcher.add("a blue thing")
        qtbot.waitUntil(lambda: len(events) == 1, timeout=5000)
        got = subscriber.take(3)
    finally:
        subscriber.close()
    oid = object_id("a blue thing")
    config = json.loads(got[f"homeassistant/binary_sensor/blipcam/{oid}/config"])
    assert config["state_topic"] == f"blipcam/watch/{oid}/state" and config["unique_id"] == f"blipcam_{oid}"
    assert config["json_attributes_topic"] == f"blipcam/watch/{oid}/attributes" and config["off_delay"] > 0
    assert got[f"blipcam/watch/{oid}/state"] == "ON"
    assert json.loads(got[f"blipcam/watch/{oid}/attributes"]) == json.loads(events[0].to_json())
    qtbot.waitUntil(lambda: window.watcher.mqtt.sent == 1, timeout=3000)  # counted once publish() returned


def test_a_dead_broker_is_reported_and_captions_go_on(qtbot, make_window):
    window = make_window(FakeSource(colours=("blue",)), loader=FakeLoader(FakeModel()))
    window.watcher.set_mqtt(f"127.0.0.1:{free_port()}")  # nothing listens there
    window.watcher.add("a blue thing")
    qtbot.waitUntil(lambda: "could not publish" in window.watch_panel.status.text(), timeout=5000)
    for _ in range(5):
        qtbot.waitSignal(window.caption_shown, timeout=5000).wait()
