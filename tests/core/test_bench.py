"""`blip bench` end to end on tiny checkpoints: every workload timed for every configuration,
ratios against transformers, the int8 quality lines, the report and chart written."""

from __future__ import annotations

import argparse
import json

import pytest

from blip_core import bench
from tests.helpers import save_hf, seeded_hf_model


@pytest.mark.slow  # multi-process or long: make test-slow (make test's time budget)
def test_bench_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.setenv("BLIPCAM_CACHE", str(tmp_path / "cache"))
    kw = dict(width=64, heads=2, text_width=64)
    cap = save_hf(seeded_hf_model("caption", seed=1, **kw), tmp_path / "cap")
    vqa = save_hf(seeded_hf_model("vqa", seed=2, **kw), tmp_path / "vqa")
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    out = tmp_path / "docs" / "benchmarks.md"
    args = p.parse_args(["--model", str(cap), "--vqa-model", str(vqa), "--repeats", "1", "--threads", "1",
                         "--quality-model", str(cap), "--quality-scenes", "3", "--no-rss", "--output", str(out)])
    assert bench.main(args) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    workloads = {r["workload"] for r in results["rows"]}
    assert len(workloads) == 4 and len(results["rows"]) == 12
    for r in results["rows"]:
        assert r["median_ms"] > 0 and r["speedup"] > 0
        if r["config"].startswith("transformers"):
            assert r["speedup"] == 1.0
    q = results["quality"]
    assert 0.0 <= q["agreement"] <= 1.0 and q["trained"]["n"] == 3
    text = out.read_text()
    assert "| new-frame caption, greedy | ours int8 |" in text and "teacher-forced" in text
    assert out.with_suffix(".png").stat().st_size > 1000
    # --quality-only refreshes the trained-model line from the saved results
    args = p.parse_args(["--quality-only", "--quality-model", str(cap), "--quality-scenes", "2", "--output", str(out)])
    assert bench.main(args) == 0
    assert json.loads(out.with_suffix(".json").read_text())["quality"]["trained"]["n"] == 2
    monkeypatch.chdir(tmp_path)  # the committed report names the model relative to the checkout
    assert bench.main(args) == 0 and "trained model `cap`, 2 held-out scenes" in out.read_text()


@pytest.mark.slow  # multi-process or long: make test-slow (make test's time budget)
def test_peak_memory_children_report_whether_torch_was_loaded(tmp_path, monkeypatch):
    """Each configuration's peak RSS comes from its own process; ours int8 runs there as a user's
    process would, on converted graphs and without torch, while transformers needs it."""
    import blip_core

    monkeypatch.setenv("BLIPCAM_CACHE", str(tmp_path / "cache"))
    cap = save_hf(seeded_hf_model("caption", seed=1, width=64, heads=2, text_width=64), tmp_path / "cap")
    blip_core.load(cap, precision="int8", warmup=False)  # convert once, as the benchmark's timed runs do
    ours, theirs = bench.peak_rss("ours-int8", cap, 1), bench.peak_rss("transformers-fp32", cap, 1)
    assert ours["torch_loaded"] is False and theirs["torch_loaded"] is True
    assert 0 < ours["vmhwm_mb"] < theirs["vmhwm_mb"]
    report = tmp_path / "b.md"
    row = {"workload": "w", "config": "ours int8", "median_ms": 1.0, "min_ms": 1.0, "max_ms": 1.0, "speedup": 1.0}
    bench.write_report({"rows": [row], "rss": {"transformers-fp32": theirs["vmhwm_mb"], "ours-int8": ours["vmhwm_mb"]},
                        "rss_without_torch": ["ours-int8"], "machine": "m", "threads": 1, "repeats": 1,
                        "weights": "w", "versions": {"torch": "t", "transformers": "t", "onnxruntime": "o"}}, report)
    assert "| ours-int8 (torch not loaded) |" in report.read_text()
