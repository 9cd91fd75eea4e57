"""Datasets: text normalisation, JSON / WebDataset / scene sources, bad images, epoch batches,
augmentation defaults, and the scene vocabulary."""

from __future__ import annotations

import io
import json
import random

import pytest
import torch
from PIL import Image

from blip_core import scenes
from blip_core.model.config import preset
from training.data import (
    DatasetError,
    EpochBatches,
    ImageTransform,
    JsonCaptions,
    JsonVqa,
    SceneCaptions,
    SceneVqa,
    WebCaptions,
    answer_weights,
    collate,
    epoch_batches,
    pre_caption,
    pre_question,
    swap_left_right,
    train_transform,
)
from training.make_scenes import write_scene_json, write_scene_shards
from training.vocab import SPECIALS, make_tokenizer, scene_vocab, text_ids


def test_pre_caption_and_pre_question_as_blip():
    assert pre_caption("A man (riding) a horse!!  on the Beach.") == "a man riding a horse on the beach"
    assert pre_caption("one two three four", max_words=2) == "one two"
    assert pre_question("What is the man (riding)?") == "what is the man riding?"
    assert pre_question("Is it a dog...") == "is it a dog"


def test_swap_left_right_only_whole_words():
    assert swap_left_right("a red circle at the top left and a star on the right") == \
        "a red circle at the top right and a star on the left"
    assert swap_left_right("leftover rights") == "leftover rights"


def test_augmentation_defaults_per_dataset():
    # scenes name positions and count objects: no crop, no flip
    assert train_transform(64, "scenes", None, "auto", 0.5) == ImageTransform(64, 1.0, "off")
    assert train_transform(64, "json", None, "auto", 0.5) == ImageTransform(64, 0.5, "on")
    assert train_transform(64, "wds", None, "auto", 0.2) == ImageTransform(64, 0.2, "on")
    assert train_transform(64, "scenes", 0.8, "swap", 0.5) == ImageTransform(64, 0.8, "swap")


def test_flip_swap_keeps_scene_texts_true():
    """With hflip=swap a mirrored scene gets mirrored words: the object at the left of the
    flipped picture is described as on the left."""
    ds = SceneVqa(0, 8, 32, 3, ImageTransform(32, 1.0, "swap"), seed=0)
    seen = 0
    for key in range(40):
        item = ds[key]
        rng = random.Random("/".join(map(str, (0, key, 0))))
        scene = scenes.render(scenes.stream_seed(0, key % 8), 32, 3)
        q, a = rng.choice(scene.qa)
        flipped = rng.random() < 0.5
        if flipped and ("left" in q + a or "right" in q + a):
            assert item["question"] == pre_question(swap_left_right(q)) and item["answers"] == [swap_left_right(a)]
            seen += 1
    assert seen > 0


def test_scene_datasets_are_deterministic_per_key():
    tf = ImageTransform(32)
    ds = SceneCaptions(3, 10, 32, 3, tf, seed=1, captions="web", web_noise=0.5)
    a, b = ds[13], ds[13]
    assert a["caption"] == b["caption"] and torch.equal(a["pixels"], b["pixels"]) and a["image_id"] == 3
    assert a["pixels"].shape == (3, 32, 32)
    clean = SceneCaptions(3, 10, 32, 3, tf, seed=1)
    scene = scenes.render(scenes.stream_seed(3, 4), 32, 3)
    assert clean[4]["caption"] in [pre_caption(c) for c in scene.captions]
    qa = SceneVqa(3, 10, 32, 3, tf)[4]
    assert (qa["question"], qa["answers"][0]) in [(pre_question(q), a) for q, a in scene.qa]


def test_scene_vqa_keeps_to_the_question_kinds_asked_for():
    tf = ImageTransform(32)
    ds = SceneVqa(5, 30, 32, 3, tf, kinds=("position", "shape"))
    assert {scenes.question_kind(ds[k]["question"]) for k in range(30)} == {"position", "shape"}
    # a scene without a question of the kind gives way to the next scene that has one
    sizes = SceneVqa(5, 30, 32, 3, tf, kinds=("size",))
    has_size = [any(scenes.question_kind(q) == "size" for q, _ in scenes.render(scenes.stream_seed(5, k), 32, 3).qa)
                for k in range(30)]
    lacking = has_size.index(False)
    item = sizes[lacking]
    assert scenes.question_kind(item["question"]) == "size"
    assert item["image_id"] == has_size.index(True, lacking)


def test_scene_vqa_can_keep_to_crowded_scenes():
    tf = ImageTransform(32)
    counts = [len(scenes.render(scenes.stream_seed(6, k), 32, 3).objects) for k in range(30)]
    crowded = SceneVqa(6, 30, 32, 3, tf, min_objects=3)
    ids = [crowded[k]["image_id"] for k in range(30)]
    assert all(counts[i] == 3 for i in ids)
    lone = counts.index(1)  # gives way to the next scene of three objects
    assert ids[lone] == next(j for j in range(lone, 30) if counts[j] == 3)
    assert [SceneVqa(6, 30, 32, 3, tf)[k]["image_id"] for k in range(30)] == list(range(30))


@pytest.fixture(scope="module")
def scene_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("json")
    paths = write_scene_json(out, count=6, size=32)
    (out / "images" / "000001.png").write_bytes(b"not a png")  # corrupt
    (out / "images" / "000003.png").unlink()  # missing
    return out, paths


def test_json_captions_skip_bad_images_and_count_them(scene_json):
    out, paths = scene_json
    ds = JsonCaptions(str(paths["captions"]), str(out), ImageTransform(32))
    entries = json.loads(paths["captions"].read_text())
    assert len(ds) == sum(len(e["caption"]) for e in entries)  # one pair per caption
    bad = {ds.files.id("images/000001.png"), ds.files.id("images/000003.png")}
    batch = collate([ds[k] for k in range(len(ds))])
    assert batch["pixels"].shape == (len(ds), 3, 32, 32)
    assert not bad & set(batch["image_ids"].tolist())  # never served
    n_bad_pairs = sum(1 for image_id, _ in ds.pairs if image_id in bad)
    assert batch["skipped"] >= n_bad_pairs > 0


def test_json_vqa_and_answer_weights(scene_json):
    out, paths = scene_json
    ds = JsonVqa(str(paths["vqa"]), str(out), ImageTransform(32))
    item = ds[0]
    assert set(item) >= {"pixels", "question", "answers", "weights", "image_id", "skipped"}
    assert answer_weights(["yes", "yes", "no", "yes"]) == (["yes", "no"], [0.75, 0.25])


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "cannot read"),
    ("[]", "non-empty JSON list"),
    ('[{"caption": "x"}]', 'no "image" path'),
    ('[{"image": "a.png", "question": "q?", "answer": "a"}]', 'no "caption"'),
])
def test_malformed_annotations_are_dataset_errors(tmp_path, content, message):
    path = tmp_path / "ann.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        JsonCaptions(str(path), "", ImageTransform(32))


def test_all_images_unreadable_is_a_clear_error(tmp_path):
    (tmp_path / "ann.json").write_text(json.dumps([{"image": f"{i}.png", "caption": "x"} for i in range(30)]))
    ds = JsonCaptions(str(tmp_path / "ann.json"), str(tmp_path), ImageTransform(32))
    with pytest.raises(DatasetError, match="could not be read"):
        ds[0]


def test_epoch_batches_split_ranks_and_are_reproducible():
    n, B, W = 50, 4, 3
    ranks = [list(EpochBatches(n, B, r, W, seed=0, epoch=2)) for r in range(W)]
    assert all(len(r) == n // (B * W) for r in ranks)  # 4 steps each, remainder dropped
    keys = [k for r in ranks for batch in r for k in batch]
    assert len(keys) == len(set(keys)) == 4 * B * W and all(2 * n <= k < 3 * n for k in keys)
    again = list(EpochBatches(n, B, 1, W, seed=0, epoch=2, start=2))
    assert again == ranks[1][2:]  # resume mid-epoch
    assert list(EpochBatches(n, B, 1, W, seed=0, epoch=3)) != [[k + n for k in b] for b in ranks[1]]


def test_epoch_batches_do_not_touch_the_global_rng():
    ds = SceneCaptions(0, 16, 16, 2, ImageTransform(16))
    state = torch.get_rng_state()
    list(epoch_batches(ds, epoch=0, start=0, steps=2, batch=8, rank=0, world=1, seed=0, workers=0))
    assert torch.equal(state, torch.get_rng_state())


def _shard_with_a_bad_sample(path):
    import webdataset as wds

    with wds.TarWriter(str(path)) as w:
        w.write({"__key__": "bad-jpeg", "jpg": b"\xff\xd8 truncated", "txt": "broken"})
        w.write({"__key__": "no-caption", "jpg": _jpeg()})
        buf = _jpeg()
        w.write({"__key__": "json-caption", "jpg": buf, "json": json.dumps({"caption": "A Red Circle."})})


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def test_webdataset_shards_split_by_node_and_skip_bad_samples(tmp_path, monkeypatch):
    write_scene_shards(tmp_path, count=24, shards=4, size=32)
    _shard_with_a_bad_sample(tmp_path / "000004.tar")
    urls = str(tmp_path / "{000000..000004}.tar")
    seen = {}
    for rank in (0, 1):  # webdataset's split_by_node reads RANK / WORLD_SIZE
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = WebCaptions(urls, ImageTransform(32), seed=0, shuffle_buffer=0)  # in shard order
        ds.set_epoch(0)
        seen[rank] = list(ds)
    ids = {r: {s["image_id"] for s in samples} for r, samples in seen.items()}
    assert not ids[0] & ids[1]  # disjoint shards per rank
    total = sum(len(s) for s in seen.values())
    assert total == 24 + 1  # 24 scenes + the one good sample of the broken shard
    assert sum(s["skipped"] for samples in seen.values() for s in samples) == 2  # bad jpeg, no caption
    captions = [s["caption"] for samples in seen.values() for s in samples]
    assert "a red circle" in captions  # from the .json sidecar, through pre_caption
    assert all(s["pixels"].shape == (3, 32, 32) for samples in seen.values() for s in samples)


def test_webdataset_missing_shards_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        WebCaptions(str(tmp_path / "{000..003}.tar"), ImageTransform(32))


def test_scene_vocab_and_tokenizer(tmp_path):
    vocab = scene_vocab()
    assert tuple(vocab[:5]) == SPECIALS
    assert set(scenes.VOCABULARY) <= set(vocab) and {f"##{d}" for d in range(10)} <= set(vocab)
    assert len(vocab) == len(set(vocab)) < 300
    tok = make_tokenizer("scenes", tmp_path)
    assert (tok.dec_id, tok.enc_id, tok.vocab_size) == (len(vocab), len(vocab) + 1, len(vocab) + 2)
    for text in ("a small purple square, a cross at the top left", "img_0231.jpg", "what colour is it?"):
        assert tok.unk_id not in tok.tokens(text)
    assert tok.unk_id not in tok.tokens("zebra")  # unseen words fall back to letters
    cfg = preset("tiny", ("caption",), **text_ids(tok))
    assert cfg.text.vocab_size == tok.vocab_size and cfg.text.dec_id == tok.dec_id and cfg.text.sep_id == tok.sep_id
    tok.check_model(cfg.text)


# --- web shards cut short, empty captions ------------------------------------------------------

def _cut(path, fraction: float) -> None:
    """Cut a file short, as a copy or download that stopped would (mid-member, not on a block)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction) | 1])


def _read_all(urls: str) -> tuple[list[dict], int]:
    """One pass over ``urls`` in order -> (good samples, skips counted, trailing ones included)."""
    ds = WebCaptions(urls, ImageTransform(16), seed=0, shuffle_buffer=0)
    ds.set_epoch(0)
    items = list(ds)
    good = [s for s in items if "pixels" in s]
    return good, sum(s["skipped"] for s in items)


def test_a_shard_cut_short_counts_every_sample_it_lost(tmp_path):
    # write_scene_shards writes img2dataset's 000000_stats.json ("successes": 20) beside the shard
    shard = write_scene_shards(tmp_path, count=20, shards=1, size=16)[0]
    _cut(shard, 0.6)
    good, skipped = _read_all(str(shard))
    assert 5 < len(good) < 15
    assert len(good) + skipped == 20  # every sample is trained on or counted


def test_a_shard_cut_short_without_stats_counts_at_least_the_sample_at_the_cut(tmp_path):
    shard = write_scene_shards(tmp_path, count=20, shards=1, size=16)[0]
    (tmp_path / "000000_stats.json").unlink()
    whole, _ = _read_all(str(shard))
    _cut(shard, 0.6)
    good, skipped = _read_all(str(shard))
    assert skipped == 1 and [s["image_id"] for s in good] == [s["image_id"] for s in whole[: len(good)]]


def test_lost_samples_reach_the_batches_even_after_the_last_full_batch(tmp_path):
    """A shard's losses are reported at its end, after the last full batch: they must ride on the
    next batch (of the next pass), not vanish with the unfinished one."""
    shard = write_scene_shards(tmp_path, count=20, shards=1, size=16)[0]
    _cut(shard, 0.6)
    good, skipped = _read_all(str(shard))
    ds = WebCaptions(str(shard), ImageTransform(16), seed=0, shuffle_buffer=0)
    per_pass = len(good) // 4
    batches = list(epoch_batches(ds, epoch=0, start=0, steps=per_pass + 1, batch=4, rank=0, world=1, seed=0,
                                 workers=0))
    assert len(batches) == per_pass + 1 and all(len(b["pixels"]) == 4 for b in batches)
    assert sum(b["skipped"] for b in batches) == skipped == 20 - len(good)


def test_web_samples_with_empty_captions_are_skipped_and_counted(tmp_path):
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "000000.tar")) as w:
        for key, text in (("a", "A red circle."), ("b", "  "), ("c", "..."), ("d", "a blue square")):
            w.write({"__key__": key, "jpg": _jpeg(), "txt": text})
    good, skipped = _read_all(str(tmp_path / "000000.tar"))
    assert [s["caption"] for s in good] == ["a red circle", "a blue square"] and skipped == 2


def test_json_captions_that_are_empty_after_cleaning_are_skipped_and_counted(tmp_path, caplog):
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "a.png")
    (tmp_path / "ann.json").write_text(json.dumps([{"image": "a.png", "caption": ["a red square", "", " ... ", "#"]}]))
    with caplog.at_level("WARNING", logger="training.data"):
        ds = JsonCaptions(str(tmp_path / "ann.json"), str(tmp_path), ImageTransform(16))
    assert [c for _, c in ds.pairs] == ["a red square"] and ds.empty_captions == 3
    assert "3 captions" in caplog.text and "empty after cleaning" in caplog.text
    (tmp_path / "ann.json").write_text(json.dumps([{"image": "a.png", "caption": "..."}]))
    with pytest.raises(DatasetError, match="every caption .* is empty"):
        JsonCaptions(str(tmp_path / "ann.json"), str(tmp_path), ImageTransform(16))
