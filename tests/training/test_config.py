"""Config parsing: YAML + overrides, types, unknown keys, the shipped configs, CLI errors."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blip_core.model.config import preset
from training import config as C
from training.config import ConfigError, EvalConfig, FinetuneConfig, PretrainConfig, parse, run_cli

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
ROOT = Path(__file__).resolve().parents[2]


def test_yaml_then_overrides_with_types(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 1e-4\nbatch_size: 16\ncrop_min_scale: 0.5\nprogress: false\n")  # YAML reads 1e-4 as a str
    cfg = parse(PretrainConfig, str(f), ["batch_size=8", "grad_checkpointing=true", "crop_min_scale=none",
                                         "train_json=a.json"])
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)
    assert cfg.batch_size == 8 and cfg.grad_checkpointing is True and cfg.progress is False
    assert cfg.crop_min_scale is None and cfg.train_json == "a.json"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("override, message", [
    ("batch_sise=8", "did you mean 'batch_size'"),
    ("batch_size=8.5", "batch_size must be int"),
    ("progress=maybe", "progress must be bool"),
    ("precision=fp16", "precision='fp16' is not one of fp32, bf16"),
    ("lr=-1", "lr must be > 0"),
    ("nokey", "is not key=value"),
    ("temp=0.9", "temp must be in [0.001, 0.5]"),
    ("scene_question_kinds=position,colours", "scene_question_kinds: unknown colours"),
    ("scene_min_objects=4", "scene_min_objects must be in 1..scene_max_objects (3), got 4"),
])
def test_user_errors_are_config_errors(override, message):
    with pytest.raises(ConfigError) as e:
        parse(PretrainConfig, None, [override])
    assert message in str(e.value)


def test_command_specific_keys():
    with pytest.raises(ConfigError, match="unknown config key 'queue_size'"):
        parse(EvalConfig, None, ["queue_size=10"])  # evaluation has no queue
    with pytest.raises(ConfigError, match="tasks="):
        parse(FinetuneConfig, None, ["tasks=caption,segmentation"])
    assert parse(FinetuneConfig, None, ["tasks=vqa,caption"]).task_set == ("caption", "vqa")
    with pytest.raises(ConfigError, match="freeze: unknown part encoder; use a comma list of vision, "):
        parse(FinetuneConfig, None, ["freeze=vision,encoder"])
    assert parse(FinetuneConfig, None, ["freeze=vision, text_encoder"]).frozen_parts == ("vision", "text_encoder")
    for cls in (PretrainConfig, FinetuneConfig, EvalConfig):  # the keys every command takes
        cfg = parse(cls, None, ["train_json=t.json", "val_json=v.json", "image_root=/img", "init=ck",
                                "output_dir=out"])
        assert (cfg.train_json, cfg.val_json, cfg.image_root, cfg.init, cfg.output_dir) == (
            "t.json", "v.json", "/img", "ck", "out")


def test_pretrain_base_matches_the_paper():
    cfg = parse(PretrainConfig, str(CONFIGS / "pretrain_base.yaml"))
    assert (cfg.model, cfg.image_size, cfg.lr, cfg.weight_decay, cfg.warmup_steps, cfg.lr_decay, cfg.epochs,
            cfg.batch_size, cfg.queue_size) == ("base", 224, 3e-4, 0.05, 3000, 0.9, 20, 75, 57600)
    assert (cfg.momentum, cfg.alpha, cfg.alpha_ramp_epochs, cfg.temp, cfg.schedule,
            cfg.vocab) == (0.995, 0.4, 2, 0.07, "step", "bert")
    assert cfg.crop_min_scale == 0.2 and cfg.max_tokens == 30 and cfg.max_words == 30
    bc = preset(cfg.model, ("caption", "match"))  # ViT-B/16 + BERT-base
    assert (bc.vision.width, bc.vision.layers, bc.text.width, bc.text.vocab_size) == (768, 12, 768, 30524)


def test_smoke_config_parses():
    cfg = parse(PretrainConfig, str(CONFIGS / "smoke.yaml"))
    assert cfg.model == "tiny" and cfg.data == "scenes" and cfg.queue_size % cfg.batch_size != 0


def test_run_cli_prints_one_line_and_exits_2(capsys):
    def main(argv):
        parse(PretrainConfig, None, argv)

    with pytest.raises(SystemExit) as e:
        run_cli(main, ["lr=abc"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: lr must be float")


def test_cli_missing_dataset_is_one_line_exit_2(tmp_path):
    """End to end through ``python -m``: no traceback for a user error."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "training.finetune", "caption", "data=json",
                        f"train_json={tmp_path / 'missing.json'}", f"output_dir={tmp_path / 'out'}"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == f"error: train_json: {tmp_path / 'missing.json'} does not exist"


def test_all_configs_in_the_package_are_valid():
    from training.blip2.config import Blip2TrainConfig, LmConfig

    for f in CONFIGS.glob("*.yaml"):
        if f.name.startswith("blip2_"):  # BLIP-2's own configs: the language model, or one of the two stages
            parse(LmConfig if f.name.startswith("blip2_lm") else Blip2TrainConfig, str(f))
            continue
        cls = FinetuneConfig if f.name.startswith("finetune") else PretrainConfig
        parse(cls, str(f))
        # evaluate reads the same files, skipping training keys (but not misspelt ones)
        parse(EvalConfig, str(f), ignore_in_file=C.TRAINING_ONLY)
    with pytest.raises(ConfigError, match="unknown config key 'lr'"):
        parse(EvalConfig, str(CONFIGS / "finetune_smoke.yaml"), ["lr=0.1"], ignore_in_file=C.TRAINING_ONLY)


def test_config_roundtrip():
    cfg = parse(FinetuneConfig, None, ["tasks=caption", "crop_min_scale=0.7"])
    assert C.from_dict(FinetuneConfig, C.to_dict(cfg)) == cfg
