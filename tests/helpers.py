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
