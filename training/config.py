"""Run configs: frozen dataclasses read from YAML plus ``key=value`` overrides.

One flat namespace per command (``PretrainConfig``, ``FinetuneConfig``, ``EvalConfig``), so every
key can be overridden on the command line by its plain name. Values are type-checked against the
field annotations; an unknown key is an error that suggests the nearest known one. The CLI turns
every ``BlipError`` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import yaml

from blip_core import scenes
from blip_core.errors import BadInputError, BlipError


class ConfigError(BadInputError):
    """A config file or override is unusable (unknown key, wrong type, value out of range)."""


def _choice(name: str, value: Any, options: tuple) -> None:
    if value not in options:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(str, options))}")


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass(frozen=True)
class Common:
    """Keys every command understands: model, data, output."""

    # model -----------------------------------------------------------------------------
    model: str = "tiny"  # blip_core.model.config preset (tiny | small | base | large); ignored with init=
    vocab: str = "scenes"  # scenes (built from blip_core.scenes) | bert | path/to/vocab.txt
    image_size: int = 0  # 0 = the preset's (or the init checkpoint's)
    embed_dim: int = 256  # ITC projection size of a new model
    init: str = ""  # checkpoint to start from: our folder, a Hugging Face folder or a .pth
    # data ------------------------------------------------------------------------------
    data: str = "scenes"  # scenes | json | wds
    train_json: str = ""  # BLIP annotations [{"image", "caption"}] or [{"image", "question", "answer"}]
    val_json: str = ""
    image_root: str = ""  # "image" paths in the JSON are relative to this
    train_shards: str = ""  # wds: brace-expanded tar URLs, e.g. data/{00000..00099}.tar
    samples_per_epoch: int = 0  # wds: web corpora have no length; an epoch is this many samples
    scene_seed: int = 0  # training scenes are scenes.stream_seed(scene_seed, i), i < scene_count
    scene_count: int = 2000
    val_seed: int = 1
    val_count: int = 100
    scene_max_objects: int = 3
    scene_min_objects: int = 1  # VQA on scenes: train only on scenes with at least this many objects
    scene_captions: str = "clean"  # clean (reference captions) | web (alt-texts, web_noise false)
    scene_question_kinds: str = ""  # VQA on scenes: comma list of scenes.QUESTION_KINDS; "" = all
    web_noise: float = 0.0  # fraction of web captions that are wrong
    max_words: int = 30  # pre_caption truncation (BLIP: 30 pretrain / COCO)
    max_tokens: int = 35  # text length in tokens (BLIP: 30 pretrain, 35 ITM/VQA, 40 captions)
    batch_size: int = 32  # per process
    workers: int = 0  # DataLoader workers per process
    threads: int = 0  # torch intra-op threads; 0 = torch's default (torchrun sets 1 per process)
    seed: int = 0
    # output ----------------------------------------------------------------------------
    output_dir: str = "runs/default"
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self):
        _choice("data", self.data, ("scenes", "json", "wds"))
        _choice("scene_captions", self.scene_captions, ("clean", "web"))
        if not 0.0 <= self.web_noise <= 1.0:
            raise ConfigError(f"web_noise must be in [0, 1], got {self.web_noise}")
        for name in ("batch_size", "max_words", "max_tokens", "scene_max_objects", "embed_dim"):
            _positive(name, getattr(self, name))
        for name in ("image_size", "workers", "threads", "scene_count", "val_count", "samples_per_epoch"):
            _positive(name, getattr(self, name), allow_zero=True)
        if not 1 <= self.scene_max_objects <= 9:
            raise ConfigError(f"scene_max_objects must be in 1..9, got {self.scene_max_objects}")
        if not 1 <= self.scene_min_objects <= self.scene_max_objects:
            raise ConfigError(f"scene_min_objects must be in 1..scene_max_objects ({self.scene_max_objects}), "
                              f"got {self.scene_min_objects}")
        unknown = set(self.question_kinds) - set(scenes.QUESTION_KINDS)
        if unknown:
            raise ConfigError(f"scene_question_kinds: unknown {', '.join(sorted(unknown))}; "
                              f"use a comma list of {', '.join(scenes.QUESTION_KINDS)}")

    @property
    def question_kinds(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.scene_question_kinds.split(",") if k.strip())


@dataclass(frozen=True)
class Optimisation:
    """Keys of the training commands: schedule, augmentation, checkpoints."""

    epochs: int = 1
    max_steps: int = 0  # 0 = epochs * steps per epoch; else stop (and schedule) at this step
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 0
    warmup_lr: float = 1e-6
    schedule: str = "step"  # step (BLIP pretrain: lr * lr_decay**epoch) | cosine (BLIP fine-tune)
    lr_decay: float = 0.9
    min_lr: float = 1e-6
    grad_clip: float = 0.0  # 0 = off (BLIP does not clip)
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    grad_checkpointing: bool = False
    crop_min_scale: Optional[float] = None  # RandomResizedCrop scale; None = per dataset, 1.0 = no crop
    hflip: str = "auto"  # off | on | swap (flip and swap left/right in the texts) | auto
    log_every: int = 10
    save_every: int = 0  # steps; 0 = at the end of every epoch
    keep_checkpoints: int = 2
    resume: str = ""  # a checkpoint folder, or an output_dir (its newest checkpoint)
    export_hf: bool = False  # also write the final model in the Hugging Face layout

    def _check_optimisation(self):
        _choice("schedule", self.schedule, ("step", "cosine"))
        _choice("precision", self.precision, ("fp32", "bf16"))
        _choice("hflip", self.hflip, ("auto", "off", "on", "swap"))
        _positive("epochs", self.epochs)
        _positive("lr", self.lr)
        _positive("log_every", self.log_every)
        _positive("keep_checkpoints", self.keep_checkpoints)
        for name in ("max_steps", "weight_decay", "warmup_steps", "warmup_lr", "min_lr", "grad_clip", "save_every"):
            _positive(name, getattr(self, name), allow_zero=True)
        if not 0.0 < self.lr_decay <= 1.0:
            raise ConfigError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.crop_min_scale is not None and not 0.0 < self.crop_min_scale <= 1.0:
            raise ConfigError(f"crop_min_scale must be in (0, 1], got {self.crop_min_scale}")


@dataclass(frozen=True)
class Contrastive:
    """ITC with momentum distillation and ITM with hard negatives (pre-training, retrieval)."""

    queue_size: int = 57600
    momentum: float = 0.995
    alpha: float = 0.4  # weight of the momentum model's soft targets
    alpha_ramp_epochs: float = 2.0  # alpha grows linearly from 0 over this many epochs
    temp: float = 0.07  # initial temperature (learnable, clamped to [0.001, 0.5])
    negatives_all_ranks: bool = False  # draw ITM hard negatives from every rank's batch

    def _check_contrastive(self):
        _positive("queue_size", self.queue_size)
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        _positive("alpha_ramp_epochs", self.alpha_ramp_epochs, allow_zero=True)
        if not 0.001 <= self.temp <= 0.5:
            raise ConfigError(f"temp must be in [0.001, 0.5], got {self.temp}")


@dataclass(frozen=True)
class EvalOptions:
    """How models are evaluated (by ``evaluate`` and at the end of fine-tuning epochs)."""

    prompt: str = "a picture of "  # captioning prompt (masked from the loss, cut from outputs)
    num_beams: int = 1  # 1 = greedy, else beam search
    max_new_tokens: int = 20
    min_new_tokens: int = 5
    answer_max_new_tokens: int = 10
    vqa_mode: str = "both"  # generate | rank | both
    answer_list: str = ""  # JSON list of candidate answers for rank mode; "" = training answers
    k_test: int = 16  # answers (VQA rank) / candidates (retrieval) re-scored in full
    vqa_train_json: str = ""  # multitask with data=json: the VQA annotations next to train_json
    vqa_val_json: str = ""
    eval_batch_size: int = 32

    def _check_eval(self):
        _choice("vqa_mode", self.vqa_mode, ("generate", "rank", "both"))
        for name in ("num_beams", "max_new_tokens", "answer_max_new_tokens", "k_test", "eval_batch_size"):
            _positive(name, getattr(self, name))
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError("min_new_tokens must be between 0 and max_new_tokens")


@dataclass(frozen=True)
class PretrainConfig(Contrastive, Optimisation, Common):
    lr: float = 3e-4
    max_tokens: int = 30
    crop_min_scale: Optional[float] = None  # auto: 0.2 on photos (BLIP), no crop on scenes

    def __post_init__(self):
        Common.__post_init__(self)
        self._check_optimisation()
        self._check_contrastive()


TASK_NAMES = ("caption", "vqa", "retrieval")


# Model parts fine-tuning can leave as they are (``freeze=``): the modules of ``BlipModel``.
FREEZABLE = ("vision", "text_encoder", "text_decoder", "answer_decoder", "vision_proj", "text_proj", "itm_head")


@dataclass(frozen=True)
class FinetuneConfig(EvalOptions, Contrastive, Optimisation, Common):
    tasks: str = ""  # set by the sub-command; multitask: any of caption,vqa,retrieval (comma list)
    lr: float = 1e-5
    schedule: str = "cosine"
    alpha_ramp_epochs: float = 1.0  # BLIP's retrieval fine-tune ramps over the first epoch
    max_tokens: int = 40
    eval_each_epoch: bool = True  # evaluate on val data (if any) after every epoch
    freeze: str = ""  # comma list of model parts left as they are (FREEZABLE), e.g. vision

    def __post_init__(self):
        Common.__post_init__(self)
        self._check_optimisation()
        self._check_contrastive()
        self._check_eval()
        if self.tasks:
            task_list(self.tasks)
        unknown = set(self.frozen_parts) - set(FREEZABLE)
        if unknown:
            raise ConfigError(f"freeze: unknown part {', '.join(sorted(unknown))}; "
                              f"use a comma list of {', '.join(FREEZABLE)}")

    @property
    def frozen_parts(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.freeze.split(",") if p.strip())

    @property
    def task_set(self) -> tuple[str, ...]:
        return task_list(self.tasks)


@dataclass(frozen=True)
class EvalConfig(EvalOptions, Common):
    tasks: str = "caption,vqa,retrieval"  # those the checkpoint has are evaluated
    output_dir: str = "runs/eval"

    def __post_init__(self):
        Common.__post_init__(self)
        self._check_eval()
        task_list(self.tasks)


# training keys an evaluation config file may carry (it is often the fine-tuning config)
TRAINING_ONLY = frozenset((set(PretrainConfig.__dataclass_fields__) | set(FinetuneConfig.__dataclass_fields__))
                          - set(EvalConfig.__dataclass_fields__))


def task_list(tasks: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in tasks.split(",") if t.strip())
    bad = [t for t in names if t not in TASK_NAMES]
    if bad or not names:
        raise ConfigError(f"tasks={tasks!r}: use a comma list of {', '.join(TASK_NAMES)}")
    return tuple(t for t in TASK_NAMES if t in names)


# ------------------------------------------------------------------------------- parsing
C = TypeVar("C")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """``value`` (a YAML value, or a str from the command line) as the field type ``kind``."""
    optional = typing.get_origin(kind) is typing.Union and type(None) in typing.get_args(kind)
    if optional:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    want = getattr(kind, "__name__", str(kind))
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                return value.strip().lower() in _TRUE
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str):
                return int(value.strip())
        elif kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
                return float(value.strip())
        elif kind is str:
            if isinstance(value, str):
                return value
            if value is None:
                return ""
    except ValueError:
        pass
    raise ConfigError(f"{name} must be {want}, got {value!r}")


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from e
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"config {path} must be a mapping of key: value")
    return values


def parse(cls: type[C], config_file: str | None = None, overrides: list[str] = (), *,
          ignore_in_file: frozenset[str] = frozenset(), **fixed) -> C:
    """Defaults < YAML file < ``key=value`` overrides < ``fixed`` (set by the command itself).
    Keys in ``ignore_in_file`` are dropped from the file (evaluate reads a fine-tuning config)."""
    values: dict[str, Any] = dict(_read_yaml(config_file)) if config_file else {}
    values = {k: v for k, v in values.items() if k not in ignore_in_file}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value")
        values[key.strip()] = raw
    values.update(fixed)
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    for key in values:
        if key not in hints:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"unknown config key {key!r}{hint}")
    try:
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})
    except TypeError as e:  # cannot happen for known keys; keep the message readable anyway
        raise ConfigError(str(e)) from e


def to_dict(cfg) -> dict[str, Any]:
    return asdict(cfg)


def from_dict(cls: type[C], d: dict[str, Any]) -> C:
    """Rebuild a config saved by ``to_dict`` (keys this version does not know are dropped)."""
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in d.items() if k in hints})


# ----------------------------------------------------------------------------------- CLI
def run_cli(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> None:
    """Run ``main(argv)``; a ``BlipError`` (user error) prints one line and exits 2. The process
    group (torchrun) is torn down however ``main`` ends."""
    from . import dist

    try:
        main(sys.argv[1:] if argv is None else argv)
    except BlipError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        dist.cleanup()


class _Parser(argparse.ArgumentParser):
    def parse_args(self, args=None, namespace=None):
        # positionals may come before and after --config: finetune caption --config f.yaml lr=1e-5
        return self.parse_intermixed_args(args, namespace)

    def error(self, message):  # argparse would print the usage block; one line is enough
        message = message.replace(", key=value", "")  # intermixed parsing lists the optional overrides too
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        raise ConfigError(f"{message} (usage: {usage})")


def arg_parser(prog: str, description: str, commands: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=description)
    if commands:
        p.add_argument("command", choices=commands)
    p.add_argument("--config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")
    return p


def setup_process(cfg, main_process: bool, log_file: bool = True) -> None:
    """Threads, and logging: INFO on the main process (console and ``output_dir/train.log``),
    warnings elsewhere."""
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    output_dir = cfg.output_dir if log_file else None
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if output_dir and main_process:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(output_dir) / "train.log"))
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
