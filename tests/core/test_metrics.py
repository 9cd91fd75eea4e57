"""Tests of blip_core.metrics with small hand-computed cases."""

from __future__ import annotations

import builtins
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from blip_core.errors import BadInputError
from blip_core.metrics import caption_scores, normalize_caption, recall_at_k, vqa_accuracy

# --------------------------------------------------------------------------------------------
# normalize_caption
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A Dog's  ball!", "a dogs ball"),
        ("  Two cats, sitting\ton a sofa.\n", "two cats sitting on a sofa"),
        ("black-and-white photo (old)", "black and white photo old"),
        ("snake_case ... ?!", "snake case"),
        ("", ""),
    ],
)
def test_normalize_caption(text, expected):
    assert normalize_caption(text) == expected


def test_normalize_caption_refuses_non_strings():
    with pytest.raises(BadInputError, match="must be a str"):
        normalize_caption(None)


# --------------------------------------------------------------------------------------------
# caption_scores
# --------------------------------------------------------------------------------------------

needs_coco = pytest.mark.skipif(importlib.util.find_spec("pycocoevalcap") is None, reason="pycocoevalcap not installed")

REFS = {
    1: ["a dog runs on the grass", "a brown dog running in a field"],
    2: ["a cat sleeps on a red sofa", "a cat lying on a couch"],
    3: ["a plane flies in the blue sky"],
}


@needs_coco
def test_bleu4_of_exact_match_with_single_reference_is_one():
    scores = caption_scores({"a": "a man rides a red bike"}, {"a": ["a man rides a red bike"]})
    # pycocoevalcap adds 1e-15 / 1e-9 smoothing constants, hence not exactly 1.
    assert scores["bleu4"] == pytest.approx(1.0, abs=1e-6)


@needs_coco
def test_identical_captions_beat_unrelated_ones():
    identical = caption_scores({k: v[0] for k, v in REFS.items()}, REFS)
    unrelated_captions = {1: "a plate of pasta", 2: "two trains at a station", 3: "people skiing down a hill"}
    unrelated = caption_scores(unrelated_captions, REFS)
    assert identical["cider"] > unrelated["cider"] and identical["bleu4"] > unrelated["bleu4"]
    assert identical["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert unrelated["bleu4"] < 1e-6


@needs_coco
def test_normalisation_is_applied_before_scoring():
    plain = caption_scores({k: v[0] for k, v in REFS.items()}, REFS)
    shouty = caption_scores({k: v[0].upper() + "!" for k, v in REFS.items()}, REFS)
    assert shouty == plain


@needs_coco
def test_cider_is_zero_on_a_single_image():
    # IDF over one reference set is log(1/1) = 0 for every n-gram: CIDEr needs a corpus.
    assert caption_scores({1: "a dog"}, {1: ["a dog"]})["cider"] == 0.0


@needs_coco
def test_empty_predictions_score_zero():
    empty = caption_scores({k: "" for k in REFS}, REFS)
    assert empty == {"bleu4": pytest.approx(0.0, abs=1e-9), "cider": 0.0}
    only_punctuation = caption_scores({1: "...", 2: "a cat on a couch", 3: "!"}, REFS)
    assert only_punctuation["cider"] > 0


@pytest.mark.parametrize(
    "predictions, references, message",
    [
        ({}, {}, "no predictions"),
        ({1: "a dog"}, {2: ["a dog"]}, "same ids.*no references.*no prediction"),
        ({1: "a dog", 2: "a cat"}, {1: ["a dog"]}, r"1 prediction id\(s\) have no references \(e.g. \[2\]\)"),
        ({1: "a dog"}, {1: []}, "non-empty list"),
        ({1: "a dog"}, {1: ["a dog", "?!"]}, "reference 1 for id 1 is empty"),
        ({1: 5}, {1: ["a dog"]}, "prediction for id 1 must be a str"),
        ({1: "a dog"}, {1: [None]}, "reference 0 for id 1 must be a str"),
        (["a dog"], {0: ["a dog"]}, "expects dicts"),
    ],
)
def test_caption_scores_bad_inputs(predictions, references, message):
    with pytest.raises(BadInputError, match=message):
        caption_scores(predictions, references)


@needs_coco
def test_a_bare_string_reference_counts_as_one():
    assert caption_scores({1: "a dog"}, {1: "a dog"}) == caption_scores({1: "a dog"}, {1: ["a dog"]})


def test_missing_pycocoevalcap_gives_an_install_hint(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("pycocoevalcap"):
            raise ImportError("No module named 'pycocoevalcap'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(BadInputError, match="pip install pycocoevalcap"):
        caption_scores({1: "a dog"}, {1: ["a dog"]})


# --------------------------------------------------------------------------------------------
# vqa_accuracy
# --------------------------------------------------------------------------------------------


def test_vqa_single_gold_string_exact_match():
    assert vqa_accuracy(["yes"], ["yes"]) == 1.0
    assert vqa_accuracy(["no"], ["yes"]) == 0.0
    assert vqa_accuracy(["yes", "no"], ["yes", "yes"]) == 0.5
    assert vqa_accuracy(["yes"], [["yes"]]) == 1.0  # a one-element list is a single gold answer


@pytest.mark.parametrize(
    "matching, expected",
    [
        # Official: average over the 10 leave-one-out subsets of min(#matches among 9 / 3, 1).
        (0, 0.0),
        (1, 0.3),  # 9 subsets keep the match: 9 * (1/3) / 10
        (2, 0.6),  # 8 subsets with 2 matches (2/3), 2 with 1 (1/3): (16/3 + 2/3) / 10
        (3, 0.9),  # 7 subsets with 3 (1.0), 3 with 2 (2/3): (7 + 2) / 10
        (4, 1.0),  # every subset keeps at least 3 matches
        (10, 1.0),
    ],
)
def test_vqa_ten_annotators(matching, expected):
    gold = ["blue"] * matching + ["green"] * (10 - matching)
    assert vqa_accuracy(["blue"], [gold]) == pytest.approx(expected)


@pytest.mark.parametrize(
    "prediction, gold",
    [
        ("two", "2"),  # number words -> digits
        ("Two", "2"),
        ("none", "0"),
        ("the dog", "dog"),  # articles removed
        ("a red car", "red car"),
        ("yes.", "yes"),  # sentence period stripped ...
        ("3.5", "3.5"),  # ... but not a decimal point
        ("1,000", "1000"),  # digit-group commas removed
        ("hot-dog", "hot dog"),  # punctuation between words becomes a space
        ("dont", "don't"),  # contractions
        (" yes\n", "yes"),
        ("Yes!", "yes"),
    ],
)
def test_vqa_answer_normalisation(prediction, gold):
    assert vqa_accuracy([prediction], [gold]) == 1.0


def test_vqa_gold_answers_are_normalised_too():
    assert vqa_accuracy(["2"], [["Two"] * 3 + ["three"] * 7]) == pytest.approx(0.9)


def test_vqa_mean_over_questions():
    predictions = ["2", "blue", "cat"]
    answers = ["two", ["blue"] * 3 + ["green"] * 7, ["dog"] * 10]
    assert vqa_accuracy(predictions, answers) == pytest.approx((1.0 + 0.9 + 0.0) / 3)


@pytest.mark.parametrize(
    "predictions, answers, message",
    [
        ([], [], "no predictions"),
        (["yes"], [], "1 predictions but 0 answer lists"),
        (["yes"], [[]], "non-empty list"),
        (["yes"], [[1, 2]], "non-empty list of str"),
        ([None], ["yes"], "prediction 0 must be a str"),
        ("yes", ["yes"], "expects lists"),
    ],
)
def test_vqa_bad_inputs(predictions, answers, message):
    with pytest.raises(BadInputError, match=message):
        vqa_accuracy(predictions, answers)


# --------------------------------------------------------------------------------------------
# recall_at_k
# --------------------------------------------------------------------------------------------

# 3 images x 4 texts; image 1 has two captions (texts 1 and 2).
SIM = np.array(
    [
        [0.9, 0.1, 0.2, 0.3],
        [0.8, 0.7, 0.1, 0.75],
        [0.6, 0.5, 0.4, 0.2],
    ]
)
IMG2TXT = [[0], [1, 2], [3]]
TXT2IMG = [0, 1, 1, 2]
# Worked out by hand (ranks are 0-based = number of wrong candidates scoring higher):
# image -> text (rows), rank of the best correct text:
#   image 0: correct {0}: 0.9 is the row maximum                         -> rank 0
#   image 1: correct {1, 2}: best 0.7; wrong texts above: 0.8, 0.75        -> rank 2
#   image 2: correct {3}: 0.2; wrong texts above: 0.6, 0.5, 0.4            -> rank 3
#   R@1 = 1/3, R@2 = 1/3, R@3 = 2/3, R@5 = R@10 = 3/3
# text -> image (columns), rank of its image:
#   text 0: column (0.9, 0.8, 0.6), image 0 = 0.9                         -> rank 0
#   text 1: column (0.1, 0.7, 0.5), image 1 = 0.7                         -> rank 0
#   text 2: column (0.2, 0.1, 0.4), image 1 = 0.1, below 0.2 and 0.4      -> rank 2
#   text 3: column (0.3, 0.75, 0.2), image 2 = 0.2, below 0.3 and 0.75   -> rank 2
#   R@1 = 2/4, R@2 = 2/4, R@3 = 4/4, R@5 = R@10 = 4/4


def test_recall_hand_computed_default_ks():
    r = recall_at_k(SIM, IMG2TXT, TXT2IMG)
    assert r["txt_r1"] == pytest.approx(100 / 3)
    assert r["txt_r5"] == r["txt_r10"] == 100.0
    assert r["img_r1"] == 50.0
    assert r["img_r5"] == r["img_r10"] == 100.0
    assert r["txt_r_mean"] == pytest.approx((100 / 3 + 200) / 3)
    assert r["img_r_mean"] == pytest.approx(250 / 3)
    assert r["r_mean"] == pytest.approx((r["txt_r_mean"] + r["img_r_mean"]) / 2)


def test_recall_hand_computed_custom_ks():
    r = recall_at_k(torch.tensor(SIM), IMG2TXT, TXT2IMG, ks=(1, 2, 3))
    assert [r["txt_r1"], r["txt_r2"], r["txt_r3"]] == pytest.approx([100 / 3, 100 / 3, 200 / 3])
    assert [r["img_r1"], r["img_r2"], r["img_r3"]] == pytest.approx([50.0, 50.0, 100.0])


def blip_itm_eval(scores_i2t, scores_t2i, txt2img, img2txt):
    """BLIP's train_retrieval.itm_eval, kept as close to the original as possible (oracle)."""
    ranks = np.zeros(scores_i2t.shape[0])
    for index, score in enumerate(scores_i2t):
        inds = np.argsort(score)[::-1]
        rank = 1e20
        for i in img2txt[index]:
            tmp = np.where(inds == i)[0][0]
            if tmp < rank:
                rank = tmp
        ranks[index] = rank
    tr1, tr5, tr10 = (100.0 * len(np.where(ranks < k)[0]) / len(ranks) for k in (1, 5, 10))
    ranks = np.zeros(scores_t2i.shape[0])
    for index, score in enumerate(scores_t2i):
        inds = np.argsort(score)[::-1]
        ranks[index] = np.where(inds == txt2img[index])[0][0]
    ir1, ir5, ir10 = (100.0 * len(np.where(ranks < k)[0]) / len(ranks) for k in (1, 5, 10))
    tr_mean, ir_mean = (tr1 + tr5 + tr10) / 3, (ir1 + ir5 + ir10) / 3
    return {
        "txt_r1": tr1, "txt_r5": tr5, "txt_r10": tr10, "txt_r_mean": tr_mean,
        "img_r1": ir1, "img_r5": ir5, "img_r10": ir10, "img_r_mean": ir_mean,
        "r_mean": (tr_mean + ir_mean) / 2,
    }  # fmt: skip


@pytest.mark.parametrize("seed", range(3))
def test_recall_matches_blip_without_ties(seed):
    rng = np.random.default_rng(seed)
    n_images, per_image = 40, 5
    txt2img = np.repeat(np.arange(n_images), per_image).tolist()
    img2txt = [list(range(i * per_image, (i + 1) * per_image)) for i in range(n_images)]
    sim = rng.normal(size=(n_images, n_images * per_image)).astype(np.float32)
    sim[np.array(txt2img), np.arange(len(txt2img))] += 1.5  # a decent but imperfect model
    expected = blip_itm_eval(sim, sim.T, txt2img, img2txt)
    assert recall_at_k(sim, img2txt, txt2img) == pytest.approx(expected)
    assert recall_at_k(torch.from_numpy(sim).bfloat16(), img2txt, txt2img).keys() == expected.keys()


def test_ties_are_pessimistic():
    r = recall_at_k(np.zeros((3, 4)), IMG2TXT, TXT2IMG, ks=(1,))
    assert r["txt_r1"] == 0.0 and r["img_r1"] == 0.0
    # Two correct texts tied at the top still count as a hit: only wrong texts rank above.
    r = recall_at_k(np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), [[0, 1], [2]], [0, 0, 1], ks=(1,))
    assert r["txt_r1"] == 100.0


@pytest.mark.parametrize(
    "sim, img2txt, txt2img, ks, message",
    [
        (np.zeros((3,)), IMG2TXT, TXT2IMG, (1,), r"\[n_images, n_texts\]"),
        (np.zeros((0, 4)), [], TXT2IMG, (1,), "non-empty"),
        (SIM, IMG2TXT[:2], TXT2IMG, (1,), "img2txt has 2 entries but sim has 3 rows"),
        (SIM, IMG2TXT, TXT2IMG[:3], (1,), "txt2img has 3 entries but sim has 4 columns"),
        (SIM, [[0], [1, 2], []], TXT2IMG, (1,), "image 2 has no correct text"),
        (SIM, [[0], [1, 2], [4]], TXT2IMG, (1,), r"outside 0\.\.3"),
        (SIM, IMG2TXT, [0, 1, 2, 2], (1,), "disagree on 1 text.*text 2"),
        (SIM, IMG2TXT, TXT2IMG, (0,), "positive ints"),
        (SIM, IMG2TXT, TXT2IMG, 5, "positive ints"),
        (np.where(SIM > 0.7, np.nan, SIM), IMG2TXT, TXT2IMG, (1,), "NaN"),
        ([[0.1, 0.2]], [[0]], [0, 0], (1,), "torch.Tensor or numpy"),
    ],
)
def test_recall_bad_inputs(sim, img2txt, txt2img, ks, message):
    with pytest.raises(BadInputError, match=message):
        recall_at_k(sim, img2txt, txt2img, ks=ks)


def test_metrics_never_import_torch():
    """The int8 path runs without torch: importing the metrics and scoring numpy must not load it."""
    code = (
        "import sys; import numpy as np; from blip_core.metrics import recall_at_k, vqa_accuracy; "
        "recall_at_k(np.eye(2), [[0], [1]], [0, 1], ks=(1,)); vqa_accuracy(['two'], [['two']]); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
