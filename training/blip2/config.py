"""Run configs of BLIP-2's training commands: the same flat, frozen dataclasses as BLIP's
(``training.config``), so every key is a YAML key and a ``key=value`` override."""

from __future__ import annotations

from dataclasses import dataclass

from training.config import Common, ConfigError, Optimisation, _choice, _positive

STAGES = ("stage1", "stage2")
DEMO = "demo"  # init alias: the bundled BLIP demo model (blip_core.demo_model_path())


@dataclass(frozen=True)
class Blip2TrainConfig(Optimisation, Common):
    """``init`` is what a stage starts from: stage 1, a BLIP checkpoint (``demo``: the bundled one)
    whose ViT becomes the frozen image encoder and whose BERT-style text encoder initialises the
    Q-Former; stage 2, a stage-1 checkpoint (or output_dir), or a BLIP checkpoint for stage 2
    without stage 1 (the Q-Former's query path straight from the text encoder: the paper's Fig. 5
    ablation)."""

    stage: str = ""  # set by the sub-command: stage1 | stage2
    init: str = DEMO
    llm: str = ""  # stage 2: the frozen LLM's folder (Hugging Face OPT / T5 layout with tokenizer.json)
    num_queries: int = 32
    cross_every: int = 2  # the queries cross-attend to the image in layers 0, k, 2k, ...
    qformer_layers: int = 0  # 0 = as many as the text encoder it starts from
    # where the Q-Former's self-attention and FFNs start when init is a BLIP checkpoint: its text
    # encoder (as LAVIS starts from BERT), or scratch (random; only the image encoder is copied)
    qformer_from: str = "text_encoder"
    temp: float = 0.07  # stage 1: initial ITC temperature (learnable, clamped to [0.001, 0.5])
    task: str = "caption"  # stage 2 data: caption (captions) | vqa (questions with the template)
    prompt: str = ""  # stage 2 / caption fine-tuning: an instruction before the caption, e.g. "a photo of"
    answer_template: str = "Question: {} Answer:"  # vqa: the question in the LLM's prompt
    # BLIP-2's recipe (LAVIS pretrain_stage1/2.yaml): lr 1e-4 cosine to 1e-5, wd 0.05, 32 tokens
    lr: float = 1e-4
    schedule: str = "cosine"
    min_lr: float = 1e-5
    max_tokens: int = 32

    def __post_init__(self):
        Common.__post_init__(self)
        self._check_optimisation()
        if self.stage:
            _choice("stage", self.stage, STAGES)
        _choice("task", self.task, ("caption", "vqa"))
        _choice("qformer_from", self.qformer_from, ("text_encoder", "scratch"))
        _positive("num_queries", self.num_queries)
        _positive("cross_every", self.cross_every)
        _positive("qformer_layers", self.qformer_layers, allow_zero=True)
        if not 0.001 <= self.temp <= 0.5:
            raise ConfigError(f"temp must be in [0.001, 0.5], got {self.temp}")
        if not self.init:
            raise ConfigError("init is not set: a BLIP checkpoint (or 'demo'), or for stage 2 a stage-1 checkpoint")
        if self.stage == "stage2" and not self.llm:
            raise ConfigError("stage2 needs llm=path/to/the frozen LLM (e.g. what training.blip2.lm_pretrain wrote)")
        if self.task == "vqa" and "{}" not in self.answer_template:
            raise ConfigError(f"answer_template must contain {{}} for the question, got {self.answer_template!r}")
        if self.stage == "stage1" and self.task != "caption":
            raise ConfigError("stage1 trains on captions: task must be caption")


@dataclass(frozen=True)
class LmConfig(Optimisation, Common):
    """The small OPT-architecture LLM trained on scene-world text (``training.blip2.lm_pretrain``)."""

    width: int = 256
    layers: int = 4
    heads: int = 4
    ffn_dim: int = 1024
    max_positions: int = 128
    max_qa: int = 3  # question/answer pairs after a caption (0 .. max_qa, at least one thing per text)
    lr: float = 1e-3
    schedule: str = "cosine"
    min_lr: float = 1e-4
    max_tokens: int = 96
    batch_size: int = 64

    def __post_init__(self):
        Common.__post_init__(self)
        self._check_optimisation()
        for name in ("width", "layers", "heads", "ffn_dim", "max_positions"):
            _positive(name, getattr(self, name))
        _positive("max_qa", self.max_qa, allow_zero=True)
        if self.width % self.heads:
            raise ConfigError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        if self.max_tokens > self.max_positions:
            raise ConfigError(f"max_tokens ({self.max_tokens}) exceeds max_positions ({self.max_positions})")
        if self.data != "scenes":
            raise ConfigError("the LLM is pre-trained on scene-world text: data must be scenes")


def config_and_overrides(args) -> tuple[str | None, list[str]]:
    """``CONFIG key=value ...`` or ``--config CONFIG key=value ...``: the file and the overrides."""
    overrides = list(args.overrides)
    if args.config is None and overrides and "=" not in overrides[0]:
        return overrides[0], overrides[1:]
    return args.config, overrides
