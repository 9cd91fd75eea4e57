"""The BLIP-2 commands end to end on tiny settings: the scene-text LLM (loadable by transformers'
OPTForCausalLM and by blip_core), stage 1 from a BLIP checkpoint, stage 2 from stage 1 and the
LLM, exact resume, and the saved stage-2 model served by ``blip_core.load``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.tiny_runs import records
from training.blip2 import lm_pretrain
from training.blip2.build import read_llm
from training.blip2.config import Blip2TrainConfig, LmConfig
from training.config import parse
from training.pretrain_blip2 import parse_args
from training.pretrain_blip2 import run as run_blip2
from training.run_state import load_state

LM_TINY = dict(width=32, layers=1, heads=2, ffn_dim=64, max_positions=96, max_tokens=64, scene_count=64,
               batch_size=16, lr=1e-2, warmup_steps=2, log_every=1, progress=False)


def _cfg(cls, out: Path, **values):
    return parse(cls, None, [f"{k}={v}" for k, v in {"output_dir": str(out), **values}.items()])


def _stage(stage: str, out: Path, **values) -> Blip2TrainConfig:
    tiny = dict(num_queries=4, embed_dim=16, image_size=16, scene_count=32, batch_size=8, max_tokens=24, lr=1e-3,
                warmup_steps=1, log_every=1, progress=False)
    return parse(Blip2TrainConfig, None, [f"{k}={v}" for k, v in {**tiny, "output_dir": str(out), **values}.items()],
                 stage=stage)


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm")
    lm_pretrain.run(_cfg(LmConfig, out, max_steps=8, **LM_TINY))
    return out


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, pretrained) -> Path:
    out = tmp_path_factory.mktemp("stage1")
    run_blip2(_stage("stage1", out, init=pretrained, max_steps=3))
    return out


def test_lm_pretraining_loss_falls_and_transformers_loads_it(lm):
    from transformers import OPTForCausalLM

    recs = records(lm)
    assert [r["step"] for r in recs] == list(range(1, 9)) and recs[-1]["loss_lm"] < recs[0]["loss_lm"] - 0.5
    folder = lm / "checkpoints" / "step-0000008"
    meta = json.loads((folder / "config.json").read_text())
    assert meta["model_type"] == "opt" and (folder / "tokenizer.json").is_file()
    hf = OPTForCausalLM.from_pretrained(folder).eval()
    cfg, tensors, tok = read_llm(folder)  # blip_core's reader: config, tensors, LlmTokenizer
    from blip_core.model.opt import OptLM

    ours = OptLM(cfg)
    ours.load_state_dict({k: tensors.get(k) for k in tensors.keys()}, strict=True)
    ids = torch.tensor([tok.prompt_ids("a red circle. Question: what colour is the circle? Answer:")])
    with torch.no_grad():
        assert torch.allclose(ours.logits(ours(ours.embed(ids))), hf(ids).logits, atol=1e-5)
    assert hf.config.vocab_size == cfg.vocab_size and cfg.eos_id == tok.eos_id
    # read_llm also accepts the output_dir (its newest checkpoint)
    assert read_llm(lm)[0] == cfg


def test_stage_commands_parse_the_positional_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("num_queries: 6\n")
    cfg = parse_args(["stage1", str(path), "lr=3e-4"])
    assert (cfg.stage, cfg.num_queries, cfg.lr) == ("stage1", 6, 3e-4)
    assert parse_args(["stage2", "--config", str(path), "llm=x"]).llm == "x"


def test_stage1_runs_from_a_blip_checkpoint(stage1):
    recs = records(stage1)
    assert {"loss_itc", "loss_itm", "loss_lm", "temp"} <= set(recs[0])
    folder = stage1 / "checkpoints" / "step-0000003"
    config = json.loads((folder / "config.json").read_text())["blipcam"]
    assert config["family"] == "blip2" and config["llm_kind"] is None and config["qformer"]["text_input"]
    assert "lm_head.dense.weight" in load_state(folder)["objective"]


def test_stage1_resume_is_exact(tmp_path, pretrained):
    common = dict(init=pretrained, max_steps=4, save_every=2, keep_checkpoints=5)
    run_blip2(_stage("stage1", tmp_path / "a", **common))
    run_blip2(_stage("stage1", tmp_path / "b", resume=tmp_path / "a" / "checkpoints" / "step-0000002", **common))
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    keys = ("loss_itc", "loss_itm", "loss_lm", "lr", "temp")
    assert [r["step"] for r in b] == [3, 4]
    assert [[r[k] for k in keys] for r in a[2:]] == [[r[k] for k in keys] for r in b]
    wa = load_file(str(tmp_path / "a" / "checkpoints" / "step-0000004" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "step-0000004" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_stage2_from_stage1_keeps_the_llm_and_loads_with_blip_core(tmp_path, stage1, lm):
    import blip_core
    from blip_core.api_blip2 import Blip2

    out = tmp_path / "s2"
    run_blip2(_stage("stage2", out, init=stage1, llm=lm, max_steps=3))
    recs = records(out)
    assert [r["step"] for r in recs] == [1, 2, 3] and all(r["loss_lm"] > 0 for r in recs)
    folder = out / "checkpoints" / "step-0000003"
    saved = load_file(str(folder / "model.safetensors"))
    llm = load_file(str(lm / "checkpoints" / "step-0000008" / "model.safetensors"))
    assert all(torch.equal(saved[f"language_model.{k}"], v) for k, v in llm.items())  # frozen: unchanged
    s1 = load_file(str(stage1 / "checkpoints" / "step-0000003" / "model.safetensors"))
    assert not torch.equal(saved["qformer.query_tokens"], s1["qformer.query_tokens"])  # trained
    assert torch.equal(saved["vision.blocks.0.attn.qkv.weight"], s1["vision.blocks.0.attn.qkv.weight"])  # frozen
    model = blip_core.load(str(folder))
    assert isinstance(model, Blip2)
    from blip_core import scenes

    answer = model.answer(scenes.render(scenes.stream_seed(5, 0), 16, 2).image, "what colour is the circle?")
    assert isinstance(answer.text, str)


def test_stage2_without_stage1_starts_from_the_text_encoder(tmp_path, pretrained, lm):
    out = tmp_path / "s2"
    run_blip2(_stage("stage2", out, init=pretrained, llm=lm, max_steps=2, task="vqa", scene_count=16))
    assert [r["step"] for r in records(out)] == [1, 2]


def test_stage2_qformer_from_the_text_encoder_or_from_scratch(tmp_path, pretrained, lm):
    """The ablation's two starting points: the image encoder always from the BLIP checkpoint, the
    Q-Former's self-attention from its text encoder, or random (qformer_from=scratch)."""
    from blip_core.checkpoints import load_model
    from training.blip2.build import stage2_model

    blip = load_model(pretrained)[0].state_dict()
    text_q = blip["text_encoder.layers.0.self_attn.query.weight"]
    for origin, same in (("text_encoder", True), ("scratch", False)):
        model = stage2_model(_stage("stage2", tmp_path / origin, init=pretrained, llm=lm, qformer_from=origin))[0]
        sd = model.state_dict()
        assert torch.equal(sd["qformer.layers.0.self_attn.query.weight"], text_q) is same, origin
        assert torch.equal(sd["vision.blocks.0.attn.qkv.weight"], blip["vision.blocks.0.attn.qkv.weight"])


@pytest.mark.slow  # multi-process or long: make test-slow (make test's time budget)
def test_stage1_under_torchrun_two_processes(tmp_path, pretrained):
    """gloo on CPU: ITC negatives and ITM candidates gathered over both ranks (equal padding),
    rank 0 logs and saves, every rank's random stream is kept."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    args = dict(init=pretrained, num_queries=4, embed_dim=16, image_size=16, scene_count=32, batch_size=4,
                max_tokens=24, max_steps=2, log_every=1, progress="false", output_dir=tmp_path)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "training.pretrain_blip2", "stage1", *[f"{k}={v}" for k, v in args.items()]],
                       capture_output=True, text=True, cwd=root, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    recs = records(tmp_path)
    assert [r["step"] for r in recs] == [1, 2] and all(r["images_per_s"] > 0 for r in recs)
    state = load_state(tmp_path / "checkpoints" / "step-0000002")
    assert state["world"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])


def test_experiment_evaluation_on_held_out_scenes(tmp_path, stage1, lm):
    """The zero-shot experiment's measurements (training.blip2.evaluate) on tiny runs: the LLM alone
    decodes as transformers' greedy generate does; a stage-2 model answers every question through
    the public API; accuracy is split by question kind; stage 1 is scored on captions and ITC."""
    from transformers import OPTForCausalLM

    import blip_core
    from training.blip2.evaluate import (
        TextLlm,
        accuracy_report,
        held_out_scenes,
        model_answers,
        model_captions,
        random_caption,
        stage1_metrics,
    )

    held = held_out_scenes(97, 3, 16, 2)
    n_q = sum(len(s.questions) for s in held)
    llm = TextLlm(lm)
    folder = lm / "checkpoints" / "step-0000008"
    hf = OPTForCausalLM.from_pretrained(folder).eval()
    prompt = f"{held[0].captions[0]}. Question: {held[0].questions[0]} Answer:"
    ids = torch.tensor([llm.tokenizer.prompt_ids(prompt)])
    want = hf.generate(ids, do_sample=False, num_beams=1, max_new_tokens=5, min_new_tokens=1,
                       eos_token_id=2, pad_token_id=1)[0, ids.shape[1]:]
    assert llm.continue_text(prompt) == llm.tokenizer.decode([t for t in want.tolist() if t != 1])
    ceiling = llm.answers(held, random_caption(0), "ceiling", progress=False)
    assert len(ceiling) == n_q and ceiling == llm.answers(held, random_caption(0), "again", progress=False)

    out = tmp_path / "s2"
    run_blip2(_stage("stage2", out, init=stage1, llm=lm, max_steps=2))
    loaded = blip_core.load(str(out / "checkpoints" / "step-0000002"))
    preds = model_answers(loaded, held, "zs", progress=False)
    report = accuracy_report(preds, held)
    captions = model_captions(loaded, held)
    assert captions["samples"][0]["prediction"] == loaded.caption(held[0].image).text and captions["cider"] >= 0
    assert report["n_questions"] == n_q and set(report["by_kind"]) == {k for s in held for k in s.kinds}

    # accuracy per kind: every answer right but the counts
    truth = [a if k != "count" else "seventeen" for s in held for a, k in zip(s.answers, s.kinds)]
    exact = accuracy_report(truth, held)
    n_count = sum(k == "count" for s in held for k in s.kinds)
    assert exact["by_kind"].pop("count", 0.0) == 0.0 and set(exact["by_kind"].values()) == {1.0}
    assert exact["accuracy"] == pytest.approx(1 - n_count / n_q)

    s1 = stage1_metrics(stage1, held, batch_size=2)
    assert s1["n_images"] == 3 and s1["n_texts"] == sum(len(s.captions) for s in held)
    assert 0.0 <= s1["retrieval_itc"]["txt_r1"] <= 100.0 and s1["caption"]["cider"] >= 0.0
    assert all(isinstance(x["prediction"], str) for x in s1["caption"]["samples"][:3])
