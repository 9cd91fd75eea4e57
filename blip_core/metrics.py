"""Evaluation metrics as BLIP reports them: captioning (BLEU-4, CIDEr), VQA accuracy, retrieval recall.

Every malformed argument raises :class:`~blip_core.errors.BadInputError` with a message saying
what is wrong and where (which id / index).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from blip_core.errors import BadInputError

if TYPE_CHECKING:
    import torch

__all__ = ["caption_scores", "normalize_caption", "recall_at_k", "vqa_accuracy"]

# --------------------------------------------------------------------------------------------
# Captioning
# --------------------------------------------------------------------------------------------

_APOSTROPHES = re.compile(r"['\u2019`]")
_PUNCTUATION = re.compile(r"[^\w\s]|_")  # any non-word character; \w alone would keep "_"


def normalize_caption(text: str) -> str:
    """Lower-case, strip punctuation, collapse whitespace: ``"A Dog's  ball!"`` -> ``"a dogs ball"``.

    A light stand-in for the PTB tokenizer that the COCO caption evaluation runs first (it needs
    Java). Differences: PTB splits clitics (``dog's`` -> ``dog 's``) where we drop the apostrophe
    (``dogs``), and PTB keeps hyphenated words whole (``black-and-white``) where we split them.
    Scores are therefore close to, not identical with, the official numbers.
    """
    if not isinstance(text, str):
        raise BadInputError(f"a caption must be a str, got {type(text).__name__}: {text!r}")
    text = _APOSTROPHES.sub("", text.lower())
    return " ".join(_PUNCTUATION.sub(" ", text).split())


def caption_scores(predictions: Mapping[Any, str], references: Mapping[Any, Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-4 and CIDEr(-D) of ``predictions`` against ``references``, via pycocoevalcap.

    Args:
        predictions: ``{id: caption}``, one generated caption per image.
        references: ``{id: [caption, ...]}``, one or more human captions per image (a bare str
            counts as one reference). Ids must be exactly those of ``predictions``.

    Returns:
        ``{"bleu4": float, "cider": float}`` on pycocoevalcap's scales (BLEU in [0, 1]; CIDEr
        around 0..10, BLIP papers print it x100). Both captions and references go through
        :func:`normalize_caption` first.

    Notes:
        CIDEr weights n-grams by inverse document frequency over the *reference set*, so it is
        only meaningful on a corpus: with a single image every weight is log(1/1) = 0 and the
        score is 0. An empty prediction is allowed (it scores 0); an empty reference is an error.
    """
    gts, res = _caption_inputs(predictions, references)
    bleu_cls, cider_cls = _import_scorers()
    bleu, _ = bleu_cls(4).compute_score(gts, res, verbose=0)  # verbose=0: it prints otherwise
    cider, _ = cider_cls().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider": float(cider)}


def _caption_inputs(predictions: Mapping, references: Mapping) -> tuple[dict, dict]:
    """Validate and normalise into pycocoevalcap's layout: ``gts {id: [ref, ...]}``, ``res {id: [pred]}``."""
    if not isinstance(predictions, Mapping) or not isinstance(references, Mapping):
        raise BadInputError(
            "caption_scores expects dicts: predictions {id: caption}, references {id: [caption, ...]}, "
            f"got {type(predictions).__name__} and {type(references).__name__}"
        )
    if not predictions:
        raise BadInputError("caption_scores got no predictions: pass at least one {id: caption}")
    _check_same_ids(predictions, references)
    res = {k: [normalize_caption(_caption(v, f"prediction for id {k!r}"))] for k, v in predictions.items()}
    gts = {k: _reference_list(k, references[k]) for k in predictions}
    return gts, res


def _check_same_ids(predictions: Mapping, references: Mapping) -> None:
    missing = [k for k in predictions if k not in references]
    extra = [k for k in references if k not in predictions]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} prediction id(s) have no references (e.g. {missing[:3]!r})")
        if extra:
            parts.append(f"{len(extra)} reference id(s) have no prediction (e.g. {extra[:3]!r})")
        raise BadInputError("predictions and references must have the same ids: " + "; ".join(parts))


def _caption(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadInputError(f"the {what} must be a str, got {type(value).__name__}: {value!r}")
    return value


def _reference_list(key: Any, refs: Any) -> list[str]:
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, Sequence) or not refs:
        raise BadInputError(f"references for id {key!r} must be a non-empty list of captions, got {refs!r}")
    out = [normalize_caption(_caption(r, f"reference {i} for id {key!r}")) for i, r in enumerate(refs)]
    for i, ref in enumerate(out):
        # An empty reference is a data bug; it also crashes pycocoevalcap's CIDEr when all are empty.
        if not ref:
            raise BadInputError(f"reference {i} for id {key!r} is empty after normalisation: {refs[i]!r}")
    return out


def _import_scorers():
    # Lazy: pycocoevalcap is a training/evaluation extra, not a runtime dependency.
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as e:
        raise BadInputError(
            "caption_scores needs pycocoevalcap: pip install pycocoevalcap "
            "(or install this project with the [train] extra)"
        ) from e
    return Bleu, Cider


# --------------------------------------------------------------------------------------------
# VQA
# --------------------------------------------------------------------------------------------

# Answer normalisation of the official VQA evaluation (GT-Vision-Lab/VQA, vqaEval.py), unchanged.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
_VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The official pattern is "(?!<=\d)(\.)(?!\d)"; its "(?!<=\d)" is a (typo'd) look-ahead that never
# blocks, so it removes every period not followed by a digit ("3.5" survives, "yes." loses it).
_PERIOD_STRIP = re.compile(r"\.(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# A single gold string stands for unanimous annotators: VQAv2 collects 10 answers per question.
_VQA_ANNOTATORS = 10


def _vqa_punctuation(text: str) -> str:
    """Official ``processPunctuation``: drop or space out punctuation, strip sentence periods.

    A mark is deleted when it touches a space somewhere in the text (or the text has a digit
    group like "1,000"), else replaced by a space: "hot-dog" -> "hot dog", "yes !" -> "yes ".
    """
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for p in _VQA_PUNCT:
        if p + " " in text or " " + p in text or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _vqa_digits_articles(text: str) -> str:
    """Official ``processDigitArticle``: lower-case, number words -> digits, drop a/an/the, add
    apostrophes to known contractions ("dont" -> "don't")."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def _normalize_vqa_answer(answer: str) -> str:
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _vqa_digits_articles(_vqa_punctuation(answer))


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Union[Sequence[str], str]]) -> float:
    """Mean VQAv2 accuracy in [0, 1] of ``predictions[i]`` against the human ``answers[i]``.

    Per question, as the official evaluation computes it: each of the n human answers is left out
    in turn, the prediction scores ``min(#matches among the other n - 1 / 3, 1)``, and the n scores
    are averaged (the "average over all 10 choose 9 annotator subsets"). With 10 answers, matching
    0/1/2/3/4+ of them scores 0/0.3/0.6/0.9/1.0. Note that this is not the plain
    ``min(#matches / 3, 1)`` (0/0.33/0.67/1/1), which runs up to 0.1 higher per question.

    A single gold string (or a one-element list, for which leave-one-out would always give 0)
    stands for unanimous annotators: an exact match scores 1.0, anything else 0.0.

    Predictions and gold answers both get the official answer normalisation (punctuation,
    lower-case, number words -> digits, articles a/an/the removed, contractions). The official
    script normalises gold answers less (punctuation only, and only when annotators disagree)
    because VQAv2's stored answers are already normalised; on VQAv2 the results are the same.
    """
    _check_vqa_inputs(predictions, answers)
    scores = [
        _vqa_score(_normalize_vqa_answer(pred), _gold_list(gold, i))
        for i, (pred, gold) in enumerate(zip(predictions, answers))
    ]
    return float(np.mean(scores))


def _check_vqa_inputs(predictions: Sequence[str], answers: Sequence) -> None:
    if isinstance(predictions, str) or isinstance(answers, str):
        raise BadInputError("vqa_accuracy expects lists: predictions [str, ...] and answers [[str, ...] or str, ...]")
    if len(predictions) != len(answers):
        raise BadInputError(f"vqa_accuracy got {len(predictions)} predictions but {len(answers)} answer lists")
    if len(predictions) == 0:
        raise BadInputError("vqa_accuracy got no predictions: pass at least one question")
    for i, p in enumerate(predictions):
        if not isinstance(p, str):
            raise BadInputError(f"prediction {i} must be a str, got {type(p).__name__}: {p!r}")


def _gold_list(gold: Union[Sequence[str], str], index: int) -> list[str]:
    """Normalised human answers of one question; a single answer becomes 10 identical ones."""
    if isinstance(gold, str):
        gold = [gold]
    if not isinstance(gold, Sequence) or not gold or not all(isinstance(g, str) for g in gold):
        raise BadInputError(f"answers[{index}] must be a str or a non-empty list of str, got {gold!r}")
    normalized = [_normalize_vqa_answer(g) for g in gold]
    return normalized * _VQA_ANNOTATORS if len(normalized) == 1 else normalized


def _vqa_score(prediction: str, gold: list[str]) -> float:
    matches = sum(g == prediction for g in gold)
    # Leaving out annotator k removes one match iff k's answer matched.
    per_left_out = [min((matches - (g == prediction)) / 3.0, 1.0) for g in gold]
    return sum(per_left_out) / len(per_left_out)


# --------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------


def recall_at_k(
    sim: torch.Tensor | np.ndarray,
    img2txt: Sequence[Sequence[int]],
    txt2img: Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Image<->text retrieval recall in percent, as BLIP's ``itm_eval`` computes it.

    Args:
        sim: ``[n_images, n_texts]`` scores, higher = more similar (ITC cosine or ITM scores).
        img2txt: for each image, the indices of its correct texts (COCO/Flickr: 5 captions).
        txt2img: for each text, the index of its image. Must agree with ``img2txt``.
        ks: the cut-offs.

    Returns:
        ``{"txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "txt_r_mean",
        "img_r_mean", "r_mean"}`` (one ``txt_r{k}``/``img_r{k}`` per k). ``txt_r{k}`` is image->text:
        % of images whose best-ranked correct text is in the top k; ``img_r{k}`` is text->image:
        % of texts whose image is in the top k; ``r_mean`` is the mean of the two means.

    Ties: a wrong candidate that ties with the right one is ranked above it (pessimistic), so a
    constant score matrix gets R@1 = 0 rather than 100. BLIP's ``argsort`` leaves tie order
    unspecified; without ties the results are identical.
    """
    scores = _as_score_matrix(sim)
    n_images, n_texts = scores.shape
    ks = _check_ks(ks)
    correct, own_image = _check_mapping(img2txt, txt2img, n_images, n_texts)
    txt_ranks, img_ranks = _ranks(scores, correct, own_image)
    result = {}
    for name, ranks in (("txt", txt_ranks), ("img", img_ranks)):
        for k in ks:
            result[f"{name}_r{k}"] = 100.0 * float(np.mean(ranks < k))
        result[f"{name}_r_mean"] = float(np.mean([result[f"{name}_r{k}"] for k in ks]))
    result["r_mean"] = (result["txt_r_mean"] + result["img_r_mean"]) / 2
    return result


def _as_score_matrix(sim: torch.Tensor | np.ndarray) -> np.ndarray:
    # A tensor exists only if its caller imported torch, so a metric never imports it (the int8
    # path promises no torch, and importing it takes seconds on a Pi).
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(sim, torch.Tensor):
        # float32 keeps a 5k x 25k COCO matrix at 0.5 GB; bf16/fp16 cannot go to numpy directly.
        sim = sim.detach().cpu()
        sim = (sim if sim.dtype in (torch.float32, torch.float64) else sim.float()).numpy()
    if not isinstance(sim, np.ndarray):
        raise BadInputError(f"sim must be a torch.Tensor or numpy array, got {type(sim).__name__}")
    if sim.ndim != 2 or sim.shape[0] == 0 or sim.shape[1] == 0:
        raise BadInputError(f"sim must be a non-empty [n_images, n_texts] matrix, got shape {sim.shape}")
    if not (np.issubdtype(sim.dtype, np.floating) or np.issubdtype(sim.dtype, np.integer)):
        raise BadInputError(f"sim must hold numbers, got dtype {sim.dtype}")
    if np.issubdtype(sim.dtype, np.floating) and np.isnan(sim).any():
        raise BadInputError("sim contains NaN: ranks would be undefined; check the model outputs")
    return sim


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    def positive_int(k: Any) -> bool:
        return isinstance(k, Integral) and not isinstance(k, bool) and k > 0

    if isinstance(ks, (int, str)) or not ks or not all(positive_int(k) for k in ks):
        raise BadInputError(f"ks must be a non-empty list of positive ints such as (1, 5, 10), got {ks!r}")
    return tuple(int(k) for k in ks)


def _check_mapping(img2txt, txt2img, n_images: int, n_texts: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Validate the ground truth; returns (correct text indices per image, image index per text)."""
    if len(img2txt) != n_images:
        raise BadInputError(f"img2txt has {len(img2txt)} entries but sim has {n_images} rows (images)")
    if len(txt2img) != n_texts:
        raise BadInputError(f"txt2img has {len(txt2img)} entries but sim has {n_texts} columns (texts)")
    own_image = _index_array(txt2img, n_images, "txt2img")
    expected = np.full(n_texts, -1)
    correct = []
    for i, texts in enumerate(img2txt):
        idx = _index_array(texts, n_texts, f"img2txt[{i}]")
        if idx.size == 0:
            raise BadInputError(f"image {i} has no correct text in img2txt: every image needs at least one")
        correct.append(idx)
        expected[idx] = i
    mismatch = np.flatnonzero(expected != own_image)
    if mismatch.size:
        j = int(mismatch[0])
        raise BadInputError(
            f"img2txt and txt2img disagree on {mismatch.size} text(s), e.g. text {j}: txt2img says image "
            f"{int(own_image[j])}, img2txt lists it under image {int(expected[j])} (-1 = none)"
        )
    return correct, own_image


def _index_array(values: Sequence[int], bound: int, what: str) -> np.ndarray:
    try:
        idx = np.asarray(values)
    except (TypeError, ValueError) as e:
        raise BadInputError(f"{what} must be a list of ints, got {values!r}") from e
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise BadInputError(f"{what} must be a flat list of ints, got {values!r}")
    if idx.size and (idx.min() < 0 or idx.max() >= bound):
        raise BadInputError(f"{what} has an index outside 0..{bound - 1}: {values!r}")
    return idx.astype(np.int64)


def _ranks(scores: np.ndarray, correct: list[np.ndarray], own_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks: image->text of each image's best correct text [n_images], text->image of
    each text's image [n_texts]. One pass over the rows keeps memory at O(n_texts)."""
    n_images, n_texts = scores.shape
    own_score = scores[own_image, np.arange(n_texts)]  # [n_texts] score of each text with its image
    img_ranks = np.zeros(n_texts, dtype=np.int64)
    txt_ranks = np.zeros(n_images, dtype=np.int64)
    for i in range(n_images):
        row = scores[i]
        best = row[correct[i]].max()
        # Wrong texts scoring at least the best correct one = texts >= best minus correct ones >= best.
        txt_ranks[i] = np.count_nonzero(row >= best) - np.count_nonzero(row[correct[i]] >= best)
        img_ranks += row >= own_score  # counts the text's own image too, removed below
    return txt_ranks, img_ranks - 1

