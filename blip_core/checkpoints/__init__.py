"""Reading and writing checkpoints.

Formats read (one converter each, all producing our parameter names):

- ``blipcam``: our own folder (``config.json`` with a ``blipcam`` entry, ``model.safetensors``,
  ``vocab.txt``);
- ``hf``: a Hugging Face BLIP folder (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``), the task taken from ``architectures``;
- ``salesforce``: the original ``.pth`` (``{"model": state_dict}``, ``visual_encoder.*`` keys), the
  architecture inferred from tensor shapes, the task from which parts are present;
- ``lavis``: LAVIS ``.pth`` (same key names; the task and image size from its saved config).

Every foreign key is accounted for in a ``LoadReport``: loaded, ignored with a reason (training
state, tied aliases, parts the requested task does not use) or unexpected. Missing or mis-shaped
weights of a part the model needs are refused, never replaced by random values.

torch is imported where tensors are made, not with this module: opening a checkpoint reads only
its config and the safetensors header, so the int8 runtime loads converted graphs without torch.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import reprlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from blip_core.model.config import MISSING, BlipConfig, TextConfig, as_object, checked_config
from blip_core.errors import CheckpointError, import_torch
from blip_core.tokenizer import BERT_VOCAB, BlipTokenizer

if TYPE_CHECKING:
    import torch
    from torch import nn

    from blip_core.model.blip import BlipModel

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
INT8_FORMAT = "blipcam-int8"  # a folder of int8 graphs written by ``blip convert``: no weights to read


# ------------------------------------------------------------------ lazy tensors
class TensorSource:
    """Name -> tensor, read lazily where the file format allows (safetensors, mmap'd .pth), so a
    loader can convert or quantise one tensor at a time instead of holding every fp32 weight."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], getter: Callable[[str], torch.Tensor]):
        self.shapes = shapes
        self._get = getter

    def keys(self) -> list[str]:
        return list(self.shapes)

    def get(self, key: str) -> torch.Tensor:
        return self._get(key)

    @classmethod
    def from_dict(cls, sd: dict[str, torch.Tensor]) -> "TensorSource":
        import torch

        tensors = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        return cls({k: tuple(v.shape) for k, v in tensors.items()}, tensors.__getitem__)

    @classmethod
    def from_safetensors(cls, files: Iterable[Path]) -> "TensorSource":
        from safetensors import safe_open

        owners, shapes = {}, {}
        for f in files:
            try:
                h = safe_open(str(f), framework="numpy")  # the header only; "pt" would import torch
                for k in h.keys():
                    shapes[k] = tuple(h.get_slice(k).get_shape())
                    owners[k] = str(f)
            except Exception as e:  # safetensors raises its own types for truncated/garbled headers
                raise CheckpointError(f"cannot read weights {f}: {e}; the file is damaged, download it again") from e

        @functools.cache
        def torch_handle(f: str):
            return safe_open(f, framework="pt")

        return cls(shapes, lambda k: torch_handle(owners[k]).get_tensor(k))


class _DeferredTensorSource(TensorSource):
    """A TensorSource made on first use: a ``pytorch_model.bin`` folder opened for its config (as
    the int8 runtime does on a converted model) never loads the file, nor torch."""

    def __init__(self, make: Callable[[], TensorSource]):
        self._make = functools.cache(make)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self._make().shapes

    def get(self, key: str) -> torch.Tensor:
        return self._make().get(key)


def _torch_load(path: Path):
    torch = import_torch(f"reading {path}")

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(_unreadable(path, e)) from e


def _unreadable(path: Path, e: Exception) -> str:
    """Why torch could not read ``path``. torch's own text for a pickle its weights-only loader
    refuses advises re-running with ``weights_only=False``, i.e. running whatever code the pickle
    holds; that advice is never passed on."""
    text = str(e)
    if "Weights only load failed" not in text:
        return f"cannot read {path}: {type(e).__name__}: {text.splitlines()[0][:200] if text else ''}; the file " \
               "is damaged or not a PyTorch checkpoint; download it again"
    if "Unsupported operand" in text:  # bytes that are no pickle at all (a garbled or truncated file)
        return f"cannot read {path}: it is not a pickle of tensors; the file is damaged or not a PyTorch " \
               "checkpoint; download it again"
    culprit = re.search(r"GLOBAL ([\w.]+)", text)
    what = f"its pickle imports {culprit.group(1)}" if culprit else "its pickle builds Python objects"
    return (f"cannot read {path}: it is not a plain weights file ({what}) and was refused for safety, since "
            "loading it could run code; use the model's safetensors release, or re-save only its tensors "
            "(the state_dict) on a machine where the file is trusted")


# --------------------------------------------------------------- key name rules
def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(pattern + "$")


class KeyMap:
    """Bidirectional renames between a foreign naming and ours, written as templates where
    ``{i}`` is a layer index and ``{p}`` is ``weight`` or ``bias``."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self.pairs = pairs
        self._fwd = [(_compile(a), b) for a, b in pairs]
        self._back = [(_compile(b), a) for a, b in pairs]

    @staticmethod
    def _apply(rules, key: str) -> str | None:
        for rx, out in rules:
            m = rx.match(key)
            if m:
                return out.format(**m.groupdict())
        return None

    def to_ours(self, key: str) -> str | None:
        return self._apply(self._fwd, key)

    def to_foreign(self, key: str) -> str | None:
        return self._apply(self._back, key)


def _attn(foreign: str, ours: str) -> list[tuple[str, str]]:
    base = f"encoder.layer.{{i}}.{foreign}"
    return [(f"{base}.self.{n}.{{p}}", f"layers.{{i}}.{ours}.{n}.{{p}}") for n in ("query", "key", "value")] + [
        (f"{base}.output.dense.{{p}}", f"layers.{{i}}.{ours}.proj.{{p}}"),
        (f"{base}.output.LayerNorm.{{p}}", f"layers.{{i}}.{ours}.norm.{{p}}"),
    ]


TEXT_KEYS = KeyMap([
    ("embeddings.word_embeddings.weight", "embed.tokens.weight"),
    ("embeddings.position_embeddings.weight", "embed.positions.weight"),
    ("embeddings.LayerNorm.{p}", "embed.norm.{p}"),
    *_attn("attention", "self_attn"),
    *_attn("crossattention", "cross_attn"),
    ("encoder.layer.{i}.intermediate.dense.{p}", "layers.{i}.mlp.fc1.{p}"),
    ("encoder.layer.{i}.output.dense.{p}", "layers.{i}.mlp.fc2.{p}"),
    ("encoder.layer.{i}.output.LayerNorm.{p}", "layers.{i}.mlp.norm.{p}"),
])
LM_KEYS = KeyMap([
    ("transform.dense.{p}", "dense.{p}"),
    ("transform.LayerNorm.{p}", "norm.{p}"),
    ("bias", "bias"),
])
VIT_TIMM_KEYS = KeyMap([
    ("cls_token", "cls_token"),
    ("pos_embed", "pos_embed"),
    ("patch_embed.proj.{p}", "patch_embed.proj.{p}"),
    *[(f"blocks.{{i}}.{n}.{{p}}", f"blocks.{{i}}.{n}.{{p}}")
      for n in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")],
    ("norm.{p}", "norm.{p}"),
])
VIT_HF_KEYS = KeyMap([
    ("embeddings.class_embedding", "cls_token"),
    ("embeddings.position_embedding", "pos_embed"),
    ("embeddings.patch_embedding.{p}", "patch_embed.proj.{p}"),
    ("encoder.layers.{i}.self_attn.qkv.{p}", "blocks.{i}.attn.qkv.{p}"),
    ("encoder.layers.{i}.self_attn.projection.{p}", "blocks.{i}.attn.proj.{p}"),
    ("encoder.layers.{i}.layer_norm1.{p}", "blocks.{i}.norm1.{p}"),
    ("encoder.layers.{i}.layer_norm2.{p}", "blocks.{i}.norm2.{p}"),
    ("encoder.layers.{i}.mlp.fc1.{p}", "blocks.{i}.mlp.fc1.{p}"),
    ("encoder.layers.{i}.mlp.fc2.{p}", "blocks.{i}.mlp.fc2.{p}"),
    ("post_layernorm.{p}", "norm.{p}"),
])
HEAD_KEYS = KeyMap([(f"{h}.{{p}}", f"{h}.{{p}}") for h in ("vision_proj", "text_proj", "itm_head")])

# (foreign prefix, our prefix, key map). The decoder prefix is bound per task: a VQA checkpoint's
# ``text_decoder`` is our ``answer_decoder`` (it reads question states, not the image).
Route = tuple[str, str, KeyMap]


def _routes(vision_prefix: str, vit_keys: KeyMap, decoder: str) -> list[Route]:
    return [
        (vision_prefix, "vision.", vit_keys),
        ("text_encoder.", "text_encoder.", TEXT_KEYS),
        ("text_decoder.bert.", f"{decoder}.", TEXT_KEYS),
        ("text_decoder.cls.predictions.", f"{decoder}.lm_head.", LM_KEYS),
        ("", "", HEAD_KEYS),
    ]


# keys a foreign checkpoint may carry that a BLIP inference model never needs
IGNORE_RULES = [
    (re.compile(r"(^|\.)position_ids$"), "position-id buffer (recomputed)"),
    (re.compile(r"cls\.predictions\.decoder\.weight$"), "tied to the word embeddings"),
    (re.compile(r"cls\.predictions\.decoder\.bias$"), "alias of cls.predictions.bias"),
    (re.compile(r"^(visual_encoder_m|text_encoder_m|text_decoder_m|vision_proj_m|text_proj_m)\."),
     "momentum encoder (pre-training state)"),
    (re.compile(r"^(image_queue|text_queue|idx_queue|queue_ptr|ptr_queue|temp)$"), "contrastive queue / temperature (training state)"),
    (re.compile(r"(^|\.)pooler\."), "BERT pooler (unused by BLIP)"),
]


# ---------------------------------------------------------------------- report
@dataclass
class LoadReport:
    source: str
    format: str
    tasks: tuple[str, ...] = ()
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for r in self.ignored.values():
            reasons[r] = reasons.get(r, 0) + 1
        parts = [f"{self.source} ({self.format}, tasks {'+'.join(self.tasks)}): {self.loaded} tensors loaded"]
        parts += [f"ignored {n}: {r}" for r, n in sorted(reasons.items())]
        if self.resampled:
            parts.append(f"resampled: {', '.join(self.resampled)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (not loaded): {', '.join(self.unexpected[:8])}"
                         + (" ..." if len(self.unexpected) > 8 else ""))
        return "; ".join(parts)


# ------------------------------------------------------------- config inference
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
        text_prefix = next(p for p in ("text_decoder.bert.", "text_encoder.") if f"{p}embeddings.word_embeddings.weight" in shapes)
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


# ----------------------------------------------------------------- reading
@dataclass
class Checkpoint:
    """A checkpoint opened but not yet materialised: config, lazy tensors and how names map."""

    cfg: BlipConfig
    tensors: TensorSource
    routes: list[Route] | None  # None: already our names
    vocab: Path
    report: LoadReport


def _vocab_for(folder: Path, cfg: BlipConfig) -> Path:
    for name in ("vocab.txt",):
        if (folder / name).is_file():
            return folder / name
    if (folder / "tokenizer.json").is_file():
        vocab = _tokenizer_json_vocab(folder / "tokenizer.json")
        out = Path(tempfile.gettempdir()) / f"blip-vocab-{abs(hash(str(folder)))}.txt"
        out.write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n", encoding="utf-8")
        return out
    if cfg.text.vocab_size == 30524:  # bert-base-uncased + [DEC] + [ENC]: every Salesforce model
        return BERT_VOCAB
    raise CheckpointError(f"no vocab.txt in {folder} and the vocabulary ({cfg.text.vocab_size}) is not BERT's")


def _tokenizer_json_vocab(path: Path) -> dict[str, int]:
    """The WordPiece vocabulary (token -> id) of a tokenizers ``tokenizer.json``."""
    model = read_json(path).get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if not (isinstance(vocab, dict) and vocab and all(type(i) is int for i in vocab.values())):
        raise CheckpointError(f"{path}: model.vocab must be an object of token ids; put the model's vocab.txt "
                              "next to it instead")
    return vocab


MAX_JSON_BYTES = 16 << 20  # a model's config.json is a few kB; anything this big is not one


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; a missing, unreadable, garbled or non-object file is a
    CheckpointError naming it (a FileNotFoundError is let through for callers to explain)."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path} is larger than {MAX_JSON_BYTES >> 20} MB; it is not a model's config")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON, bad UTF-8, giant integers
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {str(e)[:200]}; the file is damaged, "
                              "download or convert it again") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object ({{...}}), not a {type(data).__name__}; "
                              "the file is damaged, download or convert it again")
    return data


def _weight_files(folder: Path) -> tuple[str, list[Path]]:
    if (folder / "model.safetensors").is_file():
        return "safetensors", [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return "safetensors", [folder / n for n in _shard_names(index)]
    if (folder / "pytorch_model.bin").is_file():
        return "torch", [folder / "pytorch_model.bin"]
    raise CheckpointError(f"{folder} has no model.safetensors or pytorch_model.bin")


def _shard_names(index: Path) -> list[str]:
    """The weight files a sharded checkpoint's index lists: plain file names of its own folder
    (an entry like ``../../x`` would read a file from elsewhere)."""
    weight_map = read_json(index).get("weight_map")
    names = set(weight_map.values()) if isinstance(weight_map, dict) else set()
    if not names or not all(isinstance(n, str) and n == Path(n).name and n not in ("", ".", "..") for n in names):
        raise CheckpointError(f"{index}: weight_map must map tensor names to file names in its folder; "
                              "the file is damaged, download it again")
    return sorted(names)


def _open_folder(folder: Path) -> Checkpoint:
    path = folder / "config.json"
    try:
        meta = read_json(path)
    except FileNotFoundError as e:
        raise CheckpointError(f"{folder} has no config.json; is it a model folder?") from e
    if "engine" in meta and "blipcam" in meta:  # converted graphs (``blip convert``), read by the int8 runtime
        cfg = BlipConfig.from_dict(meta["blipcam"], where=f"{path}: ", key="blipcam.")
        return Checkpoint(cfg, TensorSource({}, {}.__getitem__), None, _vocab_for(folder, cfg),
                          LoadReport(str(folder), INT8_FORMAT))
    # the config is checked before any weight file is opened
    cfg = BlipConfig.from_dict(meta["blipcam"], where=f"{path}: ", key="blipcam.") if "blipcam" in meta \
        else hf_config(meta, where=f"{path}: ")
    kind, files = _weight_files(folder)
    if kind == "safetensors":
        tensors = TensorSource.from_safetensors(files)
    else:
        tensors = _DeferredTensorSource(lambda: TensorSource.from_dict(_torch_load(files[0])))
    if "blipcam" in meta:
        return Checkpoint(cfg, tensors, None, _vocab_for(folder, cfg), LoadReport(str(folder), "blipcam"))
    decoder = "answer_decoder" if cfg.tasks == ("vqa",) else "text_decoder"
    return Checkpoint(cfg, tensors, _routes("vision_model.", VIT_HF_KEYS, decoder), _vocab_for(folder, cfg),
                      LoadReport(str(folder), "hf"))


def _open_pth(path: Path) -> Checkpoint:
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    sd = obj.get("model", obj.get("state_dict", obj))
    if not isinstance(sd, dict) or "visual_encoder.cls_token" not in sd:
        raise CheckpointError(f"{path} is not a Salesforce/LAVIS BLIP checkpoint (no visual_encoder.* weights)")
    tensors = TensorSource.from_dict(sd)
    saved = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    arch = saved["model"].get("arch") if isinstance(saved.get("model"), dict) else None
    if arch is not None:  # LAVIS runners save their OmegaConf config with the model arch
        fmt, key = "lavis", "config.model.image_size"
        if not isinstance(arch, str) or arch not in LAVIS_ARCH_TASKS:
            raise CheckpointError(f"{path}: unsupported LAVIS architecture {reprlib.repr(arch)}; expected one of "
                                  f"{sorted(LAVIS_ARCH_TASKS)}")
        tasks, image_size = LAVIS_ARCH_TASKS[arch], saved["model"].get("image_size")
    else:
        fmt, key = "salesforce", "config.image_size"
        tasks, image_size = salesforce_tasks(tensors.keys()), saved.get("image_size")
    cfg = infer_salesforce_config(tensors.shapes, tasks, image_size, where=f"{path}: ", image_size_key=key)
    decoder = "answer_decoder" if tasks == ("vqa",) else "text_decoder"
    return Checkpoint(cfg, tensors, _routes("visual_encoder.", VIT_TIMM_KEYS, decoder),
                      _vocab_for(path.parent, cfg), LoadReport(str(path), fmt))


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    if path.is_dir():
        return _open_folder(path)
    if path.is_file():
        if path.suffix in (".pth", ".pt", ".bin", ".ckpt", ".tar"):
            return _open_pth(path)
        raise CheckpointError(f"{path}: unknown checkpoint file type; expected a model folder or a .pth file")
    raise CheckpointError(f"{path} does not exist")


def restrict_tasks(ck: Checkpoint, tasks: tuple[str, ...] | None) -> None:
    """Keep only ``tasks`` of ``ck`` (all when None); refuse tasks it has no weights for."""
    if tasks:
        unavailable = [t for t in tasks if t not in ck.cfg.tasks]
        if unavailable:
            raise CheckpointError(f"{ck.report.source} has no weights for {', '.join(unavailable)} "
                                  f"(it supports: {', '.join(ck.cfg.tasks)})")
        ck.cfg = ck.cfg.with_tasks(*tasks)
    ck.report.tasks = ck.cfg.tasks


# -------------------------------------------------------------- materialising
def _rename(ck: Checkpoint) -> dict[str, str]:
    """our key -> source key; fills ``ignored`` and ``unexpected`` in the report."""
    out, report = {}, ck.report
    for key in ck.tensors.keys():
        ours = key if ck.routes is None else None
        if ck.routes is not None:
            for foreign, prefix, keymap in ck.routes:
                if key.startswith(foreign) and (name := keymap.to_ours(key[len(foreign):])) is not None:
                    ours = prefix + name
                    break
        if ours is not None:
            out[ours] = key
            continue
        reason = next((r for rx, r in IGNORE_RULES if rx.search(key)), None)
        if reason:
            report.ignored[key] = reason
        else:
            report.unexpected.append(key)
    return out


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    from torch import nn

    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    old = getattr(module, attr)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(module, attr, value)


def materialize(
    ck: Checkpoint,
    tasks: tuple[str, ...] | None = None,
    on_module_ready: Callable[[nn.Module, str], None] | None = None,
) -> BlipModel:
    """Build the model on the meta device and fill it tensor by tensor from the checkpoint.

    ``tasks`` restricts the parts built (weights of other parts are reported as ignored);
    ``on_module_ready(module, name)`` runs as soon as all tensors of a leaf module are set (the
    int8 engine quantises there, so no full fp32 copy of the model ever exists).
    """
    import torch

    from blip_core.model.blip import BlipModel
    from blip_core.model.vision import resample_pos_embed

    report = ck.report
    if report.format == INT8_FORMAT:
        raise CheckpointError(f"{report.source} holds int8 graphs (written by blip convert), not weights: "
                              "load it with precision='int8'")
    restrict_tasks(ck, tasks)
    rename = _rename(ck)
    with torch.device("meta"):
        model = BlipModel(ck.cfg)
    wanted = dict(model.state_dict(keep_vars=True))
    for ours, src in rename.items():
        if ours not in wanted:
            report.ignored[src] = "not used by the loaded tasks"
    report.missing = [k for k in wanted if k not in rename]
    if report.missing:
        parts = sorted({k.split(".")[0] for k in report.missing})
        raise CheckpointError(
            f"{report.source} lacks {len(report.missing)} weights of {', '.join(parts)} "
            f"(e.g. {report.missing[0]}); it cannot serve {'+'.join(ck.cfg.tasks)}"
        )
    pending = _leaf_counts(model)
    for name, meta in wanted.items():
        value = ck.tensors.get(rename[name])
        if name == "vision.pos_embed" and value.shape != meta.shape:
            value = resample_pos_embed(value, ck.cfg.vision.grid)
            report.resampled.append(f"{rename[name]} {ck.tensors.shapes[rename[name]]} -> {tuple(value.shape)}")
        if value.shape != meta.shape:
            report.mismatched.append((rename[name], tuple(value.shape), tuple(meta.shape)))
            continue
        _set_tensor(model, name, value.to(torch.float32))
        report.loaded += 1
        owner = name.rpartition(".")[0]
        pending[owner] -= 1
        if pending[owner] == 0 and on_module_ready is not None:
            on_module_ready(model.get_submodule(owner) if owner else model, owner)
    if report.mismatched:
        k, got, want = report.mismatched[0]
        raise CheckpointError(f"{report.source}: {len(report.mismatched)} weights have the wrong shape "
                              f"(e.g. {k}: {got}, the model expects {want}); wrong architecture or damaged file")
    if report.unexpected:
        log.warning("unexpected weights not loaded from %s: %s", report.source, report.unexpected[:10])
    return model.eval()


def _leaf_counts(model: nn.Module) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in model.state_dict(keep_vars=True):
        owner = name.rpartition(".")[0]
        counts[owner] = counts.get(owner, 0) + 1
    return counts


def load_model(path: str | os.PathLike, tasks: tuple[str, ...] | None = None) -> tuple[BlipModel, BlipTokenizer, LoadReport]:
    ck = open_checkpoint(path)
    model = materialize(ck, tasks)
    tokenizer = BlipTokenizer(ck.vocab)
    tokenizer.check_model(ck.cfg.text)
    return model, tokenizer, ck.report


# ------------------------------------------------------------------- writing
def _atomic_write(folder: Path, files: dict[str, bytes | Callable[[Path], None]]) -> None:
    """Write files into ``folder`` via a sibling temp folder and a rename, so an interrupted save
    (full disk, kill) never leaves a half-written model where a good one was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name, content in files.items():
            target = tmp / name
            if callable(content):
                content(target)
            else:
                target.write_bytes(content)
            with open(target, "rb") as f:
                os.fsync(f.fileno())
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            if old.exists():
                _rmtree(old)
            os.replace(folder, old)
            os.replace(tmp, folder)
            _rmtree(old)
        else:
            os.replace(tmp, folder)
    except BaseException:
        _rmtree(tmp)
        raise


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)


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
    """Save in our own format: config.json (with ``blipcam``), model.safetensors, vocab.txt.
    ``dtype=torch.float16`` halves the file (e.g. a bundled model); loading always computes in fp32.
    The default keeps float32."""
    import torch
    from safetensors.torch import save_file

    sd = _unshared({k: v.to(dtype or torch.float32) for k, v in model.state_dict().items()})
    meta = {"blipcam": model.cfg.to_dict(), "format_version": FORMAT_VERSION, **(extra or {})}
    _atomic_write(Path(folder), {
        "config.json": json.dumps(meta, indent=2).encode(),
        "model.safetensors": lambda p: save_file(sd, str(p), metadata={"format": "pt"}),
        "vocab.txt": tokenizer.vocab_file.read_bytes(),
    })
    return Path(folder)


HF_TASK_ARCH = {v[0]: k for k, v in HF_ARCHITECTURES.items()}


def export_hf(model: BlipModel, folder: str | os.PathLike, tokenizer: BlipTokenizer, task: str | None = None) -> Path:
    """Save one task of ``model`` in the Hugging Face BLIP layout (loadable by transformers'
    ``Blip*.from_pretrained`` and by ``blip_core.load``)."""
    from safetensors.torch import save_file

    cfg = model.cfg
    task = task or cfg.tasks[0]
    if task not in cfg.tasks:
        raise CheckpointError(f"the model has no {task} part (it has {', '.join(cfg.tasks)})")
    decoder = {"caption": "text_decoder", "vqa": "answer_decoder"}.get(task)
    routes = _routes("vision_model.", VIT_HF_KEYS, decoder or "-")
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
    _atomic_write(Path(folder), {
        "config.json": json.dumps(hf, indent=2).encode(),
        "model.safetensors": lambda p: save_file(_unshared(out), str(p), metadata={"format": "pt"}),
        "vocab.txt": tokenizer.vocab_file.read_bytes(),
        "tokenizer_config.json": json.dumps(tok_cfg, indent=2).encode(),
        "preprocessor_config.json": json.dumps(processor, indent=2).encode(),
    })
    return Path(folder)
