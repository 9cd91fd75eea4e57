"""The BLIP-2 smoke configs as shipped (only the output folders moved): the LLM, stage 1 over the
bundled demo model's frozen ViT, then stage 2 through the frozen LLM; every loss falls."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.tiny_runs import records
from training.blip2 import lm_pretrain
from training.blip2.config import Blip2TrainConfig, LmConfig
from training.config import parse
from training.pretrain_blip2 import run as run_blip2

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


def _fell(recs: list[dict], key: str, by: float) -> bool:
    return recs[-1][key] < recs[0][key] - by


def _run_all(tmp_path, lm_steps: int | None = None, s1_steps: int | None = None, s2_steps: int | None = None):
    """The three smoke configs in order (optionally shortened), their metrics records."""
    lm, s1, s2 = tmp_path / "lm", tmp_path / "s1", tmp_path / "s2"
    steps = lambda n: [f"max_steps={n}", f"save_every={n}"] if n else []  # noqa: E731
    lm_pretrain.run(parse(LmConfig, str(CONFIGS / "blip2_lm_smoke.yaml"),
                          [f"output_dir={lm}", "progress=false", *steps(lm_steps)]))
    run_blip2(parse(Blip2TrainConfig, str(CONFIGS / "blip2_stage1_smoke.yaml"),
                    [f"output_dir={s1}", "progress=false", *steps(s1_steps)], stage="stage1"))
    run_blip2(parse(Blip2TrainConfig, str(CONFIGS / "blip2_stage2_smoke.yaml"),
                    [f"output_dir={s2}", f"init={s1}", f"llm={lm}", "progress=false", *steps(s2_steps)],
                    stage="stage2"))
    return records(lm), records(s1), records(s2)


def test_shortened_smoke_runs_both_stages_and_their_losses_fall(tmp_path):
    """``make test``'s share of the smoke (its time budget): 40, 70 and 40 steps, every loss falls
    (ITM from chance towards the class prior; below it needs the full run, in ``make test-slow``)."""
    lm_recs, s1_recs, s2_recs = _run_all(tmp_path, lm_steps=40, s1_steps=70, s2_steps=40)
    assert _fell(lm_recs, "loss_lm", 1.0), lm_recs
    assert _fell(s1_recs, "loss_itc", 0.3) and _fell(s1_recs, "loss_lm", 0.2), s1_recs
    assert _fell(s1_recs, "loss_itm", 0.02), s1_recs
    assert _fell(s2_recs, "loss_lm", 0.1), s2_recs


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~1-2 minutes on 2 idle cores; far longer when the machine is shared
def test_smoke_configs_run_and_every_loss_falls(tmp_path):
    lm_recs, s1_recs, s2_recs = _run_all(tmp_path)
    assert _fell(lm_recs, "loss_lm", 1.0), lm_recs
    assert _fell(s1_recs, "loss_itc", 0.5) and _fell(s1_recs, "loss_lm", 0.3), s1_recs
    # ITM: below the class prior of 1 positive : 2 negatives (0.637), not only from chance to it
    assert _fell(s1_recs, "loss_itm", 0.04) and s1_recs[-1]["loss_itm"] < 0.625, s1_recs
    assert _fell(s2_recs, "loss_lm", 0.3), s2_recs
