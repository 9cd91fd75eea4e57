"""The CapFilt effect in miniature (BLIP Table 1): pre-train on noisy web text, on filtered web
text (F), on web + synthetic captions (C) and on both (C+F), with equal compute; evaluate
retrieval and captioning on clean held-out scenes.

    make capfilt-experiment                  # = python -m training.experiments.capfilt_effect
    python -m training.experiments.capfilt_effect --scale smoke --out /tmp/cf   # a 2-minute check

Steps (each skipped when its output exists, so a rerun continues):
1. corpus: ``clean`` (human-annotated: scene reference captions) and ``web`` (one alt-text per
   image, false with probability ``web_noise``: wrong colour / shape / count, unrelated, fragment);
2. ``none``: pre-train on clean + web as is; this model also initialises CapFilt, as in the paper;
3. ``training.capfilt``: captioner and filter fine-tuned on the clean part, then every web image
   captioned (nucleus) and every web and synthetic text scored by ITM;
4. F / C / CF corpora from the scored texts, and a new model pre-trained on each with the same
   number of steps and batch size as ``none``;
5. evaluation on clean held-out scenes: ITM re-ranked recall@1 both ways and zero-shot caption
   CIDEr, plus the noise rate of web and synthetic texts before and after filtering (judged by
   ``blip_core.scenes.truth.is_true``); results to ``docs/capfilt.md`` and ``docs/capfilt_results.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from blip_core import scenes
from blip_core.scenes.truth import is_true

from ..make_scenes import write_scene_json

VARIANTS = ("none", "F", "C", "CF")
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Scale:
    """Sizes of one experiment; ``full`` is what docs/capfilt.md reports."""

    n_clean: int = 1000
    n_web: int = 8000
    n_test: int = 300
    web_noise: float = 0.5
    image_size: int = 64
    max_objects: int = 3
    model: str = "mini"  # "tiny" (76k parameters) does not learn ITC on this corpus: a random filter
    embed_dim: int = 128
    pretrain_steps: int = 1200
    batch_size: int = 32
    capfilt_epochs: int = 3
    captions_per_image: int = 1
    lr: float = 5e-4
    min_lr: float = 5e-5
    seed: int = 0


SCALES = {
    "full": Scale(),
    "smoke": Scale(n_clean=96, n_web=160, n_test=40, image_size=32, model="tiny", embed_dim=64, pretrain_steps=12,
                   batch_size=16, capfilt_epochs=1),
}
SEEDS = {"clean": 101, "web": 102, "test": 103}


def log(msg: str) -> None:
    print(f"[capfilt-effect {time.strftime('%H:%M:%S')}] {msg}", flush=True)


_commands_run = 0  # by this process; a re-run whose steps are all done adds no time to elapsed_s.txt


def python_m(module: str, *args: str, threads: int, wait: bool = True, procs: int = 1) -> subprocess.Popen:
    """Run one training command in its own process (fresh logging, threads, memory); ``procs``
    > 1: under torchrun, data-parallel over that many processes."""
    global _commands_run
    _commands_run += 1
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] if procs > 1 else []
    cmd = [sys.executable, *launcher, "-m", module, *args, f"threads={threads}"]
    log(" ".join(cmd[2:]))
    proc = subprocess.Popen(cmd, cwd=REPO)
    if wait:
        _check(proc)
    return proc


def _check(proc: subprocess.Popen) -> None:
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(map(str, proc.args[2:4]))} failed with exit code {proc.returncode}")


# ------------------------------------------------------------------------------ corpus
def make_corpus(out: Path, s: Scale) -> dict[str, Path]:
    """corpus/{clean,web}/images + clean.json, web.json (paths relative to corpus/)."""
    corpus = out / "corpus"
    files = {"clean": corpus / "clean.json", "web": corpus / "web.json", "none": corpus / "none.json"}
    if all(p.is_file() for p in files.values()):
        return files
    log(f"writing {s.n_clean} clean and {s.n_web} web scenes to {corpus}")
    clean = write_scene_json(corpus / "clean", s.n_clean, s.image_size, SEEDS["clean"], s.max_objects)
    web = write_scene_json(corpus / "web", s.n_web, s.image_size, SEEDS["web"], s.max_objects, noise=s.web_noise)
    clean_entries = [{**e, "image": f"clean/{e['image']}"} for e in json.loads(clean["captions"].read_text())]
    web_entries = [{**e, "image": f"web/{e['image']}"} for e in json.loads(web["web"].read_text())]
    files["clean"].write_text(json.dumps(clean_entries))
    files["web"].write_text(json.dumps(web_entries))
    files["none"].write_text(json.dumps(clean_entries + web_entries))
    return files


def web_scene(image: str, s: Scale) -> scenes.Scene:
    """The scene behind web image ``web/images/000123.png``."""
    index = int(Path(image).stem)
    return scenes.render(scenes.stream_seed(SEEDS["web"], index), 16, s.max_objects)


# --------------------------------------------------------------------------- training
def pretrain(out: Path, corpora: dict[str, Path], s: Scale, threads: int, parallel: bool = False) -> dict[str, Path]:
    """Pre-train one new model per corpus, all with the same steps, batch, schedule and seed;
    ``parallel``: at once, one thread each (small models use two cores better that way)."""
    runs = {name: out / "pretrain" / name for name in corpora}
    procs = {}
    for name, train_json in corpora.items():
        run = runs[name]
        if (run / "DONE").is_file():
            continue
        resume = [f"resume={run}"] if (run / "checkpoints").is_dir() else []
        procs[name] = python_m(
            "training.pretrain", f"model={s.model}", "vocab=scenes", f"image_size={s.image_size}",
            f"embed_dim={s.embed_dim}", "data=json", f"train_json={train_json}", f"image_root={out / 'corpus'}",
            f"max_steps={s.pretrain_steps}", "epochs=1000", f"batch_size={s.batch_size}", f"lr={s.lr}",
            "weight_decay=0.05", "warmup_steps=50", "schedule=cosine", f"min_lr={s.min_lr}", "queue_size=1000",
            "momentum=0.99", "alpha=0.4", "max_tokens=30", "hflip=off", "crop_min_scale=1.0", f"seed={s.seed}",
            "log_every=25", "save_every=200", "keep_checkpoints=1", f"progress={not parallel}",
            f"output_dir={run}", *resume, threads=1 if parallel else threads, wait=not parallel)
    for name, proc in procs.items():
        _check(proc)
        (runs[name] / "DONE").write_text("done\n")
    return runs


def capfilt(out: Path, files: dict[str, Path], init: Path, s: Scale, threads: int) -> Path:
    run = out / "capfilt"
    if not (run / "report.json").is_file():
        python_m("training.capfilt", f"init={init}", "data=json", f"train_json={files['clean']}",
                 f"web_json={files['web']}", f"image_root={out / 'corpus'}", f"epochs={s.capfilt_epochs}",
                 f"batch_size={s.batch_size}", "lr=2e-4", "warmup_steps=20", "queue_size=1000", "momentum=0.99",
                 "hflip=off", "crop_min_scale=1.0", f"captions_per_image={s.captions_per_image}", "top_p=0.9",
                 "itm_threshold=0.5", f"seed={s.seed}", "log_every=50", "keep_checkpoints=1",
                 f"output_dir={run}", threads=threads)
    return run


def variant_corpora(out: Path, files: dict[str, Path], capfilt_dir: Path) -> dict[str, Path]:
    """none: clean + web; F: clean + kept web; C: clean + web + all synthetic; CF: clean + kept web
    + kept synthetic (= capfilt's bootstrap.json)."""
    clean = json.loads(files["clean"].read_text())
    candidates = json.loads((capfilt_dir / "candidates.json").read_text())
    paths = {"none": files["none"], "CF": capfilt_dir / "bootstrap.json"}
    rules = {"F": lambda t: t["origin"] == "web" and t["kept"], "C": lambda t: True}
    for name, keep in rules.items():
        entries = list(clean)
        for e in candidates:
            texts = [t["text"] for t in e["texts"] if keep(t)]
            if texts:
                entries.append({"image": e["image"], "caption": texts})
        paths[name] = out / "corpus" / f"{name}.json"
        paths[name].write_text(json.dumps(entries))
    return paths


# ------------------------------------------------------------------------- evaluation
def evaluate(out: Path, name: str, run: Path, s: Scale, threads: int) -> dict:
    result_file = out / "eval" / name / "eval.json"
    if not result_file.is_file():
        python_m("training.evaluate", f"init={run}", "data=scenes", f"val_seed={SEEDS['test']}",
                 f"val_count={s.n_test}", f"scene_max_objects={s.max_objects}", "tasks=caption,retrieval",
                 "prompt=", "k_test=16", "progress=false", f"output_dir={result_file.parent}", threads=threads)
    r = json.loads(result_file.read_text())
    return {"tr_r1": r["retrieval"]["txt_r1"], "ir_r1": r["retrieval"]["img_r1"], "cider": r["caption"]["cider"],
            "bleu4": r["caption"].get("bleu4")}


def noise_rates(candidates: list[dict], s: Scale) -> dict:
    """Share of false texts per origin, before and after filtering, and the filter's hit rates."""
    stats = {o: {"texts": 0, "false": 0, "kept": 0, "kept_false": 0} for o in ("web", "synthetic")}
    for e in candidates:
        scene = web_scene(e["image"], s)
        for t in e["texts"]:
            st, false = stats[t["origin"]], not is_true(t["text"], scene)
            st["texts"] += 1
            st["false"] += false
            st["kept"] += t["kept"]
            st["kept_false"] += false and t["kept"]
    out = {}
    for origin, st in stats.items():
        if not st["texts"]:
            continue
        true_total = st["texts"] - st["false"]
        out[origin] = {"texts": st["texts"], "kept": st["kept"],
                       "noise_before": round(st["false"] / st["texts"], 4),
                       "noise_after": round(st["kept_false"] / max(1, st["kept"]), 4),
                       "true_kept": round((st["kept"] - st["kept_false"]) / max(1, true_total), 4),
                       "false_removed": round(1 - st["kept_false"] / max(1, st["false"]), 4)}
    return out


# ------------------------------------------------------------------------------ report
def write_docs(results: dict, noise: dict, sizes: dict, s: Scale, scale_name: str, seconds: float, docs: Path) -> None:
    """docs/capfilt_results.json (the issue's shape plus the noise table) and docs/capfilt.md."""
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "capfilt_results.json").write_text(json.dumps(
        {**results, "noise": noise, "corpus_pairs": sizes, "scale": asdict(s)}, indent=2))
    names = {"none": "noisy web as is", "F": "F (filtered web)", "C": "C (web + synthetic)", "CF": "C+F"}
    rows = "\n".join(f"| {names[v]} | {'✓' if 'C' in v else ''} | {'✓' if 'F' in v else ''} | {sizes[v]} "
                     f"| {results[v]['tr_r1']:.1f} | {results[v]['ir_r1']:.1f} | {results[v]['cider']:.3f} |"
                     for v in VARIANTS)
    nrows = "\n".join(f"| {o} | {n['texts']} | {100 * n['noise_before']:.1f}% | {n['kept']} | "
                      f"{100 * n['noise_after']:.1f}% | {100 * n['true_kept']:.1f}% | {100 * n['false_removed']:.1f}% |"
                      for o, n in noise.items())
    (docs / "capfilt.md").write_text(CAPFILT_MD.format(
        scale=scale_name, rows=rows, nrows=nrows, minutes=seconds / 60, reading=reading(results, noise),
        **asdict(s), **SEEDS))


CAPFILT_MD = """# CapFilt, reproduced in miniature

`python -m training.capfilt` is our implementation of BLIP's CapFilt (captioner + filter
bootstrapping a cleaner corpus); the original authors released only its output. This page shows
its effect on the scene world, in the form of the paper's Table 1. Regenerate it with

    make capfilt-experiment     # python -m training.experiments.capfilt_effect --scale {scale} --parallel

(about {minutes:.0f} minutes on 2 CPU cores; the {scale} scale; results also in `docs/capfilt_results.json`).

## Set-up

- **Corpus** (`blip_core.scenes`, {image_size} px, up to {max_objects} objects): {n_clean} "human-annotated"
  scenes with their reference captions (scene seed {clean}) and {n_web} "web" scenes (seed {web}) with one
  alt-text each, false with probability {web_noise}: a wrong colour, shape or count, unrelated
  alt-text or a fragment, in web style ("photo of ...", "... hd").
- **Model**: the `{model}` preset at {image_size} px, vocabulary of the scene world; AdamW, lr {lr}
  cosine to {min_lr}.
- **none**: pre-trained on clean + web pairs as they are ({pretrain_steps} steps of batch {batch_size},
  ITC + ITM + LM); this model also initialises the captioner and the filter, as in the paper.
- **CapFilt**: captioner (LM) and filter (ITC + ITM) fine-tuned for {capfilt_epochs} epochs on the clean
  part; {captions_per_image} synthetic caption(s) per web image by nucleus sampling (top_p 0.9);
  texts kept when the filter's ITM match probability is >= 0.5.
- **F / C / C+F**: new models pre-trained from scratch on the clean part plus, respectively, the
  kept web texts, all web and synthetic texts, the kept web and synthetic texts; **equal
  compute**: the same {pretrain_steps} steps, batch {batch_size}, schedule and seed ({seed}) as `none`.
- **Evaluation**: {n_test} clean held-out scenes (seed {test}), directly after pre-training (no
  fine-tuning, unlike the paper's COCO/Flickr numbers): text and image retrieval R@1 (%, ITC
  top-16 re-ranked by ITM, every reference caption a target) and caption CIDEr (greedy, no prompt).

## Results

| pre-training text | C | F | pairs | TR@1 | IR@1 | CIDEr |
|---|---|---|---|---|---|---|
{rows}

Noise of the texts (false = `blip_core.scenes.truth.is_true` says the text does not
hold for its scene; the judge agrees with the generator's labels on every web text):

| origin | texts | false before | kept | false after | true texts kept | false texts removed |
|---|---|---|---|---|---|---|
{nrows}

## Reading

{reading}
"""


def reading(results: dict, noise: dict) -> str:
    """Plain statements computed from the numbers, so the text never contradicts the table."""
    base = results["none"]
    lines = []
    for v in ("F", "C", "CF"):
        r = results[v]
        lines.append(f"- {v} vs none: TR@1 {r['tr_r1'] - base['tr_r1']:+.1f}, IR@1 {r['ir_r1'] - base['ir_r1']:+.1f}, "
                     f"CIDEr {r['cider'] - base['cider']:+.3f}.")
    if "web" in noise:
        w = noise["web"]
        lines.append(f"- The filter cut the false share of web texts from {100 * w['noise_before']:.1f}% to "
                     f"{100 * w['noise_after']:.1f}%, keeping {100 * w['true_kept']:.1f}% of the true ones.")
    if "synthetic" in noise:
        n = noise["synthetic"]
        lines.append(f"- Synthetic captions were false {100 * n['noise_before']:.1f}% of the time before filtering, "
                     f"{100 * n['noise_after']:.1f}% after.")
    best = max(VARIANTS, key=lambda v: results[v]["tr_r1"] + results[v]["ir_r1"])
    paper = "as in the paper (C+F best)" if best == "CF" else f"unlike the paper, where C+F is best; here {best} leads"
    lines.append(f"- Best retrieval (TR@1 + IR@1): {best}, {paper}.")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- main
def add_elapsed(work: Path, seconds: float) -> float:
    """Add ``seconds`` to ``work/elapsed_s.txt`` -> the compute time over every (resumed)
    invocation, for the docs. Nothing is added when this process ran no training command."""
    elapsed = work / "elapsed_s.txt"
    total = (float(elapsed.read_text()) if elapsed.is_file() else 0.0) + (seconds if _commands_run else 0.0)
    elapsed.write_text(f"{total:.0f}\n")
    return total


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m training.experiments.capfilt_effect",
                                description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="full")
    p.add_argument("--out", default="runs/capfilt_effect", help="work folder (resumable)")
    p.add_argument("--docs", default=str(REPO / "docs"), help="where capfilt.md and capfilt_results.json go")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = all cores)")
    p.add_argument("--parallel", action="store_true", help="pre-train F, C and C+F at once, one thread each")
    args = p.parse_args(argv)
    s, out, t0 = SCALES[args.scale], Path(args.out).resolve(), time.time()
    files = make_corpus(out, s)
    runs = pretrain(out, {"none": files["none"]}, s, args.threads)
    cf = capfilt(out, files, runs["none"], s, args.threads)
    corpora = variant_corpora(out, files, cf)
    runs.update(pretrain(out, {v: corpora[v] for v in ("F", "C", "CF")}, s, args.threads, parallel=args.parallel))
    results = {v: evaluate(out, v, runs[v], s, args.threads) for v in VARIANTS}
    noise = noise_rates(json.loads((cf / "candidates.json").read_text()), s)
    sizes = {v: sum(len(e["caption"]) if isinstance(e["caption"], list) else 1
                    for e in json.loads(corpora[v].read_text())) for v in VARIANTS}
    write_docs(results, noise, sizes, s, args.scale, add_elapsed(out, time.time() - t0), Path(args.docs))
    log(f"done in {(time.time() - t0) / 60:.1f} min: {json.dumps(results)}")
    return {"results": results, "noise": noise}


if __name__ == "__main__":
    main()
