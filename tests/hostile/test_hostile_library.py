"""Hostile input to the library (issue 15: items 2-library, 5, 6 and 7-library), every attack
generated here: a 64000000x1 PNG, elongated camera frames, decompression bombs, pickles that run
a command, crafted config.json files and .pth configs, garbage in the int8 cache, two processes
converting one model at once, conversions killed half-way, non-UTF-8 arguments and file names,
absurd thread counts and decoding options.

Each must end in one clear BlipError (one line from the CLI, exit 2) or be handled (a damaged cache
entry is rebuilt), never in a traceback, a blow-up or a command running.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from safetensors.torch import load_file, save_file

import blip_core
from blip_core import BadImageError, BadInputError, CheckpointError
from blip_core import preprocess as P
from blip_core.checkpoints import open_checkpoint, save
from blip_core.cli import main as cli_main
from blip_core.int8 import cache as int8_cache
from blip_core.int8 import runtime
from blip_core.int8.spec import ENGINE_VERSION
from tests.helpers import save_hf, seeded_hf_model

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny seeded BLIP models in transformers' layout, one per task, and the captioner in ours."""
    root = tmp_path_factory.mktemp("hostile-models")
    out = {task: save_hf(seeded_hf_model(task, seed=20 + i), root / task)
           for i, task in enumerate(("caption", "vqa", "match"))}
    m = blip_core.load(out["caption"], warmup=False)
    out["ours"] = save(m.model, root / "ours", m.tokenizer)
    return out


@pytest.fixture(scope="module")
def captioner(models):
    return blip_core.load(models["caption"], warmup=False)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile-img") / "grey.png"
    Image.new("RGB", (40, 30), (120, 130, 140)).save(path)
    return path


def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert message and "\n" not in message, message
    return message


# ------------------------------------------------------------------ item 2: elongated images
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _black_rgb_png(width: int, height: int) -> bytes:
    """A real, fully decodable RGB PNG, compressed as it streams (64000000x1: 192 MB of pixels in
    ~0.9 MB of file, ~0.3 s to make)."""
    deflate, zeros, parts = zlib.compressobj(1), bytes(1 << 20), []
    for _ in range(height):
        parts.append(deflate.compress(b"\0"))  # the row's filter byte: none
        left = 3 * width
        while left:
            parts.append(deflate.compress(zeros[:min(left, len(zeros))]))
            left -= min(left, len(zeros))
    parts.append(deflate.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


@pytest.fixture
def decodes(monkeypatch):
    """Every image PIL decodes (``ImageFile.load``), by size: what a refusal must precede."""
    seen, real = [], ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: seen.append(self.size) or real(self))
    return seen


def test_a_64000000x1_png_is_refused_before_decoding(tmp_path, decodes):
    """Within the 64 MP limit, but resizing it took 15 s and 2.7 GB (a filter table per source
    pixel of the long side): refused from its header, nothing decoded."""
    path = tmp_path / "strip.png"
    path.write_bytes(_black_rgb_png(64_000_000, 1))
    assert Image.open(path).size == (64_000_000, 1)  # a genuine PNG of that size
    with pytest.raises(BadImageError, match=r"64000000x1, more elongated than 100:1") as e:
        P.load_image(path)
    assert "strip.png" in _one_line(e)
    assert decodes == []


@pytest.mark.parametrize("shape", [(1, 200_000, 3), (200_000, 1, 3), (3, 2000, 3)])
def test_an_elongated_camera_frame_is_refused_before_resizing(shape):
    frame = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), shape)  # a view: costs no memory
    with pytest.raises(BadImageError, match="more elongated than 100:1"):
        P.frame_to_array(frame, 384)


@pytest.mark.parametrize("shape", [(1, 5000), (5000, 1, 3), (2000, 3, 4)])
def test_an_elongated_array_is_refused(shape):
    with pytest.raises(BadImageError, match="more elongated than 100:1"):
        P.pixel_array(np.zeros(shape, np.uint8), 64)


@pytest.mark.parametrize("shape", [(20, 2000, 3), (2000, 20, 3)])
def test_the_most_elongated_accepted_image_still_works(captioner, shape):
    frame = np.full(shape, 200, np.uint8)  # 100:1
    assert P.frame_to_array(frame, 32).shape == P.pixel_array(frame, 32).shape == (1, 3, 32, 32)
    assert isinstance(captioner.caption(frame, max_new_tokens=3).text, str)


@pytest.mark.parametrize("width, height", [(40000, 40000), (1_000_000, 1_000_000)])
def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, decodes, width, height):
    from tests.core.test_preprocess import png_claiming_size

    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming_size(width, height))
    with pytest.raises(BadImageError, match="megapixels|enormous size"):
        P.load_image(path)
    assert decodes == []


# ------------------------------------------------------------------ item 7: unsafe pickles
class _RunsACommand:
    """Unpickling this runs ``touch <marker>`` (a stand-in for anything worse)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_pickle_that_runs_a_command_is_refused_for_safety(tmp_path, legacy):
    marker, path = tmp_path / "pwned", tmp_path / "model_base.pth"
    torch.save({"model": {"visual_encoder.cls_token": torch.zeros(1, 1, 64)}, "hook": _RunsACommand(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError) as e:
        blip_core.load(path, warmup=False)
    message = _one_line(e)
    assert "not a plain weights file" in message and "system" in message and "refused for safety" in message
    assert "weights_only" not in message and "damaged" not in message  # never advice to load it unsafely
    assert not marker.exists()


# ------------------------------------------------------------------ item 6: crafted configs
@pytest.fixture
def nothing_built(monkeypatch):
    """Fails the test if a model is built or a position embedding resampled (what allocated)."""
    import blip_core.model.blip
    import blip_core.model.vision

    def refuse(*a, **k):
        pytest.fail("a model was built from a bad config")

    monkeypatch.setattr(blip_core.model.blip, "BlipModel", refuse)
    monkeypatch.setattr(blip_core.model.vision, "resample_pos_embed", refuse)


def _folder_with_config(models, tmp_path, source: str, config) -> Path:
    """A model folder: ``source``'s weights and vocabulary (linked) with ``config`` as config.json."""
    folder = tmp_path / "crafted"
    folder.mkdir()
    for f in models[source].iterdir():
        if f.name != "config.json":
            (folder / f.name).symlink_to(f)
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return folder


def _edited(config: dict, edits: dict) -> dict:
    """``config`` with ``edits`` applied: dotted path -> new value (``DELETE`` removes the key)."""
    config = json.loads(json.dumps(config))
    for path, value in edits.items():
        *parents, key = path.split(".")
        node = config
        for p in parents:
            node = node[p]
        if value is DELETE:
            del node[key]
        else:
            node[key] = value
    return config


DELETE = object()
HF_CASES = {  # id: (edits of a valid transformers config.json, what the one-line error must say)
    "image_size 1e6 (8 TB)": ({"vision_config.image_size": 1_000_000},
                              "vision_config.image_size must be an integer in [16, 1024], got 1000000"),
    "layers 1e9": ({"vision_config.num_hidden_layers": 10**9}, "vision_config.num_hidden_layers must be an integer"),
    "text layers 1e9": ({"text_config.num_hidden_layers": 10**9}, "text_config.num_hidden_layers must be an integer"),
    "heads 0": ({"text_config.num_attention_heads": 0}, "text_config.num_attention_heads must be an integer in [1, "),
    "negative width": ({"vision_config.hidden_size": -768}, "vision_config.hidden_size must be an integer"),
    "patch 0": ({"vision_config.patch_size": 0}, "vision_config.patch_size must be an integer"),
    "vocab as text": ({"text_config.vocab_size": "30524"}, "text_config.vocab_size must be an integer"),
    "image_size true": ({"vision_config.image_size": True}, "vision_config.image_size must be an integer"),
    "image_size 32.0": ({"vision_config.image_size": 32.0}, "vision_config.image_size must be an integer"),
    "eps as text": ({"vision_config.layer_norm_eps": "tiny"}, "vision_config.layer_norm_eps must be a number"),
    "eps NaN": ({"text_config.layer_norm_eps": float("nan")}, "text_config.layer_norm_eps must be a number"),
    "eps 0": ({"text_config.layer_norm_eps": 0}, "text_config.layer_norm_eps must be a number"),
    "positions 1e9": ({"text_config.max_position_embeddings": 10**9}, "text_config.max_position_embeddings"),
    "mlp 1e9": ({"text_config.intermediate_size": 10**9}, "text_config.intermediate_size"),
    "embed 0": ({"image_text_hidden_size": 0}, "image_text_hidden_size must be an integer"),
    "vision_config a list": ({"vision_config": [1, 2]}, "vision_config must be an object"),
    "text_config a number": ({"text_config": 7}, "text_config must be an object"),
    "architectures a number": ({"architectures": 5}, "unsupported BLIP architecture 5"),
    "architectures of lists": ({"architectures": [["BlipForConditionalGeneration"]]}, "unsupported BLIP architecture"),
    "width not a multiple of heads": ({"text_config.hidden_size": 33}, "text_config.hidden_size (33) must be a "
                                      "multiple of text_config.num_attention_heads (2)"),
    "image not a multiple of patch": ({"vision_config.image_size": 36}, "vision_config.image_size (36) must be a "
                                      "multiple of vision_config.patch_size (8)"),
    "512 patches a side": ({"vision_config.image_size": 1024, "vision_config.patch_size": 2}, "at most 64 patches"),
    "bos beyond vocab": ({"text_config.bos_token_id": 40000}, "text_config.bos_token_id (40000) must be below "
                         "text_config.vocab_size"),
    "pad negative": ({"text_config.pad_token_id": -1}, "text_config.pad_token_id must be an integer"),
}
OURS_CASES = {  # id: (edits of our own config.json, what the error must say)
    "vision missing": ({"blipcam.vision": DELETE}, "blipcam.vision is missing"),
    "a field missing": ({"blipcam.text.layers": DELETE}, "blipcam.text.layers is missing"),
    "heads 0": ({"blipcam.vision.heads": 0}, "blipcam.vision.heads must be an integer in [1, "),
    "image_size 1e6": ({"blipcam.vision.image_size": 1e6}, "blipcam.vision.image_size must be an integer"),
    "tasks a string": ({"blipcam.tasks": "caption"}, "blipcam.tasks must be a non-empty list"),
    "unknown task": ({"blipcam.tasks": ["fly"]}, "blipcam.tasks must be a non-empty list"),
    "no tasks": ({"blipcam.tasks": []}, "blipcam.tasks must be a non-empty list"),
    "text a list": ({"blipcam.text": [32, 2]}, "blipcam.text must be an object"),
    "blipcam a number": ({"blipcam": 5}, "blipcam must be an object"),
    "unknown field": ({"blipcam.vision.depth": 3}, "blipcam.vision has unknown fields depth"),
    "dec id beyond vocab": ({"blipcam.text.dec_id": 10**6 - 1}, "blipcam.text.dec_id (999999) must be below"),
}
FILE_CASES = {  # id: (config.json's bytes, what the error must say)
    "garbage": ("\x00\x01 not json", "cannot read"),
    "empty": ("", "cannot read"),
    "a list": ("[1, 2, 3]", "must hold a JSON object"),
    "nested 100000 deep": ("[" * 100_000 + "]" * 100_000, "cannot read"),
    "a 5000-digit number": ('{"model_type": ' + "9" * 5000 + "}", "cannot read"),
}


def _check_refusal(folder, needle, nothing_built):
    with pytest.raises(CheckpointError) as e:
        blip_core.load(folder, warmup=False)
    message = _one_line(e)
    assert needle in message and "config.json" in message, message


def test_the_crafted_configs_start_from_loadable_ones(models):
    for source in ("caption", "ours"):
        assert blip_core.load(models[source], warmup=False).caption(np.zeros((32, 32, 3), np.uint8), max_new_tokens=2)


@pytest.mark.parametrize("case", list(HF_CASES))
def test_a_crafted_hf_config_is_one_clear_error(models, tmp_path, nothing_built, case):
    edits, needle = HF_CASES[case]
    config = json.loads((models["caption"] / "config.json").read_text())
    _check_refusal(_folder_with_config(models, tmp_path, "caption", _edited(config, edits)), needle, nothing_built)


@pytest.mark.parametrize("case", list(OURS_CASES))
def test_a_crafted_config_of_ours_is_one_clear_error(models, tmp_path, nothing_built, case):
    edits, needle = OURS_CASES[case]
    config = json.loads((models["ours"] / "config.json").read_text())
    _check_refusal(_folder_with_config(models, tmp_path, "ours", _edited(config, edits)), needle, nothing_built)


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_a_garbled_config_file_is_one_clear_error(models, tmp_path, nothing_built, case):
    text, needle = FILE_CASES[case]
    _check_refusal(_folder_with_config(models, tmp_path, "caption", text), needle, nothing_built)


def test_a_crafted_int8_folder_config_is_one_clear_error(models, tmp_path, nothing_built):
    """A ``blip convert`` folder's config.json goes through the same checks (torch-free path)."""
    ours = json.loads((models["ours"] / "config.json").read_text())
    config = _edited({"blipcam": ours["blipcam"], "engine": ENGINE_VERSION, "tensors": 10},
                     {"blipcam.vision.layers": 10**9})
    folder = tmp_path / "int8"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"blipcam\.vision\.layers must be an integer in \[1, 64\]") as e:
        blip_core.load(folder, precision="int8", warmup=False)
    _one_line(e)


def _salesforce_state(layers: int = 2, vocab: int = 200) -> dict[str, torch.Tensor]:
    """The tensors a Salesforce .pth's architecture is inferred from (64-d heads, as published)."""
    sd = {"visual_encoder.cls_token": torch.zeros(1, 1, 64), "visual_encoder.pos_embed": torch.zeros(1, 17, 64),
          "visual_encoder.patch_embed.proj.weight": torch.zeros(64, 3, 8, 8),
          "text_decoder.bert.embeddings.word_embeddings.weight": torch.zeros(vocab, 64),
          "text_decoder.bert.embeddings.position_embeddings.weight": torch.zeros(32, 64),
          "text_decoder.bert.encoder.layer.0.intermediate.dense.weight": torch.zeros(256, 64),
          "text_decoder.bert.encoder.layer.1.intermediate.dense.weight": torch.zeros(256, 64)}
    sd.update({f"visual_encoder.blocks.{i}.mlp.fc1.weight": torch.zeros(256, 64) for i in range(layers)})
    return sd


PTH_CASES = {  # id: (checkpoint object, what the error must say)
    "image_size 1e6": (lambda sd: {"model": sd, "config": {"image_size": 1_000_000}},
                       "config.image_size must be an integer in [16, 1024], got 1000000"),
    "image_size as text": (lambda sd: {"model": sd, "config": {"image_size": "384"}}, "config.image_size must be"),
    "a block numbered 1e9": (lambda sd: {"model": {**sd, "visual_encoder.blocks.999999999.norm1.bias": torch.ones(1)}},
                             "vision.layers (inferred from the weights' shapes) must be an integer in [1, 64], got "
                             "1000000000"),
    "LAVIS image_size 1e6": (lambda sd: {"model": sd, "config": {"model": {"arch": "blip_caption", "image_size": 1e6}}},
                             "config.model.image_size must be an integer"),
    "LAVIS arch a list": (lambda sd: {"model": sd, "config": {"model": {"arch": ["blip_caption"]}}},
                          "unsupported LAVIS architecture"),
    "non-text keys": (lambda sd: {"model": {**sd, 5: torch.ones(1), (1,): torch.ones(1)}, "config": {"image_size": 8}},
                      "config.image_size must be an integer"),
}


def test_the_crafted_pth_starts_from_a_readable_one(tmp_path):
    torch.save({"model": _salesforce_state()}, tmp_path / "model.pth")
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(194)]))
    cfg = open_checkpoint(tmp_path / "model.pth").cfg
    assert (cfg.vision.layers, cfg.vision.image_size, cfg.text.vocab_size, cfg.text.layers) == (2, 32, 200, 2)


@pytest.mark.parametrize("case", list(PTH_CASES))
def test_a_crafted_pth_config_is_one_clear_error(tmp_path, nothing_built, case):
    make, needle = PTH_CASES[case]
    torch.save(make(_salesforce_state()), tmp_path / "model.pth")
    with pytest.raises(CheckpointError) as e:
        blip_core.load(tmp_path / "model.pth", warmup=False)
    message = _one_line(e)
    assert needle in message and "model.pth" in message, message


def test_a_position_embedding_that_is_no_square_grid_is_a_clear_error(models, tmp_path):
    folder = shutil.copytree(models["caption"], tmp_path / "odd-grid")
    sd = load_file(folder / "model.safetensors")
    key = "vision_model.embeddings.position_embedding"
    sd[key] = torch.cat([sd[key], sd[key][:, :14]], dim=1)  # 1 + 30 rows: no square grid (and not 4 x 4)
    save_file(sd, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a square grid") as e:
        blip_core.load(folder, warmup=False)
    _one_line(e)


@pytest.mark.parametrize("weight_map, needle", [
    ({"a": "../../outside.safetensors"}, "file names in its folder"),
    ({"a": "/etc/passwd"}, "file names in its folder"),
    (["model.safetensors"], "file names in its folder"),
])
def test_a_crafted_shard_index_is_one_clear_error(models, tmp_path, weight_map, needle):
    folder = shutil.copytree(models["caption"], tmp_path / "sharded")
    (folder / "model.safetensors").rename(folder / "part-1.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=needle) as e:
        blip_core.load(folder, warmup=False)
    _one_line(e)


@pytest.mark.parametrize("content", ['{"model": 5}', '{"model": {"vocab": ["a"]}}', "[]", "not json"])
def test_a_crafted_tokenizer_json_is_one_clear_error(models, tmp_path, content):
    folder = shutil.copytree(models["ours"], tmp_path / "no-vocab-txt")
    config = json.loads((folder / "config.json").read_text())
    config["blipcam"]["text"].update(vocab_size=100, dec_id=98, enc_id=99, sep_id=3, cls_id=2)  # not BERT's
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "vocab.txt").unlink()
    (folder / "tokenizer.json").write_text(content)
    with pytest.raises(CheckpointError, match="tokenizer.json") as e:
        blip_core.load(folder, warmup=False)
    _one_line(e)


# ------------------------------------------------------------------ item 5: the int8 cache
@pytest.fixture(scope="module")
def pristine_cache(models, tmp_path_factory):
    """An int8 cache holding the captioner's conversion (converted once for the module)."""
    root = tmp_path_factory.mktemp("hostile-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BLIPCAM_CACHE", str(root))
        blip_core.load(models["caption"], precision="int8", warmup=False)
    (entry,) = [p for p in (root / "int8").iterdir() if not p.name.startswith(".")]
    return root, entry.name


@pytest.fixture
def cache(pristine_cache, tmp_path, monkeypatch):
    """A copy of the pristine cache as this test's BLIPCAM_CACHE; returns (cache root, the entry)."""
    root = shutil.copytree(pristine_cache[0], tmp_path / "cache")
    monkeypatch.setenv("BLIPCAM_CACHE", str(root))
    return root, root / "int8" / pristine_cache[1]


def _conversions(caplog) -> int:
    return sum("to int8 (once)" in r.getMessage() for r in caplog.records if r.name == "blip_core.int8.cache")


DAMAGE = {  # what a power cut or a bad disk leaves in an entry's config.json
    "garbage": lambda config: config.write_bytes(b"\x00\xff\x13 not json"),
    "empty": lambda config: config.write_bytes(b""),
    "a list": lambda config: config.write_text("[5, 3]"),
    "wrong types": lambda config: config.write_text(json.dumps({**json.loads(config.read_text()), "engine": "5",
                                                                "tensors": "many"})),
    "missing": lambda config: config.unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cache_entry_is_rebuilt_with_a_warning(models, cache, caplog, damage):
    root, entry = cache
    DAMAGE[damage](entry / "config.json")
    # damaged entries of other checkpoints: left alone, and no reason to fail
    for name, text in (("other-a", "[1]"), ("other-b", json.dumps({"engine": "4", "blipcam": 5}))):
        (root / "int8" / name).mkdir()
        (root / "int8" / name / "config.json").write_text(text)
    with caplog.at_level(logging.INFO, logger="blip_core.int8.cache"):
        m = blip_core.load(models["caption"], precision="int8", warmup=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and str(entry) in r.getMessage()]
    assert len(warnings) == 1 and "converting again" in warnings[0], caplog.text
    assert _conversions(caplog) == 1
    assert m.caption(np.zeros((32, 32, 3), np.uint8), max_new_tokens=3).token_ids
    assert json.loads((entry / "config.json").read_text())["engine"] == ENGINE_VERSION
    assert m.report.loaded == json.loads((entry / "config.json").read_text())["tensors"] > 0
    assert {p.name for p in (root / "int8").iterdir()} == {entry.name, "other-a", "other-b"}


def test_stale_conversion_folders_are_removed(models, cache, caplog):
    """A conversion killed half-way left its temporary folder forever; now any of this entry's
    (none can run: the lock is held), any whose process is gone and any older than hours go."""
    root, entry = cache
    int8, me = root / "int8", os.getpid()
    dead_pid = 2**22 + 12345  # above Linux's largest pid_max: no such process can exist
    stale = [f".convert-{entry.name}-{me}-k1ll3d", f".convert-{entry.name}-{dead_pid}-x",
             f".convert-other-{dead_pid}-y", ".convert-h0urs0ld"]
    live = [f".convert-other-{me}-busy", ".convert-fresh123"]
    for name in stale + live:
        (int8 / name).mkdir()
        (int8 / name / "vision.onnx").write_bytes(b"half a graph")
    hours_ago = time.time() - int8_cache.STALE_CONVERSION_S - 60
    os.utime(int8 / ".convert-h0urs0ld", (hours_ago, hours_ago))
    with caplog.at_level(logging.INFO, logger="blip_core.int8.cache"):
        blip_core.load(models["caption"], precision="int8", warmup=False)
    assert _conversions(caplog) == 0  # the entry was fine: only the leftovers went
    assert sorted(p.name for p in int8.iterdir() if p.name.startswith(".")) == sorted(live)


_RACER = """
import logging, os, sys, time
from pathlib import Path
import numpy as np
import blip_core, blip_core.api

model, root, me, rounds = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
conversions = []
handler = logging.Handler()
handler.emit = lambda r: conversions.append(r) if "to int8 (once)" in r.getMessage() else None
logging.getLogger("blip_core.int8.cache").addHandler(handler)
logging.getLogger("blip_core.int8.cache").setLevel(logging.INFO)
img = np.full((32, 32, 3), 90, np.uint8)
for r in range(rounds):
    (root / f"ready-{r}-{me}").touch()  # a barrier: both processes start each round together
    while len(list(root.glob(f"ready-{r}-*"))) < 2:
        time.sleep(0.002)
    os.environ["BLIPCAM_CACHE"] = str(root / f"cache-{r}")
    before = len(conversions)
    m = blip_core.load(model, precision="int8", threads=1, warmup=False)
    print(r, len(conversions) - before, m.caption(img, max_new_tokens=4).token_ids, flush=True)
"""


def test_two_processes_converting_one_model_convert_it_once(models, tmp_path):
    """They raced (1 run in 14 failed: one deleted the folder while the other loaded it). Now the
    second waits for the first's lock, then loads its graphs; three rounds, fresh caches each."""
    rounds, script = 3, tmp_path / "racer.py"
    script.write_text(_RACER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(script), str(models["caption"]), str(tmp_path), name, str(rounds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for name in "ab"]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    rows = [[line.split(" ", 2) for line in out.strip().splitlines()] for out, _ in outs]
    for r in range(rounds):
        (ra, ca, ta), (rb, cb, tb) = rows[0][r], rows[1][r]
        assert ra == rb == str(r) and ta == tb
        assert sorted([int(ca), int(cb)]) == [0, 1], f"round {r}: conversions {ca} and {cb}"
        assert not list((tmp_path / f"cache-{r}" / "int8").glob(".convert-*"))


# ------------------------------------------------------------------ item 7: the library boundary
@pytest.fixture
def nothing_started(monkeypatch):
    """Fails the test if a load gets as far as sizing thread pools or opening the checkpoint
    (100000 threads crashed libgomp and took 16 GB in ONNX Runtime)."""
    import blip_core.api

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(("torch threads", n)))
    monkeypatch.setattr(blip_core.api, "open_checkpoint", lambda p: calls.append(("open", p)))
    yield
    assert calls == []


@pytest.mark.parametrize("threads", [100_000, 0, -1, True, 2.5, "4", blip_core.max_threads() + 1])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_an_absurd_thread_count_is_refused_before_anything(models, nothing_started, threads, precision):
    with pytest.raises(BadInputError, match=r"threads must be a whole number from 1 to \d+") as e:
        blip_core.load(models["caption"], precision=precision, threads=threads, warmup=False)
    _one_line(e)


@pytest.mark.parametrize("source", ["", "   ", 5, None])
def test_an_empty_model_source_is_refused(nothing_started, source):
    with pytest.raises(BadInputError, match="model source"):
        blip_core.load(source, warmup=False)


CAPTION_OPTIONS = {  # keyword: bad values (each a one-line BadInputError naming it)
    "num_beams": [0, -3, 33, True, 2.0, "3"],
    "max_new_tokens": [0, 501, "5", 2.5, None],
    "min_new_tokens": [-1, "x", 1.5],
    "top_p": [0, 1.5, float("nan"), "0.9", None],
    "repetition_penalty": [0, -1.0, float("nan"), float("inf")],
    "num_return_sequences": [0, 10**9],
    "strategy": ["magic", 5, ["beam"]],
    "seed": [-1, "x", 1.5],
}


@pytest.mark.parametrize("option, value", [(k, v) for k, vs in CAPTION_OPTIONS.items() for v in vs],
                         ids=lambda x: repr(x)[:20])
def test_a_bad_decoding_option_is_one_clear_error(captioner, option, value):
    kw = {"strategy": "nucleus"} if option in ("seed", "num_return_sequences") else {}
    with pytest.raises(BadInputError, match=option if option != "strategy" else "strategy") as e:
        captioner.caption(np.zeros((32, 32, 3), np.uint8), **{**kw, option: value})
    _one_line(e)


@pytest.fixture(scope="module")
def answerer(models):
    return blip_core.load(models["vqa"], warmup=False)


@pytest.mark.parametrize("kw, needle", [
    ({"num_beams": 0}, "num_beams"), ({"num_beams": -3}, "num_beams"), ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"answers": ["red", "blue"], "k": 0}, "k must be"), ({"answers": ["red"], "k": -1}, "k must be"),
    ({"answers": "red"}, "answers must be a list"), ({"answers": 5}, "answers must be a list"),
])
def test_a_bad_answer_option_is_one_clear_error(answerer, kw, needle):
    with pytest.raises(BadInputError, match=needle) as e:
        answerer.answer(np.zeros((32, 32, 3), np.uint8), "what is it?", **kw)
    _one_line(e)


def test_texts_that_are_not_valid_utf8_are_one_clear_error(models, captioner, answerer):
    """Bytes that are not UTF-8 reach Python as lone surrogates (a TypeError in the tokenizer)."""
    img = np.zeros((32, 32, 3), np.uint8)
    matcher = blip_core.load(models["match"], warmup=False)
    calls = [lambda: answerer.answer(img, "what \udcff?"), lambda: captioner.caption(img, prompt="a \udcff"),
             lambda: matcher.match(img, ["a dog", "a \ud800 cat"]),
             lambda: answerer.answer(img, "what?", answers=["red", "bl\udcffue"])]
    for call in calls:
        with pytest.raises(BadInputError, match="not valid UTF-8") as e:
            call()
        _one_line(e)


# ------------------------------------------------------------------ item 7: the blip command
@pytest.fixture
def evil_pth(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "hook": _RunsACommand(tmp_path / "pwned")}, path)
    return path


@pytest.fixture
def crafted_config(models, tmp_path):
    config = json.loads((models["caption"] / "config.json").read_text())
    return _folder_with_config(models, tmp_path, "caption", _edited(config, {"vision_config.image_size": 10**6}))


CLI_CASES = {  # id: (argv with {cap}/{vqa}/{match}/{img}/{evil}/{crafted}, what the one line says)
    "question not UTF-8": (["ask", "{img}", "what \udcff?", "--model", "{vqa}"], "the question is not valid UTF-8"),
    "answer not UTF-8": (["ask", "{img}", "what?", "--answers", "red,bl\udcffue", "--model", "{vqa}"],
                         "an answer is not valid UTF-8"),
    "text not UTF-8": (["match", "{img}", "a dog", "a \udcff cat", "--model", "{match}"], "a text is not valid UTF-8"),
    "prompt not UTF-8": (["caption", "{img}", "--prompt", "a \udcff", "--model", "{cap}"], "the prompt is not valid"),
    "threads 100000": (["caption", "{img}", "--threads", "100000", "--model", "{cap}"], "threads must be a whole"),
    "threads 100000 int8": (["caption", "{img}", "--threads", "100000", "--precision", "int8", "--model", "{cap}"],
                            "threads must be a whole number"),
    "threads 0": (["caption", "{img}", "--threads", "0", "--model", "{cap}"], "threads must be a whole number"),
    "threads not a number": (["caption", "{img}", "--threads", "many", "--model", "{cap}"], "argument --threads"),
    "beams 0": (["caption", "{img}", "--beams", "0", "--model", "{cap}"], "--beams must be a whole number from 1"),
    "beams -3": (["caption", "{img}", "--beams", "-3", "--model", "{cap}"], "--beams must be a whole number from 1"),
    "ask beams 0": (["ask", "{img}", "what?", "--beams", "0", "--model", "{vqa}"], "--beams must be a whole number"),
    "max tokens 0": (["caption", "{img}", "--max-new-tokens", "0", "--model", "{cap}"], "--max-new-tokens must be"),
    "top-p nan": (["caption", "{img}", "--top-p", "nan", "--model", "{cap}"], "--top-p must be a number"),
    "seed -1": (["caption", "{img}", "--strategy", "nucleus", "--seed", "-1", "--model", "{cap}"], "--seed must be"),
    "model empty": (["caption", "{img}", "--model", ""], "the model is empty"),
    "model blank": (["ask", "{img}", "what?", "--model", "  "], "the model is empty"),
    "info model empty": (["info", ""], "the model is empty"),
    "convert model empty": (["convert", "", "{img}.out"], "the model is empty"),
    "unknown option": (["caption", "{img}", "--colour", "red"], "unrecognized arguments"),
    "evil pickle": (["info", "{evil}"], "refused for safety"),
    "crafted config": (["caption", "{img}", "--model", "{crafted}"], "vision_config.image_size must be an integer"),
}


@pytest.fixture
def no_thread_storm(monkeypatch):
    """Fails the test, rather than crash it, if thread pools are sized absurdly (unchecked,
    --threads 100000 segfaulted libgomp under torch and took 16 GB in ONNX Runtime)."""
    real_torch, real_ort = torch.set_num_threads, runtime._size_global_pool

    def checked(real):
        def size(*args):
            if max(a for a in args if isinstance(a, int)) > 1024:
                pytest.fail(f"thread pool sized to {args}")
            return real(*args)
        return size

    monkeypatch.setattr(torch, "set_num_threads", checked(real_torch))
    monkeypatch.setattr(runtime, "_size_global_pool", checked(real_ort))


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_each_bad_cli_input_is_one_line_and_exit_2(models, image_file, evil_pth, crafted_config, capsys,
                                                   no_thread_storm, case):
    argv, needle = CLI_CASES[case]
    names = dict(cap=models["caption"], vqa=models["vqa"], match=models["match"], img=image_file, evil=evil_pth,
                 crafted=crafted_config)
    assert cli_main([a.format(**names) for a in argv]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blip: error: ") and needle in lines[0], err
    assert out == "" and "Traceback" not in err


def test_a_non_utf8_question_from_a_real_shell(models, image_file):
    """argv bytes as a shell passes them (``"$(printf 'what \\xff?')"``)."""
    done = subprocess.run([sys.executable, "-m", "blip_core.cli", "ask", str(image_file), b"what \xff?",
                           "--model", str(models["vqa"])], capture_output=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and done.stdout == b""
    assert done.stderr.decode().splitlines() == ["blip: error: the question is not valid UTF-8 ('what \\xff?'): "
                                                 "type it again or fix the terminal's encoding"]


def test_json_output_stays_utf8_with_a_non_utf8_file_name(models, tmp_path, capsys):
    name = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9-\xff.png")  # Latin-1 bytes: not UTF-8
    Image.new("RGB", (32, 32), (10, 200, 30)).save(name, "PNG")
    missing = os.fsdecode(os.fsencode(tmp_path) + b"/gone-\xff.png")
    assert cli_main(["caption", name, missing, "--model", str(models["caption"]), "--json",
                     "--max-new-tokens", "3"]) == 2  # the missing file fails; the other is captioned
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.encode("utf-8").decode("utf-8").splitlines()]  # strict UTF-8
    assert records[0]["image"].endswith("/caf\\xe9-\\xff.png") and records[0]["caption"]
    assert records[1]["image"].endswith("/gone-\\xff.png") and "does not exist" in records[1]["error"]
    assert err.count("\n") == 1
