"""The main window end to end on a fake camera and the ``model_loader`` fixture: overlay, prompt
toggles, on-demand / pause, questions with feature reuse, snapshots and their failures, camera
loss, responsiveness, model fallback, settings, shutdown."""

from __future__ import annotations

import errno
import json
import time

import pytest
from app_fakes import FakeLoader, FakeModel, FakeSource, solid
from PySide6.QtCore import QElapsedTimer, Qt, QTimer

from app import model_choice as app_models
from app import snapshots
from app.model_choice import DEFAULT_CAPTION_MODEL, DEFAULT_VQA_MODEL, ModelRequest, short_name
from app.settings import Settings
from app.snapshots import SnapshotRecord, read_embedded_caption, write_snapshot


def wait_caption(qtbot, window, timeout=5000):
    with qtbot.waitSignal(window.caption_shown, timeout=timeout) as blocker:
        pass
    return blocker.args[0]


def caption_on_demand(qtbot, window):
    """Press Space and return the caption it produces."""
    qtbot.waitUntil(lambda: window.preview.frame is not None, timeout=3000)
    with qtbot.waitSignal(window.caption_shown, timeout=5000) as blocker:
        qtbot.keyClick(window, Qt.Key.Key_Space)
    return blocker.args[0]


def ask(qtbot, window, question):
    window.questions.box.setFocus()
    qtbot.keyClicks(window.questions.box, question)
    with qtbot.waitSignal(window.answer_shown, timeout=5000) as blocker:
        qtbot.keyClick(window.questions.box, Qt.Key.Key_Return)
    return blocker.args[0]


# --- overlay and captions ------------------------------------------------------------------------


def test_overlay_shows_caption_timings_fps_and_model(qtbot, make_window):
    window = make_window(FakeSource(colours=("blue",)))
    outcome = wait_caption(qtbot, window)
    caption, timings, camera = window.preview.overlay_text()
    assert caption == outcome.text and caption.startswith("a picture of ") and len(caption) > len("a picture of ")
    assert timings.startswith("vision ") and " ms · decode " in timings and " ms · total " in timings
    assert timings.endswith(" tok/s")
    assert camera.startswith("camera ") and camera.endswith(f"fps · {short_name(window.models.captioner.name)} (int8)")
    qtbot.waitUntil(lambda: window.latest_frame.fps > 10, timeout=3000)
    assert not window.preview.grab().isNull()  # the overlay paints without errors


def test_prompt_toggles_change_the_prompt_sent(qtbot, make_window):
    window = make_window(continuous=False)
    model = window.models.captioner
    caption_on_demand(qtbot, window)
    assert model.prompts[-1] == "a picture of "
    for mode, prompt in (("none", ""), ("photography", "a photography of "), ("picture", "a picture of ")):
        with qtbot.waitSignal(window.caption_shown, timeout=5000) as blocker:
            window.controls.prompt_buttons[mode].click()  # a changed option re-captions the frame on screen
        assert model.prompts[-1] == prompt and blocker.args[0].text.startswith(prompt.strip())
    window.controls.custom_prompt.setFocus()
    qtbot.keyClicks(window.controls.custom_prompt, "a close-up of")
    assert window.controls.prompt_mode() == "custom"  # typing selects the custom prompt
    qtbot.waitUntil(lambda: model.prompts[-1] == "a close-up of ", timeout=5000)


def test_decoding_controls_reach_the_model(qtbot, make_window):
    window = make_window(continuous=False)
    model = window.models.captioner
    caption_on_demand(qtbot, window)
    window.controls.strategy.setCurrentText("beam")
    window.controls.max_tokens.setValue(2)
    qtbot.waitUntil(lambda: model.caption_kwargs[-1]["max_new_tokens"] == 2, timeout=5000)
    kwargs = model.caption_kwargs[-1]
    assert kwargs["strategy"] == "beam" and kwargs["num_beams"] >= 2 and kwargs["min_new_tokens"] <= 2


def test_continuous_mode_keeps_captioning_new_frames(qtbot, make_window):
    window = make_window()
    qtbot.waitUntil(lambda: window.captions_shown >= 3, timeout=5000)
    indexes = list(window.captions)
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)  # each a newer frame


def test_on_demand_mode_and_pause(qtbot, make_window):
    window = make_window(continuous=False)
    qtbot.wait(150)
    assert window.captions_shown == 0  # on demand: nothing until asked
    assert caption_on_demand(qtbot, window).text

    qtbot.keyClick(window, Qt.Key.Key_P)
    assert window.paused and window.controls.pause_button.text() == "Resume (P)"
    assert "paused" in window.preview.overlay_text()[-1]
    shown, paused_on = window.preview.frames_shown, window.preview.frame
    qtbot.waitUntil(lambda: window.capture.frames_captured > paused_on.index + 5, timeout=3000)
    assert window.preview.frames_shown == shown  # preview frozen while frames keep coming
    assert caption_on_demand(qtbot, window).frame is paused_on  # Space captions the paused frame
    qtbot.keyClick(window, Qt.Key.Key_P)
    qtbot.waitUntil(lambda: window.preview.frames_shown > shown, timeout=3000)
    assert caption_on_demand(qtbot, window).frame.index > paused_on.index


def test_typing_in_boxes_does_not_trigger_shortcuts(qtbot, make_window):
    window = make_window(continuous=False)
    model = window.models.captioner
    window.questions.box.setFocus()
    qtbot.keyClicks(window.questions.box, "is s p here")
    qtbot.wait(100)
    assert window.questions.box.text() == "is s p here"
    assert not model.prompts and not window.paused


# --- questions -----------------------------------------------------------------------------------


def test_follow_up_questions_reuse_the_frozen_frames_features(qtbot, make_window, fake_loader):
    window = make_window(FakeSource(colours=("yellow",)), loader=fake_loader, continuous=False)
    model = window.models.captioner  # one model: captions and questions share the encoded image
    assert window.models.shared
    caption_on_demand(qtbot, window)
    assert model.encode_calls == 1
    a1 = ask(qtbot, window, "what colour is it?")
    a2 = ask(qtbot, window, "how many things are there?")
    a3 = ask(qtbot, window, "is it bright?")
    assert [a.result.text for a in (a1, a2, a3)] == ["yellow", "1", "yes"]
    assert model.encode_calls == 1 and all(a.reused_features for a in (a1, a2, a3))
    frozen = window.question_frame
    assert frozen.index == a1.frame_index == a3.frame_index
    record = window.history.get(frozen.index)
    assert [e.question for e in record.entries] == ["what colour is it?", "how many things are there?", "is it bright?"]
    assert record.caption == "a picture of a yellow scene"
    assert "yes" in window.questions.answer.text() and "ms" in window.questions.answer.text()
    top = window.questions.history.topLevelItem(0)
    assert top.childCount() == 3 and top.text(0).startswith(f"Frame #{frozen.index}")
    assert window.questions.new_frame_button.isEnabled()
    window.questions.new_frame_button.click()
    assert window.question_frame is None and window.questions.thumb.text() == "live"


def test_follow_ups_stay_on_the_frozen_frame_while_the_camera_moves_on(qtbot, make_window, fake_loader):
    source = FakeSource(colours=("red",))
    window = make_window(source, loader=fake_loader)
    wait_caption(qtbot, window)
    first = ask(qtbot, window, "what colour is it?")
    source.colours = ["blue"]
    qtbot.waitUntil(lambda: window.last_caption.text.endswith("blue scene"), timeout=5000)
    follow_up = ask(qtbot, window, "what colour is it now?")
    assert (first.result.text, follow_up.result.text) == ("red", "red")  # still about the frozen frame
    assert follow_up.reused_features and follow_up.frame_index == first.frame_index


def test_empty_and_overlong_questions_get_a_message(qtbot, make_window):
    window = make_window(continuous=False)
    model = window.models.captioner
    window.questions.box.setFocus()
    qtbot.keyClick(window.questions.box, Qt.Key.Key_Return)
    assert window.questions.message.isVisible() and "Type a question" in window.questions.message.text()
    window.questions.box.setText("why " * 100)
    qtbot.keyClick(window.questions.box, Qt.Key.Key_Return)
    assert "characters long" in window.questions.message.text()
    assert window.questions.box.text()  # kept, so the user can shorten it
    qtbot.wait(50)
    assert not model.questions


def test_question_while_models_load_gets_a_message(qtbot, make_window):
    window = make_window(loader=FakeLoader(FakeModel(), delay=0.5), wait_models=False)
    window.ask("what is it?")
    assert "still loading" in window.questions.message.text()
    qtbot.waitUntil(lambda: window.models is not None and window.models.answerer is not None, timeout=5000)


def test_question_without_a_vqa_model_says_why(qtbot, make_window, monkeypatch):
    monkeypatch.setattr("app.model_choice.demo_model_path", lambda: None)  # an install without the demo model
    loader = FakeLoader(FakeModel(tasks=("caption",)), unavailable={DEFAULT_VQA_MODEL})
    window = make_window(loader=loader, models=ModelRequest(caption="cap-only"))
    window.ask("what is it?")
    assert "Questions unavailable offline" in window.questions.message.text()


# --- snapshots -----------------------------------------------------------------------------------


def test_snapshot_key_writes_jpeg_with_exif_and_sidecar(qtbot, make_window, settings):
    window = make_window(FakeSource(colours=("green",)), continuous=False)
    caption = caption_on_demand(qtbot, window)
    answer = ask(qtbot, window, "what colour is it?")
    with qtbot.waitSignal(window.snapshot_saved, timeout=5000) as blocker:
        qtbot.keyClick(window, Qt.Key.Key_S)
    saved = blocker.args[0]
    assert saved.path.parent == settings.snapshot_dir() and saved.path.exists()
    assert read_embedded_caption(saved.path)["ImageDescription"] == caption.text
    assert read_embedded_caption(saved.path)["UserComment"] == caption.text
    data = json.loads(saved.path.with_suffix(".json").read_text())
    assert data["caption"] == caption.text and data["prompt"] == "a picture of "
    name = window.models.captioner.name
    assert data["model"] == name and data["precision"] == "int8" and data["vqa_model"] == window.models.answerer.name
    assert data["qa"] == [{"question": "what colour is it?", "answer": answer.result.text,
                           "total_ms": round(answer.timings.total_ms, 1), "reused_features": True,
                           "model": short_name(window.models.answerer.name)}]
    assert set(data["timings"]) >= {"vision_ms", "decode_ms", "total_ms"} and data["time"]
    assert data["decoding"]["strategy"] == "greedy" and data["frame"]["width"] == 64
    assert str(saved.path) in window.snapshot_label.text()


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("failure, message", [
    ("disk_full", "disk is full"),
    ("read_only", "read-only or not writable"),
])
def test_snapshot_failures_are_shown_and_keep_earlier_snapshots(
    qtbot, make_window, settings, monkeypatch, failure, message
):
    window = make_window(continuous=False)
    caption_on_demand(qtbot, window)
    with qtbot.waitSignal(window.snapshot_saved, timeout=5000):
        window.save_snapshot()
    before = _files(settings.snapshot_dir())
    if failure == "disk_full":
        def full(fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(snapshots, "_write_fully", full)
    else:
        def denied(*a, **k):
            raise PermissionError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(snapshots.tempfile, "mkstemp", denied)
    with qtbot.waitSignal(window.snapshot_failed, timeout=5000) as blocker:
        qtbot.keyClick(window, Qt.Key.Key_S)
    assert message in blocker.args[0] and message in window.snapshot_label.text()
    assert "c0392b" in window.snapshot_label.styleSheet()  # shown as an error
    assert _files(settings.snapshot_dir()) == before
    monkeypatch.undo()
    with qtbot.waitSignal(window.snapshot_saved, timeout=5000):  # and the app keeps working
        window.save_snapshot()


def test_snapshot_into_an_unusable_folder_is_reported(qtbot, make_window, tmp_path):
    window = make_window(continuous=False)
    blocker_file = tmp_path / "a-file"
    blocker_file.write_text("x")
    window.set_snapshot_folder(blocker_file / "sub")  # cannot be created: a file is in the way
    with qtbot.waitSignal(window.snapshot_failed, timeout=5000) as blocker:
        window.save_snapshot()
    assert blocker.args[0].startswith("Snapshot not saved")


def open_browser(qtbot, window):
    """Open the snapshot browser and wait for its listing (read on the reader thread)."""
    browser = window.open_browser()
    qtbot.waitUntil(lambda: not browser.loading, timeout=5000)
    return browser


def test_browser_word_search_without_a_matching_model(qtbot, make_window, settings):
    folder = settings.snapshot_dir()
    for caption in ("a dog on a beach", "two cats on a sofa", "a red bus"):
        write_snapshot(folder, solid("red"), SnapshotRecord(caption=caption))
    window = make_window(loader=FakeLoader(FakeModel(tasks=("caption", "vqa"))))
    browser = open_browser(qtbot, window)
    assert len(browser.shown_records()) == 3 and not browser.can_rank
    qtbot.waitUntil(lambda: not browser.grid.item(0).icon().isNull(), timeout=5000)  # thumbnails follow
    browser.search.setText("cats")
    browser.run_search()
    assert [r.caption for r in browser.shown_records()] == ["two cats on a sofa"]
    browser.grid.setCurrentRow(0)
    assert "two cats on a sofa" in browser.details.text()


def test_browser_ranks_by_image_text_match_when_available(qtbot, make_window, settings, fake_loader):
    folder = settings.snapshot_dir()
    for colour in ("red", "blue", "green"):
        write_snapshot(folder, solid(colour), SnapshotRecord(caption="a picture"))
    window = make_window(loader=fake_loader)
    browser = open_browser(qtbot, window)
    assert browser.can_rank and "image–text match" in browser.mode.text()
    shown = []  # what the browser says each time the worker reports progress
    window.worker.rank_progress.connect(lambda done, total: shown.append(browser.mode.text()))
    browser.search.setText("something blue")
    browser.run_search()
    qtbot.waitUntil(lambda: browser.mode.text().startswith("Ranked"), timeout=5000)
    assert any(text.startswith("Ranking 3 of 3 snapshots") for text in shown), shown
    top = browser.shown_records()[0]
    assert read_embedded_caption(top.path)  # a real snapshot
    assert browser.grid.item(0).text().startswith("0.90")
    assert window.models.captioner.model.match_calls[-1] == ["something blue"]


def test_browser_reads_the_folder_off_the_gui_thread(qtbot, make_window, settings, monkeypatch):
    folder = settings.snapshot_dir()
    for caption in ("one", "two", "three"):
        write_snapshot(folder, solid("red"), SnapshotRecord(caption=caption))
    window = make_window(loader=FakeLoader(FakeModel(tasks=("caption", "vqa"))), continuous=False)
    read_snapshot = snapshots.read_snapshot

    def slow_read(path):  # a slow SD card: 0.3 s per snapshot
        time.sleep(0.3)
        return read_snapshot(path)

    monkeypatch.setattr(snapshots, "read_snapshot", slow_read)
    ticks = []
    ticker = QTimer(interval=20)
    ticker.timeout.connect(lambda: ticks.append(1))
    ticker.start()
    clock = QElapsedTimer()
    clock.start()
    browser = window.open_browser()
    assert clock.elapsed() < 300  # not 0.9 s: nothing was read on this thread
    qtbot.waitUntil(lambda: not browser.loading, timeout=5000)
    ticker.stop()
    assert sorted(r.caption for r in browser.shown_records()) == ["one", "three", "two"]
    assert len(ticks) >= 20  # the event loop kept running while the folder was read


def test_outside_text_in_labels_and_tooltips_is_shown_literally(qtbot, make_window):
    name = "<b>bold</b> <img src=missing.png width=6000>"
    window = make_window(loader=FakeLoader(FakeModel(name=name)), continuous=False)
    assert window.model_label.text() == f"captions: {name} (int8) · questions: same model"
    assert window.model_label.textFormat() == Qt.TextFormat.PlainText
    assert window.model_label.sizeHint().width() < 3000  # the 6000 px image is not laid out
    window.ask("what is <i>this</i>?")
    qtbot.waitUntil(lambda: "ms" in window.questions.answer.text(), timeout=5000)
    assert window.questions.answer.text().startswith("Q: what is <i>this</i>?\nA: ")
    assert window.questions.answer.textFormat() == Qt.TextFormat.PlainText
    from PySide6.QtGui import QTextDocument

    from app.widgets.plain_text import plain_tooltip

    doc = QTextDocument()
    doc.setHtml(plain_tooltip(name))
    assert doc.toPlainText() == name


# --- camera, models, responsiveness, settings, shutdown --------------------------------------------


def test_camera_loss_is_shown_and_recovers(qtbot, make_window):
    source = FakeSource(script={5: "none", 6: "raise"}, open_failures=0)
    window = make_window(source, retry_delays=(0.05,), start=False)
    shown = []  # what the status bar showed, in order (it changes faster than a poll)
    window.capture.status.connect(
        lambda *_: shown.append((window.source_label.text(), window.source_label.styleSheet())))
    window.start()
    qtbot.waitUntil(lambda: any("running again" in text for text, _ in shown), timeout=3000)
    lost = [style for text, style in shown if "retrying" in text]
    assert lost and all("c0392b" in style for style in lost)  # shown as an error
    before = window.preview.frames_shown
    qtbot.waitUntil(lambda: window.preview.frames_shown > before + 3, timeout=3000)


def test_a_camera_that_never_opens_shows_a_placeholder(qtbot, make_window):
    window = make_window(FakeSource(open_failures=10**6), retry_delays=(0.05,))
    qtbot.waitUntil(lambda: "not connected" in window.preview.placeholder, timeout=3000)
    assert window.preview.frame is None and not window.preview.grab().isNull()


def test_gui_stays_responsive_during_slow_inference(qtbot, make_window):
    slow = FakeModel(caption_delay=0.4, encode_delay=0.15, answer_delay=0.3)
    window = make_window(loader=FakeLoader(slow))
    gaps, clock, last = [], QElapsedTimer(), [0]
    clock.start()

    def tick():
        now = clock.elapsed()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer(interval=10)
    timer.timeout.connect(tick)
    timer.start()
    window.ask("what colour is it?")
    qtbot.wait(1500)
    timer.stop()
    assert slow.caption_calls and slow.answer_calls  # inference really ran during the measurement
    assert len(gaps) > 50 and max(gaps[1:]) < 100, f"event loop stalled {max(gaps[1:])} ms"


def test_demo_model_fallback_shows_a_notice(qtbot, make_window, monkeypatch, tmp_path):
    demo = tmp_path / "demo.pth"
    monkeypatch.setattr(app_models, "demo_model_path", lambda: demo)
    loader = FakeLoader(unavailable={DEFAULT_CAPTION_MODEL, DEFAULT_VQA_MODEL})
    window = make_window(loader=loader, models=ModelRequest())
    assert window.notice.isVisible() and "knows only generated scenes" in window.notice.text()
    assert loader.calls == [DEFAULT_CAPTION_MODEL, str(demo)]
    wait_caption(qtbot, window)


def test_no_model_at_all_is_reported_without_crashing(qtbot, make_window, monkeypatch):
    monkeypatch.setattr(app_models, "demo_model_path", lambda: None)
    window = make_window(loader=FakeLoader(unavailable={DEFAULT_CAPTION_MODEL}), models=ModelRequest(), start=False)
    with qtbot.waitSignal(window.models_failed, timeout=5000):
        window.start()
    assert window.notice.isVisible() and "Could not load a caption model" in window.notice.text()
    assert window.preview.overlay_text()[-1].startswith("No model:")
    qtbot.keyClick(window, Qt.Key.Key_Space)  # harmless
    window.ask("anything?")
    assert "still loading" in window.questions.message.text() or window.questions.message.text()


def test_load_progress_is_shown(qtbot, make_window):
    window = make_window(loader=FakeLoader(FakeModel(), delay=0.3), wait_models=False)
    qtbot.waitUntil(lambda: "reading" in window.model_label.text(), timeout=3000)
    assert 50 <= window.progress.value() <= 100 and window.progress.isVisible()
    qtbot.waitUntil(lambda: window.models is not None and window.models.answerer is not None, timeout=5000)
    assert not window.progress.isVisible() and "same model" in window.model_label.text()


def test_settings_persist_across_windows(qtbot, make_window, settings):
    window = make_window(continuous=None)
    window.controls.prompt_buttons["photography"].click()
    window.controls.strategy.setCurrentText("nucleus")
    window.controls.max_tokens.setValue(33)
    window.controls.continuous.setChecked(False)
    window.close()
    reread = Settings(settings.path)
    assert reread.get("prompt/mode") == "photography" and reread.get("decoding/strategy") == "nucleus"
    assert reread.get("decoding/max_tokens") == 33 and reread.get("captioning/continuous") is False
    assert reread.get("window/geometry")
    again = make_window(continuous=False)
    assert again.controls.prompt_mode() == "photography" and again.controls.max_tokens.value() == 33


def test_close_during_inference_joins_every_thread(qtbot, make_window):
    slow = FakeModel(caption_delay=0.5)
    window = make_window(loader=FakeLoader(slow))
    qtbot.waitUntil(lambda: len(slow.caption_calls) >= 1, timeout=5000)
    t0 = time.monotonic()
    qtbot.keyClick(window, Qt.Key.Key_Q, Qt.KeyboardModifier.ControlModifier)
    assert not window.isVisible()
    assert time.monotonic() - t0 < 2.0
    for thread in (window.capture, window.worker, window.saver):
        assert thread.isFinished() or not thread.isRunning()


def test_close_during_a_long_model_download_does_not_wait_for_it(qtbot, make_window):
    loader = FakeLoader(FakeModel(), delay=20.0)
    window = make_window(loader=loader, wait_models=False)
    qtbot.waitUntil(lambda: "reading" in window.model_label.text(), timeout=3000)
    t0 = time.monotonic()
    window.close()
    assert time.monotonic() - t0 < 2.0 and not window.worker.isRunning()  # not the 20 s download


def test_questions_while_paused_are_about_the_paused_frame(qtbot, make_window):
    window = make_window()
    wait_caption(qtbot, window)
    qtbot.keyClick(window, Qt.Key.Key_P)
    paused_on = window.preview.frame
    answer = ask(qtbot, window, "what colour is it?")
    assert answer.frame_index == paused_on.index and answer.result.text


def test_pending_snapshot_is_written_before_shutdown(qtbot, make_window, settings):
    window = make_window(continuous=False)
    caption_on_demand(qtbot, window)
    window.save_snapshot()
    window.close()  # the saver drains: a requested snapshot is not lost
    assert len(list(settings.snapshot_dir().glob("*.jpg"))) == 1
