"""``blip bench --family blip2``: transformers fp32 vs ours fp32 vs ours int8 on BLIP-2 OPT-2.7B.

The weights are random (seeded) with blip2-opt-2.7b's shapes: EVA ViT-g 1408x39 at 224 px, the
BERT-base Q-Former with 32 queries, OPT-2.7B (3.7B parameters, ~15 GB fp32). They measure speed
and memory, never quality. One such model fits in this machine's memory at a time, so every
configuration runs in a process of its own (which also gives a clean peak RSS), one after the
other: no A/B interleaving here, unlike the BLIP bench. Each process times two workloads after a
warm-up: a new-frame caption (a fresh image, exactly 20 new tokens, greedy) and a follow-up
question on an already-encoded frame (exactly 10 new tokens). transformers has no reuse between
questions, so its follow-up re-runs everything; that is what a user of it pays.

The transformers process also writes its greedy sequences (the teacher); each of our processes
then teacher-forces them and counts the positions where its argmax agrees.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from blip_core.bench_measure import AnonPeak, machine, median_ms, vmhwm_mb
from blip_core.int8.spec import LLM_BITS

CAPTION_TOKENS = 20
ANSWER_TOKENS = 10
CAPTION_PROMPT = ""  # BLIP-2 captions unprompted
QUESTION = "what is in the picture?"
AGREEMENT_IMAGES = 8  # x AGREEMENT_TOKENS teacher positions each
AGREEMENT_TOKENS = 32
CONFIGS = ("transformers-fp32", "ours-fp32", "ours-int8")
TARGETS = {"caption": 4.0, "follow-up": 10.0, "rss": 0.25}  # speed-up, speed-up, peak RSS ratio
FOLDER = "blip2-opt-2.7b-random"

# blip2-opt-2.7b's language model (facebook/opt-2.7b); vision and Q-Former are Blip2Config's defaults
OPT_2_7B = dict(vocab_size=50304, hidden_size=2560, num_hidden_layers=32, ffn_dim=10240, num_attention_heads=32,
                max_position_embeddings=2048, word_embed_proj_dim=2560, eos_token_id=50118, bos_token_id=2,
                pad_token_id=1)
IMAGE_TOKEN = 50265
SHARD_BYTES = 2 * 1024**3  # small shards keep the writer's peak memory low (one shard, not 15 GB)


# ------------------------------------------------------------- random weights
def blip2_config(text: dict | None = None, queries: int = 32, image_token: int = IMAGE_TOKEN):
    import transformers

    text_config = transformers.OPTConfig(**(text or OPT_2_7B)).to_dict()
    return transformers.Blip2Config(text_config=text_config, num_query_tokens=queries, image_token_index=image_token)


def _draw(name: str, shape: tuple[int, ...], gen):
    """transformers' init rule (normal 0.02 matrices and embeddings, zero biases, unit norms), except
    the ViT (transformers: std 1e-10, so images would not steer the output) and the query tokens
    (transformers: zeros, so all 32 queries would be identical), which get 0.02 as well."""
    import torch

    if name.endswith("bias"):  # includes the ViT's q_bias / v_bias
        return torch.zeros(shape)
    if len(shape) == 1:
        return torch.ones(shape)
    return torch.randn(shape, generator=gen).mul_(0.02)


def write_random_checkpoint(folder: Path, cfg, seed: int = 0, shard_bytes: int = SHARD_BYTES) -> Path:
    """A Hugging Face BLIP-2 folder of ``cfg`` with seeded random weights, written shard by shard
    (save_pretrained's layout: tied weights stored once, an index when sharded) so that writing the
    3.7B model never holds more than one shard in memory."""
    import torch
    import transformers
    from safetensors.torch import save_file

    with torch.device("meta"):  # names and shapes only, no memory
        skeleton = transformers.Blip2ForConditionalGeneration(cfg)
    params = [(n, tuple(p.shape)) for n, p in skeleton.named_parameters()]  # tied weights appear once
    del skeleton
    tmp = folder.with_name(folder.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    shards, shard, size = [], {}, 0  # shards: the names in each written shard (its tensors are freed)

    def flush():
        shards.append(list(shard))
        save_file(shard, str(tmp / f"shard-{len(shards)}.tmp"), metadata={"format": "pt"})

    for name, shape in params:
        t = _draw(name, shape, gen)
        if shard and size + t.numel() * 4 > shard_bytes:
            flush()
            shard, size = {}, 0
        shard[name] = t
        size += t.numel() * 4
    flush()
    n = len(shards)
    weight_map = {}
    for i, s in enumerate(shards, 1):
        file = "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
        (tmp / f"shard-{i}.tmp").rename(tmp / file)
        weight_map.update(dict.fromkeys(s, file))
    if n > 1:
        total = sum(4 * torch.Size(shape).numel() for _, shape in params)
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    cfg.architectures = ["Blip2ForConditionalGeneration"]  # as model.save_pretrained records it; loaders read it
    cfg.save_pretrained(tmp)
    write_tokenizer(tmp, cfg.text_config.vocab_size, cfg.image_token_index)
    tmp.rename(folder)  # only a complete folder ever carries the final name
    return folder


def write_tokenizer(folder: Path, vocab_size: int, image_token: int | None) -> None:
    """A word-level tokenizer.json in OPT's id layout (<s> 0, <pad> 1, </s> 2), ``vocab_size``
    entries so any id the random model draws decodes; it only has to encode the bench's prompts."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    words = sorted(set(f"question answer : ? . a photo of {QUESTION}".replace("?", " ").split()) | {"?"})
    names = specials + words
    names += [f"w{i}" for i in range(len(names), vocab_size)]
    if image_token is not None and image_token < vocab_size:
        names[image_token] = "<image>"
    tok = Tokenizer(WordLevel({t: i for i, t in enumerate(names)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(specials + (["<image>"] if image_token is not None else []))
    tok.save(str(folder / "tokenizer.json"))


def random_checkpoint(root: Path) -> Path:
    """blip2-opt-2.7b's shapes with seeded random weights under ``root``, written once."""
    folder = root / FOLDER
    if not (folder / "config.json").is_file():
        print(f"writing the random BLIP-2 OPT-2.7B checkpoint (~15 GB) to {folder} ...", flush=True)
        write_random_checkpoint(folder, blip2_config())
    return folder


# -------------------------------------------------------------------- runners
def bench_images(n: int, first: int, size: int = 224) -> list:
    """``n`` distinct rendered scenes (a new frame each call, so nothing can be reused)."""
    from blip_core.scenes import render

    return [render(first + i, size).image for i in range(n)]


class HFBlip2:
    """transformers' Blip2ForConditionalGeneration fed as its processor would: pixel values and
    input ids [image token] x Q + BOS + prompt, greedy ``generate``."""

    def __init__(self, folder: Path):
        import torch
        from transformers import Blip2ForConditionalGeneration, BlipImageProcessor
        from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        from blip_core.tokenizer import LlmTokenizer

        self.torch = torch
        self.model = Blip2ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
        cfg = self.model.config
        size = cfg.vision_config.image_size
        self.proc = BlipImageProcessor(size={"height": size, "width": size}, image_mean=OPENAI_CLIP_MEAN,
                                       image_std=OPENAI_CLIP_STD)
        t = cfg.text_config
        self.tok = LlmTokenizer(folder, "opt", t.bos_token_id, t.eos_token_id, t.vocab_size)
        self.prefix = [cfg.image_token_index] * cfg.num_query_tokens

    def ids(self, prompt: str):
        return self.torch.tensor([self.prefix + self.tok.prompt_ids(prompt)])

    def generate(self, image, prompt: str, new_tokens: int) -> list[int]:
        """The ``new_tokens`` token ids generated after ``prompt`` (end token suppressed)."""
        ids = self.ids(prompt)
        px = self.proc(image, return_tensors="pt")["pixel_values"]
        with self.torch.inference_mode():
            out = self.model.generate(pixel_values=px, input_ids=ids, attention_mask=self.torch.ones_like(ids),
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                      num_beams=1)
        return out[0, -new_tokens:].tolist()


def teacher_forced(m, image, prompt: str, seq: list[int], eos: int) -> list[int]:
    """Our model's argmax at every position of ``seq`` fed as the continuation of ``prompt`` after
    ``image`` (the end token masked, as ``min_new_tokens`` masks it when the teacher generated)."""
    import contextlib

    import numpy as np

    with m._torch.inference_mode() if m._torch else contextlib.nullcontext():
        f = m.encode_image(image)
        session, start, _ = m._session(f, prompt)
        logits = [np.array(session.start(start, 1), dtype=np.float32)]
        for tok in seq[:-1]:
            logits.append(np.array(session.step(np.array([tok], dtype=np.int64), None), dtype=np.float32))
    out = []
    for x in logits:
        x = x[0].copy()
        x[eos] = -np.inf
        out.append(int(x.argmax()))
    return out


def _timed(fn, items) -> list[float]:
    """Seconds per call of ``fn`` on each of ``items``; the first call is a warm-up, not counted."""
    times = []
    for i, item in enumerate(items):
        t0 = time.perf_counter()
        fn(item)
        if i:
            times.append(time.perf_counter() - t0)
    return times


def child(config: str, folder: Path, threads: int, repeats: int, teacher: Path) -> dict:
    """Run ``config`` on ``folder`` in this (fresh) process: load, both workloads, and the
    teacher-forced agreement (the transformers process writes the teacher instead)."""
    t0 = time.perf_counter()
    anon = AnonPeak()
    caption_images = bench_images(repeats + 1, 7000)
    question_image = bench_images(1, 8000)[0]
    out = {"config": config}
    if config == "transformers-fp32":
        import torch

        torch.set_num_threads(threads)
        hf = HFBlip2(folder)
        out["load_s"] = time.perf_counter() - t0
        out["caption_s"] = _timed(lambda im: hf.generate(im, CAPTION_PROMPT, CAPTION_TOKENS), caption_images)
        question = "Question: {} Answer:".format(QUESTION)  # our OPT template, so both read the same prompt
        out["follow_up_s"] = _timed(lambda _: hf.generate(question_image, question, ANSWER_TOKENS),
                                    range(repeats + 1))  # no reuse: everything again per question
        items = [{"seed": 9000 + i, "tokens": hf.generate(im, CAPTION_PROMPT, AGREEMENT_TOKENS)}
                 for i, im in enumerate(bench_images(AGREEMENT_IMAGES, 9000))]
        teacher.write_text(json.dumps({"prompt": CAPTION_PROMPT, "eos": hf.model.config.text_config.eos_token_id,
                                       "items": items}))
    else:
        from blip_core import load

        m = load(folder, precision=config.split("-")[1], threads=threads, warmup=False)
        out["load_s"] = time.perf_counter() - t0
        parts = []

        def caption(im):
            parts.append(m.caption(im, prompt=CAPTION_PROMPT, max_new_tokens=CAPTION_TOKENS,
                                   min_new_tokens=CAPTION_TOKENS).timings)

        out["caption_s"] = _timed(caption, caption_images)
        out["caption_parts_ms"] = {k: statistics.median(getattr(t, k) for t in parts[1:])
                                   for k in ("preprocess_ms", "vision_ms", "text_ms", "decode_ms")}
        f = m.encode_image(question_image)  # the frame was encoded when it arrived; its warm-up asks once
        out["follow_up_s"] = _timed(
            lambda _: m.answer(f, QUESTION, max_new_tokens=ANSWER_TOKENS, min_new_tokens=ANSWER_TOKENS),
            range(repeats + 1))
        if teacher.is_file():
            t = json.loads(teacher.read_text())
            agree = total = 0
            for item in t["items"]:
                image = bench_images(1, item["seed"])[0]
                pred = teacher_forced(m, image, t["prompt"], item["tokens"], t["eos"])
                agree += sum(a == b for a, b in zip(pred, item["tokens"]))
                total += len(item["tokens"])
            out["agreement"] = {"agree": agree, "positions": total, "images": len(t["items"])}
    out["vmhwm_mb"] = vmhwm_mb()
    out["anon_peak_mb"] = anon.stop()
    out["torch_loaded"] = "torch" in sys.modules
    out["loadavg_15min"] = os.getloadavg()[2]  # other work on the machine during this process (it is shared)
    return out


def _run_child(args: list[str], timeout: int = 4 * 3600) -> dict:
    cmd = [sys.executable, "-m", "blip_core.bench_blip2", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip()[-1500:] or f"exit code {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])



# -------------------------------------------------------------- Pi 5 estimate
def _gflop(cfg) -> dict:
    """GFLOP of a new-frame caption's parts, from the shapes (2 FLOP per multiply-add)."""
    v, t = cfg.vision_config, cfg.text_config
    n = (v.image_size // v.patch_size) ** 2 + 1
    vit = v.num_hidden_layers * n * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size
                                     + 2 * n * v.hidden_size)
    llm_params = t.num_hidden_layers * (4 * t.hidden_size**2 + 2 * t.hidden_size * t.ffn_dim)
    return {"vit": 2 * vit / 1e9, "llm_per_token": 2 * llm_params / 1e9, "llm_params": llm_params,
            "vocab_x_hidden": t.vocab_size * t.hidden_size, "queries": cfg.num_query_tokens}


# Pi 5 figures as README.md uses them for BLIP: ncnn's ~43 GFLOP/s fp32 on its four A76 cores, int8
# with the A76's dot products 2-3x that; a decoding step reads its weights at ~8-10 GB/s.
PI_INT8_GFLOPS = (43 * 2, 43 * 3)
PI_GBPS = (8, 10)
# the engine's LLM weights: blocks of 32 at LLM_BITS with an fp32 scale each
LLM_BYTES_PER_PARAM = (LLM_BITS + 32 / 32) / 8


def pi5_estimate(cfg, prompt_tokens: int, int8_rss_mb: float | None) -> dict:
    """(low, high) seconds for a new-frame caption and a follow-up answer on a Pi 5, 4 threads, and
    the memory of the int8/4-bit model; estimated, never measured."""
    g = _gflop(cfg)
    step_gb = (g["llm_params"] + g["vocab_x_hidden"]) * LLM_BYTES_PER_PARAM / 1e9  # one decoding step's reads
    step = [step_gb / bw for bw in PI_GBPS[::-1]]  # (fast, slow) -> (low, high)

    def compute(gflop):  # a pass over many tokens is compute-bound, but never faster than one read of the weights
        return [max(gflop / r, step_gb / PI_GBPS[1]) for r in PI_INT8_GFLOPS[::-1]]

    vit = compute(g["vit"])
    prefix = compute((g["queries"] + 1) * g["llm_per_token"])
    question = compute(prompt_tokens * g["llm_per_token"])
    caption = [a + b + CAPTION_TOKENS * c for a, b, c in zip(vit, prefix, step)]
    answer = [a + ANSWER_TOKENS * c for a, c in zip(question, step)]
    # weights at rest: the rest of the model (ViT, Q-Former, projection) in int8, about 1 byte a parameter
    v = cfg.vision_config
    rest = v.num_hidden_layers * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size) + 110e6  # + Q-Former
    return {"vit_gflop": g["vit"], "step_gb": step_gb, "step_s": step, "caption_s": caption, "answer_s": answer,
            "int8_rss_mb": int8_rss_mb, "weights_gb": step_gb + rest / 1e9}


# ----------------------------------------------------------------- reporting
SECTION = "## BLIP-2 (OPT-2.7B shapes, random weights)"


def summarise(results: dict) -> list[dict]:
    """One row per (workload, config): median ms, speed-up and peak-RSS ratio vs transformers fp32."""
    runs = results["runs"]
    base = runs.get("transformers-fp32", {})
    rows = []
    for workload, key in (("new-frame caption (20 tokens)", "caption_s"), ("follow-up question (10 tokens)",
                                                                          "follow_up_s")):
        for config, r in runs.items():
            if key not in r:
                continue
            ms = median_ms(r[key])
            b = median_ms(base[key]) if key in base else None
            rss = base.get("vmhwm_mb")
            rows.append({"workload": workload, "config": config, "median_ms": ms, "min_ms": min(r[key]) * 1000,
                         "max_ms": max(r[key]) * 1000, "speedup": b / ms if b else None,
                         "rss_mb": r["vmhwm_mb"], "rss_ratio": r["vmhwm_mb"] / rss if rss else None})
    return rows


def _x(v, fmt="{:.1f}x") -> str:
    return "–" if v is None else fmt.format(v)


def report_lines(results: dict) -> list[str]:
    rows = summarise(results)
    runs = results["runs"]
    lines = [SECTION, "",
             "Generated by `blip bench --family blip2` (rewrites this section only). **The weights are random** "
             "(seeded; transformers' init, with the ViT and the query tokens at std 0.02) with "
             "blip2-opt-2.7b's shapes: EVA ViT-g (1408 wide, 39 blocks, 224 px), the Q-Former with 32 queries and "
             "OPT-2.7B, 3.7B parameters, ~15 GB in fp32. They measure speed and memory, not quality.", "",
             f"- machine: {results['machine']}; threads: {results['threads']}; versions: torch "
             f"{results['versions']['torch']}, transformers {results['versions']['transformers']}",
             f"- every configuration in a process of its own, one after the other (one 15 GB model fits in memory "
             f"at a time, so no A/B interleaving as in the BLIP bench): load, one warm-up, then "
             f"{results['repeats']} timed repeats per workload; medians",
             f"- new-frame caption: a fresh image each call, no prompt, exactly {CAPTION_TOKENS} new tokens "
             "(greedy, end token suppressed); preprocessing included",
             f"- follow-up: \"Question: {QUESTION} Answer:\", exactly {ANSWER_TOKENS} new tokens, on a frame ours "
             "encoded earlier (its image features and the LLM's keys/values over the 32-token visual prefix are "
             "reused). transformers has no such reuse: its `generate` runs the ViT, the Q-Former and the prefix "
             "again for every question; that is the comparison",
             "- peak RSS: `VmHWM` of the process (load + both workloads + the agreement pass)", "",
             "| workload | configuration | median ms | min–max ms | speed-up vs transformers | peak RSS MB | "
             "RSS vs transformers |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = r["config"].replace("-", " ")
        if r["config"] != "transformers-fp32" and not runs[r["config"]].get("torch_loaded", True):
            name += " (torch not loaded)"
        lines.append(f"| {r['workload']} | {name} | {r['median_ms']:.0f} | {r['min_ms']:.0f}–{r['max_ms']:.0f} | "
                     f"{_x(r['speedup'])} | {r['rss_mb']:.0f} | {_x(r['rss_ratio'], '{:.2f}x')} |")
    for config, r in runs.items():
        if "caption_parts_ms" in r:
            p = r["caption_parts_ms"]
            lines.append(f"\n{config.replace('-', ' ')} caption, median parts: preprocess {p['preprocess_ms']:.0f} ms, "
                         f"vision + Q-Former {p['vision_ms']:.0f} ms, prefix and prompt {p['text_ms']:.0f} ms, "
                         f"decoding {p['decode_ms']:.0f} ms; load {r['load_s']:.0f} s")
    anon = {c: r["anon_peak_mb"] for c, r in runs.items() if "anon_peak_mb" in r}
    if anon:
        lines.append("\nAnonymous memory at its peak (sampled every 50 ms; peak RSS above also counts file pages "
                     "such as memory-mapped weights): " + ", ".join(f"{c.replace('-', ' ')} {v / 1024:.2f} GB"
                                                                   for c, v in anon.items()) + ".")
    load = {c: r["loadavg_15min"] for c, r in runs.items() if "loadavg_15min" in r}
    if load:
        lines.append("\nThe machine is shared and the configurations ran at different times: 15-minute load average "
                     "(2 cores) at, or just after, the end of each process: "
                     + ", ".join(f"{c.replace('-', ' ')} {v:.1f}" for c, v in load.items())
                     + " (above 2, other work took CPU time from the bench; compare min–max as well as medians).")
    for config, why in results.get("skipped", {}).items():
        lines.append(f"\n**{config.replace('-', ' ')} not run**: {why}")
    if results.get("convert"):
        c = results["convert"]
        lines.append(f"\nThe one-time int8 conversion (first int8 load, cached afterwards; its own process): "
                     f"{c['convert_s'] / 60:.1f} min, peak RSS {c['vmhwm_mb'] / 1024:.1f} GB, of which at most "
                     f"{c.get('anon_peak_mb', float('nan')) / 1024:.1f} GB anonymous memory (the rest are pages of "
                     "the memory-mapped checkpoint, which the kernel drops under pressure: the anonymous peak is "
                     "what must fit, e.g. on an 8 GB Pi).")
    lines += ["", "Teacher-forced next-token agreement with transformers fp32 (its greedy continuations, "
              f"{AGREEMENT_IMAGES} images x {AGREEMENT_TOKENS} tokens, fed to each model; argmax compared per "
              "position):", ""]
    for config, r in runs.items():
        if "agreement" in r:
            a = r["agreement"]
            lines.append(f"- {config.replace('-', ' ')}: **{100 * a['agree'] / a['positions']:.1f}%** "
                         f"({a['agree']}/{a['positions']} positions)")
    lines += ["", "Targets:", "", "| target | reached | |", "|---|---|---|"]
    lines += [f"| {n} | {v} | {'met' if ok else '**not met**'} |" for n, v, ok in targets(results, rows)] or [
        f"| ours int8: caption >= {TARGETS['caption']:.0f}x, follow-up >= {TARGETS['follow-up']:.0f}x, peak RSS <= "
        f"{TARGETS['rss']}x, agreement >= 95% | not measured (no int8 run) | |"]
    lines += [""] + pi5_lines(results) + [""]
    return lines


def targets(results: dict, rows: list[dict]) -> list[tuple[str, str, bool]]:
    got = {(r["workload"].split(" (")[0], r["config"]): r for r in rows}
    out = []
    for workload, key in (("new-frame caption", "caption"), ("follow-up question", "follow-up")):
        r = got.get((workload, "ours-int8"))
        if r and r["speedup"]:
            out.append((f"ours int8 {workload} >= {TARGETS[key]:.0f}x transformers fp32", f"{r['speedup']:.1f}x",
                        r["speedup"] >= TARGETS[key]))
    r = got.get(("new-frame caption", "ours-int8"))
    if r and r["rss_ratio"]:
        out.append((f"ours int8 peak RSS <= {TARGETS['rss']}x transformers fp32", f"{r['rss_ratio']:.2f}x",
                    r["rss_ratio"] <= TARGETS["rss"]))
    a = results["runs"].get("ours-int8", {}).get("agreement")
    if a:
        share = a["agree"] / a["positions"]
        out.append(("ours int8 teacher-forced agreement >= 95%", f"{100 * share:.1f}%", share >= 0.95))
    return out


def pi5_lines(results: dict) -> list[str]:
    e = results["pi5"]
    rss = e.get("int8_rss_mb")
    mem = (f"the int8 model's measured peak RSS here is {rss / 1024:.1f} GB" if rss else
           f"the int8 model was not measured here; its weights come to ~{e['weights_gb']:.1f} GB from the "
           "shapes")
    c = results.get("convert") or {}
    if c.get("anon_peak_mb"):
        fits = "fits" if c["anon_peak_mb"] < 6.5 * 1024 else "does not fit"
        convert = (f"The one-time int8 conversion reads it block by block: its anonymous memory peaked at "
                   f"{c['anon_peak_mb'] / 1024:.1f} GB here (the rest of its RSS are pages of the memory-mapped "
                   f"checkpoint, which the kernel drops), so it {fits} an 8 GB Pi, slowly (it took "
                   f"{c['convert_s'] / 60:.0f} min on these 2 x86 cores); or convert on a larger machine with "
                   "`blip convert` and copy the folder over.")
    else:
        convert = "Convert on a larger machine with `blip convert` and copy the folder over."
    lo_hi = "{:.1f}–{:.1f} s".format
    lo_hi2 = "{:.2f}–{:.2f} s".format
    return [
        "**Expected on a Raspberry Pi 5** (estimated, not measured; derived as README.md derives BLIP's): the "
        f"ViT-g is {e['vit_gflop']:.0f} GFLOP per image; at int8 with the A76's dot products, 2–3x ncnn's "
        f"~43 GFLOP/s fp32 on four cores, that is {lo_hi(*[e['vit_gflop'] / r for r in PI_INT8_GFLOPS[::-1]])}. "
        f"A decoding step reads the {LLM_BITS}-bit OPT-2.7B and its output table once, ~{e['step_gb']:.2f} GB, "
        f"{lo_hi2(*e['step_s'])} at the Pi's ~8–10 GB/s. Prompt passes (the 33-token visual prefix, a question) "
        f"are compute-bound at the same int8 rate. Together **about {lo_hi(*e['caption_s'])} per new-frame caption** "
        f"({CAPTION_TOKENS} tokens) and **about {lo_hi(*e['answer_s'])} per follow-up answer** ({ANSWER_TOKENS} "
        f"tokens) with 4 threads. Memory: {mem}, which fits an 8 GB Pi with room for the camera and the GUI "
        "(not a 4 GB one; `blip convert --llm-bits 4` makes the LLM 1.7 instead of 3.0 GB, less faithful). The "
        f"fp32 model (15 GB) does not fit a Pi. {convert}"
    ]


def write_section(results: dict, out: Path) -> None:
    """Replace (or append) the BLIP-2 section at the end of ``out``; the BLIP sections stay as they are."""
    text = out.read_text() if out.is_file() else "# Benchmarks\n"
    head = text.split("\n" + SECTION, 1)[0].rstrip("\n")
    out.write_text(head + "\n\n" + "\n".join(report_lines(results)))


# ---------------------------------------------------------------------- main
def main(args, folder: Path | None = None) -> int:
    """Run every configuration in its own process and write the BLIP-2 section of ``args.output``.
    With --skip-transformers the transformers figures and teacher of the last run are reused."""
    import torch
    import transformers

    from blip_core.int8.cache import cache_root

    root = cache_root() / "bench"
    root.mkdir(parents=True, exist_ok=True)
    folder = folder or random_checkpoint(root)
    saved = root / f"{folder.name}-results.json"
    teacher = root / f"{folder.name}-teacher.json"
    previous = json.loads(saved.read_text()) if saved.is_file() else {"runs": {}}
    results = {"runs": {}, "skipped": {}, "threads": args.threads, "repeats": args.repeats, "machine": machine(),
               "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
               "checkpoint": str(folder)}
    common = ["--threads", str(args.threads), "--repeats", str(args.repeats), "--teacher", str(teacher)]
    reuse = set(getattr(args, "reuse", None) or ()) | ({"transformers-fp32"} if args.skip_transformers else set())
    for config in CONFIGS:
        if config in reuse:
            if config in previous["runs"] and teacher.is_file():
                results["runs"][config] = previous["runs"][config]
                print(f"{config}: reusing the last run's figures ({saved})", flush=True)
            else:
                results["skipped"][config] = "asked to reuse an earlier run, and there is none"
            continue
        try:
            if config == "ours-int8":
                results["convert"] = _run_child(["convert", config, str(folder), *common])
                print(f"int8 conversion/load: {results['convert']}", flush=True)
            print(f"running {config} ...", flush=True)
            results["runs"][config] = r = _run_child(["child", config, str(folder), *common])
        except RuntimeError as e:  # e.g. the int8 BLIP-2 engine not there yet: say so, keep the rest
            results["skipped"][config] = str(e).strip().splitlines()[-1][:300]
            print(f"{config} failed: {results['skipped'][config]}", flush=True)
            continue
        print(f"{config}: caption {median_ms(r['caption_s']):.0f} ms, follow-up {median_ms(r['follow_up_s']):.0f}"
              f" ms, peak RSS {r['vmhwm_mb']:.0f} MB, agreement {r.get('agreement')}", flush=True)
        previous["runs"][config] = r  # kept as soon as measured: an interrupted run loses only what was running
        saved.write_text(json.dumps(previous, indent=2))
    cfg = blip2_config() if folder.name == FOLDER else transformers.Blip2Config.from_pretrained(folder)
    int8 = results["runs"].get("ours-int8", {}).get("vmhwm_mb")
    prompt_tokens = 1 + len(f"Question: {QUESTION} Answer:".replace("?", " ?").replace(":", " :").split())
    results["pi5"] = pi5_estimate(cfg, prompt_tokens, int8)
    for r in summarise(results):
        print(f"{r['workload']:32s} {r['config']:18s} {r['median_ms']:9.0f} ms  {_x(r['speedup']):>6s}  "
              f"RSS {r['rss_mb']:.0f} MB {_x(r['rss_ratio'], '{:.2f}x')}", flush=True)
    # the store keeps the latest figures of every configuration, also of one that failed this time
    saved.write_text(json.dumps({**results, "runs": {**previous["runs"], **results["runs"]}}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    write_section(results, args.output)
    print(f"wrote the BLIP-2 section of {args.output}")
    return 0


def _child_main(argv: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m blip_core.bench_blip2")
    p.add_argument("what", choices=["child", "convert"])
    p.add_argument("config")
    p.add_argument("folder", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--teacher", type=Path, default=Path(os.devnull))
    a = p.parse_args(argv)
    if a.what == "convert":  # the one-time int8 conversion, in a process of its own (its peak is not the runtime's)
        from blip_core import load

        t0 = time.perf_counter()
        anon = AnonPeak()
        load(a.folder, precision="int8", threads=a.threads, warmup=False)
        res = {"convert_s": time.perf_counter() - t0, "vmhwm_mb": vmhwm_mb(), "anon_peak_mb": anon.stop()}
    else:
        res = child(a.config, a.folder, a.threads, a.repeats, a.teacher)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
