"""Runs the watches in the window (GUI thread): keeps the list, hands it to the inference worker,
turns each captioned frame's scores into firings (``app.watches``), and for each firing highlights
it, saves a snapshot tagged with the watch, then reports the event (``fired``) and posts it to the
notify URL and the MQTT broker (Home Assistant discovery, ``app.mqtt``). Nothing here waits:
scores come by signal, snapshots are written by the saver's thread, posts and publishes go out on
the senders' own threads.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal

from app.mqtt import MqttNotifier
from app.notify import HttpNotifier, validate_url
from app.watches import MAX_WATCHES, Watch, WatchError, WatchEvent, WatchRules, WatchScores, validate_watch

NO_MATCHER = ("The loaded models cannot match images to text, so watches are not checked: load a BLIP model "
              "with image-text matching (ITM/ITC), e.g. Salesforce/blip-itm-base-coco or the bundled demo model.")

# (frame, watch tag) -> (folder, image, SnapshotRecord) to save, or None when there is nothing to save
SnapshotFor = Callable[[Any, dict], "tuple[Any, Any, Any] | None"]


class WatchController(QObject):
    fired = Signal(object)  # WatchEvent, its snapshot saved (``snapshot`` None when saving failed)
    alert = Signal(str)  # a line for the overlay when a watch fires
    notify_result = Signal(bool, str)  # from the notifier's thread, queued here

    def __init__(self, worker, saver, panel, snapshot_for: SnapshotFor, rules: WatchRules | None = None,
                 parent=None):
        super().__init__(parent)
        self.worker, self.saver, self.panel, self.snapshot_for = worker, saver, panel, snapshot_for
        self.rules = rules or WatchRules()
        self.watches: dict[str, Watch] = {}
        self.notifier: HttpNotifier | None = None
        self.mqtt: MqttNotifier | None = None
        self.can_match: bool | None = None  # unknown until the models are loaded
        worker.watch_scores.connect(self._on_scores)
        worker.watch_failed.connect(lambda m: panel.show_status(f"Watches could not be scored: {m}", error=True))
        saver.finished.connect(self._on_saved)
        panel.add_requested.connect(self._on_add_requested)
        panel.remove_requested.connect(self.remove)
        panel.url_entered.connect(self._on_url_entered)
        panel.mqtt_entered.connect(self._on_mqtt_entered)
        self.notify_result.connect(self._on_notify_result)

    # --- the list ------------------------------------------------------------------------------

    def add(self, text: str) -> str:
        """Add a watch; returns its cleaned text. WatchError says why it cannot be added."""
        text = validate_watch(text)
        if text not in self.watches:
            if len(self.watches) >= MAX_WATCHES:
                raise WatchError(f"At most {MAX_WATCHES} watches (each is scored on every frame); remove one first.")
            self.watches[text] = Watch(text)
            self._changed()
        return text

    def remove(self, text: str) -> None:
        if self.watches.pop(text, None) is not None:
            self._changed()

    def _changed(self) -> None:
        self.worker.set_watches(list(self.watches))
        self.panel.set_watches(list(self.watches))
        self._show_availability()

    def _on_add_requested(self, text: str) -> None:
        try:
            self.add(text)
        except WatchError as e:
            self.panel.show_status(str(e), error=True)
            return
        self.panel.entry.clear()

    def set_models(self, models) -> None:
        self.can_match = models.matcher is not None
        self._show_availability()

    def _show_availability(self) -> None:
        if self.watches and self.can_match is False:
            self.panel.show_status(NO_MATCHER, error=True)
        elif self.watches and self.can_match:
            self.panel.show_status(f"Checking each captioned frame against {len(self.watches)} watch(es).")
        else:
            self.panel.show_status("")

    # --- notifying -----------------------------------------------------------------------------

    def set_url(self, url: str) -> None:
        """Post events to ``url`` from now on ("" stops). ValueError for a URL that is not usable."""
        if self.notifier is not None:
            self.notifier.shutdown(timeout=None)
            self.notifier = None
        if url.strip():
            self.notifier = HttpNotifier(validate_url(url), on_result=self.notify_result.emit)

    def set_mqtt(self, broker: str) -> None:
        """Publish events to the MQTT broker ``HOST[:PORT]`` from now on ("" stops); ValueError if unusable."""
        if self.mqtt is not None:
            self.mqtt.shutdown(timeout=None)
            self.mqtt = None
        if broker.strip():
            self.mqtt = MqttNotifier(broker, on_result=self.notify_result.emit)

    def _on_mqtt_entered(self, broker: str) -> None:
        try:
            self.set_mqtt(broker)
        except ValueError as e:
            self.panel.show_status(f"Not publishing: {e}", error=True)
            return
        self._show_availability()

    def _on_url_entered(self, url: str) -> None:
        try:
            self.set_url(url)
        except ValueError as e:
            self.panel.show_status(f"Not notifying: {e}", error=True)
            return
        self._show_availability()

    def _on_notify_result(self, ok: bool, message: str) -> None:
        if not ok:
            self.panel.show_status(message, error=True)

    # --- scoring and firing --------------------------------------------------------------------

    def _on_scores(self, scores: WatchScores) -> None:
        now = time.monotonic()
        for text, itm, itc in scores.scores:
            watch = self.watches.get(text)
            if watch is None:  # removed while the frame was scored
                continue
            self.panel.show_scores(text, itm, itc)
            if watch.update(itm, itc, now, self.rules):
                self._fire(watch, scores)

    def _fire(self, watch: Watch, scores: WatchScores) -> None:
        frame = scores.frame
        self.panel.highlight(watch.text)
        self.alert.emit(f"watch: {watch.text} (ITM {watch.itm:.2f})")
        seed = frame.meta.get("seed") if isinstance(frame.meta, dict) else None
        where = {"index": frame.index, "source": frame.source, **({"seed": seed} if seed is not None else {})}
        event = WatchEvent(watch.text, watch.itm, watch.itc, scores.caption, where,
                           datetime.now().astimezone().isoformat(timespec="seconds"))
        content = self.snapshot_for(frame, {"text": watch.text, "itm": round(watch.itm, 4), "itc": round(watch.itc, 4)})
        if content is None:
            self._report(event)
        else:
            folder, image, record = content
            self.saver.save(folder, image, record, tag=event)

    def _on_saved(self, tag, record) -> None:
        if isinstance(tag, WatchEvent):
            tag.snapshot = str(record.path) if record is not None else None
            self._report(tag)

    def _report(self, event: WatchEvent) -> None:
        self.fired.emit(event)
        for sender in (self.notifier, self.mqtt):
            if sender is not None:
                sender.send(event.to_dict())

    def shutdown(self) -> None:
        for sender in (self.notifier, self.mqtt):
            if sender is not None:
                sender.shutdown()
