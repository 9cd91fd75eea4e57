"""Watch events over MQTT in Home Assistant's conventions, with a minimal MQTT 3.1.1 publisher
(QoS 0: CONNECT, PUBLISH, DISCONNECT over one short TCP connection per event; a watch fires
seldom, so no session is kept). No Qt, no third-party client.

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


# --- MQTT 3.1.1 packets ------------------------------------------------------------------------------


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def connect_packet(client_id: str, keepalive: int = 30) -> bytes:
    body = _string(b"MQTT") + bytes([4, 0x02]) + keepalive.to_bytes(2, "big") + _string(client_id.encode())
    return b"\x10" + _length(len(body)) + body


def publish_packet(topic: str, payload: bytes, retain: bool = False) -> bytes:
    body = _string(topic.encode("utf-8")) + payload
    return bytes([0x30 | (1 if retain else 0)]) + _length(len(body)) + body


DISCONNECT = b"\xe0\x00"


def publish(host: str, port: int, items: list[tuple[str, bytes, bool]], timeout: float = MQTT_TIMEOUT) -> None:
    """Connect, publish ``items`` at QoS 0, disconnect. OSError on any failure (refused, timeout,
    a broker that does not accept the connection)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(connect_packet("blipcam-" + hashlib.sha1(str(id(items)).encode()).hexdigest()[:8]))
        ack = b""
        while len(ack) < 4:
            chunk = sock.recv(4 - len(ack))
            if not chunk:
                raise OSError("the broker closed the connection")
            ack += chunk
        if ack[0] != 0x20 or ack[3] != 0:
            raise OSError(f"the broker refused the connection (CONNACK code {ack[3]})")
        sock.sendall(b"".join(publish_packet(*item) for item in items) + DISCONNECT)


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
