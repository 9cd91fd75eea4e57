"""Progress of snapshot ranking: the engine counts every snapshot, the worker throttles the count
into ``rank_progress`` and lets a newer search replace an older one, the browser shows it."""

from __future__ import annotations

import pytest
from app_fakes import FakeLoader, FakeModel, solid

from app.inference import InferenceEngine
from app.model_choice import ModelRequest
from app.snapshots import SnapshotRecord, list_snapshots, write_snapshot
from app.widgets.snapshot_browser import SnapshotBrowser
from app.worker import InferenceWorker, SnapshotReader

REQ = ModelRequest(caption="m", vqa="m")
COLOURS = ("red", "blue", "green")


@pytest.fixture
def folder(tmp_path):
    for i in range(12):
        colour = COLOURS[i % 3]
        write_snapshot(tmp_path, solid(colour, (32, 32)), SnapshotRecord(caption=f"some {colour} thing"))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    return tmp_path


def _records(folder):
    records = list_snapshots(folder)
    records[3].path.write_bytes(b"no longer a jpeg")  # refused when ranked: still counted as done
    return records


def _worker(qtbot, model: FakeModel) -> InferenceWorker:
    worker = InferenceWorker(FakeLoader(model))
    worker.start()
    loaded = []
    worker.models_changed.connect(loaded.append)
    worker.load_models(REQ)
    qtbot.waitUntil(lambda: len(loaded) == 2, timeout=5000)
    return worker


def test_the_engine_reports_every_snapshot(folder):
    records = _records(folder)
    engine = InferenceEngine(FakeLoader())
    engine.load_captioner(REQ)
    seen = []
    ranked = engine.rank_snapshots("a blue picture", records, lambda done, total: seen.append((done, total)))
    n = len(records)
    assert seen == [(done, n) for done in range(n + 1)] and len(ranked) == n - 1


def test_the_worker_throttles_progress_and_a_newer_search_replaces_a_running_one(qtbot, folder):
    records = _records(folder)
    worker = _worker(qtbot, FakeModel(encode_delay=0.04))  # ~0.5 s a ranking: several 100 ms intervals
    progress, results = [], []
    worker.rank_progress.connect(lambda done, total: progress.append((done, total)))
    worker.rank_ready.connect(results.append)
    try:
        worker.rank("a red picture", records)
        qtbot.waitUntil(lambda: len(progress) >= 2, timeout=5000)  # the first is running
        worker.rank("a blue picture", records)
        qtbot.waitUntil(lambda: bool(results), timeout=5000)
        qtbot.wait(100)
    finally:
        worker.shutdown()
    n = len(records)
    assert [r.query for r in results] == ["a blue picture"]  # the replaced ranking sent nothing more
    assert "blue" in results[0].ranked[0][0].caption and results[0].left_out == 1
    assert progress[-1] == (n, n) and all(total == n for _, total in progress)
    assert len(progress) < 2 * (n + 1)  # throttled: not one signal per snapshot of both rankings


def test_the_browser_shows_the_count_and_then_the_ranking(qtbot, folder):
    records = _records(folder)
    worker, reader = _worker(qtbot, FakeModel(encode_delay=0.02)), SnapshotReader()
    reader.start()
    browser = SnapshotBrowser(folder, reader)
    qtbot.addWidget(browser)
    shown = []
    # what a main window wires (the browser's owner): requests to the worker, its signals back
    browser.rank_requested.connect(worker.rank)
    worker.rank_progress.connect(browser.show_rank_progress)
    worker.rank_progress.connect(lambda *_: shown.append((browser.mode.text(), browser.rank_bar.value(),
                                                          browser.rank_bar.maximum(), browser.rank_bar.isVisible())))
    worker.rank_ready.connect(lambda outcome: browser.show_ranked(outcome.ranked, outcome.left_out))
    try:
        browser.show()
        browser.reload()
        qtbot.waitUntil(lambda: not browser.loading, timeout=5000)
        browser.set_ranker("fake-blip")
        browser.search.setText("a green picture")
        browser.run_search()
        assert browser.rank_bar.isVisible()
        qtbot.waitUntil(lambda: "Ranked by" in browser.mode.text(), timeout=5000)
    finally:
        worker.shutdown()
        reader.shutdown()
    n = len(records)
    assert shown[-1] == (f"Ranking {n} of {n} snapshots by image–text match with fake-blip…", n, n, True)
    assert not browser.rank_bar.isVisible() and "1 image(s) left out" in browser.mode.text()
    assert "green" in browser.shown_records()[0].caption
    browser.show_rank_progress(1, n)  # a count arriving after the result changes nothing
    assert "Ranked by" in browser.mode.text() and not browser.rank_bar.isVisible()
