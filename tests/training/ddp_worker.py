"""Started by test_ddp under torchrun: ``ddp_worker.py {pretrain,finetune} key=value ...`` trains a
few steps, then saves this rank's whole training-module state (model, temperature, momentum
encoders, queues) for comparison across ranks."""

import sys

import torch

from training import dist, finetune, pretrain
from training.config import FinetuneConfig, PretrainConfig, parse


def main() -> None:
    command, overrides = sys.argv[1], sys.argv[2:]
    if command == "pretrain":
        run = pretrain.run(parse(PretrainConfig, None, overrides))
    else:
        run = finetune.run(parse(FinetuneConfig, None, overrides))
    state = {k: v.detach().clone() for k, v in run.objective.state_dict().items()}
    torch.save(state, f"{run.cfg.output_dir}/rank{dist.rank()}.pt")
    dist.cleanup()


if __name__ == "__main__":
    main()
