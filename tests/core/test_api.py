"""The public API end to end on tiny checkpoints: results, feature reuse, tasks, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import blip_core
from blip_core import BadInputError, CheckpointError, WeightsUnavailableError, WrongTaskError
from blip_core.checkpoints import export_hf, save
from blip_core.preprocess import pixel_values


@pytest.fixture(scope="module")
def captioner(hf_dirs):
    return blip_core.load(hf_dirs["caption"])


@pytest.fixture(scope="module")
def vqa(hf_dirs):
    return blip_core.load(hf_dirs["vqa"])


@pytest.fixture(scope="module")
def matcher(hf_dirs):
    return blip_core.load(hf_dirs["match"])


def test_caption_result(captioner, images):
    r = captioner.caption(images[0], max_new_tokens=8, min_new_tokens=3)
    assert isinstance(r.text, str) and r.text and not r.text.startswith("a picture of")
    assert r.prompt == "a picture of " and r.texts[0] == r.text
    assert 3 <= len(r.token_ids) <= 8
    t = r.timings
    assert t.preprocess_ms > 0 and t.vision_ms > 0 and t.decode_ms > 0
    assert t.total_ms >= t.vision_ms + t.decode_ms
    assert r.tokens_per_s > 0
    # the text is what the tokenizer makes of prompt + new tokens, minus the prompt (a word-piece
    # continuing "of" -- "ofsman" with random weights -- still leaves "sman ..." as the caption)
    full = captioner.tokenizer.decode(captioner.tokenizer.prompt_ids("a picture of ") + list(r.token_ids))
    assert full.startswith("a picture of") and full.endswith(r.text)
    assert len(full) - len(r.text) in (len("a picture of"), len("a picture of "))


def test_inputs_path_pil_array_agree(captioner, images):
    path = images[1]
    pil = Image.open(path)
    a = captioner.caption(path, max_new_tokens=6)
    b = captioner.caption(pil, max_new_tokens=6)
    c = captioner.caption(np.asarray(pil.convert("RGB")), max_new_tokens=6)
    assert a.token_ids == b.token_ids == c.token_ids


def test_features_are_reused(captioner, images, monkeypatch):
    f = captioner.encode_image(images[0])
    calls = []
    original = captioner.model.encode_image
    monkeypatch.setattr(captioner.model, "encode_image", lambda px: calls.append(1) or original(px))
    r1 = captioner.caption(f, max_new_tokens=6)
    r2 = captioner.caption(f, prompt="a photography of ", max_new_tokens=6)
    assert calls == []  # no second vision pass
    assert r1.timings.vision_ms == 0 and r1.timings.preprocess_ms == 0
    assert "text_decoder" in f.cache  # cross-attention keys/values computed once and kept
    assert r1.token_ids == captioner.caption(images[0], max_new_tokens=6).token_ids
    assert r2.prompt == "a photography of "


def test_prompt_changes_the_caption(captioner, images):
    outs = {captioner.caption(images[0], prompt=p, max_new_tokens=8).token_ids
            for p in ("a picture of ", "", "a photography of ", "a drawing of a")}
    assert len(outs) > 1


def test_different_images_different_captions(captioner, images):
    assert len({captioner.caption(p, max_new_tokens=8).token_ids for p in images}) > 1


def test_beam_and_nucleus(captioner, images):
    f = captioner.encode_image(images[2])
    beam = captioner.caption(f, num_beams=3, num_return_sequences=3, max_new_tokens=8)
    assert len(beam.texts) == 3
    n1 = captioner.caption(f, strategy="nucleus", seed=5, num_return_sequences=4, max_new_tokens=8)
    n2 = captioner.caption(f, strategy="nucleus", seed=5, num_return_sequences=4, max_new_tokens=8)
    assert n1.texts == n2.texts and len(n1.texts) == 4  # seeded: reproducible
    n3 = captioner.caption(f, strategy="nucleus", seed=6, num_return_sequences=4, max_new_tokens=8)
    assert n3.texts != n1.texts
    with pytest.raises(BadInputError):
        captioner.caption(f, strategy="sideways")
    with pytest.raises(BadInputError):
        captioner.caption(f, max_new_tokens=0)


def test_vqa_generate_and_rank(vqa, images):
    f = vqa.encode_image(images[0])
    a = vqa.answer(f, "what colour is the square?", max_new_tokens=4)
    assert isinstance(a.text, str) and a.question == "what colour is the square?"
    assert "text_encoder" in f.cache  # the question encoder's image keys/values, reused by follow-ups
    answers = ["red", "green", "blue", "two", "yes", "a big blue circle"]
    r = vqa.answer(f, "what colour is the square?", answers=answers)
    assert r.text == r.ranked[0][0] and len(r.ranked) == len(answers)
    scores = [s for _, s in r.ranked]
    assert scores == sorted(scores, reverse=True)
    # independent check: full teacher-forced log-likelihood of every answer
    m, tok = vqa.model, vqa.tokenizer
    q_ids, q_mask = tok("what colour is the square?", first="enc")
    a_ids, a_mask = tok(answers, first="dec")
    with torch.no_grad():
        states = m.encode_question(f.embeds, q_ids, q_mask)
        logits = m.answer_logits(states.expand(len(answers), -1, -1), q_mask.expand(len(answers), -1), a_ids, a_mask)
        logp = logits[:, :-1].log_softmax(-1).gather(2, a_ids[:, 1:, None]).squeeze(2)
        ref = (logp * a_mask[:, 1:]).sum(1)
    got = dict(r.ranked)
    for ans, want in zip(answers, ref.tolist()):
        assert got[ans] == pytest.approx(want, abs=1e-4)
    # k limits the candidates scored in full to those with the likeliest first token
    assert len(vqa.answer(f, "what colour is the square?", answers=answers, k=2).ranked) == 2


@pytest.mark.parametrize("question", ["", "   ", None])
def test_empty_question_refused(vqa, images, question):
    with pytest.raises(BadInputError, match="empty"):
        vqa.answer(images[0], question)


def test_long_and_emoji_questions(vqa, images):
    long = " ".join(["what"] * 2000) + "?"
    assert isinstance(vqa.answer(images[0], long, max_new_tokens=3).text, str)  # truncated to 35 tokens
    assert isinstance(vqa.answer(images[0], "🐶🐱 where is the 🚗?", max_new_tokens=3).text, str)


def test_match(matcher, images):
    texts = ["a red square", "two green circles", "an unrelated sentence about taxes"]
    res = matcher.match(images[0], texts)
    assert [r.text for r in res] == texts
    assert all(0 <= r.itm <= 1 and -1 <= r.itc <= 1 for r in res)
    with torch.no_grad():
        px = pixel_values(images[0], matcher.image_size)
        e = matcher.model.encode_image(px)
        ids, mask = matcher.tokenizer(texts, first="enc")
        ref = matcher.model.itm_logits(e.expand(3, -1, -1), ids, mask).softmax(-1)[:, 1]
    assert [r.itm for r in res] == pytest.approx(ref.tolist(), abs=1e-5)
    with pytest.raises(BadInputError):
        matcher.match(images[0], [])


def test_tokenizer_tensors_are_its_arrays(matcher):
    texts = ["a red square", "two green circles on the left of a very long sentence"]
    for kw in ({"first": "enc"}, {"first": "dec", "max_length": 6, "padding": "max_length", "add_sep": False}):
        ids, mask = matcher.tokenizer(texts, **kw)
        a_ids, a_mask = matcher.tokenizer.arrays(texts, **kw)
        assert ids.dtype == torch.long and a_ids.dtype == np.int64
        assert np.array_equal(ids.numpy(), a_ids) and np.array_equal(mask.numpy(), a_mask)
    assert a_ids.shape == (2, 6) and a_ids[0, 0] == matcher.tokenizer.dec_id and a_mask[0].sum() == 4


def test_wrong_task_and_foreign_features(captioner, vqa, matcher, images):
    with pytest.raises(WrongTaskError, match="answer"):
        captioner.answer(images[0], "what is it?")
    with pytest.raises(WrongTaskError):
        vqa.caption(images[0])
    with pytest.raises(WrongTaskError):
        captioner.match(images[0], ["x"])
    f = vqa.encode_image(images[0])
    with pytest.raises(BadInputError, match="another model"):
        captioner.caption(f)


def test_save_and_export_round_trip(captioner, images, tmp_path):
    ref = captioner.caption(images[0], max_new_tokens=8, num_beams=3)
    save(captioner.model, tmp_path / "ours", captioner.tokenizer)
    again = blip_core.load(tmp_path / "ours")
    assert again.report.format == "blipcam"
    assert again.caption(images[0], max_new_tokens=8, num_beams=3).token_ids == ref.token_ids
    export_hf(captioner.model, tmp_path / "hf", captioner.tokenizer)
    back = blip_core.load(tmp_path / "hf")
    assert back.report.format == "hf" and not back.report.unexpected
    assert back.caption(images[0], max_new_tokens=8, num_beams=3).token_ids == ref.token_ids
    from transformers import BlipForConditionalGeneration

    hf = BlipForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    px = pixel_values(images[0], captioner.image_size)
    ids = torch.tensor([[101] + captioner.tokenizer.prompt_ids("a picture of ")[1:] + [102]])
    out = hf.generate(pixel_values=px, input_ids=ids, max_new_tokens=8, num_beams=3)[0, 4:].tolist()
    assert out[: len(ref.token_ids)] == list(ref.token_ids)


def test_task_restriction_reports_unused_parts(tmp_path, hf_dirs, images):
    m = blip_core.load(hf_dirs["vqa"], task="vqa")
    assert m.tasks == {"vqa"}
    with pytest.raises(CheckpointError, match="no weights for caption"):
        blip_core.load(hf_dirs["vqa"], task="caption")
    with pytest.raises(BadInputError):
        blip_core.load(hf_dirs["vqa"], task="paint")


def test_bad_arguments_to_load(hf_dirs):
    with pytest.raises(BadInputError):
        blip_core.load(hf_dirs["caption"], precision="fp8")
    with pytest.raises(BadInputError):
        blip_core.load(hf_dirs["caption"], threads=0)


def test_offline_hub_id_fails_fast(monkeypatch, tmp_path):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    t0 = time.time()
    with pytest.raises(WeightsUnavailableError, match="cannot be reached"):
        blip_core.load("Salesforce/blip-image-captioning-base")
    assert time.time() - t0 < 10


def test_warmup_after_our_saver_and_with_grad_parameters(vqa, tmp_path, images):
    """Parameters that require grad (a model straight from training) never meet inference tensors."""
    save(vqa.model, tmp_path / "v", vqa.tokenizer)
    m = blip_core.load(tmp_path / "v")  # warm-up runs every task
    for p in m.model.parameters():
        p.requires_grad_(True)
    assert m.answer(images[0], "what is it?", max_new_tokens=3).text is not None
    assert m.answer(images[0], "what is it?", answers=["a", "b"]).ranked


def test_importing_errors_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, blip_core, blip_core.errors, blip_core.results; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_half_precision_storage(captioner, images, tmp_path):
    save(captioner.model, tmp_path / "half", captioner.tokenizer, dtype=torch.float16)
    full = (tmp_path / "half" / "model.safetensors").stat().st_size
    m = blip_core.load(tmp_path / "half")
    assert next(m.model.parameters()).dtype == torch.float32  # computed in fp32
    save(captioner.model, tmp_path / "full", captioner.tokenizer)
    assert full < 0.6 * (tmp_path / "full" / "model.safetensors").stat().st_size
    assert isinstance(m.caption(images[0], max_new_tokens=4).text, str)
