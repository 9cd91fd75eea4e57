"""Streaming decodes: ``generate(on_token=...)`` reports the tokens so far after every step (greedy and
nucleus: the first sequence; beam: the best running beam), raising from it stops decoding, and the
public ``caption``/``answer``/``generate`` of BLIP and BLIP-2 pass the text so far to ``on_text``
without changing their results."""

from __future__ import annotations

import numpy as np
import pytest

import blip_core
from blip_core.generation import DecodingOptions, generate
from tests.helpers import save_blip2_hf, tiny_blip2_hf

V, EOS = 12, 11


class ScriptedDecoder:
    """Next-token logits that favour ``(last token + 1) % 10`` and end with EOS after ``length``
    tokens; counts its steps, so a test sees when decoding stopped."""

    def __init__(self, length: int = 6):
        self.length, self.steps, self.rows = length, 0, None

    def _logits(self, last: np.ndarray, produced: int) -> np.ndarray:
        logits = np.zeros((len(last), V), np.float32)
        logits[np.arange(len(last)), (last + 1) % 10] = 5.0
        logits[np.arange(len(last)), (last + 2) % 10] = 4.0  # a runner-up, so beams differ
        if produced >= self.length:
            logits[:, EOS] = 10.0
        return logits

    def start(self, prompt_ids, group):
        self.produced = 0
        return self._logits(np.repeat(prompt_ids[:, -1], group), 0)

    def step(self, tokens, rows):
        self.steps += 1
        self.produced += 1
        return self._logits(np.asarray(tokens), self.produced)


@pytest.mark.parametrize("strategy", ["greedy", "nucleus"])
def test_each_token_is_reported_and_the_last_report_is_the_result(strategy):
    seen = []
    opts = DecodingOptions.build(strategy, max_new_tokens=20, top_p=0.5, seed=1)
    hyp = generate(ScriptedDecoder(), np.array([[3]]), opts, eos_id=EOS, on_token=seen.append)[0][0]
    assert [len(s) for s in seen] == list(range(1, len(hyp.tokens) + 1))  # one report per new token
    assert all(seen[i + 1][: i + 1] == seen[i] for i in range(len(seen) - 1))  # each extends the last
    assert seen[-1] == hyp.tokens and hyp.tokens[-1] == EOS
    assert hyp == generate(ScriptedDecoder(), np.array([[3]]), opts, eos_id=EOS)[0][0]  # same without it


def test_beam_search_reports_the_best_running_beam_each_step():
    seen = []
    opts = DecodingOptions.build("beam", num_beams=3, max_new_tokens=20)
    hyps = generate(ScriptedDecoder(), np.array([[3]]), opts, eos_id=EOS, on_token=seen.append)[0]
    assert [len(s) for s in seen] == list(range(1, len(seen) + 1))
    assert seen[0] == (4,)  # the likeliest first token
    assert hyps[0].tokens[:-1] == seen[len(hyps[0].tokens) - 2]  # the winner was the leading beam
    assert hyps == generate(ScriptedDecoder(), np.array([[3]]), opts, eos_id=EOS)[0]


class Stop(Exception):
    pass


def test_raising_from_the_callback_stops_decoding():
    decoder = ScriptedDecoder(length=50)

    def stop_after_three(tokens):
        if len(tokens) == 3:
            raise Stop

    with pytest.raises(Stop):
        generate(decoder, np.array([[3]]), DecodingOptions.build("greedy", max_new_tokens=40), eos_id=EOS,
                 on_token=stop_after_three)
    assert decoder.steps == 2  # start + 2 steps gave 3 tokens; no step after the stop


def test_blip_caption_and_answer_stream_their_text(hf_dirs, images):
    captioner = blip_core.load(hf_dirs["caption"], warmup=False)
    assert captioner.streams_text
    texts = []
    result = captioner.caption(images[0], max_new_tokens=8, min_new_tokens=8, on_text=texts.append)
    assert len(texts) == len(result.token_ids) and texts[-1] == result.text
    assert captioner.caption(images[0], max_new_tokens=8, min_new_tokens=8).text == result.text

    answerer = blip_core.load(hf_dirs["vqa"], warmup=False)
    answers = []
    answer = answerer.answer(images[0], "what is it?", max_new_tokens=5, min_new_tokens=5, on_text=answers.append)
    assert len(answers) == len(answer.token_ids) and answers[-1] == answer.text

    with pytest.raises(Stop):  # an abandoned caption propagates the callback's exception
        captioner.caption(images[1], on_text=lambda text: (_ for _ in ()).throw(Stop()))


def test_blip2_caption_and_answer_stream_their_text(tmp_path, images):
    model = blip_core.load(save_blip2_hf(tiny_blip2_hf("opt", seed=0), tmp_path / "opt", "opt"), warmup=False)
    assert model.streams_text
    texts = []
    result = model.caption(images[0], max_new_tokens=6, min_new_tokens=6, on_text=texts.append)
    assert len(texts) == 6 and texts[-1] == result.text
    answers = []
    answer = model.answer(images[0], "what is it?", max_new_tokens=4, min_new_tokens=4, on_text=answers.append)
    assert len(answers) == 4 and answers[-1] == answer.text
    beams = []
    model.generate(images[0], "a photo of", max_new_tokens=4, min_new_tokens=4, num_beams=2, on_text=beams.append)
    assert len(beams) == 4
