"""The models the two stages start from.

Stage 1: a ``Blip2Model`` without LLM (the ITM shape: Q-Former with its text path, ITC/ITM heads)
whose image encoder is a BLIP checkpoint's ViT (frozen but for its final norm, BLIP-2's
``ln_vision``) and whose Q-Former starts from that checkpoint's BERT-style text encoder, as LAVIS
starts it from bert-base: embeddings, self-attention and text FFN copied, the query FFN copied
from the text FFN, cross-attention and query tokens fresh. The ITG head (``LMHead``) starts from
the checkpoint's text decoder head when it has one.

Stage 2: the stage-1 model's image encoder and Q-Former query path (or, without stage 1, the same
init from a BLIP checkpoint), a fresh language projection and the frozen LLM read from its folder.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

import torch

from blip_core import demo_model_path
from blip_core.checkpoints import materialize, open_checkpoint, read_json
from blip_core.checkpoints.configs_blip2 import hf_blip2_config
from blip_core.checkpoints.fill import fill_module
from blip_core.checkpoints.sources import TensorSource
from blip_core.checkpoints.vocab import tokenizer_for
from blip_core.errors import CheckpointError
from blip_core.model.blip2 import Blip2Model
from blip_core.model.blip2_config import Blip2Config, LLMConfig, QFormerConfig
from blip_core.model.text import LMHead
from blip_core.tokenizer import BlipTokenizer, LlmTokenizer
from training.run_state import resolve_init

from .config import DEMO, Blip2TrainConfig

log = logging.getLogger(__name__)
_QFORMER_FROM_TEXT = [  # our Q-Former name -> the BLIP text encoder's (LAVIS: bert-base's)
    (re.compile(r"^qformer\.tokens\."), "text_encoder.embed.tokens."),
    (re.compile(r"^qformer\.positions\."), "text_encoder.embed.positions."),
    (re.compile(r"^qformer\.norm\."), "text_encoder.embed.norm."),
    (re.compile(r"^qformer\.layers\.(\d+)\.self_attn\."), r"text_encoder.layers.\1.self_attn."),
    (re.compile(r"^qformer\.layers\.(\d+)\.(query_)?mlp\."), r"text_encoder.layers.\1.mlp."),  # query FFN too
]


def checkpoint_path(init: str) -> str:
    return str(demo_model_path()) if init == DEMO else resolve_init(init)


def text_encoder_source(name: str) -> str | None:
    """Our Q-Former / vision tensor name -> the BLIP checkpoint tensor it starts from (None: fresh)."""
    if name.startswith("vision."):
        return name
    for pattern, repl in _QFORMER_FROM_TEXT:
        if pattern.match(name):
            return pattern.sub(repl, name)
    return None


def _fill(model: torch.nn.Module, get, names) -> list[str]:
    """Fill ``names`` of ``model`` from ``get(name)``; a mis-shaped tensor is an error. -> loaded names."""
    filled = fill_module(model, get, names)
    if filled.mismatched:
        k, got, want = filled.mismatched[0]
        raise CheckpointError(f"{k}: the source has shape {got}, the model expects {want}")
    return filled.loaded


def _from_blip(cfg: Blip2TrainConfig, text_input: bool, llm: LLMConfig | None):
    """A Blip2Model whose ViT and Q-Former start from the BLIP checkpoint ``cfg.init``, its tokenizer,
    and the checkpoint's state dict (for the ITG head)."""
    ck = open_checkpoint(checkpoint_path(cfg.init))
    if ck.family != "blip" or "text_encoder.layers.0.self_attn.query.weight" not in ck.tensors.shapes:
        raise CheckpointError(f"init={cfg.init}: a BLIP checkpoint with a text encoder is needed to start the "
                              "Q-Former (or, for stage 2, a stage-1 checkpoint)")
    blip = materialize(ck)
    source = blip.state_dict()
    t = ck.cfg.text
    q = QFormerConfig(width=t.width, layers=cfg.qformer_layers or t.layers, heads=t.heads, mlp_dim=t.mlp_dim,
                      cross_every=cfg.cross_every, num_queries=cfg.num_queries, vision_width=ck.cfg.vision.width,
                      text_input=text_input, vocab_size=t.vocab_size, max_positions=t.max_positions, eps=t.eps,
                      pad_id=t.pad_id, cls_id=t.cls_id, sep_id=t.sep_id, dec_id=t.dec_id)
    if q.layers > t.layers:
        raise CheckpointError(f"qformer_layers={q.layers}: the text encoder has only {t.layers} layers to start from")
    model = Blip2Model(Blip2Config(vision=ck.cfg.vision, qformer=q, llm=llm, embed_dim=cfg.embed_dim))
    keep = ("vision.",) if cfg.qformer_from == "scratch" else ("vision.", "qformer.")
    names = [n for n in model.state_dict() if text_encoder_source(n) is not None and n.startswith(keep)]
    loaded = _fill(model, lambda n: source.get(text_encoder_source(n)), names)
    log.info("init %s: image encoder%s from the BLIP checkpoint (%d tensors); the rest fresh", cfg.init,
             "" if cfg.qformer_from == "scratch" else " and Q-Former self-attention/FFNs", len(loaded))
    return model, tokenizer_for(ck), source


def stage1_model(cfg: Blip2TrainConfig) -> tuple[Blip2Model, BlipTokenizer, LMHead]:
    model, tokenizer, source = _from_blip(cfg, text_input=True, llm=None)
    head = LMHead(model.cfg.qformer)
    head_keys = {n: f"text_decoder.lm_head.{n}" for n in head.state_dict()}
    if all(k in source for k in head_keys.values()):
        _fill(head, lambda n: source[head_keys[n]], list(head_keys))
        log.info("ITG head from the checkpoint's text decoder head")
    return model, tokenizer, head


def read_llm(folder: str | Path) -> tuple[LLMConfig, TensorSource, LlmTokenizer]:
    """The frozen LLM of stage 2 from a Hugging Face OPT / T5 folder (config.json,
    model.safetensors, tokenizer.json): its config (parsed by blip_core's BLIP-2 reader, as the
    ``text_config`` of a BLIP-2), its tensors (names as in transformers, which are ours) and tokenizer."""
    folder = Path(checkpoint_path(str(folder)))
    meta = read_json(folder / "config.json")
    llm = hf_blip2_config({"architectures": ["Blip2ForConditionalGeneration"], "text_config": meta},
                          where=f"{folder / 'config.json'}: ").llm
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder} has no .safetensors weights for the LLM")
    tensors = TensorSource.from_safetensors(files)
    kind = "opt" if meta.get("model_type") == "opt" else "t5"
    tokenizer = LlmTokenizer(folder, kind, getattr(llm, "bos_id", None), llm.eos_id, llm.vocab_size)
    return llm, tensors, tokenizer


def stage2_model(cfg: Blip2TrainConfig) -> tuple[Blip2Model, BlipTokenizer, LlmTokenizer, Path]:
    """-> (model, the Q-Former's tokenizer (its vocab.txt is saved alongside), the LLM's tokenizer,
    the LLM folder)."""
    llm, llm_tensors, llm_tokenizer = read_llm(cfg.llm)
    ck = open_checkpoint(checkpoint_path(cfg.init))
    if ck.family == "blip2":  # a stage-1 checkpoint: its image encoder and Q-Former query path
        if ck.cfg.llm is not None:
            raise CheckpointError(f"init={cfg.init} already has an LLM; stage 2 starts from a stage-1 checkpoint")
        stage1 = materialize(ck).state_dict()
        b2 = replace(ck.cfg, qformer=replace(ck.cfg.qformer, text_input=False), llm=llm)
        model = Blip2Model(b2)
        names = [n for n in model.state_dict() if n.startswith(("vision.", "qformer."))]
        _fill(model, stage1.get, names)
        tokenizer = tokenizer_for(ck)
        log.info("init %s: image encoder and Q-Former from stage 1", cfg.init)
    else:  # no stage 1 (the ablation): the query path from the BLIP text encoder
        model, tokenizer, _ = _from_blip(cfg, text_input=False, llm=llm)
        log.warning("stage 2 without stage 1: the Q-Former starts from %s's text encoder", cfg.init)
    names = [n for n in model.state_dict() if n.startswith("language_model.")]
    loaded = _fill(model, lambda n: llm_tensors.get(n.removeprefix("language_model."))
                   if n.removeprefix("language_model.") in llm_tensors.shapes else None, names)
    absent = sorted(set(names) - set(loaded))
    if absent:
        raise CheckpointError(f"llm={cfg.llm} lacks {len(absent)} weights of the language model (e.g. {absent[0]})")
    return model, tokenizer, llm_tokenizer, Path(checkpoint_path(cfg.llm))
