"""Speaking captions and answers (issue #19 item 4): espeak-ng renders non-silent speech; the queue
never overlaps voices, lags at most one caption behind and speaks a caption only when its meaning
changed; the drawer's toggle (off by default) and ``--speak`` switch it; a missing espeak-ng is
said plainly and the app keeps captioning."""

from __future__ import annotations

import shutil
import threading
import time
import wave

import numpy as np
import pytest
from app_fakes import FakeLoader, FakeModel, FakeSource

from app import speech
from app.arguments import AppConfig, parse_args
from app.speech import SAME_MEANING, EspeakSpeaker, SpeechQueue, content_words, similarity


class FakeSpeaker:
    """Takes ``seconds`` per text; records what it said and whether two ever overlapped."""

    def __init__(self, seconds: float = 0.0, fail: bool = False):
        self.seconds, self.fail = seconds, fail
        self.said: list[str] = []
        self.active = self.most_at_once = 0
        self._lock = threading.Lock()
        self.stopped = threading.Event()

    def say(self, text: str) -> None:
        if self.fail:
            raise OSError("no audio device")
        with self._lock:
            self.active += 1
            self.most_at_once = max(self.most_at_once, self.active)
        self.stopped.wait(self.seconds)
        with self._lock:
            self.active -= 1
            self.said.append(text)

    def stop(self) -> None:
        self.stopped.set()


def wait_for(condition, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


# --- meaning -------------------------------------------------------------------------------------


def test_near_identical_captions_say_the_same_and_new_content_does_not():
    assert content_words("A picture of the dogs, on a couch!") == {"dog", "couch"}
    assert similarity("a picture of a dog on a couch", "a photo of the dogs on a couch") == 1.0
    assert similarity("a picture of a dog on a couch", "a picture of a dog on a red couch") >= SAME_MEANING
    assert similarity("a picture of a dog on a couch", "a picture of a cat on a couch") < SAME_MEANING
    assert similarity("a picture of a kitchen", "a picture of a street with cars") == 0.0


# --- the queue -----------------------------------------------------------------------------------


def test_queue_never_overlaps_and_lags_at_most_one_caption():
    speaker = FakeSpeaker(seconds=0.3)
    queue = SpeechQueue(speaker)
    try:
        captions = ["a dog on a couch", "a cat on a table", "a red car in a street", "a bird on a feeder",
                    "a man riding a bicycle"]
        assert queue.offer_caption(captions[0])
        wait_for(lambda: speaker.active == 1)
        for text in captions[1:]:  # all while the first is spoken
            assert queue.offer_caption(text)
        wait_for(lambda: len(speaker.said) == 2)
        time.sleep(0.4)
        assert speaker.said == [captions[0], captions[-1]]  # the stale ones in between were dropped
        assert queue.dropped == 3 and speaker.most_at_once == 1
    finally:
        assert queue.shutdown()


def test_queue_speaks_a_caption_only_when_its_meaning_changed():
    speaker = FakeSpeaker()
    queue = SpeechQueue(speaker)
    try:
        offered = []
        for text in ("a picture of a dog on a couch", "a photo of the dogs on a couch", "a picture of a dog on a couch",
                     "a picture of a cat on a couch", "a picture of a cat on the couch"):
            offered.append(queue.offer_caption(text))
            wait_for(lambda: len(speaker.said) == sum(offered))  # each spoken before the next comes
        assert offered == [True, False, False, True, False]
        assert speaker.said == ["a picture of a dog on a couch", "a picture of a cat on a couch"]
    finally:
        queue.shutdown()


def test_answers_are_never_dropped_for_captions_and_go_first():
    speaker = FakeSpeaker(seconds=0.2)
    queue = SpeechQueue(speaker)
    try:
        queue.offer_caption("a dog on a couch")
        wait_for(lambda: speaker.active == 1)
        queue.offer_caption("a cat on a table")
        queue.offer_answer("yes")
        queue.offer_caption("a red car in a street")  # replaces the waiting caption, not the answer
        wait_for(lambda: len(speaker.said) == 3)
        assert speaker.said == ["a dog on a couch", "yes", "a red car in a street"]
    finally:
        queue.shutdown()


def test_shutdown_cuts_speech_short_and_a_failing_speaker_is_reported():
    speaker = FakeSpeaker(seconds=30)
    queue = SpeechQueue(speaker)
    queue.offer_caption("a long story")
    wait_for(lambda: speaker.active == 1)
    t0 = time.monotonic()
    assert queue.shutdown(timeout=2.0) and time.monotonic() - t0 < 1.0
    assert not queue.offer_caption("anything after shutdown")

    errors = []
    failing = SpeechQueue(FakeSpeaker(fail=True), on_error=errors.append)
    failing.offer_caption("a dog")
    wait_for(lambda: errors)
    assert errors == ["Speech failed: no audio device"]
    failing.offer_caption("a cat")  # still running after a failure
    wait_for(lambda: len(errors) == 2)
    failing.shutdown()


# --- espeak-ng -----------------------------------------------------------------------------------


def rms(path) -> float:
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2 and w.getnframes() > w.getframerate() * 0.3  # over 0.3 s of audio
        samples = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64)
    return float(np.sqrt((samples ** 2).mean()))


@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng is not installed (apt-get install espeak-ng; .ci/run installs it)")
def test_espeak_renders_a_caption_to_non_silent_speech(tmp_path):
    speaker = speech.default_speaker()
    assert isinstance(speaker, EspeakSpeaker)
    speaker.render("a picture of a dog sitting on a red couch", tmp_path / "caption.wav")
    assert rms(tmp_path / "caption.wav") > 300  # int16 speech is in the thousands; silence is 0
    # untrusted text goes on stdin: a caption that looks like an option is spoken, not obeyed
    speaker.render("--help -w /tmp/elsewhere.wav", tmp_path / "option.wav")
    assert rms(tmp_path / "option.wav") > 300
    silent = tmp_path / "silent.wav"  # the same measure on silence of the same format: the test can fail
    with wave.open(str(tmp_path / "caption.wav")) as src, wave.open(str(silent), "wb") as w:
        w.setparams(src.getparams())
        w.writeframes(b"\0\0" * src.getnframes())
    assert rms(silent) == 0.0


def test_missing_espeak_gives_no_speaker(monkeypatch):
    monkeypatch.setattr(speech.shutil, "which", lambda _name: None)
    assert speech.default_speaker() is None


# --- the window ----------------------------------------------------------------------------------


def test_toggle_is_off_by_default_and_speaks_changed_captions_and_answers(qtbot, make_window, monkeypatch):
    speaker = FakeSpeaker()
    monkeypatch.setattr(speech, "default_speaker", lambda: speaker)
    source = FakeSource(colours=("red", "blue"))
    window = make_window(source, loader=FakeLoader(FakeModel()))
    assert not window.voice.speak.isChecked() and window.speech is None
    qtbot.waitSignal(window.caption_shown, timeout=5000).wait()
    assert speaker.said == []  # off: nothing spoken
    window.voice.speak.click()
    assert window.speech is not None and window.settings.get("speech/enabled") is True
    for _ in range(5):  # five red captions: one utterance
        qtbot.waitSignal(window.caption_shown, timeout=5000).wait()
    qtbot.waitUntil(lambda: speaker.said == ["a picture of a red scene"], timeout=3000)
    source.next_colour()
    qtbot.waitUntil(lambda: speaker.said[-1:] == ["a picture of a blue scene"], timeout=5000)
    with qtbot.waitSignal(window.answer_shown, timeout=5000):
        window.ask("what colour is it?")
    qtbot.waitUntil(lambda: speaker.said[-1:] == ["blue"], timeout=3000)
    window.voice.speak.click()
    assert window.speech is None and window.settings.get("speech/enabled") is False
    count = len(speaker.said)
    source.next_colour()
    qtbot.waitUntil(lambda: window.last_caption is not None and "red" in window.last_caption.text, timeout=5000)
    assert len(speaker.said) == count  # off again: silent


def test_missing_espeak_is_said_and_captions_go_on(qtbot, make_window, monkeypatch):
    monkeypatch.setattr(speech.shutil, "which", lambda _name: None)
    window = make_window(loader=FakeLoader(FakeModel()))
    window.voice.speak.click()
    assert not window.voice.speak.isChecked() and window.speech is None
    assert window.voice.status.isVisibleTo(window.voice) and "espeak-ng is not installed" in window.voice.status.text()
    qtbot.waitSignal(window.caption_shown, timeout=5000).wait()  # still captioning


def test_speak_option_turns_the_voice_on_for_this_run(qtbot, settings, monkeypatch):
    from app.main_window import MainWindow

    assert parse_args(["--speak"]).speak and not parse_args([]).speak
    speaker = FakeSpeaker()
    monkeypatch.setattr(speech, "default_speaker", lambda: speaker)
    window = MainWindow(AppConfig(speak=True), settings, loader=FakeLoader(FakeModel()), source=FakeSource())
    qtbot.addWidget(window)
    try:
        assert window.voice.speak.isChecked() and window.speech is not None
        assert settings.get("speech/enabled") is False  # a command-line choice is not saved
    finally:
        window.shutdown()
