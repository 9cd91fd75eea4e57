"""BLIP-2's two-stage pre-training: a Q-Former between a frozen image encoder and a frozen LLM.

    python -m training.pretrain_blip2 stage1 training/configs/blip2_stage1_smoke.yaml [key=value ...]
    python -m training.pretrain_blip2 stage2 training/configs/blip2_stage2_smoke.yaml init=runs/b2s1 llm=runs/lm
    torchrun --nproc_per_node=2 -m training.pretrain_blip2 stage1 CONFIG ...

Stage 1 (image encoder frozen): ITC + ITG + ITM on the Q-Former, which starts from a BLIP
checkpoint's text encoder (``init``, default the bundled demo model, whose ViT is the image
encoder). Stage 2 (LLM frozen too): the query outputs, projected, are the LLM's soft prompt; OPT
learns the text after it, Flan-T5 the second half of it (prefix LM). ``task=vqa`` / ``prompt=``
turn stage 2 into instruction-free fine-tuning. Same conventions as ``training.pretrain``: YAML +
overrides, metrics.jsonl, atomic checkpoints, exact resume, torchrun DDP, scenes / JSON / WebDataset.
"""

from __future__ import annotations

import torch

from . import dist
from .blip2.build import stage1_model, stage2_model
from .blip2.config import STAGES, Blip2TrainConfig, config_and_overrides
from .blip2.objectives import Stage1Objective, Stage2Objective
from .config import arg_parser, parse, run_cli
from .data import train_captions, train_vqa
from .loop import Run, launch

# BLIP-2's images: random resized crop of scale 0.5-1 on photos (scenes: none, see train_transform)
PHOTO_MIN_SCALE = 0.5


def build(cfg: Blip2TrainConfig, info: dist.DistInfo) -> Run:
    torch.manual_seed(cfg.seed)  # identical fresh weights (cross-attention, queries, heads) on every rank
    if cfg.stage == "stage1":
        model, tokenizer, head = stage1_model(cfg)
        objective = Stage1Objective(model, tokenizer, head, max_tokens=cfg.max_tokens, temp=cfg.temp)
    else:
        model, tokenizer, llm_tokenizer, llm_folder = stage2_model(cfg)
        objective = Stage2Objective(model, tokenizer, llm_tokenizer, max_tokens=cfg.max_tokens, prompt=cfg.prompt,
                                    task=cfg.task, answer_template=cfg.answer_template, llm_folder=llm_folder)
    size = model.cfg.vision.image_size
    if cfg.task == "vqa":
        datasets = {"vqa": train_vqa(cfg, size, PHOTO_MIN_SCALE, cfg.train_json, "train_json")}
    else:
        datasets = {"captions": train_captions(cfg, size, photo_min_scale=PHOTO_MIN_SCALE)}
    return Run(f"blip2-{cfg.stage}", cfg, info, objective, datasets)


def run(cfg: Blip2TrainConfig) -> Run:
    return launch(build, cfg)


def parse_args(argv: list[str]) -> Blip2TrainConfig:
    """``stage1|stage2 CONFIG [key=value ...]`` (``--config CONFIG`` works too)."""
    args = arg_parser("python -m training.pretrain_blip2", __doc__.splitlines()[0], STAGES).parse_args(argv)
    config, overrides = config_and_overrides(args)
    return parse(Blip2TrainConfig, config, overrides, stage=args.command)


def main(argv: list[str]) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
