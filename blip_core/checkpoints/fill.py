"""Filling a model from a checkpoint's tensors: the one loop that resamples the ViT's position
embeddings, checks each shape and sets each tensor, used by ``materialize`` (a model for
inference), the int8 conversion (one part at a time) and training's ``init_model``.

Missing or mis-shaped weights of a part the model needs are refused, never replaced by random
values; every foreign key is accounted for in the checkpoint's ``LoadReport``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from blip_core.checkpoints.opening import INT8_FORMAT, Checkpoint, open_checkpoint, restrict_tasks
from blip_core.checkpoints.vocab import tokenizer_for
from blip_core.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from blip_core.model.blip import BlipModel

log = logging.getLogger(__name__)
POS_EMBED = "vision.pos_embed"  # trained at one image size, resampled to the model's grid


def rename_map(ck: Checkpoint) -> dict[str, str]:
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
        reason = next((r for rx, r in ck.ignored_keys if rx.search(key)), None)
        if reason:
            report.ignored[key] = reason
        else:
            report.unexpected.append(key)
    return out


@dataclass
class Filled:
    """What ``fill_module`` did, by our tensor names; shapes as tuples."""

    loaded: list[str] = field(default_factory=list)
    resampled: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, from, to)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, got, expected): not set
    absent: list[str] = field(default_factory=list)  # the source has no tensor for them: not set


def fill_module(model: BlipModel, source: Callable[[str], torch.Tensor | None],
                names: Iterable[str] | None = None) -> Filled:
    """Set the tensors ``names`` of ``model`` (default: its whole state dict) to ``source(name)``
    (None: the checkpoint has none) in fp32, the ViT's position embeddings resampled to the
    model's grid when they were trained at another image size. A tensor of another shape is left
    as it was and reported: the caller refuses it or starts it fresh.

    A tensor on the meta device (a model being built from the checkpoint) is replaced; a live one
    is copied into, so a trainable model keeps its parameters' identity and never shares memory
    with the source."""
    import torch
    from torch import nn

    from blip_core.model.vision import resample_pos_embed

    done = Filled()
    current = model.state_dict(keep_vars=True)
    for name in current if names is None else names:
        target = current[name]
        value = source(name)
        if value is None:
            done.absent.append(name)
            continue
        # a copy in memory of our own: safetensors hands out views of its memory-mapped file, whose
        # pages the kernel drops under memory pressure and reads from disk again on the next use
        # (resident, they are as fast: 211 vs 207 ms per token for four OPT-2.7B layers)
        value = value.to(torch.float32, copy=True)
        if name == POS_EMBED and value.shape != target.shape:
            resampled = resample_pos_embed(value, model.cfg.vision.grid)
            done.resampled.append((name, tuple(value.shape), tuple(resampled.shape)))
            value = resampled
        if value.shape != target.shape:
            done.mismatched.append((name, tuple(value.shape), tuple(target.shape)))
            continue
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        if not target.is_meta:
            with torch.no_grad():
                target.copy_(value)
        elif isinstance(target, nn.Parameter):
            setattr(module, attr, nn.Parameter(value, requires_grad=target.requires_grad))
        else:
            setattr(module, attr, value)
        done.loaded.append(name)
    return done


def refuse_mismatched(source: str, mismatched: list[tuple[str, tuple, tuple]]) -> None:
    """A CheckpointError if any weight of ``source`` has the wrong shape ((key, got, expected))."""
    if mismatched:
        k, got, want = mismatched[0]
        raise CheckpointError(f"{source}: {len(mismatched)} weights have the wrong shape "
                              f"(e.g. {k}: {got}, the model expects {want}); wrong architecture or damaged file")


def meta_model(ck: Checkpoint) -> tuple[BlipModel, dict[str, str]]:
    """The model ``ck`` describes, built on the meta device (no memory yet), and our key -> the
    checkpoint's key for each of its tensors. A checkpoint that lacks any is refused."""
    import torch

    from blip_core.model.blip import BlipModel

    report = ck.report
    rename = rename_map(ck)
    with torch.device("meta"):
        if ck.family == "blip2":
            from blip_core.model.blip2 import Blip2Model

            model = Blip2Model(ck.cfg)
        else:
            model = BlipModel(ck.cfg)
    wanted = model.state_dict(keep_vars=True)
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
    return model, rename


def materialize(ck: Checkpoint, tasks: tuple[str, ...] | None = None) -> BlipModel:
    """Build the model on the meta device and fill it tensor by tensor from the checkpoint.
    ``tasks`` restricts the parts built (weights of other parts are reported as ignored)."""
    report = ck.report
    if report.format == INT8_FORMAT:
        raise CheckpointError(f"{report.source} holds int8 graphs (written by blip convert), not weights: "
                              "load it with precision='int8'")
    restrict_tasks(ck, tasks)
    model, rename = meta_model(ck)
    filled = fill_module(model, lambda name: ck.tensors.get(rename[name]))
    report.loaded += len(filled.loaded)
    report.resampled += [f"{rename[name]} {old} -> {new}" for name, old, new in filled.resampled]
    report.mismatched += [(rename[name], got, want) for name, got, want in filled.mismatched]
    refuse_mismatched(report.source, report.mismatched)
    if report.unexpected:
        log.warning("unexpected weights not loaded from %s: %s", report.source, report.unexpected[:10])
    return model.eval()


def load_model(path: str | os.PathLike, tasks: tuple[str, ...] | None = None):
    """The model at ``path`` (``tasks``: all of the checkpoint's when None), its tokenizer, the report."""
    ck = open_checkpoint(path)
    model = materialize(ck, tasks)
    return model, tokenizer_for(ck), ck.report
