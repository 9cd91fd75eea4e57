"""`blip bench --family blip2` on a tiny BLIP-2 OPT: both workloads timed per configuration, the
teacher written by transformers and forced through ours, the BLIP-2 section (re)written at the end
of the report with the BLIP sections kept. The children run in this process (``_run_child``
patched) to stay fast; the real bench runs them as subprocesses for a clean peak RSS."""

from __future__ import annotations

import argparse
import json

import pytest

from blip_core import bench, bench_blip2
from tests.helpers import save_blip2_hf, tiny_blip2_hf


def _in_process(argv):
    """``_run_child`` without the subprocess: same arguments, same JSON result."""
    p = argparse.ArgumentParser()
    p.add_argument("what")
    p.add_argument("config")
    p.add_argument("folder")
    p.add_argument("--threads", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--teacher")
    a = p.parse_args(argv)
    try:
        from pathlib import Path

        return json.loads(json.dumps(bench_blip2.child(a.config, Path(a.folder), a.threads, a.repeats,
                                                       Path(a.teacher))))
    except Exception as e:  # as a failed subprocess reports itself
        raise RuntimeError(str(e)) from e


def test_blip2_bench_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("BLIPCAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bench_blip2, "_run_child", _in_process)
    monkeypatch.setattr(bench_blip2, "CONFIGS", ("transformers-fp32", "ours-fp32"))
    monkeypatch.setattr(bench_blip2, "AGREEMENT_IMAGES", 2)
    monkeypatch.setattr(bench_blip2, "AGREEMENT_TOKENS", 5)
    folder = save_blip2_hf(tiny_blip2_hf("opt"), tmp_path / "tiny", "opt")
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nthe BLIP figures\n")
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args(["--family", "blip2", "--repeats", "1", "--threads", "2", "--output", str(out),
                         "--json", str(tmp_path / "r.json")])
    assert bench_blip2.main(args, folder=folder) == 0
    runs = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert set(runs) == {"transformers-fp32", "ours-fp32"}
    for r in runs.values():
        assert len(r["caption_s"]) == 1 and len(r["follow_up_s"]) == 1 and r["vmhwm_mb"] > 0
    a = runs["ours-fp32"]["agreement"]
    assert a["positions"] == 10 and a["agree"] >= 9  # same weights, same fp32 arithmetic up to rounding
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nthe BLIP figures\n") and text.count(bench_blip2.SECTION) == 1
    assert "| new-frame caption (20 tokens) | ours fp32 |" in text and "Raspberry Pi 5" in text
    # a second run reuses transformers' figures and replaces the section rather than adding one
    args = p.parse_args(["--family", "blip2", "--repeats", "1", "--skip-transformers", "--output", str(out)])
    monkeypatch.setattr(bench_blip2, "CONFIGS", ("transformers-fp32",))
    assert bench_blip2.main(args, folder=folder) == 0
    assert out.read_text().count(bench_blip2.SECTION) == 1


@pytest.mark.parametrize("n", [1, 3])
def test_random_checkpoint_layout(tmp_path, n):
    """The shard writer's folder loads in transformers with every weight present, drawn by our rule."""
    import torch
    import transformers

    text = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=4,
                max_position_embeddings=64, word_embed_proj_dim=32, eos_token_id=2, bos_token_id=2, pad_token_id=1)
    cfg = bench_blip2.blip2_config(text, queries=4, image_token=63)
    cfg.vision_config.update(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                  image_size=32, patch_size=8))
    cfg.qformer_config.update(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                   encoder_hidden_size=32))
    total = 4 * sum(p.numel() for p in transformers.Blip2ForConditionalGeneration(cfg).parameters())
    folder = bench_blip2.write_random_checkpoint(tmp_path / "ck", cfg, shard_bytes=total // n + 1)
    shards = len(list(folder.glob("*.safetensors")))
    assert shards == 1 if n == 1 else shards >= n and (folder / "model.safetensors.index.json").is_file()
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["Blip2ForConditionalGeneration"]
    m, info = transformers.Blip2ForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert 0.01 < m.vision_model.encoder.layers[0].mlp.fc1.weight.std() < 0.03  # not transformers' 1e-10
    assert m.query_tokens.abs().sum() > 0
    assert torch.equal(m.language_model.lm_head.weight, m.language_model.get_input_embeddings().weight)
