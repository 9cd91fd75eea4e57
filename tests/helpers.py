"""Shared test helpers: tiny seeded BLIP models in transformers' layout (our parity oracle)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from blip_core.tokenizer import BERT_VOCAB

HF_CLASSES = {
    "caption": "BlipForConditionalGeneration",
    "vqa": "BlipForQuestionAnswering",
    "match": "BlipForImageTextRetrieval",
}


def tiny_hf_config(image_size=32, patch=8, width=32, layers=2, heads=2, text_width=32, text_layers=2, eps=1e-5):
    from transformers import BlipConfig

    text = dict(vocab_size=30524, hidden_size=text_width, intermediate_size=4 * text_width,
                num_hidden_layers=text_layers, num_attention_heads=heads, max_position_embeddings=64,
                encoder_hidden_size=width)
    vision = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                  num_attention_heads=heads, image_size=image_size, patch_size=patch, layer_norm_eps=eps)
    return BlipConfig(text_config=text, vision_config=vision, image_text_hidden_size=16)


def seeded_hf_model(task: str, seed: int = 0, **cfg):
    """A transformers BLIP model with random weights that really depend on the image: the
    library initialises the ViT at std 1e-10, which would make every image look the same."""
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, HF_CLASSES[task])(tiny_hf_config(**cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("vision_model") and p.dim() > 1 or "embedding" in name:
                p.normal_(0, 0.2 if "embedding" in name else 0.05)
            elif name.startswith(("itm_head", "vision_proj", "text_proj")) and p.dim() > 1:
                p.normal_(0, 0.5)  # heads that separate texts clearly
            elif "crossattention" in name and p.dim() > 1:
                p.normal_(0, 0.3)  # make the text side listen to the image
            elif p.dim() > 1:
                p.normal_(0, 0.1)  # and to the other words
            elif name.endswith("bias"):
                p.normal_(0, 0.02)
        # LayerNorm gains away from 1 so their weights matter too
        for name, p in model.named_parameters():
            if ("norm" in name.lower()) and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
    if task in ("caption", "vqa"):
        model.tie_weights()
    return model


def save_hf(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    shutil.copy(BERT_VOCAB, folder / "vocab.txt")
    return folder


def random_pixels(batch=1, size=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g)


# --------------------------------------------------------------------------- BLIP-2
# ~1/sqrt(width): std 0.02 is unit gain at BERT's width 768, but at width 32 it leaves attention
# uniform and outputs almost independent of the input, so a wrong mask or FFN could pass parity
BLIP2_WEIGHT_STD = 0.2
BLIP2_WORDS = ("a photo of the red blue green circle square dog cat on in with and is what colour "
               "question answer short : ? . it there two one").split()


def reinit_(model: torch.nn.Module, seed: int = 0, std: float = BLIP2_WEIGHT_STD) -> None:
    """Every parameter redrawn from a seeded generator: transformers' own init (vision std 1e-10,
    zero query tokens, unit norms) would let parity pass trivially."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif p.dim() == 1:  # LayerNorm / RMSNorm scales
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(std * noise)


def tiny_llm_tokenizer(folder: Path, kind: str) -> Path:
    """A word-level tokenizer.json in the LLM's id layout (OPT: <s> 0, <pad> 1, </s> 2; T5: <pad> 0,
    </s> 1), written where ``LlmTokenizer`` looks for it."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel

    specials = ["<s>", "<pad>", "</s>", "<unk>"] if kind == "opt" else ["<pad>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + list(BLIP2_WORDS))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(specials)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def tiny_blip2_hf(kind: str, seed: int = 0, queries: int = 6, vocab: int = 64, width: int = 32, heads: int = 4):
    """A transformers BLIP-2 with tiny random weights: ``kind`` opt or t5 (Blip2ForConditionalGeneration)
    or itm (Blip2ForImageTextRetrieval); image 32 px, ``width`` and ``heads`` everywhere, two layers."""
    import transformers

    vision = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=heads,
                  image_size=32, patch_size=8, layer_norm_eps=1e-6)
    qformer = dict(hidden_size=width, num_hidden_layers=2, num_attention_heads=heads, intermediate_size=2 * width,
                   cross_attention_frequency=1 if kind == "t5" else 2, encoder_hidden_size=width,
                   max_position_embeddings=64, use_qformer_text_input=kind == "itm",
                   vocab_size=30523 if kind == "itm" else 30522)
    if kind == "opt":
        text = transformers.OPTConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=2, ffn_dim=2 * width,
                                      num_attention_heads=heads, max_position_embeddings=64, word_embed_proj_dim=width,
                                      pad_token_id=1, bos_token_id=2, eos_token_id=2).to_dict()
    elif kind == "t5":
        text = transformers.T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                     feed_forward_proj="gated-gelu", dense_act_fn="gelu", pad_token_id=0,
                                     eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False).to_dict()
    else:
        text = None
    cfg = transformers.Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text,
                                   num_query_tokens=queries, image_text_hidden_size=16,
                                   image_token_index=None if kind == "itm" else vocab - 1)
    cls = transformers.Blip2ForImageTextRetrieval if kind == "itm" else transformers.Blip2ForConditionalGeneration
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    reinit_(model, seed)
    return model


def save_blip2_hf(model, folder: Path, kind: str) -> Path:
    """``model`` saved with save_pretrained, with its tokenizer (BERT's vocab.txt for the ITM model)."""
    model.save_pretrained(folder)
    if kind == "itm":
        shutil.copy(BERT_VOCAB, folder / "vocab.txt")
    else:
        tiny_llm_tokenizer(folder, kind)
    return folder


LAVIS_RENAMES = [  # transformers' BLIP-2 names -> LAVIS's, written out apart from our key maps
    (r"^vision_model\.embeddings\.class_embedding$", "visual_encoder.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding$", "visual_encoder.pos_embed"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual_encoder.patch_embed.proj."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"visual_encoder.blocks.\1.attn.qkv."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection\.", r"visual_encoder.blocks.\1.attn.proj."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm([12])\.", r"visual_encoder.blocks.\1.norm\2."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"visual_encoder.blocks.\1.mlp."),
    (r"^vision_model\.post_layernorm\.", "ln_vision."),
    (r"^embeddings\.", "Qformer.bert.embeddings."),
    (r"^qformer\.layernorm\.", "Qformer.bert.embeddings.LayerNorm."),
    (r"^qformer\.encoder\.layer\.(\d+)\.(attention|crossattention)\.attention\.",
     r"Qformer.bert.encoder.layer.\1.\2.self."),
    (r"^qformer\.encoder\.", "Qformer.bert.encoder."),
    (r"^vision_projection\.", "vision_proj."),
    (r"^text_projection\.", "text_proj."),
]


def lavis_names(hf_sd: dict, llm: str | None = None) -> dict:
    """A LAVIS-layout state dict of ``hf_sd``: each fused qkv bias split into q_bias / v_bias (LAVIS
    has no key bias); ``llm`` (opt or t5) names the LLM and its projection as LAVIS does."""
    import re

    renames = LAVIS_RENAMES + ([(r"^language_projection\.", f"{llm}_proj."), (r"^language_model\.", f"{llm}_model.")]
                               if llm else [])
    out = {}
    for key, value in hf_sd.items():
        for rx, repl in renames:
            key, n = re.subn(rx, repl, key)
            if n:
                break
        if key.endswith(".attn.qkv.bias"):
            q, _, v = value.chunk(3)
            out[key.replace("qkv.bias", "q_bias")], out[key.replace("qkv.bias", "v_bias")] = q, v
        else:
            out[key] = value
    return out
