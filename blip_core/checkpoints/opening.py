"""Opening a checkpoint: which format a path holds (our folder, a Hugging Face BLIP folder, a
Salesforce or LAVIS ``.pth``, a folder of converted int8 graphs), its config, its lazy tensors and
the key map that names them ours. Nothing is materialised here (``fill.materialize`` does that).

Formats read (one converter each, all producing our parameter names):

- ``blipcam``: our own folder (``config.json`` with a ``blipcam`` entry, ``model.safetensors``,
  ``vocab.txt``);
- ``hf``: a Hugging Face BLIP folder (``config.json`` + ``model.safetensors``, sharded or not, or
  ``pytorch_model.bin``), the task taken from ``architectures``;
- ``salesforce``: the original ``.pth`` (``{"model": state_dict}``, ``visual_encoder.*`` keys), the
  architecture inferred from tensor shapes, the task from which parts are present;
- ``lavis``: LAVIS ``.pth`` (same key names; the task and image size from its saved config);
- ``hf-blip2``: a Hugging Face BLIP-2 folder (``model_type: blip-2``; sharded safetensors read
  lazily, shard by shard), the second model family (``blip_core.model.blip2``);
- ``lavis-blip2``: a LAVIS BLIP-2 ``.pth`` (``Qformer.*``, ``query_tokens``, ``ln_vision``, ...).
"""

from __future__ import annotations

import dataclasses
import os
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from blip_core.checkpoints.configs import LAVIS_ARCH_TASKS, hf_config, infer_salesforce_config, salesforce_tasks
from blip_core.checkpoints.keymaps import IGNORE_RULES, VIT_HF_KEYS, VIT_TIMM_KEYS, Route, blip_routes
from blip_core.checkpoints.report import LoadReport
from blip_core.checkpoints.sources import DeferredTensorSource, TensorSource, read_json, torch_load
from blip_core.checkpoints.vocab import vocab_for
from blip_core.errors import CheckpointError
from blip_core.model.blip2_config import Blip2Config
from blip_core.model.config import BlipConfig

ModelConfig = Union[BlipConfig, Blip2Config]
INT8_FORMAT = "blipcam-int8"  # a folder of int8 graphs written by ``blip convert``: no weights to read


@dataclass
class Checkpoint:
    """A checkpoint opened but not yet materialised: config, lazy tensors and how names map."""

    cfg: ModelConfig
    tensors: TensorSource
    routes: list[Route] | None  # None: already our names
    vocab: Path  # BLIP: its vocab.txt; BLIP-2: the folder holding the LLM's tokenizer (or BERT's vocab, ITM)
    report: LoadReport
    ignore_rules: list[tuple[re.Pattern, str]] | None = None  # foreign keys a model never needs (None: BLIP's)

    @property
    def family(self) -> str:
        return getattr(self.cfg, "family", "blip")

    @property
    def ignored_keys(self) -> list[tuple[re.Pattern, str]]:
        return IGNORE_RULES if self.ignore_rules is None else self.ignore_rules


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
    if meta.get("model_type") == "blip-2" or _our_family(meta) == "blip2":
        return _open_blip2_folder(folder, meta, path)
    if "engine" in meta and "blipcam" in meta:  # converted graphs (``blip convert``), read by the int8 runtime
        cfg = BlipConfig.from_dict(meta["blipcam"], where=f"{path}: ", key="blipcam.")
        return Checkpoint(cfg, TensorSource({}, {}.__getitem__), None, vocab_for(folder, cfg),
                          LoadReport(str(folder), INT8_FORMAT))
    # the config is checked before any weight file is opened
    cfg = BlipConfig.from_dict(meta["blipcam"], where=f"{path}: ", key="blipcam.") if "blipcam" in meta \
        else hf_config(meta, where=f"{path}: ")
    kind, files = _weight_files(folder)
    if kind == "safetensors":
        tensors = TensorSource.from_safetensors(files)
    else:
        tensors = DeferredTensorSource(lambda: TensorSource.from_dict(torch_load(files[0])))
    if "blipcam" in meta:
        return Checkpoint(cfg, tensors, None, vocab_for(folder, cfg), LoadReport(str(folder), "blipcam"))
    decoder = "answer_decoder" if cfg.tasks == ("vqa",) else "text_decoder"
    return Checkpoint(cfg, tensors, blip_routes("vision_model.", VIT_HF_KEYS, decoder), vocab_for(folder, cfg),
                      LoadReport(str(folder), "hf"))


def _our_family(meta: dict) -> str | None:
    ours = meta.get("blipcam")
    return ours.get("family") if isinstance(ours, dict) else None


def _open_pth(path: Path) -> Checkpoint:
    obj = torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    sd = obj.get("model", obj.get("state_dict", obj))
    if isinstance(sd, dict) and "query_tokens" in sd:  # BLIP-2's Q-Former: the second family
        return _open_lavis_blip2(path, obj, sd)
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
    return Checkpoint(cfg, tensors, blip_routes("visual_encoder.", VIT_TIMM_KEYS, decoder),
                      vocab_for(path.parent, cfg), LoadReport(str(path), fmt))


def _open_blip2_folder(folder: Path, meta: dict, path: Path) -> Checkpoint:
    """A Hugging Face BLIP-2 folder, or one of ours holding a BLIP-2 (``blipcam.family``)."""
    from blip_core.checkpoints.configs_blip2 import hf_blip2_config
    from blip_core.checkpoints.keymaps_blip2 import BLIP2_IGNORE_RULES, hf_blip2_routes

    ours = "blipcam" in meta
    cfg = Blip2Config.from_dict(meta["blipcam"], where=f"{path}: ", key="blipcam.") if ours \
        else hf_blip2_config(meta, where=f"{path}: ")
    if "engine" in meta:  # converted graphs (``blip convert``): no weights to read
        return Checkpoint(cfg, TensorSource({}, {}.__getitem__), None, folder, LoadReport(str(folder), INT8_FORMAT),
                          BLIP2_IGNORE_RULES)
    kind, files = _weight_files(folder)
    if kind == "safetensors":
        tensors = TensorSource.from_safetensors(files)  # headers only: tensors are read one by one when filled
    else:
        tensors = DeferredTensorSource(lambda: TensorSource.from_dict(torch_load(files[0])))
    if not ours and cfg.llm_kind == "t5":
        # whether Flan-T5 has an LM head of its own is what the weights say: transformers 5 writes
        # tie_word_embeddings true even for a model saved with its own lm_head
        own_head = "language_model.lm_head.weight" in tensors.shapes
        cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, tie_embeddings=not own_head))
    routes = None if ours else hf_blip2_routes(cfg)
    return Checkpoint(cfg, tensors, routes, folder, LoadReport(str(folder), "blipcam" if ours else "hf-blip2"),
                      BLIP2_IGNORE_RULES)


def _open_lavis_blip2(path: Path, obj: dict, sd: dict) -> Checkpoint:
    """A LAVIS BLIP-2 ``.pth``: the architecture from its tensors' shapes (and its saved config)."""
    from blip_core.checkpoints.configs_blip2 import infer_lavis_blip2_config
    from blip_core.checkpoints.keymaps_blip2 import (
        BLIP2_IGNORE_RULES,
        lavis_blip2_routes,
        lavis_clip_names,
        lavis_qv_bias,
    )

    tensors = lavis_qv_bias(lavis_clip_names(TensorSource.from_dict(sd)))
    saved = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    cfg = infer_lavis_blip2_config(tensors.shapes, saved, where=f"{path}: ")
    return Checkpoint(cfg, tensors, lavis_blip2_routes(cfg), path.parent, LoadReport(str(path), "lavis-blip2"),
                      BLIP2_IGNORE_RULES)


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The checkpoint at ``path`` (a model folder or a ``.pth``-like file), opened but not loaded."""
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
        if ck.family == "blip":  # a BLIP-2 model's tasks share every part: nothing to leave out
            ck.cfg = ck.cfg.with_tasks(*tasks)
    ck.report.tasks = ck.cfg.tasks

