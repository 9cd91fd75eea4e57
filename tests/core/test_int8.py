"""The int8 engine: exported graphs equal the PyTorch model; int8 stays close; conversion is
part-by-part, cached, and fails cleanly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import blip_core
from blip_core.api import Blip
from blip_core.checkpoints import open_checkpoint
from blip_core.int8 import cache as int8_cache
from blip_core.int8 import convert as engine
from blip_core.int8 import runtime
from blip_core.tokenizer import BlipTokenizer
from tests.helpers import save_hf, seeded_hf_model


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BLIPCAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eng")
    kw = dict(width=64, heads=2, text_width=64)
    return {t: save_hf(seeded_hf_model(t, seed=10 + i, **kw), root / t)
            for i, t in enumerate(("caption", "vqa", "match"))}


def _image(seed=0):
    return (np.random.default_rng(seed).random((48, 48, 3)) * 255).astype(np.uint8)


def _onnx_fp32(folder, tmp_path) -> Blip:
    """The exported graphs without quantisation: must reproduce the PyTorch model."""
    ck = open_checkpoint(folder)
    engine.convert(ck, tmp_path / "graphs", quantized=False)
    return Blip(runtime.OrtModel(ck.cfg, tmp_path / "graphs", 2), BlipTokenizer(ck.vocab), precision="onnx-fp32")


def test_exported_graphs_equal_pytorch(dirs, tmp_path):
    for task, folder in dirs.items():
        ref, graphs = blip_core.load(folder), _onnx_fp32(folder, tmp_path / task)
        img = _image()
        fr, fg = ref.encode_image(img), graphs.encode_image(img)
        torch.testing.assert_close(torch.from_numpy(fg.embeds), fr.embeds, atol=1e-4, rtol=0)
        if task == "caption":
            for beams in (1, 3):
                assert graphs.caption(fg, num_beams=beams, max_new_tokens=10).token_ids == \
                    ref.caption(fr, num_beams=beams, max_new_tokens=10).token_ids
        if task == "vqa":
            assert graphs.answer(fg, "what is it?", num_beams=3).token_ids == \
                ref.answer(fr, "what is it?", num_beams=3).token_ids
            a, b = (graphs.answer(fg, "what is it?", answers=["red", "two dogs"]),
                    ref.answer(fr, "what is it?", answers=["red", "two dogs"]))
            assert [x for x, _ in a.ranked] == [x for x, _ in b.ranked]
            assert [s for _, s in a.ranked] == pytest.approx([s for _, s in b.ranked], abs=1e-3)
        if task == "match":
            texts = ["a red dog", "blue", "two green squares on the left"]
            for x, y in zip(graphs.match(fg, texts), ref.match(fr, texts)):
                assert x.itm == pytest.approx(y.itm, abs=1e-4) and x.itc == pytest.approx(y.itc, abs=1e-4)


def test_int8_runs_every_task_and_stays_close(dirs):
    img = _image(1)
    cap32, cap8 = blip_core.load(dirs["caption"]), blip_core.load(dirs["caption"], precision="int8")
    assert cap8.precision == "int8" and isinstance(cap8.model, runtime.OrtModel)
    e32, e8 = cap32.encode_image(img).embeds, cap8.encode_image(img).embeds
    cos = torch.nn.functional.cosine_similarity(e32.flatten(), torch.from_numpy(e8).flatten(), dim=0)
    assert cos > 0.99
    assert cap8.caption(img, num_beams=3, max_new_tokens=6).text is not None
    vqa8 = blip_core.load(dirs["vqa"], precision="int8")
    assert vqa8.answer(img, "what colour?", answers=["red", "blue"]).text in ("red", "blue")
    m32, m8 = blip_core.load(dirs["match"]), blip_core.load(dirs["match"], precision="int8")
    for x, y in zip(m8.match(img, ["a dog", "a cat"]), m32.match(img, ["a dog", "a cat"])):
        assert x.itc == pytest.approx(y.itc, abs=0.05)


def test_conversion_is_cached(dirs, cache, monkeypatch):
    blip_core.load(dirs["caption"], precision="int8")
    assert len(list((cache / "int8").iterdir())) == 1
    monkeypatch.setattr(engine, "convert", lambda *a, **k: pytest.fail("converted twice"))
    blip_core.load(dirs["caption"], precision="int8")


def test_a_conversion_removes_the_entries_it_supersedes(dirs, cache):
    import json

    root = cache / "int8"
    root.mkdir(parents=True)
    ck = open_checkpoint(dirs["caption"])
    cfg, src = ck.cfg.to_dict(), str(Path(dirs["caption"]).resolve())

    def entry(name, **meta):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(meta))

    entry("older-code", blipcam=cfg, engine=5, source=src)  # superseded: same checkpoint and tasks
    entry("before-5", blipcam=cfg, engine=4)  # superseded: no checkpoint recorded, older engine
    entry("other-tasks", blipcam={**cfg, "tasks": ["caption", "match"]}, engine=5, source=src)
    entry("other-model", blipcam=cfg, engine=5, source="/elsewhere/model")
    (root / ".convert-123").mkdir()  # another process converting
    (root / "not-ours").mkdir()
    blip_core.load(dirs["caption"], precision="int8", warmup=False)
    new = int8_cache.fingerprint(open_checkpoint(dirs["caption"]))
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [".convert-123", "not-ours", "other-tasks", "other-model", new])
    assert json.loads((root / new / "config.json").read_text())["source"] == src
    blip_core.load(dirs["caption"], precision="int8", warmup=False)  # a cached load prunes nothing
    assert (root / new).is_dir()


@pytest.mark.parametrize("damage", ["truncated graph", "lost heads"])
def test_a_damaged_conversion_is_converted_again(dirs, cache, caplog, damage):
    blip_core.load(dirs["match"], precision="int8", warmup=False)
    folder = cache / "int8" / int8_cache.fingerprint(open_checkpoint(dirs["match"]))
    if damage == "truncated graph":
        graph = folder / "text_encoder.encode.int8.onnx"
        graph.write_bytes(graph.read_bytes()[:1000])
    else:
        (folder / "heads.npz").unlink()
    with caplog.at_level("WARNING", logger="blip_core.int8.cache"):
        m = blip_core.load(dirs["match"], precision="int8", warmup=False)
    assert "cannot load the int8 graphs" in caplog.text and "converting again" in caplog.text
    assert 0 <= m.match(_image(), ["a dog"])[0].itm <= 1


def test_graphs_that_never_load_are_a_clear_error(dirs, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF")

    monkeypatch.setattr(int8_cache, "OrtModel", broken)
    with pytest.raises(blip_core.CheckpointError, match="cannot load the int8 graphs in .*INVALID_PROTOBUF"):
        blip_core.load(dirs["caption"], precision="int8", warmup=False)


def test_conversion_holds_one_part_at_a_time(dirs, monkeypatch):
    """No full fp32 copy: when a part is exported, every other part's weights are on 'meta'."""
    seen = []
    real = engine.export_part

    def checked(model, part, folder):
        live = {name.split(".")[0] for name, p in model.named_parameters() if not p.is_meta}
        seen.append((part, live))
        return real(model, part, folder)

    monkeypatch.setattr(engine, "export_part", checked)
    monkeypatch.setattr("blip_core.api.materialize", lambda *a, **k: pytest.fail("fp32 model built"))
    blip_core.load(dirs["vqa"], precision="int8", warmup=False)
    assert [p for p, _ in seen] == ["vision", "answer_decoder", "text_encoder"]
    assert all(live == {part} for part, live in seen)


def test_unwritable_cache_is_a_clear_error(dirs, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    monkeypatch.setenv("BLIPCAM_CACHE", str(ro / "cache"))
    monkeypatch.setattr(engine, "convert",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(blip_core.StorageError, match="No space left|BLIPCAM_CACHE"):
        blip_core.load(dirs["caption"], precision="int8")


def _op_types(path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def test_quantisation_scheme_per_graph(dirs, cache):
    """Decoders: 8-bit blocks (MatMulNBits); ViT and encoder: dynamic int8; embeddings int8."""
    blip_core.load(dirs["vqa"], precision="int8", warmup=False)
    (folder,) = (cache / "int8").iterdir()
    for name in ("answer_decoder.step", "answer_decoder.cross_kv"):
        ops = _op_types(folder / f"{name}.int8.onnx")
        assert "MatMulNBits" in ops and "DynamicQuantizeLinear" not in ops, name
    for name in ("vision", "text_encoder.encode", "text_encoder.cross_kv"):
        ops = _op_types(folder / f"{name}.int8.onnx")
        assert "MatMulInteger" in ops and "MatMulNBits" not in ops, name
    import onnx

    for name in ("answer_decoder.step", "text_encoder.encode"):  # word tables: int8 rows in blocks of 32
        inits = {t.name: t for t in onnx.load(str(folder / f"{name}.int8.onnx")).graph.initializer}
        (q8,) = [t for t in inits.values() if t.name.endswith(".tokens.weight.q8")]
        scale = inits[q8.name[: -len(".q8")] + ".scale"]
        assert q8.data_type == onnx.TensorProto.INT8 and list(q8.dims)[1:] == [64 // 32, 32], name
        assert list(scale.dims) == [q8.dims[0], 2, 1] and scale.data_type == onnx.TensorProto.FLOAT, name
        assert not any(t.endswith(".tokens.weight") for t in inits), name
    # the ViT's attention output projections stay fp32 (their input mixes heads of unlike scale)
    vision = onnx.load(str(folder / "vision.int8.onnx")).graph
    weights = {t.name for t in vision.initializer}
    fp32 = sorted(n.name for n in vision.node if n.op_type == "MatMul" and n.input[1] in weights)
    blocks = {n.name.split("/")[2] for n in vision.node if n.name.startswith("/vision/blocks.")}
    assert len(blocks) >= 2 and fp32 == sorted(f"/vision/{b}/attn/proj/MatMul" for b in blocks)


def test_image_side_cross_keys_compute_in_fp32_only_where_that_is_faster(dirs, cache, monkeypatch):
    import onnx

    blip_core.load(dirs["caption"], precision="int8", warmup=False)
    (folder,) = (cache / "int8").iterdir()

    def levels(name):
        nodes = onnx.load(str(folder / f"{name}.int8.onnx")).graph.node
        return {a.i for n in nodes if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}

    assert levels("text_decoder.step") == {4}  # one row per step: fp32 compute is ~25x slower
    assert levels("text_decoder.cross_kv") == {4 if engine._fast_int8_blocks() else 1}
    engine._fast_int8_blocks.cache_clear()
    monkeypatch.setattr(engine.platform, "machine", lambda: "aarch64")  # a Pi 5: int8 dot products
    assert engine._fast_int8_blocks()
    engine._fast_int8_blocks.cache_clear()


def test_block_quantised_word_table_looks_up_rows_within_half_a_step():
    """The rewritten lookup returns each row to within half its block's int8 step, also for rows
    far smaller than the table's largest (one scale per table rounded those to zero)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 64)).astype(np.float32) * np.logspace(-3, 1, 50, dtype=np.float32)[:, None]
    table[7] = 0  # an all-zero row must not divide by zero
    graph = helper.make_graph([helper.make_node("Gather", ["m.tokens.weight", "ids"], ["x"])], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["R", "T"])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["R", "T", 64])],
                              [numpy_helper.from_array(table, "m.tokens.weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert engine.block_quantize_word_tables(model) == 1
    onnx.checker.check_model(model)
    ids = np.array([[0, 7, 49], [3, 3, 20]], np.int64)
    opts = ort.SessionOptions()
    opts.use_per_session_threads = not runtime._global_pool_threads  # this process's int8 loads may have made one
    got = ort.InferenceSession(model.SerializeToString(), opts,
                               providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    want = table[ids]
    step = np.abs(want.reshape(2, 3, 2, 32)).max(-1, keepdims=True) / 127
    assert got.shape == want.shape
    assert (np.abs(got - want).reshape(2, 3, 2, 32) <= step / 2 + 1e-7).all()
    assert got[0, 1].tolist() == [0.0] * 64


def test_step_graph_is_lean(dirs, tmp_path):
    """One decoding step: no Sqrt for the attention scale, no Transpose in self-attention, one
    query/key/value projection per layer (the step traced from the training modules had ~1,150
    nodes at BLIP-base size, ~420 now after ONNX Runtime's fusions)."""
    import onnx

    ck = open_checkpoint(dirs["caption"])
    engine.convert(ck, tmp_path / "g", quantized=False)
    nodes = onnx.load(str(tmp_path / "g" / "text_decoder.step.int8.onnx")).graph.node
    ops = [n.op_type for n in nodes if n.op_type not in ("Constant", "Identity")]
    L = ck.cfg.text.layers
    assert "Sqrt" not in ops and ops.count("Div") == L + 1  # the Divs are GELU's x / sqrt(2)
    assert ops.count("Transpose") == 2 * L  # the cross-attention's row regrouping only
    # per layer: qkv, q@k, p@v, proj; cross q, q@k, p@v, proj; fc1, fc2 -- plus the LM head's two
    assert ops.count("MatMul") == 10 * L + 2
    assert len(ops) <= 46 * L + 15  # BLIP-base: 543 (traced from the training modules: 2,233)


def test_sessions_share_an_arena_and_one_thread_pool(dirs):
    threads = runtime._global_pool_threads if runtime._global_pool_threads > 0 else 2  # the pool is sized once
    m = blip_core.load(dirs["caption"], precision="int8", threads=threads, warmup=False)
    assert runtime._global_pool_threads == threads
    for s in m.model.sessions.values():
        opts = s.get_session_options()
        assert not opts.use_per_session_threads
        assert opts.get_session_config_entry("session.use_env_allocators") == "1"


def test_a_second_thread_count_shares_the_pool_and_says_so(dirs, caplog):
    import onnxruntime as ort

    runtime._size_global_pool(ort, runtime._global_pool_threads if runtime._global_pool_threads > 0 else 2)
    first = runtime._global_pool_threads  # sized once per process
    with caplog.at_level("WARNING", logger="blip_core.int8.runtime"):
        m = blip_core.load(dirs["caption"], precision="int8", threads=first + 1, warmup=False)
    assert f"share ONNX Runtime's thread pool ({first} threads); threads={first + 1} does not apply" in caplog.text
    assert all(not s.get_session_options().use_per_session_threads for s in m.model.sessions.values())
    assert m.caption(_image(), max_new_tokens=3).token_ids


@pytest.fixture(scope="module")
def converted(dirs, tmp_path_factory) -> Path:
    """A cache holding the caption model's conversion, made once: the fresh processes below load
    from it (no torch, no conversion of their own)."""
    root = tmp_path_factory.mktemp("converted")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BLIPCAM_CACHE", str(root))
        blip_core.load(dirs["caption"], precision="int8", threads=1, warmup=False)
    return root


def _fresh_process(script: str, **env: str):
    """Run ``script`` in a new interpreter: ONNX Runtime's thread pool is per process."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


_NO_SPIN_CHECK = """
for s in m.model.sessions.values():
    o = s.get_session_options()
    assert o.use_per_session_threads and o.intra_op_num_threads == 1, s
    assert o.get_session_config_entry("session.intra_op.allow_spinning") == "0"
import numpy as np
print(m.caption(np.full((48, 48, 3), 128, np.uint8), max_new_tokens=3).token_ids)
"""


def test_without_the_global_pool_each_session_has_a_pool_that_does_not_spin(dirs, converted):
    """onnxruntime releases before the Python global pool."""
    done = _fresh_process(f"""
import onnxruntime as ort, blip_core
del ort.set_global_thread_pool_sizes
m = blip_core.load({str(dirs["caption"])!r}, precision="int8", threads=1, warmup=False)
""" + _NO_SPIN_CHECK, BLIPCAM_CACHE=str(converted))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith("(")


def test_other_onnx_models_of_the_process_need_the_opt_out(dirs, converted):
    """Once the one pool exists, ORT refuses sessions with threads of their own (an app's other
    ONNX models); BLIPCAM_ORT_SHARED_POOL=0 keeps a non-spinning pool per session instead."""
    script = f"""
import glob, onnxruntime as ort, blip_core
m = blip_core.load({str(dirs["caption"])!r}, precision="int8", threads=1, warmup=False)
ort.InferenceSession(glob.glob({str(converted)!r} + "/int8/*/vision.int8.onnx")[0])
"""
    shared = _fresh_process(script, BLIPCAM_CACHE=str(converted))
    assert shared.returncode != 0 and "use_per_session_threads must be false" in shared.stderr
    opted_out = _fresh_process(script + _NO_SPIN_CHECK, BLIPCAM_ORT_SHARED_POOL="0", BLIPCAM_CACHE=str(converted))
    assert opted_out.returncode == 0, opted_out.stderr[-2000:]
    assert opted_out.stdout.strip().startswith("(")


def _as_pytorch_bin(folder, target):
    """The same checkpoint as an older Hugging Face folder: ``pytorch_model.bin``, no safetensors."""
    import shutil

    from safetensors.torch import load_file

    shutil.copytree(folder, target)
    torch.save(load_file(target / "model.safetensors"), target / "pytorch_model.bin")
    (target / "model.safetensors").unlink()
    return target


def test_a_converted_int8_model_runs_every_task_without_torch(dirs, cache, tmp_path):
    """torch is ~200 MB of resident memory: loading converted graphs, preprocessing, decoding
    and the matching heads must not import it, whatever the checkpoint's weight file."""
    folders = [*dirs.values(), _as_pytorch_bin(dirs["caption"], tmp_path / "bin")]
    for folder in folders:
        blip_core.load(folder, precision="int8", warmup=False)  # converts (with torch) into the cache
    done = _fresh_process(f"""
import sys, numpy as np, blip_core
img = np.full((48, 48, 3), 128, np.uint8)
cap, vqa, match, cap_bin = (blip_core.load(d, precision="int8", threads=1) for d in {[str(d) for d in folders]!r})
print(cap.caption(img, max_new_tokens=3).token_ids, cap.caption(img, num_beams=3, max_new_tokens=3).token_ids)
print(vqa.answer(img, "what is it?", max_new_tokens=2).text, vqa.answer(img, "what?", answers=["a", "b"]).text)
print(match.match(img, ["a dog", "a cat"])[0].itc, cap_bin.report.loaded > 0)
assert cap_bin.caption(img, max_new_tokens=3).token_ids == cap.caption(img, max_new_tokens=3).token_ids
print("torch loaded:", "torch" in sys.modules)
""")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("True\ntorch loaded: False"), done.stdout


@pytest.mark.slow  # multi-process or long: make test-slow (make test's time budget)
def test_int8_keeps_a_trained_models_greedy_captions():
    """On the trained demo model, int8 greedy captions equal fp32's on most scenes (the benchmark
    reports 200 scenes; per-tensor activation quantisation of the decoders gave 69% there)."""
    from blip_core.scenes import render

    fp32 = blip_core.load(blip_core.demo_model_path(), warmup=False)
    int8 = blip_core.load(blip_core.demo_model_path(), precision="int8", warmup=False)
    same = 0
    for i in range(40):
        img = render(10_000_000 + i, fp32.image_size).image
        kw = dict(prompt="a picture of ", max_new_tokens=30, min_new_tokens=1)
        same += fp32.caption(img, **kw).text == int8.caption(img, **kw).text
    assert same >= 34, f"{same}/40 identical"


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_damaged_pytorch_bin_is_a_clear_error_when_read(dirs, tmp_path, precision):
    """The .bin is read on first use now, not when the folder is opened: still a CheckpointError."""
    folder = _as_pytorch_bin(dirs["caption"], tmp_path / "bin")
    (folder / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(blip_core.CheckpointError, match="pytorch_model.bin.*damaged or not a PyTorch checkpoint"):
        blip_core.load(folder, precision=precision, warmup=False)


def _without_torch(script: str) -> str:
    """``script`` in a process where ``import torch`` fails, as on a machine without it."""
    return """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed here")
sys.meta_path.insert(0, _NoTorch())
""" + script


def test_blip_convert_writes_a_folder_that_runs_without_torch(dirs, cache, tmp_path, capsys):
    """Convert on one machine, copy the folder, run it where torch is not even installed."""
    import shutil

    from blip_core import cli

    out = tmp_path / "vqa-int8"
    assert cli.main(["convert", str(dirs["vqa"]), str(out), "--task", "vqa"]) == 0
    printed = capsys.readouterr()
    assert printed.out.splitlines() == [next(line for line in printed.out.splitlines() if line.startswith("wrote"))]
    assert f"wrote {out}" in printed.out
    bar = printed.err.replace("\r", "\n").splitlines()  # the bar on stderr, redrawn with \r, ends at 100%
    assert any(line.startswith("quantise answer_decoder: ") for line in bar)
    assert bar[-1].startswith("done: 100%|")
    assert {"config.json", "vocab.txt", "heads.npz", "vision.int8.onnx", "answer_decoder.step.int8.onnx"} <= \
        {p.name for p in out.iterdir()}
    moved = shutil.copytree(out, tmp_path / "elsewhere" / "model")  # converted graphs are portable
    expected = blip_core.load(dirs["vqa"], precision="int8").answer(_image(), "what is it?", max_new_tokens=3).token_ids
    done = _fresh_process(_without_torch(f"""
import numpy as np, blip_core
m = blip_core.load({str(moved)!r}, precision="int8", threads=1)
img = (np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)
print(m.answer(img, "what is it?", max_new_tokens=3).token_ids, m.report.format, m.report.loaded > 0)
"""))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [*str(expected).split(), "blipcam-int8", "True"]
    assert cli.main(["info", str(moved)]) == 0 and "int8 graphs" in capsys.readouterr().out


def test_converted_folders_refuse_what_they_cannot_do(dirs, tmp_path, capsys):
    import json

    from blip_core import cli

    out = tmp_path / "cap-int8"
    assert cli.main(["convert", str(dirs["caption"]), str(out)]) == 0
    with pytest.raises(blip_core.CheckpointError, match="holds int8 graphs.*precision='int8'"):
        blip_core.load(out)  # fp32: there are no weights to read
    with pytest.raises(blip_core.CheckpointError, match="no weights for vqa"):
        blip_core.load(out, precision="int8", task="vqa")
    assert cli.main(["convert", str(dirs["caption"]), str(out)]) == 2  # never over an existing folder
    assert "exists and is not an empty folder" in capsys.readouterr().err
    meta = json.loads((out / "config.json").read_text())
    for engine_version in (meta["engine"] - 1, meta["engine"] + 1, str(meta["engine"])):  # older, newer, garbled
        (out / "config.json").write_text(json.dumps({**meta, "engine": engine_version}))
        with pytest.raises(blip_core.CheckpointError, match="another blipcam release.*blip convert"):
            blip_core.load(out, precision="int8")


def test_without_torch_the_error_says_what_needed_it(dirs, cache, tmp_path):
    """Where torch is not installed (a Pi given converted folders), what needs it says so; the
    CLI prints that one line and exits 2."""
    image = tmp_path / "grey.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (128, 128, 128)).save(image)
    done = _fresh_process(_without_torch(f"""
import blip_core
from blip_core import cli
for precision in ("int8", "fp32"):
    try:
        blip_core.load({str(dirs["caption"])!r}, precision=precision, warmup=False)
    except blip_core.MissingTorchError as e:
        print(precision, "|", e)
print("cli", cli.main(["caption", {str(image)!r}, "--model", {str(dirs["caption"])!r}, "--precision", "int8"]))
"""))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert (lines[0].startswith("int8 | converting ")
            and "to int8 (once) needs torch, which is not installed" in lines[0])
    assert lines[1].startswith("fp32 | precision='fp32' needs torch") and "blip convert" in lines[1]
    assert lines[2] == "cli 2" and done.stderr.count("blip: error:") == 1 and "needs torch" in done.stderr


# ------------------------------------------------------------------ the engine version follows the graphs
SIGNATURE_FILE = Path(__file__).with_name("int8_graph_signature.json")
SIGNATURE_NAME = "tests/core/int8_graph_signature.json"
REGENERATE = ("BLIPCAM_UPDATE_GRAPH_SIGNATURE=1 .venv/bin/python -m pytest -q tests/core/test_int8.py "
              "-k graph_signature")


def _graph_signature(path: Path) -> str:
    """A hash of one graph's structure: per node its op type, domain, attributes and where each input
    comes from (a graph input, an initializer's name and shape, or the n-th output of the k-th node);
    the graph's inputs and outputs. Not node names nor the exporter's numbered names (``onnx::MatMul_171``),
    which churn, nor weight values, which are the checkpoint's, not the code's."""
    import hashlib
    import json
    import re

    import onnx
    from onnx import helper, numpy_helper

    graph = onnx.load(str(path)).graph
    unnumbered = lambda name: re.sub(r"_\d+$", "_#", name) if name.startswith("onnx::") else name  # noqa: E731
    source = {t.name: f"init {unnumbered(t.name)} {list(t.dims)} {t.data_type}" for t in graph.initializer}
    source |= {i.name: f"input {i.name}" for i in graph.input}

    def attribute(a):
        value = helper.get_attribute_value(a)
        if isinstance(value, onnx.TensorProto):  # a Constant's value: dtype, shape and bytes, not its name
            array = numpy_helper.to_array(value)
            value = [str(array.dtype), list(array.shape), hashlib.sha256(array.tobytes()).hexdigest()]
        elif isinstance(value, bytes):
            value = value.decode()
        return [a.name, value if isinstance(value, (int, float, str, list)) else repr(value)]

    nodes = []
    for k, node in enumerate(graph.node):
        nodes.append([node.op_type, node.domain, [source.get(i, i) for i in node.input],
                      sorted(attribute(a) for a in node.attribute)])
        source |= {o: f"node {k} output {n}" for n, o in enumerate(node.output)}
    shape = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    io = [[v.name, v.type.tensor_type.elem_type, shape(v)] for v in (*graph.input, *graph.output)]
    blob = json.dumps({"nodes": nodes, "io": io, "outputs": [source[o.name] for o in graph.output]}, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _graph_signatures(dirs, folder: Path) -> dict[str, str]:
    """The signature of every graph the converter writes (fp32, before ONNX Runtime's quantiser,
    whose output depends on its version and the CPU, both already in the cache key), after our own
    rewrite of the word tables, for the tiny seeded models of the three tasks."""
    import onnx

    signatures = {}
    for task, source in dirs.items():
        engine.convert(open_checkpoint(source), folder / task, quantized=False)
        for path in sorted((folder / task).glob("*.onnx")):
            model = onnx.load(str(path))
            engine.block_quantize_word_tables(model)
            onnx.save(model, str(path))
            signatures[path.name.removesuffix(".int8.onnx")] = _graph_signature(path)
    return dict(sorted(signatures.items()))


def test_graph_signature_changes_only_with_the_engine_version(dirs, tmp_path):
    """The cache is keyed on ENGINE_VERSION, not on the code's text: graphs that change without a
    bump would load a stale conversion. The recorded signature catches that."""
    import json

    from blip_core.int8.spec import ENGINE_VERSION

    signature = _graph_signatures(dirs, tmp_path)
    assert signature == _graph_signatures(dirs, tmp_path / "again")  # deterministic: nothing churns
    current = {"engine_version": ENGINE_VERSION, "torch": torch.__version__, "signature": signature}
    if os.environ.get("BLIPCAM_UPDATE_GRAPH_SIGNATURE") == "1":
        SIGNATURE_FILE.write_text(json.dumps(current, indent=2) + "\n")
    recorded = json.loads(SIGNATURE_FILE.read_text())
    changed = sorted(k for k in signature.keys() | recorded["signature"].keys()
                     if signature.get(k) != recorded["signature"].get(k))
    if changed and recorded["engine_version"] == ENGINE_VERSION:
        exporter = (f" (the exporter changed too: recorded with torch {recorded['torch']}, now {torch.__version__})"
                    if recorded["torch"] != torch.__version__ else "")
        pytest.fail(f"the int8 graphs changed ({', '.join(changed)}){exporter}: bump "
                    f"blip_core.int8.spec.ENGINE_VERSION and regenerate {SIGNATURE_NAME} (how: {REGENERATE})")
    assert recorded == current, f"ENGINE_VERSION is {ENGINE_VERSION}: regenerate {SIGNATURE_NAME} ({REGENERATE})"


def test_a_conversion_reports_its_steps_in_order(dirs, cache):
    """First use: each step of the conversion named, fractions rising to 1.0; a cached load: none."""
    seen = []
    blip_core.load(dirs["vqa"], precision="int8", progress=lambda f, m: seen.append((f, m)))
    steps = [(f, m.removeprefix(int8_cache.CONVERTING + ": ")) for f, m in seen if m.startswith(int8_cache.CONVERTING)]
    parts = ["vision", "answer_decoder", "text_encoder"]
    assert [m for _, m in steps] == engine.conversion_steps(parts) and "quantise answer_decoder" in dict(steps).values()
    fractions = [f for f, _ in steps]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    seen.clear()
    blip_core.load(dirs["vqa"], precision="int8", progress=lambda f, m: seen.append((f, m)))
    assert seen and not any(m.startswith(int8_cache.CONVERTING) for _, m in seen)


def test_blip_shows_a_bar_only_when_int8_converts_on_first_use(dirs, cache, tmp_path, capsys):
    from PIL import Image

    from blip_core import cli

    image = tmp_path / "a.png"
    Image.fromarray(_image()).save(image)
    argv = ["caption", str(image), "--model", str(dirs["caption"]), "--precision", "int8", "--json",
            "--max-new-tokens", "3", "--min-new-tokens", "1"]
    assert cli.main(argv) == 0
    first = capsys.readouterr()
    assert "caption" in json.loads(first.out)  # stdout: only the JSON line
    lines = first.err.replace("\r", "\n").splitlines()
    assert any(line.startswith("converting to int8 (once): export vision: ") for line in lines)
    assert any(line.startswith("converting to int8 (once): done: 100%|") for line in lines)
    assert cli.main(argv) == 0
    second = capsys.readouterr()
    assert second.err == "" and "caption" in json.loads(second.out)  # cached: nothing to show
