"""Writing checkpoints: our own format (``save``, what ``blip_core.load`` and training resume
read) and the Hugging Face BLIP layout (``export_hf``, loadable by transformers). Both write
through the atomic-folder writer, so an interrupted save never leaves a half-written model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from blip_core.checkpoints.atomic import atomic_folder
from blip_core.checkpoints.configs import HF_TASK_ARCH
from blip_core.checkpoints.keymaps import VIT_HF_KEYS, blip_routes
from blip_core.errors import CheckpointError
from blip_core.tokenizer import BlipTokenizer

if TYPE_CHECKING:
    import torch

    from blip_core.model.blip import BlipModel

FORMAT_VERSION = 1


def _unshared(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied pre-training stacks): copy duplicates."""
    seen, out = set(), {}
    for k, v in sd.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        out[k] = v.detach().clone().contiguous() if key in seen else v.detach().contiguous()
        seen.add(key)
    return out


def save(model: BlipModel, folder: str | os.PathLike, tokenizer: BlipTokenizer, extra: dict | None = None,
         dtype: torch.dtype | None = None) -> Path:
    """Save in our own format, atomically: config.json (with ``blipcam``), model.safetensors,
    vocab.txt. ``dtype=torch.float16`` halves the file (e.g. a bundled model); loading always
    computes in fp32. The default keeps float32."""
    with atomic_folder(folder) as staging:
        write_model(model, staging, tokenizer, extra, dtype)
    return Path(folder)


def write_model(model: BlipModel, folder: Path, tokenizer: BlipTokenizer, extra: dict | None = None,
                dtype: torch.dtype | None = None) -> None:
    """``save``'s files, written into the existing (staging) ``folder``: for writers that add
    files of their own before the folder is swapped in (training checkpoints)."""
    import torch
    from safetensors.torch import save_file

    sd = _unshared({k: v.to(dtype or torch.float32) for k, v in model.state_dict().items()})
    meta = {"blipcam": model.cfg.to_dict(), "format_version": FORMAT_VERSION, **(extra or {})}
    (folder / "config.json").write_text(json.dumps(meta, indent=2))
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "vocab.txt").write_bytes(tokenizer.vocab_file.read_bytes())


def export_hf(model: BlipModel, folder: str | os.PathLike, tokenizer: BlipTokenizer, task: str | None = None) -> Path:
    """Save one task of ``model`` in the Hugging Face BLIP layout (loadable by transformers'
    ``Blip*.from_pretrained`` and by ``blip_core.load``)."""
    from safetensors.torch import save_file

    cfg = model.cfg
    task = task or cfg.tasks[0]
    if task not in cfg.tasks:
        raise CheckpointError(f"the model has no {task} part (it has {', '.join(cfg.tasks)})")
    decoder = {"caption": "text_decoder", "vqa": "answer_decoder"}.get(task)
    routes = blip_routes("vision_model.", VIT_HF_KEYS, decoder or "-")
    keep = {"caption": ("vision.", "text_decoder."), "vqa": ("vision.", "text_encoder.", "answer_decoder."),
            "match": ("vision.", "text_encoder.", "vision_proj.", "text_proj.", "itm_head.")}[task]
    out = {}
    for ours, tensor in model.state_dict().items():
        if not ours.startswith(keep):
            continue
        for foreign, prefix, keymap in routes:
            if ours.startswith(prefix) and (name := keymap.to_foreign(ours[len(prefix):])) is not None:
                out[foreign + name] = tensor.float()
                break
        else:
            raise CheckpointError(f"no Hugging Face name for {ours}")
    if decoder:  # transformers expects the tied LM weights under their own names too
        out["text_decoder.cls.predictions.decoder.weight"] = out["text_decoder.bert.embeddings.word_embeddings.weight"]
        out["text_decoder.cls.predictions.decoder.bias"] = out["text_decoder.cls.predictions.bias"]
    v, t = cfg.vision, cfg.text
    hf = {
        "architectures": [HF_TASK_ARCH[task]], "model_type": "blip", "image_text_hidden_size": cfg.embed_dim,
        "projection_dim": 512, "label_smoothing": 0.0,
        "text_config": {"vocab_size": t.vocab_size, "hidden_size": t.width, "encoder_hidden_size": v.width,
                        "intermediate_size": t.mlp_dim, "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
                        "max_position_embeddings": t.max_positions, "layer_norm_eps": t.eps,
                        "bos_token_id": t.dec_id, "pad_token_id": t.pad_id, "sep_token_id": t.sep_id,
                        "eos_token_id": t.sep_id, "is_decoder": True, "hidden_act": "gelu"},
        "vision_config": {"hidden_size": v.width, "intermediate_size": v.mlp_dim, "num_hidden_layers": v.layers,
                          "num_attention_heads": v.heads, "image_size": v.image_size, "patch_size": v.patch_size,
                          "layer_norm_eps": v.eps, "hidden_act": "gelu"},
    }
    from blip_core.preprocess import CLIP_MEAN, CLIP_STD

    processor = {"image_processor_type": "BlipImageProcessor", "do_resize": True, "resample": 3,
                 "size": {"height": v.image_size, "width": v.image_size}, "do_rescale": True,
                 "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP_MEAN),
                 "image_std": list(CLIP_STD), "do_convert_rgb": True, "processor_class": "BlipProcessor"}
    tok_cfg = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512,
               "processor_class": "BlipProcessor"}
    with atomic_folder(folder) as staging:
        (staging / "config.json").write_text(json.dumps(hf, indent=2))
        save_file(_unshared(out), str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "vocab.txt").write_bytes(tokenizer.vocab_file.read_bytes())
        (staging / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
        (staging / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return Path(folder)
