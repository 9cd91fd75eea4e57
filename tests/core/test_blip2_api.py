"""BLIP-2 through the public API and the CLI: ``blip_core.load`` picks the family from a Hugging Face
BLIP-2 folder (tiny random weights saved by transformers), and captions, free-form generations,
answers and matches equal transformers' on the same weights and the same pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import blip_core
from blip_core import cli
from blip_core.api_blip2 import Blip2
from blip_core.errors import BadInputError, CheckpointError, InsufficientMemoryError, WrongTaskError
from blip_core.preprocess import pixel_array
from tests.helpers import save_blip2_hf, tiny_blip2_hf

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def blip2(tmp_path_factory):
    """kind -> (transformers model, its saved folder, our loaded model)."""
    root = tmp_path_factory.mktemp("blip2")
    out = {}
    for seed, kind in enumerate(("opt", "t5", "itm")):
        hf = tiny_blip2_hf(kind, seed=seed)
        folder = save_blip2_hf(hf, root / kind, kind)
        out[kind] = (hf, folder, blip_core.load(folder))
    return out


def hf_continuation(hf, kind: str, image, prompt_ids: list[int], num_beams: int, max_new: int = 8) -> tuple:
    """transformers' new tokens for ``prompt_ids`` after the image (placeholders first, as its processor does)."""
    pixels = torch.from_numpy(pixel_array(image, 32))
    ids = torch.tensor([[hf.config.image_token_index] * hf.config.num_query_tokens + prompt_ids])
    eos = hf.config.text_config.eos_token_id
    out = hf.generate(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                      num_beams=num_beams, max_new_tokens=max_new, min_new_tokens=1, eos_token_id=eos,
                      pad_token_id=hf.config.text_config.pad_token_id)[0].tolist()
    new = out[ids.shape[1]:] if kind == "opt" else out[1:]  # decoder-only returns the input too; T5 its start id
    return tuple(new[: new.index(eos) + 1] if eos in new else new)


def test_load_picks_the_family_and_reports(blip2):
    for kind in ("opt", "t5", "itm"):
        m = blip2[kind][2]
        assert isinstance(m, Blip2) and m.family == "blip2"
        assert m.report.format == "hf-blip2" and not m.report.missing and not m.report.unexpected
    assert blip2["opt"][2].tasks == {"caption", "vqa"} and blip2["itm"][2].tasks == {"match"}


@pytest.mark.parametrize("kind", ["opt", "t5"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_caption_and_generate_equal_transformers(blip2, images, kind, num_beams):
    hf, _, m = blip2[kind]
    for image in images[:2]:
        for prompt in ("", "a photo of"):
            r = m.caption(image, prompt=prompt, max_new_tokens=8, min_new_tokens=1, num_beams=num_beams)
            assert r.token_ids == hf_continuation(hf, kind, image, m.tokenizer.prompt_ids(prompt), num_beams)
            assert r.prompt == prompt and r.timings.vision_ms > 0
    # different images give different captions: the image reaches the LLM
    texts = {m.caption(image, max_new_tokens=8).token_ids for image in images}
    assert len(texts) > 1


@pytest.mark.parametrize("kind", ["opt", "t5"])
def test_answer_uses_the_template_and_reuses_the_frame(blip2, images, kind):
    hf, _, m = blip2[kind]
    f = m.encode_image(images[0])
    a = m.answer(f, "what colour is the dog ?", max_new_tokens=6)
    template = {"opt": "Question: {} Answer:", "t5": "Question: {} Short answer:"}[kind]
    g = m.generate(f, template.format("what colour is the dog ?"), max_new_tokens=6, length_penalty=0.0)
    assert a.token_ids == g.token_ids
    assert a.token_ids == hf_continuation(hf, kind, images[0], m.tokenizer.prompt_ids(template.format(
        "what colour is the dog ?")), 1, max_new=6)
    assert a.timings.vision_ms == 0  # the frame was encoded once
    if kind == "opt":  # the LLM's keys/values over the visual prefix: computed once, reused by a follow-up
        prefix = f.cache["prefix"]
        b = m.answer(f, "what is it ?", max_new_tokens=6)
        assert f.cache["prefix"] is prefix
        assert b.token_ids == m.answer(images[0], "what is it ?", max_new_tokens=6).token_ids
    custom = m.answer(f, "what is it ?", template="Q: {} A:", max_new_tokens=6)
    assert custom.token_ids == m.generate(f, "Q: what is it ? A:", max_new_tokens=6, length_penalty=0.0).token_ids
    with pytest.raises(BadInputError, match="exactly one"):
        m.answer(f, "what?", template="no placeholder")
    with pytest.raises(BadInputError, match="empty"):
        m.answer(f, "  ")


def test_match_equals_transformers_retrieval(blip2, images):
    hf, _, m = blip2["itm"]
    texts = ["a red circle", "two dogs on the square", "a cat"]
    res = m.match(images[1], texts)
    ids, mask = m.tokenizer(texts, first="cls", max_length=35)
    pixels = torch.from_numpy(pixel_array(images[1], 32)).expand(len(texts), -1, -1, -1)
    with torch.no_grad():
        itm = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask, use_image_text_matching_head=True)
        itc = hf(pixel_values=pixels[:1], input_ids=ids, attention_mask=mask, use_image_text_matching_head=False)
    prob = itm.logits_per_image.softmax(-1)[:, 1]
    np.testing.assert_allclose([r.itm for r in res], prob.numpy(), atol=1e-4)
    np.testing.assert_allclose([r.itc for r in res], itc.logits_per_image[0].numpy(), atol=1e-4)
    assert np.ptp([r.itm for r in res]) > 1e-3  # the texts are told apart
    with pytest.raises(WrongTaskError, match="matching model"):
        m.generate(images[0], "a photo of")


def test_a_load_that_cannot_fit_is_refused_up_front(blip2, monkeypatch):
    folder = blip2["opt"][1]
    monkeypatch.setattr("blip_core.resources.mem_available", lambda: 1000)
    with pytest.raises(InsufficientMemoryError, match=r"needs about .* GB of memory in fp32 but only 0\.0 GB"):
        blip_core.load(folder)


def test_bad_config_is_refused_before_allocation(blip2, tmp_path):
    import shutil

    folder = shutil.copytree(blip2["opt"][1], tmp_path / "bad")
    meta = json.loads((folder / "config.json").read_text())
    meta["text_config"]["num_attention_heads"] = 10**9
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"text_config\.num_attention_heads must be an integer"):
        blip_core.load(folder)


def test_cli_asks_generates_and_describes_blip2(blip2, images, capsys):
    folder = str(blip2["opt"][1])
    assert cli.main(["ask", "--model", folder, str(images[0]), "what is it ?", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["answer"] == blip2["opt"][2].answer(images[0], "what is it ?").text
    assert cli.main(["generate", "--model", folder, str(images[0]), "Question: what is it ? Answer:",
                     "--max-new-tokens", "5"]) == 0
    assert cli.main(["info", folder]) == 0
    assert "BLIP-2" in capsys.readouterr().out
    assert cli.main(["ask", "--model", folder, str(images[0]), "what?", "--answers", "red,blue"]) == 2
    assert "rank mode" in capsys.readouterr().err


def test_a_lavis_pth_of_the_same_weights_loads_to_the_same_captions(tmp_path, images):
    """LAVIS's layout (``visual_encoder.*`` with q/v biases apart, ``Qformer.bert.*``, ``ln_vision``,
    ``opt_proj``, ``opt_model.*``), architecture inferred from the shapes; 64-wide heads, the width
    LAVIS's own models use for every part whose head count a shape cannot tell."""
    from tests.helpers import lavis_names

    hf = tiny_blip2_hf("opt", seed=5, width=64, heads=1)
    folder = save_blip2_hf(hf, tmp_path / "hf", "opt")
    pth = folder / "blip2_opt.pth"
    torch.save({"model": lavis_names(hf.state_dict(), "opt"), "config": {"model": {"arch": "blip2_opt"}}}, pth)
    from_hf, from_lavis = blip_core.load(folder), blip_core.load(pth)
    assert from_lavis.report.format == "lavis-blip2" and not from_lavis.report.missing
    assert from_lavis.cfg.vision == from_hf.cfg.vision and from_lavis.cfg.llm == from_hf.cfg.llm
    shape = lambda q: (q.width, q.layers, q.heads, q.mlp_dim, q.cross_every, q.num_queries)  # noqa: E731
    assert shape(from_lavis.cfg.qformer) == shape(from_hf.cfg.qformer)
    for image in images[:2]:
        a, b = from_hf.caption(image, max_new_tokens=8), from_lavis.caption(image, max_new_tokens=8, num_beams=1)
        assert a.token_ids == b.token_ids
    # a stage-1/2 file without the frozen parts is refused with what to load instead
    bare = {k: v for k, v in lavis_names(hf.state_dict(), "opt").items() if not k.startswith("visual_encoder.")}
    torch.save({"model": bare}, tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="holds no image encoder"):
        blip_core.load(tmp_path / "bare.pth")


def test_missing_weights_are_refused_and_reported(blip2, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(blip2["t5"][1], tmp_path / "partial")
    tensors = load_file(folder / "model.safetensors")
    del tensors["language_projection.weight"]
    tensors["language_model.some_new_head.weight"] = torch.zeros(2, 2)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lacks 1 weights of language_projection"):
        blip_core.load(folder)


def test_cli_refuses_a_model_that_cannot_fit_in_one_line(blip2, images, capsys, monkeypatch):
    monkeypatch.setattr("blip_core.resources.mem_available", lambda: 10**6)
    assert cli.main(["caption", "--model", str(blip2["opt"][1]), str(images[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs about" in err and "available" in err


def test_a_sharded_hub_model_is_fetched_shard_by_shard_and_loads(blip2, tmp_path, monkeypatch, images):
    """BLIP-2's hub folders come in shards named by model.safetensors.index.json: fetch downloads
    each, and the load reads them lazily (same captions as the single-file folder)."""
    import shutil

    from blip_core import hub

    hf, single, ours = blip2["opt"]
    remote = tmp_path / "remote"
    hf.save_pretrained(remote, max_shard_size="200KB")
    shutil.copy(single / "tokenizer.json", remote / "tokenizer.json")
    assert (remote / "model.safetensors.index.json").is_file() and not (remote / "model.safetensors").exists()
    cache, asked = tmp_path / "cache", []

    def download(repo_id, filename, local_only, progress):  # the hub, answered from a local folder
        asked.append(filename)
        if not (remote / filename).is_file():
            return None
        cache.mkdir(exist_ok=True)
        return Path(shutil.copy(remote / filename, cache / filename))

    monkeypatch.setattr(hub, "_download", download)
    folder = hub.fetch("Salesforce/blip2-tiny")
    shards = sorted(p.name for p in remote.glob("model-*.safetensors"))
    assert len(shards) > 1 and all(s in asked for s in shards) and "tokenizer.json" in asked
    m = blip_core.load(folder)
    assert m.caption(images[0], max_new_tokens=6).token_ids == ours.caption(images[0], max_new_tokens=6).token_ids


def test_cli_converts_a_blip2_folder_that_then_answers_in_int8(blip2, images, tmp_path, capsys):
    out = tmp_path / "opt-int8"
    assert cli.main(["convert", str(blip2["opt"][1]), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert cli.main(["ask", "--model", str(out), "--precision", "int8", str(images[0]), "what is it ?", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    int8 = blip_core.load(out, precision="int8")
    assert int8.precision == "int8" and int8.family == "blip2"
    assert record["answer"] == int8.answer(images[0], "what is it ?").text and record["timings_ms"]["total_ms"] > 0
    assert cli.main(["info", str(out)]) == 0
    assert "int8 graphs; BLIP-2" in capsys.readouterr().out


def _clip_lavis_names(clip) -> dict:
    """A transformers CLIPVisionModel's weights under LAVIS clip_vit's names (OpenAI CLIP's)."""
    sd, out = clip.state_dict(), {}
    out["visual_encoder.conv1.weight"] = sd["embeddings.patch_embedding.weight"]
    out["visual_encoder.class_embedding"] = sd["embeddings.class_embedding"]
    out["visual_encoder.positional_embedding"] = sd["embeddings.position_embedding.weight"]
    for p in ("weight", "bias"):
        out[f"visual_encoder.ln_pre.{p}"] = sd[f"pre_layrnorm.{p}"]
    for i in range(clip.config.num_hidden_layers):
        a, b = f"encoder.layers.{i}.", f"visual_encoder.transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            out[f"{b}attn.in_proj_{p}"] = torch.cat([sd[f"{a}self_attn.{n}_proj.{p}"] for n in "qkv"])
            out[f"{b}attn.out_proj.{p}"] = sd[f"{a}self_attn.out_proj.{p}"]
            out[f"{b}ln_1.{p}"], out[f"{b}ln_2.{p}"] = sd[f"{a}layer_norm1.{p}"], sd[f"{a}layer_norm2.{p}"]
            out[f"{b}mlp.c_fc.{p}"], out[f"{b}mlp.c_proj.{p}"] = sd[f"{a}mlp.fc1.{p}"], sd[f"{a}mlp.fc2.{p}"]
    return out


def test_a_lavis_pth_with_the_clip_vit_l_variant(tmp_path, images):
    """BLIP-2's ViT-L/14 variant (LAVIS ``vit_model: clip_L``: CLIP's ViT without its last layer and
    ln_post, then ln_vision): transformers' CLIPVisionModel is the oracle for the image encoder, and
    transformers' Q-Former over those features for the soft prompt."""
    from tests.helpers import lavis_names, reinit_, tiny_llm_tokenizer

    clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1, image_size=32,
        patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5)).eval()
    reinit_(clip, seed=7)
    hf = tiny_blip2_hf("opt", seed=8, width=64, heads=1)
    hf.vision_model.post_layernorm.eps = 1e-5  # LAVIS's ln_vision: torch's default eps
    sd = {k: v for k, v in lavis_names(hf.state_dict(), "opt").items() if not k.startswith("visual_encoder.")}
    sd.update(_clip_lavis_names(clip))
    torch.save({"model": sd}, tmp_path / "blip2_vitL.pth")
    tiny_llm_tokenizer(tmp_path, "opt")  # LAVIS reads the LLM's tokenizer from the hub; ours beside the file
    m = blip_core.load(tmp_path / "blip2_vitL.pth")
    assert m.cfg.vision.clip and m.cfg.vision.eps == 1e-5 and not m.report.missing and not m.report.unexpected
    pixels = torch.from_numpy(pixel_array(images[0], 32))
    with torch.no_grad():
        tokens = clip(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        ln = hf.vision_model.post_layernorm
        want = torch.nn.functional.layer_norm(tokens, tokens.shape[-1:], ln.weight, ln.bias, 1e-5)
        torch.testing.assert_close(m.model.encode_image(pixels), want, atol=1e-4, rtol=0)
        queries = hf.qformer(query_embeds=hf.query_tokens, encoder_hidden_states=want).last_hidden_state
        torch.testing.assert_close(m.model.encode_frame(pixels), hf.language_projection(queries), atol=1e-4, rtol=0)
    assert m.caption(images[0], max_new_tokens=4).timings.total_ms > 0
