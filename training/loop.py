"""The step loop shared by pre-training and fine-tuning: schedule, forward/backward, logging to
``metrics.jsonl`` and the console, atomic checkpoints and exact resume.

Exact resume: the data of step ``s`` depends only on (seed, epoch, position), the schedule only
on ``s``, and the checkpoint carries optimizer, RNG of every rank, momentum encoders and queues;
a resumed run therefore repeats the uninterrupted run's losses step for step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from . import dist
from .config import setup_process, to_dict
from .data import epoch_batches, steps_per_epoch
from .objectives import Objective
from .run_state import (
    clean_interrupted_saves,
    export_all_hf,
    find_checkpoint,
    load_state,
    load_weights,
    prune,
    rng_state,
    save_checkpoint,
    set_rng_state,
    step_folder,
)
from .schedule import alpha_at, lr_at

log = logging.getLogger(__name__)
# keys that may change between an interrupted run and its resumption
RESUMABLE_CHANGES = {"resume", "output_dir", "max_steps", "epochs", "progress", "log_every", "save_every",
                     "keep_checkpoints", "export_hf", "workers", "eval_each_epoch"}


@dataclass
class Run:
    command: str  # "pretrain" | "finetune"
    cfg: object  # PretrainConfig | FinetuneConfig
    info: dist.DistInfo
    objective: Objective
    datasets: dict  # view name ("captions" / "vqa") -> Dataset
    on_epoch_end: Callable[[int, int], dict | None] | None = None  # (epoch, step) -> metrics to log
    history: list = field(default_factory=list)  # the logged records (rank 0)


def param_groups(objective: Objective, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases, norms and the temperature are not decayed (nanoGPT's
    rule; BLIP decays everything, which matters little at 0.05)."""
    decay, no_decay = [], []
    for _, p in objective.named_parameters():  # shared (tied) parameters are listed once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _set_grad_checkpointing(objective: Objective, on: bool) -> None:
    for module in objective.model.modules():
        if hasattr(module, "grad_checkpointing"):
            module.grad_checkpointing = on


def _restore(run: Run, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """Load a checkpoint into the live objective and optimizer -> (step, images skipped so far)."""
    folder = find_checkpoint(run.cfg.resume)
    state = load_state(folder)
    load_weights(run.objective.model, folder)
    run.objective.load_extra_state(state["objective"])
    optimizer.load_state_dict(state["optimizer"])
    ours, theirs = to_dict(run.cfg), state.get("config", {})
    changed = sorted(k for k in ours if k in theirs and ours[k] != theirs[k] and k not in RESUMABLE_CHANGES)
    if changed:
        log.warning("resuming with changed settings %s: the run will not repeat the original exactly", changed)
    if state["world"] == run.info.world:
        set_rng_state(state["rng"][run.info.rank])
    else:
        log.warning("resuming on %d processes, saved on %d: random streams restart", run.info.world, state["world"])
        torch.manual_seed(run.cfg.seed + 7919 * run.info.rank + state["step"])
    log.info("resumed from %s at step %d", folder, state["step"])
    return state["step"], state.get("skipped", 0)


def _save(run: Run, optimizer, step: int, skipped: int) -> None:
    rngs = dist.all_gather_object(rng_state())  # every rank's generators, so each resumes its own
    if run.info.main:
        state = {"step": step, "world": run.info.world, "rng": rngs, "skipped": skipped,
                 "optimizer": optimizer.state_dict(), "objective": run.objective.extra_state(),
                 "config": to_dict(run.cfg)}
        config = {"command": run.command, **to_dict(run.cfg)}
        folder = save_checkpoint(step_folder(run.cfg.output_dir, step), run.objective.model,
                                 run.objective.tokenizer, state, config,
                                 writer=getattr(run.objective, "write_model", None))
        prune(run.cfg.output_dir, run.cfg.keep_checkpoints)
        log.info("saved %s", folder)
    dist.barrier()


def launch(build, cfg) -> Run:
    """One training command: join the process group (torchrun or alone), set up logging and
    threads, ``build(cfg, info)`` the run, train it."""
    info = dist.init()
    setup_process(cfg, info.main)
    run = build(cfg, info)
    train(run)
    return run


def train(run: Run) -> list[dict]:
    """Train until ``max_steps`` (or ``epochs``); returns the logged records (rank 0)."""
    cfg, info, objective = run.cfg, run.info, run.objective
    spe = min(steps_per_epoch(ds, cfg.batch_size, info.world, cfg.samples_per_epoch) for ds in run.datasets.values())
    total = cfg.max_steps or cfg.epochs * spe
    _set_grad_checkpointing(objective, cfg.grad_checkpointing)
    objective.to(info.device).train()
    model = DDP(objective, device_ids=[info.local_rank] if info.device.type == "cuda" else None,
                broadcast_buffers=False) if info.enabled else objective
    optimizer = torch.optim.AdamW(param_groups(objective, cfg.weight_decay), lr=cfg.lr)
    torch.manual_seed(cfg.seed + 7919 * info.rank)  # after building: same init, per-rank sampling
    if info.main:
        clean_interrupted_saves(cfg.output_dir)
    step, skipped_total = _restore(run, optimizer) if cfg.resume else (0, 0)
    metrics = Path(cfg.output_dir) / "metrics.jsonl"
    if info.main:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            keep_records_until(metrics, step)
        log.info("%s: %d steps (%d per epoch), global batch %d = %d x %d processes, %d parameters", run.command,
                 total, spe, cfg.batch_size * info.world, cfg.batch_size, info.world,
                 sum(p.numel() for p in objective.parameters() if p.requires_grad))
    bar = tqdm(total=total, initial=step, desc=run.command, disable=not (info.main and cfg.progress),
               dynamic_ncols=True)
    window = _Window()
    while step < total:
        epoch, start = divmod(step, spe)
        streams = {name: epoch_batches(ds, epoch=epoch, start=start, steps=spe, batch=cfg.batch_size, rank=info.rank,
                                       world=info.world, seed=cfg.seed, workers=cfg.workers)
                   for name, ds in run.datasets.items()}
        for batches in zip(*streams.values()):
            batches = dict(zip(streams, batches))
            lr = lr_at(step, spe, total, lr=cfg.lr, warmup_steps=cfg.warmup_steps, warmup_lr=cfg.warmup_lr,
                       schedule=cfg.schedule, lr_decay=cfg.lr_decay, min_lr=cfg.min_lr)
            # configs without momentum distillation (BLIP-2) have no alpha
            alpha = alpha_at(step, spe, cfg.alpha, cfg.alpha_ramp_epochs) if hasattr(cfg, "alpha") else 0.0
            losses = _step(model, objective, optimizer, objective.prepare(batches, info.device), lr, alpha, cfg)
            step += 1
            bar.update(1)
            window.add(losses, sum(len(b["image_ids"]) for b in batches.values()) * info.world,
                       sum(b["skipped"] for b in batches.values()))
            if step % cfg.log_every == 0 or step == total:
                record, skipped_total = window.flush(step, epoch, lr, alpha, objective, info, skipped_total)
                _log(run, metrics, record, bar)
            epoch_done = step % spe == 0
            if (cfg.save_every and step % cfg.save_every == 0) or (not cfg.save_every and epoch_done) or step == total:
                _save(run, optimizer, step, skipped_total)
            if epoch_done and run.on_epoch_end is not None:
                result = run.on_epoch_end(epoch, step)
                if result and info.main:
                    _log(run, metrics, {"step": step, "epoch": epoch, "eval": result}, bar)
            if step >= total or epoch_done:
                break
    bar.close()
    if cfg.export_hf and info.main:
        for folder in export_all_hf(objective.model, objective.tokenizer, cfg.output_dir):
            log.info("exported %s", folder)
    dist.barrier()
    return run.history


def _step(model, objective: Objective, optimizer, x: dict, lr: float, alpha: float, cfg) -> dict[str, torch.Tensor]:
    """One optimisation step on the prepared inputs ``x`` -> {"loss", "loss_itc", ...}."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    device = next(objective.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()
    with autocast:
        losses = model(x, alpha)  # model: the DDP wrapper (or the objective itself)
    loss = sum(losses.values())
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"loss is {loss.item()}; lower lr or check the data")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(objective.parameters(), cfg.grad_clip)
    optimizer.step()
    return {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items()}}


class _Window:
    """Running sums between two log lines."""

    def __init__(self):
        self.sums, self.steps, self.images, self.skipped, self.t0 = {}, 0, 0, 0, time.perf_counter()

    def add(self, losses, images, skipped):
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.steps += 1
        self.images += images
        self.skipped += skipped

    def flush(self, step, epoch, lr, alpha, objective, info, skipped_total) -> tuple[dict, int]:
        means = dist.all_reduce_mean({k: v / self.steps for k, v in self.sums.items()}, info.device)
        skipped_total += dist.all_reduce_sum_int(self.skipped, info.device)
        seconds = time.perf_counter() - self.t0
        record = {"step": step, "epoch": epoch, **{k: round(v, 6) for k, v in means.items()}, "lr": lr,
                  "images_per_s": round(self.images / seconds, 2), "skipped_images": skipped_total}
        if hasattr(objective, "temp"):
            record.update(alpha=round(alpha, 6), temp=round(float(objective.temp.detach()), 6))
        self.__init__()
        return record, skipped_total


def keep_records_until(metrics: Path, step: int) -> int:
    """A resumed run logs the steps after its checkpoint again: drop the records the interrupted
    run wrote for them (and a line the kill cut short), so that each step appears once.
    Returns the number of lines dropped; the file is replaced atomically."""
    if not metrics.is_file():
        return 0
    kept, dropped = [], 0
    for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        tmp = metrics.with_name(f".{metrics.name}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, metrics)
        log.info("%s: dropped %d records after step %d (the resumed run logs those steps again)", metrics, dropped,
                 step)
    return dropped


def _log(run: Run, metrics: Path, record: dict, bar: tqdm) -> None:
    if not run.info.main:
        return
    before = next((r["skipped_images"] for r in reversed(run.history) if "skipped_images" in r), 0)
    if record.get("skipped_images", 0) > before:
        log.warning("%d unreadable images skipped so far (step %d)", record["skipped_images"], record["step"])
    with open(metrics, "a") as f:
        f.write(json.dumps(record) + "\n")
    run.history.append(record)
    if "loss" in record:
        bar.set_postfix({k.removeprefix("loss_"): f"{v:.3f}" for k, v in record.items() if k.startswith("loss")})
        if not run.cfg.progress or record["step"] % (run.cfg.log_every * 10) == 0:
            log.info("step %d %s", record["step"], " ".join(f"{k}={v}" for k, v in record.items() if k != "step"))
    else:
        log.info("step %d eval %s", record["step"], json.dumps(record.get("eval")))
