"""Fine-tune a pre-trained checkpoint for captioning, VQA, retrieval, or all three at once.

    python -m training.finetune caption   --config FILE init=runs/pretrain/checkpoints/step-... [key=value ...]
    python -m training.finetune vqa       --config FILE init=... data=json train_json=vqa_train.json image_root=...
    python -m training.finetune retrieval --config FILE init=...
    python -m training.finetune multitask --config FILE init=... [tasks=caption,vqa,retrieval]

- caption: LM on ``prompt + caption`` with the prompt tokens masked from the loss;
- vqa: the answer decoder starts as a copy of the pre-trained text decoder and cross-attends to
  the image-grounded question states; answers weighted (VQAv2);
- retrieval: ITC (momentum distillation, queues with image ids) + ITM whose negatives skip pairs
  of the same image; evaluated with top-k ITM re-ranking;
- multitask: one model with every part and ONE vision encoder (the app captions and answers
  from a single vision pass); every step trains every task. With data=json the captions come
  from ``train_json`` and the questions from ``vqa_train_json``.
- ``freeze=vision`` (any parts of the model, comma list) trains the rest only: a caption decoder
  can learn to read a vision encoder that other tasks share without changing it for them.

At the end of every epoch the model is evaluated on the validation data, if any (rank 0).
"""

from __future__ import annotations

import logging

import torch

from . import dist
from .config import TASK_NAMES, ConfigError, FinetuneConfig, arg_parser, parse, run_cli
from .data import train_captions, train_vqa
from .evaluate import MODEL_TASK, EvalSets, eval_sets, evaluate_model
from .loop import Run, launch
from .objectives import Objective
from .run_state import build_model, init_temperature

log = logging.getLogger("training.finetune")
PART = {"caption": "lm", "vqa": "vqa", "retrieval": "itc_itm"}
PHOTO_MIN_SCALE = 0.5  # BLIP fine-tuning crop


def _datasets(cfg: FinetuneConfig, tasks: tuple[str, ...], size: int) -> dict:
    datasets = {}
    if "caption" in tasks or "retrieval" in tasks:
        datasets["captions"] = train_captions(cfg, size, PHOTO_MIN_SCALE)
    if "vqa" in tasks:
        if cfg.data == "json" and "captions" in datasets and not cfg.vqa_train_json:
            raise ConfigError("multitask with data=json: give the VQA annotations as vqa_train_json=...")
        path, what = (cfg.vqa_train_json, "vqa_train_json") if cfg.vqa_train_json else (cfg.train_json, "train_json")
        datasets["vqa"] = train_vqa(cfg, size, PHOTO_MIN_SCALE, path, what)
    return datasets


def build(cfg: FinetuneConfig, info: dist.DistInfo) -> Run:
    tasks = cfg.task_set
    if not cfg.init:
        log.warning("no init= checkpoint: fine-tuning from random weights")
    torch.manual_seed(cfg.seed)
    model, tokenizer = build_model(cfg, tuple(MODEL_TASK[t] for t in tasks))
    freeze(model, cfg.frozen_parts)
    temp = (init_temperature(cfg.init) if cfg.init else None) or cfg.temp
    objective = Objective(model, tokenizer, tuple(PART[t] for t in tasks), max_tokens=cfg.max_tokens,
                          prompt=cfg.prompt if "caption" in tasks else "", temp=temp, queue_size=cfg.queue_size,
                          momentum=cfg.momentum, negatives_all_ranks=cfg.negatives_all_ranks, seed=cfg.seed)
    size = model.cfg.vision.image_size
    datasets = _datasets(cfg, tasks, size)
    sets = eval_sets(cfg, tasks, size) if cfg.eval_each_epoch and info.main else EvalSets()

    def on_epoch_end(epoch: int, step: int) -> dict | None:
        result = None
        if info.main and (sets.captions is not None or sets.vqa is not None):
            with torch.no_grad():
                result = evaluate_model(objective.model, tokenizer, sets, tasks, cfg)
        dist.barrier()  # the other ranks wait for rank 0's evaluation
        return result

    return Run("finetune", cfg, info, objective, datasets, on_epoch_end)


def freeze(model: torch.nn.Module, parts: tuple[str, ...]) -> None:
    """Leave ``parts`` as they are: no gradients, so the optimiser and DDP skip them. A part the
    model lacks (``freeze=answer_decoder`` when captioning) is an error, not silently ignored."""
    for part in parts:
        module = getattr(model, part, None)
        if module is None:
            raise ConfigError(f"freeze={part}: this model has no {part} (its parts: "
                              f"{', '.join(n for n, _ in model.named_children())})")
        module.requires_grad_(False)
        log.info("freeze: %s (%d parameters) stays as loaded", part, sum(p.numel() for p in module.parameters()))


def run(cfg: FinetuneConfig) -> Run:
    return launch(build, cfg)


def main(argv: list[str]) -> None:
    p = arg_parser("python -m training.finetune", __doc__.splitlines()[0], commands=(*TASK_NAMES, "multitask"))
    args = p.parse_args(argv)
    fixed = {} if args.command == "multitask" else {"tasks": args.command}
    cfg = parse(FinetuneConfig, args.config, args.overrides, **fixed)
    if not cfg.tasks:  # multitask without tasks=: all of them
        cfg = parse(FinetuneConfig, args.config, args.overrides, tasks=",".join(TASK_NAMES))
    run(cfg)


if __name__ == "__main__":
    run_cli(main)
