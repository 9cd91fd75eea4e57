"""Pure logic without Qt: source specs, prompts, decoding options, questions, model choice."""

from __future__ import annotations

import numpy as np
import pytest
from app_fakes import FakeLoader, FakeModel

from app.model_choice import (
    DEFAULT_CAPTION_MODEL,
    DEFAULT_VQA_MODEL,
    DEMO_NOTICE,
    ModelRequest,
    load_answerer,
    load_captioner,
)
from app.prompts import CaptionOptions, build_prompt
from app.questions import MAX_QUESTION_CHARS, QAHistory, QuestionError, validate_question
from app.sources.base import SourceSpec, as_rgb_frame, parse_source_spec
from blip_core.errors import WeightsUnavailableError, WrongTaskError

# --- source specs ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("auto", SourceSpec("auto")),
    ("picamera2", SourceSpec("picamera2")),
    ("scenes", SourceSpec("scenes")),
    ("webcam", SourceSpec("webcam", "0")),
    ("webcam:2", SourceSpec("webcam", "2")),
    ("rtsp://cam.local/stream", SourceSpec("file", "rtsp://cam.local/stream")),
    ("file:rtsp://cam.local/s", SourceSpec("file", "rtsp://cam.local/s")),
])
def test_parse_source_spec(text, expected):
    assert parse_source_spec(text) == expected


def test_parse_source_spec_paths(tmp_path):
    video = tmp_path / "clip.avi"
    video.write_bytes(b"x")
    assert parse_source_spec(f"file:{video}") == SourceSpec("file", str(video))
    assert parse_source_spec(f"folder:{tmp_path}") == SourceSpec("folder", str(tmp_path))
    # Windows-style or odd paths keep everything after the first colon
    assert parse_source_spec("folder:C:/x", check_paths=False).arg == "C:/x"


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"), ("usb", "unknown source"), ("webcam:abc", "number"), ("scenes:3", "no argument"),
    ("file:/no/such/video.mp4", "not found"), ("folder:/no/such/dir", "not found"), ("folder:", "needs a path"),
])
def test_parse_source_spec_errors(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_source_spec(text)


def test_as_rgb_frame_converts_grey_and_rgba():
    assert as_rgb_frame(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert as_rgb_frame(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    with pytest.raises(Exception, match="dtype"):
        as_rgb_frame(np.zeros((4, 5, 3), np.float32))


# --- prompts and decoding ----------------------------------------------------------------------


def test_build_prompt_modes():
    assert build_prompt("none") == ""
    assert build_prompt("picture") == "a picture of "
    assert build_prompt("photography") == "a photography of "
    assert build_prompt("custom", "  a   close-up of ") == "a close-up of "
    assert build_prompt("custom", "   ") == ""
    assert len(build_prompt("custom", "x" * 500)) <= 81
    with pytest.raises(ValueError):
        build_prompt("fancy")


def test_caption_options_kwargs_follow_strategy():
    greedy = CaptionOptions(prompt="", strategy="greedy", max_new_tokens=3).kwargs()
    assert greedy["num_beams"] == 1 and greedy["max_new_tokens"] == 3 and greedy["min_new_tokens"] == 3
    beam = CaptionOptions(strategy="beam", num_beams=1).kwargs()
    assert beam["strategy"] == "beam" and beam["num_beams"] >= 2
    assert CaptionOptions(max_new_tokens=1000).kwargs()["max_new_tokens"] == 60
    with pytest.raises(ValueError):
        CaptionOptions(strategy="topk").kwargs()


# --- questions ---------------------------------------------------------------------------------


def test_validate_question():
    assert validate_question("  what   colour is it?\n") == "what colour is it?"
    with pytest.raises(QuestionError, match="Type a question"):
        validate_question("   \t ")
    with pytest.raises(QuestionError, match="characters long"):
        validate_question("why " * MAX_QUESTION_CHARS)


def test_qa_history_groups_by_frame_and_is_bounded():
    h = QAHistory(max_frames=2)
    e1 = h.add_question(1, "q1", "cap 1")
    h.add_question(1, "q2")
    h.add_question(2, "q3")
    e1.answer = "a1"
    assert [len(f.entries) for f in h.frames()] == [2, 1]
    assert h.answered(1) == [{"question": "q1", "answer": "a1", "total_ms": 0.0, "reused_features": False}]
    h.add_question(3, "q4")
    assert [f.frame_index for f in h.frames()] == [2, 3]


# --- model choice ------------------------------------------------------------------------------


def _no_demo():
    return None


def test_default_models_load_separately_when_captioner_cannot_answer(tmp_path):
    captioner = FakeModel("cap", tasks=("caption",))
    vqa = FakeModel("vqa", tasks=("vqa",))
    loader = FakeLoader(models={DEFAULT_CAPTION_MODEL: captioner, DEFAULT_VQA_MODEL: vqa})
    models = load_captioner(ModelRequest(), loader, demo_path=_no_demo)
    models = load_answerer(ModelRequest(), models, loader, demo_path=_no_demo)
    assert loader.calls == [DEFAULT_CAPTION_MODEL, DEFAULT_VQA_MODEL]
    assert models.captioner.name == "cap" and models.answerer.name == "vqa"
    assert not models.shared and models.matcher is None and not models.notices


def test_a_captioner_that_answers_is_shared_and_loaded_once():
    loader = FakeLoader(FakeModel(tasks=("caption", "vqa", "match")))
    req = ModelRequest(caption="m", vqa="m")
    models = load_answerer(req, load_captioner(req, loader, demo_path=_no_demo), loader, demo_path=_no_demo)
    assert loader.calls == ["m"] and models.shared and models.matcher is models.captioner


def test_offline_falls_back_to_demo_model_with_notice(tmp_path):
    demo = tmp_path / "demo.pth"
    loader = FakeLoader(unavailable={DEFAULT_CAPTION_MODEL, DEFAULT_VQA_MODEL})
    models = load_captioner(ModelRequest(), loader, progress=None, demo_path=lambda: demo)
    models = load_answerer(ModelRequest(), models, loader, demo_path=lambda: demo)
    assert loader.calls == [DEFAULT_CAPTION_MODEL, str(demo)]
    assert models.used_demo and DEMO_NOTICE in models.notices and models.shared


def test_offline_without_demo_model_says_what_to_do():
    loader = FakeLoader(unavailable={DEFAULT_CAPTION_MODEL})
    with pytest.raises(WeightsUnavailableError, match="demo model is not installed"):
        load_captioner(ModelRequest(), loader, demo_path=_no_demo)


def test_vqa_unavailable_keeps_captions_with_a_notice():
    loader = FakeLoader(FakeModel(tasks=("caption",)), unavailable={DEFAULT_VQA_MODEL})
    models = load_answerer(ModelRequest(), load_captioner(ModelRequest(), loader, demo_path=_no_demo), loader,
                           demo_path=_no_demo)
    assert models.answerer is None and any("Questions unavailable offline" in n for n in models.notices)


def test_non_captioning_model_is_rejected():
    loader = FakeLoader(FakeModel(tasks=("vqa",)))
    with pytest.raises(WrongTaskError, match="cannot write captions"):
        load_captioner(ModelRequest(caption="vqa-only"), loader, demo_path=_no_demo)


def test_progress_messages_name_the_role():
    seen = []
    loader = FakeLoader()
    load_captioner(ModelRequest(caption="m"), loader, progress=lambda f, m: seen.append((f, m)), demo_path=_no_demo)
    assert seen[0] == (0.0, "caption model: loading m")
    assert (0.5, "caption model: reading m") in seen and seen[-1][0] == 1.0


def test_precision_and_threads_reach_the_loader():
    loader = FakeLoader()
    load_captioner(ModelRequest(caption="m", precision="fp32", threads=3), loader, demo_path=_no_demo)
    load_captioner(ModelRequest(caption="m"), loader, demo_path=_no_demo)
    assert loader.options[0] == {"precision": "fp32", "threads": 3, "task": None}
    assert loader.options[1]["precision"] == "int8" and loader.options[1]["threads"] >= 1  # one core left for the GUI


# --- settings file -------------------------------------------------------------------------------

def _settings_file(tmp_path, section: str, line: str):
    from app.settings import Settings

    path = tmp_path / "hand-edited.ini"
    path.write_text(f"[{section}]\n{line}\n", encoding="utf-8")
    return Settings(path)


@pytest.mark.parametrize("key, stored", [
    ("decoding/max_tokens", "3000000000"),  # overflowed the spin box: the app never started again
    ("decoding/max_tokens", "-5"),
    ("decoding/max_tokens", "0"),
    ("decoding/max_tokens", "20.5"),
    ("decoding/max_tokens", "twenty"),
    ("decoding/max_tokens", "20, 30"),  # INI reads comma-separated text as a list
    ("decoding/max_tokens", "9" * 5000),  # beyond int()'s digit limit
    ("decoding/strategy", "warp"),
    ("prompt/mode", "evil"),
    ("prompt/custom", "x" * 1_000_000),
    ("prompt/custom", "a, list"),
    ("captioning/continuous", "maybe"),
    ("snapshots/folder", "/tmp/" + "d" * 5000),
    ("window/geometry", "garbage text"),
    ("window/geometry", "@ByteArray(" + "x" * 100_000 + ")"),
    ("window/state", "@Variant(\\0\\0\\0\\x7f\\0\\0\\0\\x5QRect)"),
])
def test_invalid_settings_fall_back_to_the_default_and_are_logged(tmp_path, caplog, key, stored):
    from app.settings import DEFAULTS

    section, name = key.split("/")
    settings = _settings_file(tmp_path, section, f"{name}={stored}")
    with caplog.at_level("WARNING", logger="app.settings"):
        assert settings.get(key) == DEFAULTS[key]
    assert f"{key} = " in caplog.text and "using the default" in caplog.text
    assert len(caplog.text) < 1000  # a megabyte of junk is not copied into the log


@pytest.mark.parametrize("key, value", [
    ("decoding/max_tokens", 1), ("decoding/max_tokens", 60), ("decoding/strategy", "nucleus"),
    ("prompt/mode", "custom"), ("prompt/custom", "a drawing, in ink, of "), ("captioning/continuous", False),
    ("snapshots/folder", "/home/me/Pictures/blip cam, 2024"), ("window/geometry", b"\x01\xd9\xd0\xcb" + bytes(62)),
])
def test_valid_settings_round_trip(tmp_path, caplog, key, value):
    from app.settings import Settings

    writer = Settings(tmp_path / "s.ini")
    writer.set(key, value)
    writer.sync()
    with caplog.at_level("WARNING", logger="app.settings"):
        assert Settings(tmp_path / "s.ini").get(key) == value
    assert caplog.text == ""

