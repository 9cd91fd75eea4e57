"""Pre-training, fine-tuning and evaluation of ``blip_core`` models.

Commands (each takes ``--config FILE`` plus ``key=value`` overrides and runs unchanged under
``torchrun --nproc_per_node=N``)::

    python -m training.pretrain  --config training/configs/smoke.yaml
    python -m training.finetune  {caption,vqa,retrieval,multitask} --config FILE init=CKPT
    python -m training.evaluate  --config FILE init=CKPT tasks=caption,vqa,retrieval
    python -m training.make_scenes OUT_DIR --count 1000 [--shards]   # scene data as JSON / tar shards

Modules, one concern each: ``config`` (frozen dataclasses + parser), ``vocab`` (scene-world
WordPiece vocab), ``dist`` (torchrun/DDP helpers), ``losses`` (pure ITC/ITM/LM/VQA losses and the
hard-negative sampler), ``momentum`` (momentum encoders, feature queue), ``schedule`` (lr and
alpha ramps), ``data`` (datasets, transforms, loaders), ``checkpoint`` (training checkpoints,
init from a checkpoint), ``objectives`` (the training module that DDP wraps), ``loop`` (the
shared step loop), and the commands.

``training`` depends on ``blip_core``; ``blip_core`` never imports ``training``.
"""
