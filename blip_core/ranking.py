"""VQA's rank mode: choose an answer from a list instead of generating one (BLIP's ``k_test``).

Works on any model with ``decoder_session`` (our torch ``BlipModel`` or the int8 ``OrtModel``):
arrays are numpy, so ranking with an int8 model never loads torch.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from blip_core.errors import BadInputError
from blip_core.generation import log_softmax
from blip_core.model.limits import MAX_TEXT_TOKENS
from blip_core.tokenizer import BlipTokenizer


def rank_answers(model: Any, tokenizer: BlipTokenizer, kv: Any, q_mask: Any, answers: Sequence[str],
                 k: int) -> list[tuple[str, float]]:
    """The ``answers`` for one question, best first, with their log-likelihoods.

    kv: the answer decoder's cross-attention keys/values over the question states [1, Tq, D]
    (``model.cross_kv("answer_decoder", states)``); q_mask: [1, Tq]. Blank and repeated answers are
    dropped. 1) one decoder step from ``[DEC]``: keep the ``k`` answers whose first token is likeliest;
    2) teacher-force those, all rows sharing the question's keys/values, and sum their log-probabilities.
    Only those ``k`` are returned. (BLIP scores with the label-smoothed loss; plain log-likelihood ranks
    almost identically.)
    """
    answers = [a for a in dict.fromkeys(a.strip() for a in answers if isinstance(a, str)) if a]
    if not answers:
        raise BadInputError("the answer list is empty")
    ids, mask = tokenizer.arrays(answers, first="dec", max_length=MAX_TEXT_TOKENS)  # [A, T]
    session = model.decoder_session("answer_decoder", kv, q_mask)
    first = log_softmax(session.start(ids[:1, :1], group=1))[0]
    top = np.argsort(-first[ids[:, 1]], kind="stable")[: min(k, len(answers))]
    ids, mask = ids[top], mask[top]
    scores = first[ids[:, 1]]
    session = model.decoder_session("answer_decoder", kv, q_mask)
    session.start(ids[:1, :1], group=len(top))
    for t in range(1, ids.shape[1] - 1):
        logp = log_softmax(session.step(ids[:, t], None))
        scores += logp[np.arange(len(top)), ids[:, t + 1]] * mask[:, t + 1]
    order = np.argsort(-scores, kind="stable")
    return [(answers[int(top[i])], float(scores[i])) for i in order]
