"""BLIP-2's two-stage pre-training (issue #18), over the shared machinery of ``training``
(configs, data, the step loop, checkpoints, DDP):

- ``config``: the frozen run configs (``Blip2TrainConfig`` for both stages, ``LmConfig``);
- ``losses``: pure functions: ITC over the best query, stage-2 labels and LM losses, prefix split;
- ``build``: the models each stage starts from (Q-Former from a BLIP text encoder, the frozen LLM);
- ``objectives``: ``Stage1Objective`` (ITC + ITG + ITM) and ``Stage2Objective`` (frozen LLM);
- ``text_data`` and ``lm_pretrain``: the small OPT-architecture LLM trained on scene-world text.

The entry point is ``python -m training.pretrain_blip2 stage1|stage2 CONFIG [key=value ...]``.
"""
