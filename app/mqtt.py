"""Watch events over MQTT in Home Assistant's conventions
(paho-mqtt's one-shot publisher, QoS 0: connect, publish, disconnect for each event; a watch
fires seldom, so no session is kept). No Qt.

Each watch is a Home Assistant MQTT ``binary_sensor`` found by discovery:
- ``homeassistant/binary_sensor/blipcam/<id>/config`` (retained): name, unique_id, state and
  attribute topics, ``off_delay`` (Home Assistant turns it off again by itself), the device;
- ``blipcam/watch/<id>/attributes``: the event's JSON (watch, itm, itc, caption, frame, time, snapshot);
- ``blipcam/watch/<id>/state``: ``ON``.
``<id>`` is a slug of the watch text plus a short hash: user text never reaches a topic as is
(no ``/``, ``+`` or ``#`` can change what is published where).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
from typing import Callable

from app.notify import QueuedSender

DEFAULT_PORT = 1883
MQTT_TIMEOUT = 5.0
DISCOVERY_PREFIX = "homeassistant"
OFF_DELAY_S = 30
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$|^\[?[0-9A-Fa-f:]{2,39}\]?$")


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST[:PORT]`` -> (host, port); ValueError saying what is wrong."""
    text = text.strip() if isinstance(text, str) else ""
    host, _, port_text = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    if not host or not _HOST.match(host):
        raise ValueError(f"the MQTT broker must be HOST or HOST:PORT, got {text[:80]!r}")
    try:
        port = int(port_text) if port_text else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"the MQTT port must be a number, got {port_text[:20]!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"the MQTT port must be in [1, 65535], got {port}")
    return host.strip("[]"), port


def object_id(watch: str) -> str:
    """A topic-safe, stable id for a watch text."""
    slug = re.sub(r"[^a-z0-9]+", "_", watch.lower()).strip("_")[:40] or "watch"
    return f"{slug}_{hashlib.sha1(watch.encode('utf-8')).hexdigest()[:6]}"


def messages(event: dict) -> list[tuple[str, bytes, bool]]:
    """(topic, payload, retain) to publish for one watch event, in order."""
    oid = object_id(str(event["watch"]))
    base = f"blipcam/watch/{oid}"
    config = {"name": f"blip-cam watch: {event['watch']}", "unique_id": f"blipcam_{oid}",
              "state_topic": f"{base}/state", "json_attributes_topic": f"{base}/attributes",
              "off_delay": OFF_DELAY_S, "device": {"identifiers": ["blipcam"], "name": "blip-cam"}}
    dumps = lambda data: json.dumps(data, ensure_ascii=True).encode("ascii")  # noqa: E731
    return [(f"{DISCOVERY_PREFIX}/binary_sensor/blipcam/{oid}/config", dumps(config), True),
            (f"{base}/attributes", dumps(event), False),
            (f"{base}/state", b"ON", False)]


def publish(host: str, port: int, items: list[tuple[str, bytes, bool]], timeout: float = MQTT_TIMEOUT) -> None:
    """Connect, publish ``items`` at QoS 0, disconnect (paho-mqtt's one-shot publisher). OSError
    on any failure (refused, timeout, a broker that does not accept the connection)."""
    from paho.mqtt import publish as paho_publish  # here: the app starts without it being imported

    msgs = [{"topic": topic, "payload": payload, "qos": 0, "retain": retain} for topic, payload, retain in items]
    previous = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(timeout)  # bounds the connect and the CONNACK wait of this one-shot client
        paho_publish.multiple(msgs, hostname=host, port=port, keepalive=max(5, int(timeout) * 2))
    except (OSError, ValueError) as e:
        raise OSError(str(e) or type(e).__name__) from e
    except Exception as e:  # paho raises MQTTException (a refused CONNACK) and its own errors
        raise OSError(f"{type(e).__name__}: {e}") from e
    finally:
        socket.setdefaulttimeout(previous)


class MqttNotifier(QueuedSender):
    """Publishes each watch event to the broker at ``host:port`` (see the module docstring)."""

    def __init__(self, broker: str, timeout: float = MQTT_TIMEOUT,
                 on_result: Callable[[bool, str], None] | None = None):
        self.host, self.port = parse_broker(broker)
        self.name = f"mqtt://{self.host}:{self.port}"
        super().__init__(timeout, on_result)

    def _deliver(self, event: dict) -> tuple[bool, str]:
        try:
            publish(self.host, self.port, messages(event), self.timeout)
        except OSError as e:
            return False, f"could not publish to {self.name}: {e}"
        return True, f"published to {self.name}"
