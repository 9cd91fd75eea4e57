"""Pre-train BLIP's MED model with its three objectives: loss = ITC + ITM + LM.

    python -m training.pretrain --config training/configs/smoke.yaml [key=value ...]
    torchrun --nproc_per_node=4 -m training.pretrain --config training/configs/pretrain_base.yaml \\
        data=json train_json=annotations/ccs_filtered.json image_root=/data/images

The model is ``BlipModel`` with tasks caption + match (text encoder, text decoder, projections,
ITM head); the decoder shares every parameter with the encoder except self-attention. Momentum
encoders, queues and the temperature live in ``training.objectives.Objective``.
"""

from __future__ import annotations

import logging

import torch

from . import dist
from .config import PretrainConfig, arg_parser, parse, run_cli
from .data import train_captions
from .loop import Run, launch
from .objectives import Objective, tie_text_stacks
from .run_state import build_model, init_temperature

log = logging.getLogger("training.pretrain")


def build(cfg: PretrainConfig, info: dist.DistInfo) -> Run:
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model, tokenizer = build_model(cfg, ("caption", "match"))
    tie_text_stacks(model.text_encoder, model.text_decoder)
    temp = (init_temperature(cfg.init) if cfg.init else None) or cfg.temp
    objective = Objective(model, tokenizer, ("itc_itm", "lm"), max_tokens=cfg.max_tokens, temp=temp,
                          queue_size=cfg.queue_size, momentum=cfg.momentum,
                          negatives_all_ranks=cfg.negatives_all_ranks, seed=cfg.seed)
    datasets = {"captions": train_captions(cfg, model.cfg.vision.image_size, photo_min_scale=0.2)}
    return Run("pretrain", cfg, info, objective, datasets)


def run(cfg: PretrainConfig) -> Run:
    return launch(build, cfg)


def main(argv: list[str]) -> None:
    args = arg_parser("python -m training.pretrain", __doc__.splitlines()[0]).parse_args(argv)
    run(parse(PretrainConfig, args.config, args.overrides))


if __name__ == "__main__":
    run_cli(main)
