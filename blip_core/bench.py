"""``blip bench``: transformers vs our fp32 vs our int8, side by side in one process.

Every configuration runs on the same weights (a real checkpoint when given, else BLIP-base size
with seeded random weights), 384 px, prompt "a picture of ", exactly 20 new tokens (greedy, end
token suppressed), A/B interleaved over several repeats; we report medians and ratios. Peak memory
(``VmHWM``) is measured for each configuration in its own process. Results rewrite
``docs/benchmarks.md`` and ``docs/benchmarks.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from blip_core.bench_measure import machine, median_ms, vmhwm_mb
from blip_core.errors import BadInputError

PROMPT = "a picture of "
NEW_TOKENS = 20
QUESTION = "what colour is the large shape?"
CAPTION = dict(prompt=PROMPT, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)  # our side of the workload


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="captioning checkpoint (default: BLIP-base size, seeded random weights)")
    p.add_argument("--vqa-model", help="VQA checkpoint (default: BLIP-base size, seeded random weights)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quality-model", default=None,
                   help="a trained small model for the int8 caption-identity/CIDEr line (default: the demo model)")
    p.add_argument("--quality-scenes", type=int, default=200)
    p.add_argument("--quality-only", action="store_true",
                   help="recompute only the trained-model int8 line and rewrite the report from its .json")
    p.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    p.add_argument("--no-rss", action="store_true", help="skip the per-process peak-memory runs")
    p.add_argument("--rss-child", nargs=2, metavar=("CONFIG", "MODEL"), help=argparse.SUPPRESS)
    p.add_argument("--study-transformers", type=Path, metavar="DIR",
                   help="a folder with the Pi 5 study's transformers (4.41.1) installed by pip --target: adds a row "
                        "timing it against ours int8 in a process of their own (see the README)")
    p.add_argument("--study-child", metavar="MODEL", help=argparse.SUPPRESS)
    p.add_argument("--family", choices=("blip", "blip2"), default="blip",
                   help="blip2: transformers fp32 vs ours on BLIP-2 OPT-2.7B shapes with random weights "
                        "(blip_core.bench_blip2); rewrites only the BLIP-2 section of --output")
    p.add_argument("--skip-transformers", action="store_true",
                   help="(--family blip2) reuse the last run's transformers figures instead of running it again")
    p.add_argument("--json", type=Path, help="(--family blip2) also write the results to this file")
    p.add_argument("--reuse", nargs="+", choices=("transformers-fp32", "ours-fp32", "ours-int8"),
                   help="(--family blip2) reuse the last run's figures of these configurations")


# ------------------------------------------------------------- random weights
def random_checkpoint(task: str, root: Path) -> Path:
    """BLIP-base-size transformers model with seeded random weights, saved once. transformers
    initialises the ViT at std 1e-10; we use 0.02 so images steer the outputs like a trained ViT."""
    folder = root / f"blip-base-random-{task}"
    if (folder / "config.json").is_file():
        return folder
    import torch
    import transformers

    cls = {"caption": "BlipForConditionalGeneration", "vqa": "BlipForQuestionAnswering"}[task]
    torch.manual_seed(0)
    cfg = transformers.BlipConfig(text_config={"num_attention_heads": 12})
    model = getattr(transformers, cls)(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("vision_model") and p.dim() > 1:
                p.normal_(0, 0.02)
    model.save_pretrained(folder)
    from blip_core.tokenizer import BERT_VOCAB

    (folder / "vocab.txt").write_bytes(BERT_VOCAB.read_bytes())
    return folder


# -------------------------------------------------------------------- runners
def bench_image(size: int = 480):
    from blip_core.scenes import render

    return render(12345, size).image


class HFCaptioner:
    def __init__(self, folder: Path):
        import torch
        from transformers import BlipForConditionalGeneration, BlipImageProcessor

        self.model = BlipForConditionalGeneration.from_pretrained(folder).eval()
        size = self.model.config.vision_config.image_size  # 384 for BLIP-base
        self.proc = BlipImageProcessor(size={"height": size, "width": size})
        from blip_core.tokenizer import BlipTokenizer

        tok = BlipTokenizer(folder / "vocab.txt")
        self.ids = torch.tensor([[tok.cls_id] + tok.tokens(PROMPT) + [tok.sep_id]])

    def encode(self, image):
        import torch

        px = self.proc(image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            return self.model.vision_model(pixel_values=px)[0]

    def caption(self, image, num_beams=1):
        import torch

        px = self.proc(image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            return self.model.generate(pixel_values=px, input_ids=self.ids.clone(), max_new_tokens=NEW_TOKENS,
                                       min_new_tokens=NEW_TOKENS, num_beams=num_beams)


class HFVqa:
    def __init__(self, folder: Path):
        import torch
        from transformers import BlipForQuestionAnswering, BlipImageProcessor

        from blip_core.tokenizer import BlipTokenizer

        self.model = BlipForQuestionAnswering.from_pretrained(folder).eval()
        size = self.model.config.vision_config.image_size  # 384 for BLIP-base
        self.proc = BlipImageProcessor(size={"height": size, "width": size})
        tok = BlipTokenizer(folder / "vocab.txt")
        self.ids = torch.tensor([[tok.cls_id] + tok.tokens(QUESTION) + [tok.sep_id]])

    def answer(self, image):
        import torch

        px = self.proc(image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            return self.model.generate(input_ids=self.ids, pixel_values=px, max_new_tokens=5, min_new_tokens=5)


def interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Run each function once to warm up, then ``repeats`` rounds A, B, C, A, B, C, ... (so slow
    drift of the machine hits every configuration alike). Returns seconds per call."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------- quality
def teacher_forced_agreement(fp32, int8, images, max_new: int = NEW_TOKENS) -> float:
    """Share of positions where int8's next-token argmax equals fp32's, both fed fp32's greedy
    caption (so one disagreement does not derail the rest)."""
    import numpy as np
    import torch

    agree = total = 0
    prompt = np.array([fp32.tokenizer.prompt_ids(PROMPT)])
    for image in images:
        seq = fp32.caption(image, max_new_tokens=max_new, min_new_tokens=max_new).token_ids
        argmaxes = []
        for m in (fp32, int8):
            f = m.encode_image(image)
            with torch.inference_mode():  # as the fp32 model's public methods run
                s = m.model.decoder_session("text_decoder", m._cross_kv(f, "text_decoder"))
                out = [int(s.start(prompt, 1).argmax(-1)[0])]
                for tok in seq[:-1]:
                    out.append(int(s.step(np.array([tok]), None).argmax(-1)[0]))
            argmaxes.append(out)
        agree += sum(a == b for a, b in zip(*argmaxes))
        total += len(seq)
    return agree / total


def caption_quality(source: str, n: int) -> dict:
    """Greedy captions of fp32 vs int8 on ``n`` held-out scenes of a trained model (prompted
    like the demo model was fine-tuned)."""
    from blip_core import load
    from blip_core.metrics import caption_scores
    from blip_core.scenes import render

    fp32, int8 = load(source), load(source, precision="int8")
    scenes = [render(10_000_000 + i, fp32.image_size) for i in range(n)]
    refs = {i: list(s.captions) for i, s in enumerate(scenes)}
    preds = {}
    for name, m in (("fp32", fp32), ("int8", int8)):
        preds[name] = {i: m.caption(s.image, prompt=PROMPT, max_new_tokens=30, min_new_tokens=1).text
                       for i, s in enumerate(scenes)}
    same = sum(preds["fp32"][i] == preds["int8"][i] for i in refs) / n
    return {"identical": same, "cider_fp32": caption_scores(preds["fp32"], refs)["cider"],
            "cider_int8": caption_scores(preds["int8"], refs)["cider"], "n": n, "model": source}


# ------------------------------------------------------------------ peak RSS
def rss_child(config: str, model: str, threads: int) -> None:
    """Load + one caption in this fresh process, then print its peak RSS. Ours int8 runs as a user's
    would: without torch (``torch_loaded`` in the output tells)."""
    image = bench_image()
    if config == "transformers-fp32":
        import torch

        torch.set_num_threads(threads)
        HFCaptioner(Path(model)).caption(image)
    else:
        from blip_core import load

        load(model, precision=config.split("-")[1], threads=threads, warmup=False).caption(image, **CAPTION)
    print(json.dumps({"config": config, "vmhwm_mb": vmhwm_mb(), "torch_loaded": "torch" in sys.modules}))


def peak_rss(config: str, model: Path, threads: int) -> dict:
    """{"vmhwm_mb": peak RSS of ``config`` loading ``model`` and captioning once in a fresh process,
    "torch_loaded": whether that process imported torch}."""
    cmd = [sys.executable, "-m", "blip_core.cli", "bench", "--rss-child", config, str(model), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{config} child failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------- reporting
def study_child(model: str, threads: int, repeats: int) -> None:
    """Run with the study's transformers first on ``sys.path``: its captioner against ours int8,
    interleaved in this process. Prints the times and whether both produced the same tokens as
    a check that the old release read the weights as the new one does."""
    import torch
    import transformers

    from blip_core import load

    torch.set_num_threads(threads)
    image = bench_image()
    hf, ours = HFCaptioner(Path(model)), load(model, precision="int8", threads=threads)
    name = f"transformers {transformers.__version__} fp32"
    times = interleaved({name: lambda: hf.caption(image),
                         "ours int8": lambda: ours.caption(image, **CAPTION)}, repeats)
    print(json.dumps({"baseline": name, "times": times}))


def study_rows(args, model: Path) -> dict:
    """{"baseline": name, "times": {config: [seconds]}} from ``study_child`` run beside the study's transformers."""
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(args.study_transformers.resolve()), str(Path(__file__).parents[1])])}
    cmd = [sys.executable, "-m", "blip_core.cli", "bench", "--study-child", str(model), "--threads", str(args.threads),
           "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"the study's transformers failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


NOTES_FILE = "benchmark_notes.md"  # beside the report (docs/)


def write_report(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = results["rows"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `blip bench` (rewrites this file); numbers from one run on one machine.",
        "",
        f"- machine: {results['machine']}",
        f"- threads: {results['threads']}; repeats: {results['repeats']} (A/B interleaved, medians); "
        f"weights: {results['weights']}",
        f"- versions: torch {results['versions']['torch']}, transformers {results['versions']['transformers']}, "
        f"onnxruntime {results['versions']['onnxruntime']}",
        f"- workload: 384 px, prompt \"{PROMPT.strip()}\", exactly {NEW_TOKENS} new tokens; "
        "image preprocessing included",
        "",
        "| workload | configuration | median ms | min–max ms | speed-up vs transformers |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['config']} | {r['median_ms']:.0f} | "
                     f"{r['min_ms']:.0f}–{r['max_ms']:.0f} | {r['speedup']:.1f}x |")
    if results.get("rss"):
        base = results["rss"].get("transformers-fp32")
        lines += ["", "Peak resident memory (`VmHWM`, each configuration in its own process: load + one caption):", "",
                  "| configuration | peak RSS MB | vs transformers |", "|---|---:|---:|"]
        for k, v in results["rss"].items():
            name = f"{k} (torch not loaded)" if k in results.get("rss_without_torch", ()) else k
            lines.append(f"| {name} | {v:.0f} | {v / base:.2f}x |" if base else f"| {name} | {v:.0f} | |")
    q = results.get("quality", {})
    lines += ["", "## int8 quality", ""]
    if "agreement" in q:
        lines.append(f"- teacher-forced next-token agreement, int8 vs fp32, full-size random weights "
                     f"({q['agreement_images']} images x {NEW_TOKENS} tokens): **{q['agreement'] * 100:.1f}%**")
    if "trained" in q:
        t = q["trained"]
        lines.append(f"- trained model `{_shown(t['model'])}`, {t['n']} held-out scenes, greedy: identical captions "
                     f"**{t['identical'] * 100:.1f}%**; CIDEr fp32 {t['cider_fp32']:.3f} -> int8 {t['cider_int8']:.3f} "
                     f"(change {100 * (t['cider_int8'] - t['cider_fp32']):+.1f} points)")
    lines += ["", "## Targets (issue: fast on-device inference)", "", "| target | reached | |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'met' if ok else '**not met**'} |" for name, value, ok in targets(results)]
    # Measurement history and the reasoning behind the figures live in the docs, not in code.
    lines += ["", f"What limits these figures, how the int8 engine was tuned and how much runs vary: [{NOTES_FILE}]"
              f"({NOTES_FILE}).", "", "![chart](benchmarks.png)", ""]
    out.write_text("\n".join(lines) + "\n")
    _chart(rows, out.with_suffix(".png"))


def targets(results: dict) -> list[tuple[str, str, bool]]:
    """(target, reached, met) for the issue's four targets, from a run's results."""
    speed = {(r["workload"], r["config"]): r["speedup"] for r in results["rows"]}
    out = []
    cap = speed.get(("new-frame caption, greedy", "ours int8"))
    if cap:
        out.append(("new-frame caption >= 5x transformers fp32", f"{cap:.1f}x", cap >= 5))
    study = [r for r in results["rows"] if "study" in r["workload"] and r["config"] == "ours int8"]
    if study:
        out.append((f"(for reference) new-frame caption >= 5x the study's release, {_study_name(results)}",
                    f"{study[0]['speedup']:.1f}x", study[0]["speedup"] >= 5))
    vqa = speed.get(("VQA follow-up (encoded frame)", "ours int8"))
    if vqa:
        out.append(("VQA follow-up >= 20x transformers generate", f"{vqa:.1f}x", vqa >= 20))
    rss = results.get("rss") or {}
    if rss.get("transformers-fp32") and rss.get("ours-int8"):
        ratio = rss["ours-int8"] / rss["transformers-fp32"]
        out.append(("int8 peak RSS <= 0.5x transformers fp32", f"{ratio:.2f}x", ratio <= 0.5))
    t = results.get("quality", {}).get("trained")
    if t:
        drop = 100 * (t["cider_fp32"] - t["cider_int8"])
        out.append(("int8 >= 95% identical greedy captions (trained model)", f"{100 * t['identical']:.1f}%",
                    t["identical"] >= 0.95))
        out.append(("int8 CIDEr drop <= 1 point (trained model)", f"{drop:.1f} points", drop <= 1.0))
    return out


def _study_name(results: dict) -> str:
    return next(r["config"] for r in results["rows"] if "study" in r["workload"] and r["config"] != "ours int8")


def _chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.5 + 0.45 * len(rows)))
    labels = [f"{r['workload']}: {r['config']}" for r in rows]
    colours = ["#999999" if "transformers" in r["config"] else "#3b7dd8" if "fp32" in r["config"] else "#e8832a"
               for r in rows]
    ax.barh(labels[::-1], [r["median_ms"] for r in rows][::-1], color=colours[::-1])
    ax.set_xscale("log")
    ax.set_xlabel("median ms (log scale)")
    for i, r in enumerate(rows[::-1]):
        ax.text(r["median_ms"], i, f" {r['median_ms']:.0f} ms ({r['speedup']:.1f}x)", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------- main
def _shown(path: str) -> str:
    """``path`` relative to the working directory when inside it (the report is committed)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def _quality_model(args) -> str | None:
    from blip_core import demo_model_path

    return args.quality_model or (str(demo_model_path()) if demo_model_path().exists() else None)


def quality_only(args) -> int:
    """Refresh the trained-model int8 line of an earlier run's report."""
    saved = args.output.with_suffix(".json")
    if not saved.is_file():
        raise BadInputError(f"--quality-only needs an earlier run's {saved}; run blip bench first")
    qmodel = _quality_model(args)
    if not qmodel:
        raise BadInputError("no trained model: give --quality-model or build the demo model (make demo-model)")
    import torch

    torch.set_num_threads(args.threads)
    results = json.loads(saved.read_text())
    results.setdefault("quality", {})["trained"] = caption_quality(qmodel, args.quality_scenes)
    print(f"trained model: {results['quality']['trained']}", flush=True)
    write_report(results, args.output)
    saved.write_text(json.dumps(results, indent=2))
    return 0


def main(args) -> int:
    if getattr(args, "family", "blip") == "blip2":
        from blip_core.bench_blip2 import main as blip2_main

        return blip2_main(args)
    if args.rss_child:
        rss_child(args.rss_child[0], args.rss_child[1], args.threads)
        return 0
    if args.study_child:
        study_child(args.study_child, args.threads, args.repeats)
        return 0
    if args.quality_only:
        return quality_only(args)
    try:
        import onnxruntime
        import torch
        import transformers
    except ImportError as e:
        raise BadInputError(f"blip bench needs the dev extras ({e.name}): pip install -e '.[dev]'") from e
    from blip_core import load
    from blip_core.int8.cache import cache_root

    torch.set_num_threads(args.threads)
    root = cache_root() / "bench"
    cap_dir = Path(args.model) if args.model else random_checkpoint("caption", root)
    vqa_dir = Path(args.vqa_model) if args.vqa_model else random_checkpoint("vqa", root)
    image = bench_image()
    print(f"loading models ({cap_dir}, {vqa_dir}) ...", flush=True)
    hf_cap, hf_vqa = HFCaptioner(cap_dir), HFVqa(vqa_dir)
    ours = {p: load(cap_dir, precision=p, threads=args.threads) for p in ("fp32", "int8")}
    ours_vqa = {p: load(vqa_dir, precision=p, threads=args.threads) for p in ("fp32", "int8")}
    rows = []

    def record(workload, times, baseline):
        base = median_ms(times[baseline])
        for k, v in times.items():
            rows.append({"workload": workload, "config": k, "median_ms": median_ms(v), "min_ms": min(v) * 1000,
                         "max_ms": max(v) * 1000, "speedup": base / median_ms(v)})
            print(f"{workload:28s} {k:20s} {median_ms(v):9.0f} ms  {base / median_ms(v):5.1f}x", flush=True)

    record("new-frame caption, greedy", interleaved({
        "transformers fp32": lambda: hf_cap.caption(image),
        "ours fp32": lambda: ours["fp32"].caption(image, **CAPTION),
        "ours int8": lambda: ours["int8"].caption(image, **CAPTION),
    }, args.repeats), "transformers fp32")
    record("new-frame caption, beam 3", interleaved({
        "transformers fp32": lambda: hf_cap.caption(image, num_beams=3),
        "ours fp32": lambda: ours["fp32"].caption(image, num_beams=3, **CAPTION),
        "ours int8": lambda: ours["int8"].caption(image, num_beams=3, **CAPTION),
    }, max(3, args.repeats // 2)), "transformers fp32")
    record("vision encoder only (preprocess + ViT)", interleaved({
        "transformers fp32": lambda: hf_cap.encode(image),
        "ours fp32": lambda: ours["fp32"].encode_image(image),
        "ours int8": lambda: ours["int8"].encode_image(image),
    }, args.repeats), "transformers fp32")
    feats = {p: m.encode_image(image) for p, m in ours_vqa.items()}
    record("VQA follow-up (encoded frame)", interleaved({
        "transformers fp32 (generate)": lambda: hf_vqa.answer(image),
        "ours fp32": lambda: ours_vqa["fp32"].answer(feats["fp32"], QUESTION, max_new_tokens=5, min_new_tokens=5),
        "ours int8": lambda: ours_vqa["int8"].answer(feats["int8"], QUESTION, max_new_tokens=5, min_new_tokens=5),
    }, args.repeats), "transformers fp32 (generate)")
    from blip_core.scenes import render

    # 16 images x 20 tokens: with 4, one run to the next moved the figure by ~5 points
    agreement_images = [render(500 + i, 384).image for i in range(16)]
    quality = {"agreement": teacher_forced_agreement(ours["fp32"], ours["int8"], agreement_images),
               "agreement_images": len(agreement_images)}
    print(f"teacher-forced agreement int8 vs fp32: {quality['agreement'] * 100:.1f}%", flush=True)
    qmodel = _quality_model(args)
    if qmodel:
        quality["trained"] = caption_quality(qmodel, args.quality_scenes)
        print(f"trained model: {quality['trained']}", flush=True)
    hf_cap = hf_vqa = ours = ours_vqa = None  # free the models before the memory runs
    if args.study_transformers:
        study = study_rows(args, cap_dir)
        record("new-frame caption, greedy, vs the study's transformers (own process)",
               study["times"], study["baseline"])
    rss, torch_free = {}, []
    if not args.no_rss:
        for config in ("transformers-fp32", "ours-fp32", "ours-int8"):
            child = peak_rss(config, cap_dir, args.threads)
            rss[config] = child["vmhwm_mb"]
            if not child["torch_loaded"]:
                torch_free.append(config)
            print(f"peak RSS {config}: {rss[config]:.0f} MB (torch {'' if child['torch_loaded'] else 'not '}loaded)",
                  flush=True)
    results = {
        "rows": rows, "rss": rss, "rss_without_torch": torch_free, "quality": quality,
        "threads": args.threads, "repeats": args.repeats,
        "machine": machine(),
        "weights": str(args.model or "BLIP-base size, seeded random (transformers init, ViT at std 0.02)"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "onnxruntime": onnxruntime.__version__},
    }
    write_report(results, args.output)
    (args.output.with_suffix(".json")).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.output}")
    return 0
