"""Our config from a foreign checkpoint: inferred from tensor shapes (Salesforce / LAVIS ``.pth``)
or read from a transformers ``config.json``. Values are checked (with bounds) by
``blip_core.model.config.checked_config``, never trusted.
"""

from __future__ import annotations

import re
import reprlib
from typing import Iterable

from blip_core.errors import CheckpointError
from blip_core.model.config import MISSING, BlipConfig, TextConfig, as_object, checked_config


def _count_layers(keys: Iterable[str], pattern: str) -> int:
    rx = re.compile(pattern)
    idx = [int(m.group(1)) for k in keys if (m := rx.match(k))]
    return max(idx) + 1 if idx else 0


HEAD_DIM = 64  # heads cannot be read off weight shapes; every published BLIP ViT/BERT uses 64-d heads


def _heads(width: int, what: str) -> int:
    if width % HEAD_DIM:
        raise CheckpointError(f"cannot infer the {what} head count for width {width}; re-save the model with "
                              "blip_core.checkpoints.save, which records its architecture")
    return width // HEAD_DIM


def infer_salesforce_config(shapes: dict[str, tuple], tasks: tuple[str, ...], image_size=None, where: str = "",
                            image_size_key: str = "config.image_size") -> BlipConfig:
    """Rebuild the architecture from tensor shapes (base/large, patch, grid, vocab, depths).
    ``image_size`` (from the checkpoint's saved config, under ``image_size_key``) overrides the
    size the position embeddings were trained at; ``where`` (the file) prefixes error messages."""
    try:
        width = shapes["visual_encoder.cls_token"][-1]
        patch = shapes["visual_encoder.patch_embed.proj.weight"][-1]
        grid = int(round(max(shapes["visual_encoder.pos_embed"][1] - 1, 0) ** 0.5))
        text_prefix = next(p for p in ("text_decoder.bert.", "text_encoder.")
                           if f"{p}embeddings.word_embeddings.weight" in shapes)
        vocab, twidth = shapes[f"{text_prefix}embeddings.word_embeddings.weight"]
        mlp = shapes[f"{text_prefix}encoder.layer.0.intermediate.dense.weight"][0]
        max_pos = shapes[f"{text_prefix}embeddings.position_embeddings.weight"][0]
        vision_mlp = shapes["visual_encoder.blocks.0.mlp.fc1.weight"][0]
        embed = shapes.get("vision_proj.weight", (256,))[0]
    except (KeyError, StopIteration, IndexError, ValueError) as e:
        raise CheckpointError(f"{where}not a BLIP checkpoint: missing {e}") from e
    values = {
        "vision.image_size": image_size if image_size is not None else grid * patch, "vision.patch_size": patch,
        "vision.width": width, "vision.layers": _count_layers(shapes, r"visual_encoder\.blocks\.(\d+)\."),
        "vision.heads": _heads(width, "vision"), "vision.mlp_dim": vision_mlp, "vision.eps": 1e-6,
        "text.vocab_size": vocab, "text.width": twidth, "text.heads": _heads(twidth, "text"),
        "text.layers": _count_layers(shapes, re.escape(text_prefix) + r"encoder\.layer\.(\d+)\."),
        "text.mlp_dim": mlp, "text.max_positions": max_pos, "text.eps": TextConfig.eps,
        "text.pad_id": TextConfig.pad_id, "text.cls_id": TextConfig.cls_id, "text.sep_id": TextConfig.sep_id,
        "text.dec_id": vocab - 2,
        "text.enc_id": vocab - 1, "embed_dim": embed,
    }

    def name(field: str) -> str:
        if field == "vision.image_size" and image_size is not None:
            return image_size_key
        return f"{field} (inferred from the weights' shapes)"

    return checked_config(values, tasks, name, where)


def salesforce_tasks(keys: Iterable[str]) -> tuple[str, ...]:
    keys = set(keys)
    has = lambda p: any(k.startswith(p) for k in keys)  # noqa: E731
    if has("text_decoder.") and "itm_head.weight" in keys:
        return ("caption", "match")  # pre-trained MED: decoder + encoder + heads
    if has("text_decoder.") and has("text_encoder."):
        return ("vqa",)
    if has("text_decoder."):
        return ("caption",)
    if "itm_head.weight" in keys:
        return ("match",)
    raise CheckpointError("checkpoint has neither a text decoder nor matching heads; not a BLIP model")


HF_ARCHITECTURES = {
    "BlipForConditionalGeneration": ("caption",),
    "BlipForQuestionAnswering": ("vqa",),
    "BlipForImageTextRetrieval": ("match",),
}
HF_TEXT_DEFAULTS = dict(vocab_size=30524, hidden_size=768, num_hidden_layers=12, num_attention_heads=8,
                        intermediate_size=3072, max_position_embeddings=512, layer_norm_eps=1e-12,
                        bos_token_id=30522, pad_token_id=0, sep_token_id=102)
HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                          image_size=384, patch_size=16, layer_norm_eps=1e-5)
LAVIS_ARCH_TASKS = {
    "blip_caption": ("caption",), "blip_vqa": ("vqa",), "blip_retrieval": ("match",),
    "blip_image_text_matching": ("match",), "blip_pretrain": ("caption", "match"),
}


# our field -> (transformers' sub-config, its key); transformers' defaults fill what a file omits
HF_FIELDS = {
    "vision.image_size": ("vision_config", "image_size"), "vision.patch_size": ("vision_config", "patch_size"),
    "vision.width": ("vision_config", "hidden_size"), "vision.layers": ("vision_config", "num_hidden_layers"),
    "vision.heads": ("vision_config", "num_attention_heads"), "vision.mlp_dim": ("vision_config", "intermediate_size"),
    "vision.eps": ("vision_config", "layer_norm_eps"),
    "text.vocab_size": ("text_config", "vocab_size"), "text.width": ("text_config", "hidden_size"),
    "text.layers": ("text_config", "num_hidden_layers"), "text.heads": ("text_config", "num_attention_heads"),
    "text.mlp_dim": ("text_config", "intermediate_size"),
    "text.max_positions": ("text_config", "max_position_embeddings"), "text.eps": ("text_config", "layer_norm_eps"),
    "text.pad_id": ("text_config", "pad_token_id"), "text.sep_id": ("text_config", "sep_token_id"),
    "text.dec_id": ("text_config", "bos_token_id"), "embed_dim": ("", "image_text_hidden_size"),
}


def hf_config(hf: dict, where: str = "config.json: ") -> BlipConfig:
    """Our config from a transformers BLIP ``config.json`` (its fields checked, errors prefixed
    with ``where``)."""
    if hf.get("model_type") != "blip":
        raise CheckpointError(f"{where}describes a {reprlib.repr(hf.get('model_type'))} model, not BLIP")
    listed = hf.get("architectures")
    archs = [a for a in listed if isinstance(a, str) and a in HF_ARCHITECTURES] if isinstance(listed, list) else []
    if not archs:
        raise CheckpointError(f"{where}unsupported BLIP architecture {reprlib.repr(listed)}; expected one of "
                              f"{sorted(HF_ARCHITECTURES)}")
    subs = {"": {"image_text_hidden_size": 256, **hf}}
    for sub, defaults in (("text_config", HF_TEXT_DEFAULTS), ("vision_config", HF_VISION_DEFAULTS)):
        given = hf.get(sub)
        subs[sub] = {**defaults, **as_object({} if given is None else given, where + sub)}
    values = {ours: subs[sub].get(key, MISSING) for ours, (sub, key) in HF_FIELDS.items()}
    names = {ours: ".".join(filter(None, pair)) for ours, pair in HF_FIELDS.items()}
    dec = values["text.dec_id"]
    # [ENC] follows [DEC]; a bad bos_token_id is reported as itself
    values["text.enc_id"] = dec + 1 if isinstance(dec, int) and not isinstance(dec, bool) else dec
    names["text.enc_id"] = "text_config.bos_token_id + 1 (the [ENC] id)"
    values["text.cls_id"] = TextConfig.cls_id  # transformers' config has none; the model never reads it
    return checked_config(values, HF_ARCHITECTURES[archs[0]], lambda field: names.get(field, field), where)


# our task -> the transformers class that holds it (for export)
HF_TASK_ARCH = {v[0]: k for k, v in HF_ARCHITECTURES.items()}
