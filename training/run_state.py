"""Training checkpoints: one folder, written atomically, that is both a model and a resume point.

::

    output_dir/checkpoints/step-0001200/
        config.json, model.safetensors, vocab.txt   blip_core.checkpoints.save: blip_core.load() reads it
        training_state.pt                           optimizer, step, RNG of every rank, the objective's
                                                    own state (temperature, momentum encoders, queues)
        train_config.yaml                           the run's full config

The folder is assembled under a hidden temporary name and renamed into place, so a crash while
saving leaves the previous checkpoint intact and never a half-written one.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from safetensors.torch import load_file

from blip_core.checkpoints import export_hf, materialize, open_checkpoint
from blip_core.checkpoints.atomic import atomic_folder
from blip_core.checkpoints.fill import fill_module
from blip_core.checkpoints.saving import write_model
from blip_core.errors import CheckpointError
from blip_core.model.blip import BlipModel
from blip_core.model.config import VISION_PRESETS, preset
from blip_core.tokenizer import BlipTokenizer

from .config import ConfigError
from .vocab import make_tokenizer, text_ids

log = logging.getLogger(__name__)
STATE_FILE = "training_state.pt"
STEP_DIR = re.compile(r"^step-(\d+)$")
# save_checkpoint's hidden folders: the one being written, and the replaced one while it is swapped out
SAVE_LEFTOVER = re.compile(r"^\.(step-\d+)\.(partial|old)-(\d+)$")


# ---------------------------------------------------------------------------- saving
def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(folder: Path, model: BlipModel, tokenizer: BlipTokenizer, state: dict[str, Any],
                    config: dict[str, Any], writer: Callable[[Path, dict], None] | None = None) -> Path:
    """Write the model and ``state`` (a ``torch.save``-able dict) into ``folder`` atomically, staged
    in ``.step-N.partial-PID`` (the old checkpoint waits in ``.step-N.old-PID`` while it is swapped:
    ``clean_interrupted_saves`` knows both names). ``writer(staging, extra)`` replaces
    ``write_model`` for models saved in another layout (BLIP-2's LLM folders)."""
    folder = Path(folder)
    pid = os.getpid()
    extra = {"training": {"step": state["step"], "command": config.get("command")}}
    with atomic_folder(folder, staging=f".{folder.name}.partial-{pid}", aside=f".{folder.name}.old-{pid}") as staging:
        if writer is None:
            write_model(model, staging, tokenizer, extra=extra)
        else:
            writer(staging, extra)
        torch.save(state, staging / STATE_FILE)
        (staging / "train_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def clean_interrupted_saves(output_dir: str | Path) -> list[Path]:
    """Tidy what saves killed midway left in ``output_dir/checkpoints`` (their writer's pid is dead):
    a ``.step-N.partial-PID`` staging folder is removed; a ``.step-N.old-PID`` folder (a whole
    checkpoint moved aside for its replacement) is moved back if ``step-N`` is missing, else
    removed. Returns the folders removed or restored."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    touched = []
    for leftover in sorted(root.iterdir()):
        m = SAVE_LEFTOVER.match(leftover.name)
        if not m or _pid_alive(int(m.group(3))):
            continue
        target = root / m.group(1)
        if m.group(2) == "old" and not target.exists():
            os.replace(leftover, target)
            log.warning("restored %s, moved aside by a save that was interrupted", target)
        else:
            shutil.rmtree(leftover, ignore_errors=True)
            log.warning("removed %s, left by a save that was interrupted", leftover)
        touched.append(leftover)
    return touched


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be writing. This process is not (it calls this before
    saving), so its own pid counts as dead: an earlier run in it was interrupted."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except (OverflowError, ValueError):  # not a pid at all
        return False
    return True


def step_folder(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:07d}"


def prune(output_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints."""
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


# --------------------------------------------------------------------------- resuming
def find_checkpoint(path: str) -> Path:
    """``path`` is a checkpoint folder, or an output_dir whose newest checkpoint is taken."""
    p = Path(path)
    if (p / STATE_FILE).is_file():
        return p
    found = list_checkpoints(p)
    if found:
        return found[-1]
    raise CheckpointError(f"resume={path}: neither a training checkpoint (no {STATE_FILE}) "
                          "nor an output_dir with checkpoints")


def resolve_init(path: str) -> str:
    """``init=`` may name a checkpoint or a training output_dir (its newest checkpoint)."""
    p = Path(path)
    if p.is_dir() and not (p / "config.json").is_file() and list_checkpoints(p):
        return str(list_checkpoints(p)[-1])
    return path


def load_state(folder: Path) -> dict[str, Any]:
    try:
        return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {folder / STATE_FILE}: {type(e).__name__}: {str(e)[:200]}") from e


def load_weights(model: BlipModel, folder: Path) -> None:
    """Load our own ``model.safetensors`` into a live (possibly tied) model, strictly."""
    try:
        sd = load_file(str(folder / "model.safetensors"))
    except Exception as e:
        raise CheckpointError(f"cannot read {folder / 'model.safetensors'}: {e}") from e
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{folder} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")


# ----------------------------------------------------------------------------- init
def init_model(init: str, tasks: tuple[str, ...], image_size: int = 0) -> tuple[BlipModel, BlipTokenizer]:
    """A trainable model for ``tasks`` initialised from checkpoint ``init`` (any format
    ``blip_core`` reads). Parts the checkpoint lacks are taken from their BLIP source or left
    fresh, and logged:

    - ``answer_decoder`` (VQA) <- the pre-trained ``text_decoder`` (BLIP initialises it so; its
      cross-attention then reads question states instead of the image);
    - ``vision.pos_embed`` is resampled bicubically when ``image_size`` changes the grid.
    """
    init = resolve_init(init)
    ck = open_checkpoint(init)
    tokenizer = BlipTokenizer(ck.vocab)
    tokenizer.check_model(ck.cfg.text)
    source = materialize(ck).state_dict()
    cfg = ck.cfg.with_tasks(*tasks)
    if image_size:
        cfg = replace(cfg, vision=replace(cfg.vision, image_size=image_size))
    model = BlipModel(cfg)

    def tensor(key: str) -> torch.Tensor | None:
        if key not in source and key.startswith("answer_decoder."):
            key = "text_decoder." + key[len("answer_decoder."):]
        return source.get(key)

    filled = fill_module(model, tensor)
    fresh = filled.absent + [name for name, _, _ in filled.mismatched]
    if fresh:
        parts = sorted({".".join(k.split(".")[:3]) for k in fresh})
        log.warning("init %s: %d tensors not in the checkpoint start fresh: %s", init, len(fresh),
                    ", ".join(parts[:12]))
    log.info("init from %s (%s): tasks %s, %d tensors loaded", init, ck.report.format, "+".join(cfg.tasks),
             len(filled.loaded))
    return model.train(), tokenizer


def init_temperature(init: str) -> float | None:
    """The learned ITC temperature of a checkpoint written by training, if it has one."""
    init = resolve_init(init)
    path = Path(init) / STATE_FILE
    if not path.is_file():
        return None
    state = load_state(Path(init)).get("objective", {})
    return float(state["temp"]) if "temp" in state else None


def export_all_hf(model: BlipModel, tokenizer: BlipTokenizer, output_dir: str | Path) -> list[Path]:
    """One Hugging Face folder per task (transformers has one class per task)."""
    return [export_hf(model, Path(output_dir) / f"hf-{task}", tokenizer, task) for task in model.cfg.tasks]


def build_model(cfg, tasks: tuple[str, ...]) -> tuple[BlipModel, BlipTokenizer]:
    """The model a run starts from: ``init=`` checkpoint, else a fresh ``model`` preset sized to
    the ``vocab`` tokenizer (``image_size`` / ``embed_dim`` overriding the preset)."""
    if cfg.init:
        return init_model(cfg.init, tasks, cfg.image_size)
    if cfg.model not in VISION_PRESETS:
        raise ConfigError(f"model={cfg.model!r}: choose one of {', '.join(sorted(VISION_PRESETS))}")
    tokenizer = make_tokenizer(cfg.vocab, cfg.output_dir)
    bc = preset(cfg.model, tasks, **text_ids(tokenizer))
    vision = replace(bc.vision, image_size=cfg.image_size) if cfg.image_size else bc.vision
    if vision.image_size % vision.patch_size:
        raise ConfigError(f"image_size={vision.image_size} is not a multiple of the patch size {vision.patch_size}")
    if cfg.max_tokens > bc.text.max_positions:
        raise ConfigError(f"max_tokens={cfg.max_tokens} exceeds the model's {bc.text.max_positions} positions")
    return BlipModel(replace(bc, vision=vision, embed_dim=cfg.embed_dim)).train(), tokenizer
