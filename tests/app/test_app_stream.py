"""Streaming captions and answers (issue #19 item 3): the text so far reaches the overlay while it is
decoded, throttled; the overlay shows the time to the first word and the total; a caption the user
supersedes midway is abandoned (decoding stops), not finished."""

from __future__ import annotations

import threading
import time

from app_fakes import FakeLoader, FakeModel, FakeSource, colour_name

from app.widgets.overlay import OverlayState, answer_line, overlay_lines
from app.worker import PARTIAL_INTERVAL, Throttle
from blip_core.results import AnswerResult, CaptionResult, Timings

TAIL = "scene with a small table near the window and a lamp on it".split()


class StreamingModel(FakeModel):
    """A FakeModel that decodes word by word, ``token_delay`` s per word, reporting each to
    ``on_text`` as blip_core's models do (and stopping when it raises). ``runs`` records, per
    caption call, the colour and how many words were decoded before it ended or was stopped."""

    streams_text = True

    def __init__(self, token_delay: float = 0.03, **kwargs):
        super().__init__(**kwargs)
        self.token_delay = token_delay
        self.runs: list[dict] = []
        self.decoding = threading.Event()  # set while a caption decodes

    def _decode(self, words: list[str], on_text) -> tuple[str, float]:
        run = self.runs[-1] if self.runs else None
        t0 = time.perf_counter()
        for n in range(1, len(words) + 1):
            time.sleep(self.token_delay)
            if run is not None:
                run["words"] = n
            if on_text is not None:
                on_text(" ".join(words[:n]))
        return " ".join(words), (time.perf_counter() - t0) * 1000

    def caption(self, image_or_f, prompt="a picture of ", max_new_tokens=20, on_text=None, **kwargs) -> CaptionResult:
        f, enc = self._features(image_or_f)
        colour = colour_name(f.embeds)
        self.runs.append({"colour": colour, "words": 0, "finished": False})
        self.decoding.set()
        try:
            text, decode_ms = self._decode(["a", colour, *TAIL][:max_new_tokens], on_text)
        finally:
            self.decoding.clear()
        self.runs[-1]["finished"] = True
        timings = Timings(enc.preprocess_ms, enc.vision_ms, 0.0, decode_ms, enc.total_ms + decode_ms)
        return CaptionResult(text, tuple(range(len(text.split()))), timings, prompt, (text,))

    def answer(self, image_or_f, question, answers=None, max_new_tokens=10, on_text=None) -> AnswerResult:
        f, enc = self._features(image_or_f)
        text, decode_ms = self._decode(f"it is {colour_name(f.embeds)} all over".split(), on_text)
        return AnswerResult(text, question, (1,), Timings(enc.preprocess_ms, enc.vision_ms, 0.0, decode_ms,
                                                          enc.total_ms + decode_ms))


def streaming_window(make_window, colours=("blue",), **model_kwargs):
    model = StreamingModel(**model_kwargs)
    window = make_window(FakeSource(colours=colours), loader=FakeLoader(model), continuous=False)
    return window, model


def caption_with_partials(qtbot, window):
    """Caption the frame on screen now; -> (partials shown in order, overlay lines at each, final outcome)."""
    partials, overlays = [], []

    def on_partial(p):
        partials.append(p)
        overlays.append(window.preview.overlay_text())

    window.partial_shown.connect(on_partial)
    qtbot.waitUntil(lambda: window.preview.frame is not None, timeout=3000)
    with qtbot.waitSignal(window.caption_shown, timeout=10_000) as blocker:
        window.caption_now()
    window.partial_shown.disconnect(on_partial)
    return partials, overlays, blocker.args[0]


def test_partial_captions_reach_the_overlay_before_the_final_one_and_are_its_prefixes(qtbot, make_window):
    window, _ = streaming_window(make_window, token_delay=0.06)
    partials, overlays, outcome = caption_with_partials(qtbot, window)
    assert outcome.text == "a picture of a blue " + " ".join(TAIL)
    assert len(partials) >= 5  # ~13 words at 60 ms: a partial every step or two
    texts = [p.text for p in partials]
    assert all(outcome.text.startswith(t) and t != outcome.text for t in texts[:-1])
    assert all(len(a) < len(b) for a, b in zip(texts, texts[1:]))  # growing, word by word
    assert texts[0].startswith("a picture of a")  # the prompt plus the first word(s) first
    first_caption, first_timings = overlays[0][0], overlays[0][1]
    assert first_caption == texts[0] + " …"  # marked as unfinished while it is written
    assert first_timings.startswith("first word ") and first_timings.endswith("writing…")
    caption, timings = window.preview.overlay_text()[:2]
    assert caption == outcome.text  # the final replaces the partial, without the mark


def test_overlay_shows_time_to_first_word_and_total(qtbot, make_window):
    window, _ = streaming_window(make_window, token_delay=0.05)
    _, _, outcome = caption_with_partials(qtbot, window)
    timings = window.preview.overlay_text()[1]
    first = float(timings.split("first word ")[1].split(" ms")[0])
    total = float(timings.split("total ")[1].split(" ms")[0])
    assert first == round(outcome.first_word_ms) and total == round(outcome.timings.total_ms)
    # the first word comes after one step (~50 ms), the whole caption after all 14 (~700 ms)
    assert 40 <= outcome.first_word_ms < total / 3 and total >= 14 * 50


def test_partials_are_throttled_to_the_display_rate(qtbot, make_window):
    window, _ = streaming_window(make_window, token_delay=0.004)
    window.controls.max_tokens.setValue(14)
    partials, _, outcome = caption_with_partials(qtbot, window)
    decode_s = outcome.timings.decode_ms / 1000
    # 14 words in ~60 ms: at most one partial per PARTIAL_INTERVAL (the first at once), not one per word
    assert 1 <= len(partials) <= decode_s / PARTIAL_INTERVAL + 2 < 14


def test_a_newer_frame_abandons_the_running_caption(qtbot, make_window):
    window, model = streaming_window(make_window, colours=("red", "green"), token_delay=0.08)
    source = window.capture.source
    qtbot.waitUntil(lambda: window.preview.frame is not None, timeout=3000)
    shown, abandoned = [], []
    window.caption_shown.connect(shown.append)
    window.worker.caption_abandoned.connect(abandoned.append)
    red = window.preview.frame
    window.caption_now()
    qtbot.waitUntil(lambda: "red" in window.preview.overlay_text()[0], timeout=5000)  # being written
    source.next_colour()
    qtbot.waitUntil(lambda: colour_name(window.preview.frame.image.reshape(-1, 3).mean(0)) == "green", timeout=3000)
    with qtbot.waitSignal(window.caption_shown, timeout=10_000) as blocker:
        window.caption_now()  # the newer frame, asked for now: the red caption is superseded
    assert "green" in blocker.args[0].text
    assert [o.text for o in shown] == [blocker.args[0].text]  # the red caption never reached the overlay
    assert abandoned == [red.index] and window.captions_abandoned == 1
    red_run = model.runs[0]
    assert red_run["colour"] == "red" and not red_run["finished"]
    assert red_run["words"] < len(TAIL)  # decoding stopped at the next word, it did not run to the end


def test_continuous_frames_do_not_abandon_a_caption(qtbot, make_window):
    """At camera rate every caption would be superseded by the next frame: continuous captions finish."""
    model = StreamingModel(token_delay=0.02)
    window = make_window(FakeSource(colours=("yellow",), interval=0.01), loader=FakeLoader(model))
    for _ in range(3):
        qtbot.waitSignal(window.caption_shown, timeout=10_000).wait()
    assert window.captions_abandoned == 0 and all(run["finished"] for run in model.runs[:3])


def test_a_caption_that_says_the_same_so_far_does_not_flicker(qtbot, make_window):
    window, _ = streaming_window(make_window, token_delay=0.02)
    partials, _, first = caption_with_partials(qtbot, window)
    assert partials
    partials, _, second = caption_with_partials(qtbot, window)  # the same blue scene again
    assert second.text == first.text and partials == []  # the caption on screen stayed while it was redone


def test_answers_stream_into_the_overlay(qtbot, make_window):
    window, _ = streaming_window(make_window, token_delay=0.06)
    qtbot.waitUntil(lambda: window.preview.frame is not None, timeout=3000)
    lines = []
    window.partial_shown.connect(lambda p: lines.append(window.last_answer_line))
    with qtbot.waitSignal(window.answer_shown, timeout=10_000) as blocker:
        window.ask("what colour is it?")
    assert blocker.args[0].result.text == "it is blue all over"
    assert lines and all(line.startswith("Q: what colour is it? → it") for line in lines)
    assert lines[0].split(" · ")[0].endswith(" …") and "first word" in lines[0]
    final = window.preview.overlay_text()[1]
    assert final.startswith("Q: what colour is it? → it is blue all over · fake-blip, first word ")
    assert final.endswith(" s") and "…" not in final


def test_overlay_lines_for_streaming_and_final_states():
    streaming = overlay_lines(OverlayState("a picture of a dog", first_word_ms=123.4, streaming=True, model="m"))
    assert streaming[:2] == ["a picture of a dog …", "first word 123 ms · writing…"]
    final = overlay_lines(OverlayState("a dog", 10, 20, 35, 5.0, first_word_ms=18))
    assert final[1] == "vision 10 ms · decode 20 ms · first word 18 ms · total 35 ms · 5.0 tok/s"
    unstreamed = overlay_lines(OverlayState("a dog", 10, 20, 35, 5.0))
    assert unstreamed[1] == "vision 10 ms · decode 20 ms · total 35 ms · 5.0 tok/s"
    assert answer_line("q?", "yes", "m", None, 250) == "Q: q? → yes … · m, first word 0.2 s"
    assert answer_line("q?", "yes", "m", 1500) == "Q: q? → yes · m, 1.5 s"


def test_throttle_lets_one_through_per_interval():
    throttle = Throttle(0.05)
    assert throttle.due() and not throttle.due()
    time.sleep(0.06)
    assert throttle.due()
