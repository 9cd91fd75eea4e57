"""The job thread and the inference worker: signals, newest-frame-wins, error reporting,
shutdown."""

from __future__ import annotations

import threading
import time

import pytest
from app_fakes import FakeLoader, FakeModel, solid

from app.jobs import JobThread
from app.model_choice import ModelRequest
from app.prompts import CaptionOptions
from app.sources.base import Frame
from app.worker import InferenceWorker

REQ = ModelRequest(caption="m", vqa="m")


def frame(index: int, colour: str = "red") -> Frame:
    return Frame(solid(colour), index, time.monotonic(), "test")


def load(qtbot, worker, request=REQ):
    """Load and wait for both models_changed emissions (captioner, then answerer); return the last."""
    seen = []
    worker.models_changed.connect(seen.append)
    worker.load_models(request)
    qtbot.waitUntil(lambda: len(seen) == 2, timeout=5000)
    return seen[-1]


@pytest.fixture
def threads():
    made = []

    def make(cls, *args, **kwargs):
        thread = cls(*args, **kwargs)
        made.append(thread)
        thread.start()
        return thread

    yield make
    for thread in made:
        thread.shutdown()


def test_newest_job_wins_and_fifo_jobs_go_first(qtbot, threads):
    jt = threads(JobThread, "test")
    gate, ran = threading.Event(), []
    jt.submit(lambda: gate.wait(5))
    qtbot.waitUntil(lambda: jt.running_job, timeout=2000)
    for i in range(5):
        jt.submit_latest(lambda i=i: ran.append(f"latest {i}"))
    jt.submit(lambda: ran.append("fifo"))
    gate.set()
    qtbot.waitUntil(lambda: not jt.busy, timeout=2000)
    assert ran == ["fifo", "latest 4"] and jt.dropped == 4


def test_a_failing_job_is_reported_and_the_thread_survives(qtbot, threads):
    jt = threads(JobThread, "test")
    with qtbot.waitSignal(jt.job_failed, timeout=2000) as blocker:
        jt.submit(lambda: 1 / 0)
    assert "ZeroDivisionError" in blocker.args[0]
    done = []
    jt.submit(lambda: done.append(1))
    qtbot.waitUntil(lambda: done == [1], timeout=2000)


def test_shutdown_drain_runs_waiting_jobs_and_default_drops_them(qtbot):
    for drain, expected in ((True, 3), (False, 0)):
        jt = JobThread("test")
        ran, gate = [], threading.Event()
        jt.start()
        jt.submit(lambda gate=gate: gate.wait(5))
        qtbot.waitUntil(lambda jt=jt: jt.running_job, timeout=2000)
        for _ in range(3):
            jt.submit(lambda ran=ran: ran.append(1))
        threading.Timer(0.05, gate.set).start()
        assert jt.shutdown(drain=drain)
        assert len(ran) == expected and not jt.isRunning()


def test_worker_loads_then_captions_and_answers(qtbot, threads):
    loader = FakeLoader(FakeModel(caption_delay=0.01))
    worker = threads(InferenceWorker, loader)
    progress = []
    worker.load_progress.connect(lambda f, m: progress.append((f, m)))
    models = load(qtbot, worker)
    assert models.shared and models.captioner.name == "fake-blip"
    assert progress and progress[0][1].startswith("caption model")

    f = frame(1, "green")
    with qtbot.waitSignal(worker.caption_ready, timeout=5000) as blocker:
        worker.request_caption(f, CaptionOptions(prompt="a photography of "))
    outcome = blocker.args[0]
    assert outcome.text == "a photography of a green scene" and outcome.frame is f
    assert outcome.model == "fake-blip" and outcome.precision == "int8" and outcome.tokens_per_s > 0

    with qtbot.waitSignal(worker.answer_ready, timeout=5000) as blocker:
        worker.ask(f, "what colour is it?", tag="t1")
    answer = blocker.args[0]
    assert (answer.result.text, answer.tag, answer.reused_features) == ("green", "t1", True)


def test_worker_drops_stale_frames_while_busy(qtbot, threads):
    worker = threads(InferenceWorker, FakeLoader(FakeModel(caption_delay=0.2)))
    load(qtbot, worker)
    captioned = []
    worker.caption_ready.connect(lambda o: captioned.append(o.frame.index))
    for i in range(1, 11):
        worker.request_caption(frame(i), CaptionOptions())
        time.sleep(0.01)
    qtbot.waitUntil(lambda: not worker.busy and bool(captioned), timeout=5000)
    qtbot.wait(50)
    assert captioned[-1] == 10 and len(captioned) <= 3 and worker.dropped >= 7


def test_model_load_failure_is_a_signal_not_a_crash(qtbot, threads, monkeypatch):
    monkeypatch.setattr("app.model_choice.demo_model_path", lambda: None)  # offline and no demo model to fall back on
    worker = threads(InferenceWorker, FakeLoader(unavailable={"m"}))
    with qtbot.waitSignal(worker.models_failed, timeout=5000) as blocker:
        worker.load_models(REQ)
    assert "not in the cache" in blocker.args[0]
    with qtbot.waitSignal(worker.caption_failed, timeout=5000) as blocker:
        worker.request_caption(frame(1), CaptionOptions())
    assert "no caption model" in blocker.args[0]
    with qtbot.waitSignal(worker.answer_ready, timeout=5000) as blocker:
        worker.ask(frame(1), "why?")
    assert blocker.args[0].result is None and "no question-answering model" in blocker.args[0].error


def test_unexpected_model_errors_are_reported(qtbot, threads):
    class Broken(FakeModel):
        def caption(self, *a, **k):
            raise RuntimeError("kaboom")

    worker = threads(InferenceWorker, FakeLoader(Broken()))
    load(qtbot, worker)
    with qtbot.waitSignal(worker.caption_failed, timeout=5000) as blocker:
        worker.request_caption(frame(1), CaptionOptions())
    assert blocker.args[0] == "internal error: RuntimeError: kaboom"
