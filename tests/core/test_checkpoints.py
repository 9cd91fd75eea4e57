"""Checkpoint formats, reports and every way a checkpoint can be wrong."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import blip_core
from blip_core import CheckpointError
from blip_core.checkpoints import load_model, open_checkpoint
from blip_core.checkpoints.keymaps import TEXT_KEYS, VIT_HF_KEYS
from tests.core.test_parity import to_salesforce
from tests.helpers import random_pixels, seeded_hf_model


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_and_not_a_model(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="unknown checkpoint file type"):
        load_model(tmp_path / "notes.txt")


def test_corrupt_and_truncated_weights(tmp_path, hf_dirs):
    bad = _copy(hf_dirs["caption"], tmp_path / "garbage")
    (bad / "model.safetensors").write_bytes(b"\x00\x01not safetensors at all" * 10)
    with pytest.raises(CheckpointError, match="damaged"):
        load_model(bad)
    cut = _copy(hf_dirs["caption"], tmp_path / "cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_model(cut)
    (tmp_path / "bad.pth").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_model(tmp_path / "bad.pth")
    torch.save({"model": {"foo": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a Salesforce/LAVIS BLIP"):
        load_model(tmp_path / "other.pth")


def test_wrong_model_type_and_architecture(tmp_path, hf_dirs):
    d = _copy(hf_dirs["caption"], tmp_path / "bert")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(CheckpointError, match="not BLIP"):
        load_model(d)
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["BlipModel"]}))
    with pytest.raises(CheckpointError, match="unsupported BLIP architecture"):
        load_model(d)


def test_missing_weights_are_refused_not_randomised(tmp_path, hf_dirs):
    d = _copy(hf_dirs["caption"], tmp_path / "partial")
    sd = load_file(d / "model.safetensors")
    sd = {k: v for k, v in sd.items() if ".layer.1." not in k}
    save_file(sd, d / "model.safetensors")
    with pytest.raises(CheckpointError, match="lacks .* text_decoder"):
        load_model(d)


def test_shape_mismatch_is_refused(tmp_path, hf_dirs):
    d = _copy(hf_dirs["caption"], tmp_path / "mismatch")
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 64  # weights have 128
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_model(d)


def test_unexpected_keys_are_reported(tmp_path, hf_dirs):
    d = _copy(hf_dirs["caption"], tmp_path / "extra")
    sd = load_file(d / "model.safetensors")
    sd["text_decoder.adapter.weight"] = torch.zeros(3)
    save_file(sd, d / "model.safetensors")
    _, _, report = load_model(d)
    assert report.unexpected == ["text_decoder.adapter.weight"]
    assert "unexpected" in report.summary()


def test_key_maps_are_bijective():
    from blip_core.model.blip import BlipModel
    from blip_core.model.config import preset

    model = BlipModel(preset("tiny", tasks=("caption", "vqa", "match")))
    for name in model.state_dict():
        stack, _, rest = name.partition(".")
        keymap = VIT_HF_KEYS if stack == "vision" else TEXT_KEYS if not rest.startswith("lm_head") else None
        if keymap is None or stack in ("vision_proj", "text_proj", "itm_head"):
            continue
        foreign = keymap.to_foreign(rest)
        assert foreign is not None, name
        assert keymap.to_ours(foreign) == rest


@pytest.fixture(scope="module")
def salesforce_like(tmp_path_factory):
    """Salesforce-layout state dicts built from transformers weights (64-d heads, as published)."""
    hf_cap = seeded_hf_model("caption", seed=5, width=128, heads=2, text_width=128)
    hf_itm = seeded_hf_model("match", seed=6, width=128, heads=2, text_width=128)
    hf_vqa = seeded_hf_model("vqa", seed=7, width=128, heads=2, text_width=128)
    return hf_cap, hf_itm, hf_vqa


def test_pretrain_checkpoint_serves_caption_and_match(tmp_path, salesforce_like):
    hf_cap, hf_itm, _ = salesforce_like
    sd = to_salesforce(hf_itm.state_dict())
    sd.update({k: v for k, v in to_salesforce(hf_cap.state_dict()).items() if k.startswith("text_decoder.")})
    sd.update({"visual_encoder_m.cls_token": torch.zeros(1, 1, 128), "image_queue": torch.zeros(16, 8),
               "text_queue": torch.zeros(16, 8), "queue_ptr": torch.zeros(1), "temp": torch.tensor(0.07)})
    torch.save({"model": sd, "config": {"image_size": 32}}, tmp_path / "model_base.pth")
    m = blip_core.load(tmp_path / "model_base.pth")
    assert m.report.format == "salesforce" and m.tasks == {"caption", "match"}
    reasons = set(m.report.ignored.values())
    assert any("momentum" in r for r in reasons) and any("queue" in r for r in reasons)
    assert not m.report.unexpected
    assert m.caption(torch_image(), max_new_tokens=4).text is not None
    assert len(m.match(torch_image(), ["a dog"])) == 1
    only = blip_core.load(tmp_path / "model_base.pth", task="caption")
    assert "not used by the loaded tasks" in only.report.ignored.values()


def torch_image():
    import numpy as np

    return (np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8")


def test_vqa_pth_at_another_resolution_is_resampled(tmp_path, salesforce_like):
    """VQA checkpoints are 480 px; loading at another size resamples the position embeddings."""
    _, _, hf_vqa = salesforce_like
    sd = to_salesforce(hf_vqa.state_dict())
    # a LAVIS runner checkpoint: arch and target image size in its saved config
    torch.save({"model": sd, "config": {"model": {"arch": "blip_vqa", "image_size": 48}}}, tmp_path / "vqa.pth")
    m = blip_core.load(tmp_path / "vqa.pth")
    assert m.report.format == "lavis" and m.tasks == {"vqa"} and m.image_size == 48
    assert m.report.resampled and "(1, 17, 128) -> (1, 37, 128)" in m.report.resampled[0]
    assert isinstance(m.answer(torch_image(), "what is it?", max_new_tokens=3).text, str)
    native = blip_core.load(_resave(tmp_path, sd))
    assert native.image_size == 32 and not native.report.resampled
    with torch.no_grad():
        px = random_pixels(size=32)
        # the resampled grid at the native size gives back the original embeddings exactly
        assert torch.allclose(native.model.encode_image(px), hf_vqa.vision_model(px).last_hidden_state, atol=1e-3)


def _resave(tmp_path, sd):
    torch.save({"model": sd}, tmp_path / "vqa_native.pth")
    return tmp_path / "vqa_native.pth"


class _Custom:  # a pickled Python object, as in a training checkpoint saved whole
    pass


def test_unreadable_pth_hints_say_why(tmp_path):
    garbled, pickled = tmp_path / "garbled.pth", tmp_path / "pickled.pth"
    garbled.write_bytes(b"not a checkpoint at all")
    torch.save({"model": {"visual_encoder.cls_token": torch.zeros(1)}, "args": _Custom()}, pickled)
    with pytest.raises(CheckpointError, match="damaged or not a PyTorch checkpoint"):
        open_checkpoint(garbled)
    with pytest.raises(CheckpointError, match="not a plain weights file .*_Custom.* refused for safety") as e:
        open_checkpoint(pickled)
    assert "weights_only" not in str(e.value)  # torch's advice to load it unsafely is never passed on


# ------------------------------------------------------------- the shared helpers
def test_a_tokenizer_json_vocab_is_one_file_whatever_the_process(tmp_path):
    """tokenizer.json -> vocab.txt is named by its content: two processes get the same file and
    leave no new one behind (a salted ``hash()`` in the name left one per run)."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "a": 5, f"dog-{tmp_path.name}": 6}
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": vocab}}))
    code = ("import sys; from pathlib import Path; from blip_core.checkpoints.vocab import vocab_from_tokenizer_json; "
            "print(vocab_from_tokenizer_json(Path(sys.argv[1])))")
    root = Path(__file__).resolve().parents[2]
    run = lambda: subprocess.run([sys.executable, "-c", code, str(tmp_path / "tokenizer.json")], cwd=root,  # noqa: E731
                                 capture_output=True, text=True, check=True).stdout.strip()
    first = run()
    before = set(Path(tempfile.gettempdir()).glob("blip-vocab-*"))
    assert run() == first
    assert set(Path(tempfile.gettempdir()).glob("blip-vocab-*")) == before
    assert Path(first).read_text().split("\n")[:7] == sorted(vocab, key=vocab.get)
    Path(first).unlink()


def test_atomic_folder_swaps_in_whole_or_not_at_all(tmp_path):
    from blip_core.checkpoints.atomic import atomic_file, atomic_folder

    target = tmp_path / "model"
    with atomic_folder(target) as staging:
        (staging / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), atomic_folder(target) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("killed midway")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (target / "a.txt").read_text() == "one"
    with atomic_folder(target, staging=".model.partial-1", aside=".model.old-1") as staging:
        assert staging.name == ".model.partial-1"
        (staging / "b.txt").write_text("two")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and [p.name for p in target.iterdir()] == ["b.txt"]
    atomic_file(tmp_path / "f.txt", "text")
    with pytest.raises(OSError):
        atomic_file(tmp_path / "f.txt" / "x", b"not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt", "model"]


def test_fill_module_copies_into_a_live_model_and_resamples(tmp_path):
    """Training's init fills a live model: parameters keep their identity and share no memory
    with the source; position embeddings of another grid are resampled, other shapes reported."""
    from blip_core.checkpoints.fill import fill_module
    from blip_core.model.blip import BlipModel
    from blip_core.model.config import preset

    source = BlipModel(preset("tiny", ("caption",))).state_dict()
    model = BlipModel(preset("tiny", ("caption",)))
    param = model.vision.cls_token
    grid = model.cfg.vision.grid
    small = source["vision.pos_embed"][:, : 1 + (grid // 2) ** 2]
    bad = "text_decoder.embed.norm.weight"
    tensors = {**source, "vision.pos_embed": small, bad: torch.ones(3)}
    filled = fill_module(model, tensors.get)
    assert model.vision.cls_token is param and torch.equal(param, source["vision.cls_token"])
    assert param.data_ptr() != source["vision.cls_token"].data_ptr()
    assert [n for n, _, _ in filled.resampled] == ["vision.pos_embed"] and filled.absent == []
    assert filled.mismatched == [(bad, (3,), tuple(source[bad].shape))]
