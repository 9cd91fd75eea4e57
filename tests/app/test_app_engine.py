"""The inference engine without Qt: feature reuse across captions and questions, cache pinning,
timings, snapshot ranking."""

from __future__ import annotations

import time

from app_fakes import FakeLoader, FakeModel, solid

from app.inference import FeatureCache, InferenceEngine
from app.model_choice import ModelRequest
from app.prompts import CaptionOptions
from app.snapshots import SnapshotRecord, list_snapshots, write_snapshot
from app.sources.base import Frame


def frame(index: int, colour: str = "red") -> Frame:
    return Frame(solid(colour), index, time.monotonic(), "test")


def loaded_engine(loader=None, req=None) -> InferenceEngine:
    req = req or ModelRequest(caption="m", vqa="m")
    engine = InferenceEngine(loader or FakeLoader())
    engine.load_captioner(req)
    engine.load_answerer(req)
    return engine


def test_caption_then_follow_up_questions_encode_once():
    engine = loaded_engine()
    model = engine.models.captioner
    f = frame(1, "blue")
    c = engine.caption(f, CaptionOptions(prompt="a picture of "))
    assert c.text == "a picture of a blue scene" and not c.reused_features
    a1 = engine.answer(f, "what colour is it?")
    a2 = engine.answer(f, "how many things?")
    assert (a1.result.text, a2.result.text) == ("blue", "1")
    assert a1.reused_features and a2.reused_features
    assert model.encode_calls == 1


def test_separate_vqa_model_encodes_the_frame_once_for_itself():
    cap, vqa = FakeModel("cap", tasks=("caption",)), FakeModel("vqa", tasks=("vqa",))
    engine = loaded_engine(FakeLoader(models={"c": cap, "v": vqa}), ModelRequest(caption="c", vqa="v"))
    f = frame(1)
    engine.caption(f, CaptionOptions())
    for q in ("q1?", "q2?", "q3?"):
        engine.answer(f, q)
    assert engine.models.captioner.encode_calls == 1 and engine.models.answerer.encode_calls == 1


def test_the_question_frame_stays_cached_while_new_frames_are_captioned():
    engine = loaded_engine()
    asked = frame(1)
    engine.answer(asked, "q?")
    for i in range(2, 12):  # more frames than the cache holds
        engine.caption(frame(i), CaptionOptions())
    assert engine.answer(asked, "follow-up?").reused_features
    assert not engine.caption(frame(2), CaptionOptions()).reused_features  # unpinned ones were evicted


def test_feature_cache_evicts_lru_but_not_pinned():
    cache, model = FeatureCache(size=2), object()
    cache.put(model, 1, "f1")
    cache.pin(1)
    for k in (2, 3, 4):
        cache.put(model, k, f"f{k}")
    assert cache.get(model, 1) == "f1" and cache.get(model, 2) is None and cache.get(model, 4) == "f4"


def test_prompt_and_decoding_reach_the_model():
    engine = loaded_engine()
    engine.caption(frame(1), CaptionOptions(prompt="a photography of ", strategy="beam", max_new_tokens=7))
    kwargs = engine.models.captioner.caption_kwargs[-1]
    assert kwargs["prompt"] == "a photography of " and kwargs["strategy"] == "beam"
    assert kwargs["num_beams"] >= 2 and kwargs["max_new_tokens"] == 7


def test_timings_include_the_encode_when_not_reused():
    engine = loaded_engine(FakeLoader(FakeModel(encode_delay=0.03, caption_delay=0.01)))
    first = engine.caption(frame(1), CaptionOptions())
    again = engine.caption(frame(1), CaptionOptions())
    assert first.timings.vision_ms >= 20 and first.timings.total_ms >= first.timings.decode_ms + 20
    assert again.reused_features and again.timings.vision_ms == 0


def test_rank_snapshots_by_image_text_match(tmp_path):
    for colour in ("red", "blue", "green"):
        write_snapshot(tmp_path, solid(colour, (32, 32)), SnapshotRecord(caption=f"some {colour} thing"))
    records = list_snapshots(tmp_path)
    engine = loaded_engine()
    ranked = engine.rank_snapshots("a blue picture", records)
    assert "blue" in ranked[0][0].caption and ranked[0][1] > ranked[1][1]
    encodes = engine.models.captioner.encode_calls
    engine.rank_snapshots("a red picture", records)
    assert engine.models.captioner.encode_calls == encodes  # snapshot features are cached too
