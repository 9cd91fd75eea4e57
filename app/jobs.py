"""A QThread that runs submitted jobs one at a time, with a "newest wins" slot.

Jobs are plain callables run on the thread; they report back through Qt signals, which Qt
queues to the GUI thread because the receivers live there. Two kinds of submission:

- ``submit(job)``: FIFO, never dropped (model loads, questions, snapshot writes);
- ``submit_latest(job)``: a single slot; a newer job replaces a waiting one, which is counted in
  ``dropped`` (captions of camera frames: a stale frame is worth nothing once a newer one exists).

FIFO jobs run before the latest-slot job, so a question is not stuck behind continuous captions.
``shutdown()`` drops what is waiting, lets the running job finish, and joins the thread.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable

from PySide6.QtCore import QThread, Signal

log = logging.getLogger(__name__)

Job = Callable[[], None]


class JobThread(QThread):
    """Runs jobs on one thread; ``job_failed(message)`` reports an exception a job did not handle."""

    job_failed = Signal(str)

    def __init__(self, name: str, parent=None):
        super().__init__(parent)
        self.setObjectName(name)
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._latest: Job | None = None
        self._stopping = False
        self._draining = False
        self._busy = False
        self.dropped = 0  # latest-slot jobs replaced before they ran

    # --- called from any thread --------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping or self._draining:
                return
            self._queue.append(job)
            self._cond.notify()

    def submit_latest(self, job: Job) -> None:
        with self._cond:
            if self._stopping or self._draining:
                return
            if self._latest is not None:
                self.dropped += 1
            self._latest = job
            self._cond.notify()

    @property
    def busy(self) -> bool:
        """True while a job runs or waits (a snapshot of a moving state; for display and tests)."""
        with self._cond:
            return self._busy or bool(self._queue) or self._latest is not None

    @property
    def stopping(self) -> bool:
        """True once shutdown() was called: long jobs may check it to give up early."""
        return self._stopping

    @property
    def running_job(self) -> bool:
        with self._cond:
            return self._busy

    def shutdown(self, *, drain: bool = False, timeout_ms: int | None = None) -> bool:
        """Stop accepting jobs and join the thread; True if it ended.

        ``drain=False`` drops waiting jobs (captions nobody will see); ``drain=True`` runs them
        first (snapshots the user asked for must still be written).
        """
        with self._cond:
            if drain:
                self._draining = True
            else:
                self._stopping = True
                self._queue.clear()
                self._latest = None
            self._cond.notify_all()
        if not self.isRunning():
            return True
        return self.wait() if timeout_ms is None else self.wait(timeout_ms)

    # --- the thread --------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._draining and not self._queue and self._latest is None:
                    self._cond.wait()
                if self._stopping or (self._draining and not self._queue and self._latest is None):
                    return
                if self._queue:
                    job = self._queue.popleft()
                else:
                    job, self._latest = self._latest, None
                self._busy = True
            try:
                job()
            except Exception as e:  # a bug in a job must not kill the thread (and the app with it)
                log.exception("job failed on %s", self.objectName())
                self.job_failed.emit(f"internal error: {type(e).__name__}: {e}")
            finally:
                with self._cond:
                    self._busy = False
