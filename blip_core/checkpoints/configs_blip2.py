"""Our BLIP-2 config from a transformers ``config.json`` (``model_type: blip-2``). Every value is
checked by ``blip_core.model.blip2_config.checked_blip2_config`` before anything is built; what a
file omits takes transformers' class defaults, as ``from_pretrained`` would.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any, Mapping

from blip_core.errors import CheckpointError
from blip_core.model.blip2_config import Blip2Config, checked_blip2_config
from blip_core.model.config import MISSING, as_object

HF_BLIP2_ARCHITECTURES = {
    "Blip2ForConditionalGeneration": "generate",
    "Blip2ForImageTextRetrieval": "match",
}

# transformers' defaults for fields a hub config.json may leave out
VISION_DEFAULTS = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                       image_size=224, patch_size=14, layer_norm_eps=1e-6)
QFORMER_DEFAULTS = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=512, layer_norm_eps=1e-12, pad_token_id=0,
                        cross_attention_frequency=2, use_qformer_text_input=False)
OPT_DEFAULTS = dict(vocab_size=50272, hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12,
                    max_position_embeddings=2048, do_layer_norm_before=True, word_embed_proj_dim=None,
                    pad_token_id=1, bos_token_id=2, eos_token_id=2, activation_function="relu", enable_bias=True,
                    layer_norm_elementwise_affine=True, _remove_final_layer_norm=False)
T5_DEFAULTS = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=None,
                   num_heads=8, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   layer_norm_epsilon=1e-6, feed_forward_proj="relu", dense_act_fn=None, tie_word_embeddings=True,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)

# our field -> (sub-config, its key)
VISION_FIELDS = {"image_size": "image_size", "patch_size": "patch_size", "width": "hidden_size",
                 "layers": "num_hidden_layers", "heads": "num_attention_heads", "mlp_dim": "intermediate_size",
                 "eps": "layer_norm_eps"}
QFORMER_FIELDS = {"width": "hidden_size", "layers": "num_hidden_layers", "heads": "num_attention_heads",
                  "mlp_dim": "intermediate_size", "cross_every": "cross_attention_frequency",
                  "text_input": "use_qformer_text_input", "vocab_size": "vocab_size",
                  "max_positions": "max_position_embeddings", "eps": "layer_norm_eps", "pad_id": "pad_token_id"}
OPT_FIELDS = {"vocab_size": "vocab_size", "width": "hidden_size", "embed_dim": "word_embed_proj_dim",
              "layers": "num_hidden_layers", "heads": "num_attention_heads", "ffn_dim": "ffn_dim",
              "max_positions": "max_position_embeddings", "pre_norm": "do_layer_norm_before",
              "pad_id": "pad_token_id", "bos_id": "bos_token_id", "eos_id": "eos_token_id"}
T5_FIELDS = {"vocab_size": "vocab_size", "width": "d_model", "kv_dim": "d_kv", "heads": "num_heads",
             "ffn_dim": "d_ff", "layers": "num_layers", "decoder_layers": "num_decoder_layers",
             "buckets": "relative_attention_num_buckets", "max_distance": "relative_attention_max_distance",
             "eps": "layer_norm_epsilon", "tie_embeddings": "tie_word_embeddings", "pad_id": "pad_token_id",
             "eos_id": "eos_token_id", "decoder_start_id": "decoder_start_token_id"}
FIXED_OPT = {"activation_function": "relu", "enable_bias": True, "layer_norm_elementwise_affine": True,
             "_remove_final_layer_norm": False}  # the only OPT variants our decoder implements


def _sub(hf: Mapping[str, Any], key: str, defaults: dict, where: str) -> dict:
    given = hf.get(key)
    return {**defaults, **as_object({} if given is None else given, where + key)}


def _t5_act(t5: dict, where: str) -> tuple[bool, Any]:
    """(gated, activation) from ``feed_forward_proj`` (``relu``, ``gated-gelu``, ...) and an
    explicit ``dense_act_fn`` (BLIP-2's Flan-T5 sets exact ``gelu``, overriding T5's ``gelu_new``)."""
    proj = t5.get("feed_forward_proj")
    if not isinstance(proj, str) or proj not in ("relu", "gelu", "gated-gelu", "gated-relu"):
        raise CheckpointError(f"{where}text_config.feed_forward_proj must be relu, gelu, gated-gelu or gated-relu, "
                              f"got {reprlib.repr(proj)}")
    gated = proj.startswith("gated-")
    act = t5.get("dense_act_fn") or ("gelu_new" if proj == "gated-gelu" else proj.removeprefix("gated-"))
    return gated, act


def hf_blip2_config(hf: dict, where: str = "config.json: ") -> Blip2Config:
    """Our config from a transformers BLIP-2 ``config.json`` (fields checked; errors prefixed with
    ``where``). The ITM model (``Blip2ForImageTextRetrieval``) has no LLM."""
    listed = hf.get("architectures")
    listed_ok = listed if isinstance(listed, list) else []
    archs = [a for a in listed_ok if isinstance(a, str) and a in HF_BLIP2_ARCHITECTURES]
    if not archs:
        raise CheckpointError(f"{where}unsupported BLIP-2 architecture {reprlib.repr(listed)}; expected one of "
                              f"{sorted(HF_BLIP2_ARCHITECTURES)}")
    vision = _sub(hf, "vision_config", VISION_DEFAULTS, where)
    qformer = _sub(hf, "qformer_config", QFORMER_DEFAULTS, where)
    values: dict[str, Any] = {f"vision.{ours}": vision.get(theirs, MISSING) for ours, theirs in VISION_FIELDS.items()}
    names = {f"vision.{ours}": f"vision_config.{theirs}" for ours, theirs in VISION_FIELDS.items()}
    values.update({f"qformer.{o}": qformer.get(t, MISSING) for o, t in QFORMER_FIELDS.items()})
    names.update({f"qformer.{o}": f"qformer_config.{t}" for o, t in QFORMER_FIELDS.items()})
    # fields transformers derives rather than reads
    values.update({"qformer.num_queries": hf.get("num_query_tokens", 32), "qformer.vision_width":
                   values["vision.width"], "qformer.cls_id": 101, "qformer.sep_id": 102,
                   "qformer.dec_id": 30522, "embed_dim": hf.get("image_text_hidden_size", 256)})
    names.update({"qformer.num_queries": "num_query_tokens", "qformer.vision_width": "vision_config.hidden_size",
                  "embed_dim": "image_text_hidden_size"})
    kind = None
    if HF_BLIP2_ARCHITECTURES[archs[0]] == "match":
        values["qformer.text_input"] = True  # the retrieval class always reads text
    else:
        text = as_object(hf.get("text_config", MISSING), where + "text_config")
        kind = text.get("model_type")
        if kind == "opt":
            llm = {**OPT_DEFAULTS, **text}
            for key, want in FIXED_OPT.items():
                if llm.get(key) != want:
                    raise CheckpointError(f"{where}text_config.{key} is {reprlib.repr(llm.get(key))}; only OPT "
                                          f"with {key}={want!r} is supported")
            if llm.get("word_embed_proj_dim") is None:
                llm["word_embed_proj_dim"] = llm.get("hidden_size")
            fields_ = OPT_FIELDS
            values["llm.eps"] = 1e-5  # OPT's LayerNorms use torch's default; the config has no field
        elif kind == "t5":
            llm = {**T5_DEFAULTS, **text}
            if llm.get("num_decoder_layers") is None:
                llm["num_decoder_layers"] = llm.get("num_layers")
            values["llm.gated"], values["llm.act"] = _t5_act(llm, where)
            # transformers 5 writes scale_decoder_outputs; before, a tied T5 (v1.0) always scaled
            values["llm.scale_outputs"] = llm.get("scale_decoder_outputs", llm.get("tie_word_embeddings"))
            names["llm.scale_outputs"] = "text_config.scale_decoder_outputs"
            names["llm.act"] = "text_config.dense_act_fn"
            fields_ = T5_FIELDS
        else:
            raise CheckpointError(f"{where}text_config.model_type must be opt or t5, got {reprlib.repr(kind)}")
        values.update({f"llm.{o}": llm.get(t, MISSING) for o, t in fields_.items()})
        names.update({f"llm.{o}": f"text_config.{t}" for o, t in fields_.items()})
        values["image_token_id"] = hf.get("image_token_index", hf.get("image_token_id"))
        names["image_token_id"] = "image_token_index"
    return checked_blip2_config(values, kind, lambda f: names.get(f, f), where)


# heads cannot be read off weight shapes: the published widths, else 64-wide heads
VISION_HEADS = {1408: 16, 1024: 16, 768: 12}
OPT_HEADS = {768: 12, 1024: 16, 2048: 32, 2560: 32, 4096: 32, 5120: 40, 7168: 56, 9216: 72}
OPT_NEWLINE = 50118  # "\n" in OPT's vocabulary: BLIP-2's end of text


def _layers(shapes, prefix: str) -> int:
    rx = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = [int(m.group(1)) for k in shapes if (m := rx.match(k))]
    return max(found) + 1 if found else 0


def infer_lavis_blip2_config(shapes: dict[str, tuple], saved: dict, where: str = "") -> Blip2Config:
    """The architecture of a LAVIS BLIP-2 ``.pth`` from its tensor shapes (and its saved run config
    for the LLM's name). LAVIS saves only what was trained: the pre-training files lack the frozen
    image encoder and LLM, which such a file cannot give; they are refused with what to load instead."""
    model = saved.get("model") if isinstance(saved.get("model"), dict) else {}
    llm_name = model.get("opt_model") or model.get("t5_model")
    has = lambda prefix: any(k.startswith(prefix) for k in shapes)  # noqa: E731
    is_itm = "itm_head.weight" in shapes and not has("opt_proj.") and not has("t5_proj.")
    if not has("visual_encoder.blocks."):
        raise CheckpointError(f"{where}this LAVIS BLIP-2 file holds no image encoder (LAVIS saves only the weights "
                              "it trained; the frozen EVA ViT-g is kept elsewhere); load the Hugging Face folder "
                              "instead, e.g. Salesforce/blip2-opt-2.7b, Salesforce/blip2-flan-t5-xl or "
                              "Salesforce/blip2-itm-vit-g")
    if not is_itm and not (has("opt_model.") or has("t5_model.")):
        raise CheckpointError(f"{where}this LAVIS BLIP-2 file holds no language model (LAVIS keeps the frozen "
                              f"{llm_name or 'LLM'} on the Hugging Face hub); load the Hugging Face BLIP-2 folder "
                              "of the same model instead, e.g. Salesforce/blip2-opt-2.7b")
    try:
        v_width, patch = shapes["visual_encoder.cls_token"][-1], shapes["visual_encoder.patch_embed.proj.weight"][-1]
        grid = int(round(max(shapes["visual_encoder.pos_embed"][1] - 1, 0) ** 0.5))
        q = "Qformer.bert.encoder.layer."
        clip = "visual_encoder.norm_pre.weight" in shapes
        _, num_queries, q_width = shapes["query_tokens"]
        cross = sorted(int(k[len(q):].split(".")[0]) for k in shapes
                       if k.startswith(q) and ".crossattention.self.key.weight" in k)
        values: dict[str, Any] = {
            "vision.image_size": model.get("image_size", grid * patch), "vision.patch_size": patch,
            "vision.width": v_width, "vision.layers": _layers(shapes, "visual_encoder.blocks."),
            "vision.heads": VISION_HEADS.get(v_width, max(1, v_width // 64)),
            "vision.mlp_dim": shapes["visual_encoder.blocks.0.mlp.fc1.weight"][0],
            # LAVIS's CLIP ViT-L (ln_pre, QuickGELU, LayerNorms at torch's 1e-5) or EVA ViT-g (1e-6)
            "vision.clip": clip, "vision.eps": 1e-5 if clip else 1e-6,
            "qformer.width": q_width, "qformer.layers": _layers(shapes, q), "qformer.heads": max(1, q_width // 64),
            "qformer.mlp_dim": shapes[f"{q}0.intermediate_query.dense.weight"][0],
            "qformer.cross_every": cross[1] - cross[0] if len(cross) > 1 else max(1, _layers(shapes, q)),
            "qformer.num_queries": num_queries,
            "qformer.vision_width": shapes[f"{q}0.crossattention.self.key.weight"][1],
            "qformer.text_input": is_itm,
            "qformer.vocab_size": shapes.get("Qformer.bert.embeddings.word_embeddings.weight", (30523,))[0],
            "qformer.max_positions": shapes.get("Qformer.bert.embeddings.position_embeddings.weight", (512,))[0],
            "qformer.eps": 1e-12, "qformer.pad_id": 0, "qformer.cls_id": 101, "qformer.sep_id": 102,
            "qformer.dec_id": 30522, "embed_dim": shapes.get("vision_proj.weight", (256,))[0],
        }
        kind = None
        if has("opt_model."):
            kind, d = "opt", "opt_model.model.decoder."
            vocab, embed = shapes[f"{d}embed_tokens.weight"]
            width = shapes[f"{d}layers.0.self_attn.q_proj.weight"][0]
            values.update({"llm.vocab_size": vocab, "llm.embed_dim": embed, "llm.width": width,
                           "llm.layers": _layers(shapes, f"{d}layers."), "llm.heads": OPT_HEADS.get(width, width // 64),
                           "llm.ffn_dim": shapes[f"{d}layers.0.fc1.weight"][0],
                           "llm.max_positions": shapes[f"{d}embed_positions.weight"][0] - 2, "llm.pre_norm": True,
                           "llm.eps": 1e-5, "llm.pad_id": 1, "llm.bos_id": 2,
                           "llm.eos_id": OPT_NEWLINE if vocab > OPT_NEWLINE else 2})
        elif has("t5_model."):
            kind, e = "t5", "t5_model.encoder.block."
            buckets, heads = shapes[f"{e}0.layer.0.SelfAttention.relative_attention_bias.weight"]
            gated = f"{e}0.layer.1.DenseReluDense.wi_0.weight" in shapes
            ffn = shapes[f"{e}0.layer.1.DenseReluDense.{'wi_0' if gated else 'wi'}.weight"][0]
            values.update({"llm.vocab_size": shapes["t5_model.shared.weight"][0],
                           "llm.width": shapes["t5_model.shared.weight"][1],
                           "llm.kv_dim": shapes[f"{e}0.layer.0.SelfAttention.q.weight"][0] // heads, "llm.heads": heads,
                           "llm.ffn_dim": ffn, "llm.layers": _layers(shapes, e),
                           "llm.decoder_layers": _layers(shapes, "t5_model.decoder.block."), "llm.buckets": buckets,
                           "llm.max_distance": 128, "llm.eps": 1e-6, "llm.gated": gated, "llm.act": "gelu",
                           "llm.tie_embeddings": "t5_model.lm_head.weight" not in shapes,
                           "llm.scale_outputs": False, "llm.pad_id": 0,
                           "llm.eos_id": 1, "llm.decoder_start_id": 0})
        if kind:
            values["image_token_id"] = None
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise CheckpointError(f"{where}not a LAVIS BLIP-2 checkpoint: missing or malformed {e}") from e
    return checked_blip2_config(values, kind, lambda f: f"{f} (inferred from the weights' shapes)", where)
