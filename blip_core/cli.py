"""The ``blip`` command: caption, ask, match, bench, export, convert and inspect from a shell.

User errors (a bad image, an offline hub, a wrong checkpoint, a bad option or argument) print one
line on stderr and exit 2; in a batch, the other images are still processed. Options are checked
before a model is loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path

from blip_core.errors import BadInputError, BlipError
from blip_core.hub import DEFAULT_MODELS


def _fail(message: str) -> None:
    from blip_core.tokenizer import escaped

    print(f"blip: error: {escaped(message)}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line like every other error (not usage + message)."""

    def error(self, message: str):
        raise BadInputError(f"{message} (see {self.prog} --help)")


def _model_source(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("the model is empty: give a hub id, a model folder or a .pth file")
    return value


def _texts(**named) -> None:
    """Refuse user texts (a question, a prompt) that are not valid UTF-8, before any model loads."""
    from blip_core.tokenizer import require_text

    for what, values in named.items():
        for value in values if isinstance(values, list) else [values]:
            require_text(value, what.replace("_", " "))


# the decoding options as this command spells them, for its messages
FLAGS = {"num_beams": "--beams", "max_new_tokens": "--max-new-tokens", "min_new_tokens": "--min-new-tokens",
         "top_p": "--top-p", "repetition_penalty": "--repetition-penalty", "seed": "--seed", "strategy": "--strategy"}


def _decoding(**options) -> dict:
    """``options`` for Blip.caption/answer, checked before any model loads."""
    from blip_core.generation import DecodingOptions

    try:
        DecodingOptions.build(**options)
    except BadInputError as e:
        raise BadInputError(re.sub(r"\b(" + "|".join(FLAGS) + r")\b", lambda m: FLAGS[m[1]], str(e))) from None
    return options


class _StepBar:
    """A ``progress(fraction, step)`` callback drawn as a tqdm bar on stderr (stdout stays the
    results', e.g. ``--json`` lines), opened by the first step whose name starts with ``prefix``:
    the other reports of a load (a quick cached load, downloads with bars of their own) draw nothing."""

    def __init__(self, prefix: str = ""):
        self.prefix, self.bar = prefix, None

    def __call__(self, fraction: float, step: str) -> None:
        if self.bar is None and not step.startswith(self.prefix):
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=100, file=sys.stderr, dynamic_ncols=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
        from blip_core.tokenizer import escaped

        self.bar.set_description_str(escaped(step), refresh=False)  # a step may name a file: printable UTF-8
        self.bar.n = round(100 * min(max(fraction, 0.0), 1.0))
        self.bar.refresh()  # once per step, however short (a conversion has a dozen or so)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _conversion_bar(precision: str) -> _StepBar | None:
    """The bar of an int8 conversion on first use (None for fp32: nothing to convert)."""
    if precision != "int8":
        return None
    from blip_core.int8.cache import CONVERTING

    return _StepBar(CONVERTING)


def _load(args, task: str):
    from blip_core import demo_model_path, load

    source = DEFAULT_MODELS[task] if args.model is None else args.model
    try:
        with _conversion_bar(args.precision) or contextlib.nullcontext() as bar:
            return load(source, precision=args.precision, threads=args.threads, task=None if args.model else task,
                        progress=bar)
    except BlipError as e:
        hint = ""
        if args.model is None and demo_model_path().exists():
            hint = f" (offline? try --model {demo_model_path()}, the bundled scene-world demo model)"
        raise BlipError(f"{e}{hint}") from e


def _local(model: str) -> Path:
    """A hub id downloaded (once, cached) or a local path, for the commands that read a checkpoint."""
    from blip_core.hub import fetch, looks_like_hub_id

    return fetch(model) if looks_like_hub_id(model) else Path(model).expanduser()


def _emit(args, record: dict, line: str) -> None:
    print(json.dumps(_utf8(record), ensure_ascii=False) if args.json else _utf8(line), flush=True)


def _utf8(value):
    """``value`` (a line or a record) with its strings writable as UTF-8: a file name that is not
    valid UTF-8 appears with ``\\xNN`` escapes, so every line (JSON or not) is valid UTF-8."""
    from blip_core.tokenizer import escaped

    if isinstance(value, str):
        return escaped(value)
    if isinstance(value, dict):
        return {_utf8(k): _utf8(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_utf8(v) for v in value]
    return value


def _defaults_of(**options) -> dict:
    """The options the user gave (None: the loaded model's own default, which differs by family)."""
    return {k: v for k, v in options.items() if v is not None}


def cmd_caption(args) -> int:
    if args.prompt is not None:
        _texts(the_prompt=args.prompt)
    decoding = _decoding(num_beams=args.beams, strategy=args.strategy, max_new_tokens=args.max_new_tokens,
                         top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                         **_defaults_of(min_new_tokens=args.min_new_tokens))
    m = _load(args, "caption")
    failed = 0
    for path in args.images:
        try:
            r = m.caption(path, **_defaults_of(prompt=args.prompt), **decoding)
        except BlipError as e:
            failed += 1
            _fail(f"{path}: {e}")
            if args.json:
                _emit(args, {"image": str(path), "error": str(e)}, "")
            continue
        prefix = f"{path}: " if len(args.images) > 1 else ""
        _emit(args, {"image": str(path), "caption": r.text, "prompt": r.prompt, "tokens": len(r.token_ids),
                     "timings_ms": r.timings.as_dict()}, f"{prefix}{r.text}")
    return 2 if failed else 0


def cmd_ask(args) -> int:
    answers = [a.strip() for a in args.answers.split(",")] if args.answers is not None else None
    _texts(the_question=args.question, an_answer=answers or [])
    if args.template is not None:
        _texts(the_template=args.template)
    decoding = _decoding(num_beams=args.beams, **_defaults_of(max_new_tokens=args.max_new_tokens))
    m = _load(args, "vqa")
    if args.template is not None and m.family != "blip2":
        raise BlipError("--template is for BLIP-2 models (their LLM reads the question through a template)")
    r = m.answer(args.image, args.question, answers=answers, **_defaults_of(template=args.template), **decoding)
    _emit(args, {"image": str(args.image), "question": args.question, "answer": r.text,
                 "ranked": r.ranked[:5], "model": m.name, "timings_ms": r.timings.as_dict()}, r.text)
    return 0


def cmd_generate(args) -> int:
    _texts(the_prompt=args.prompt)
    decoding = _decoding(num_beams=args.beams, strategy=args.strategy, max_new_tokens=args.max_new_tokens,
                         top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)
    m = _load(args, "caption")
    if m.family != "blip2":
        raise BlipError(f"{m.name} is a BLIP model: free-form prompts need BLIP-2 (e.g. --model "
                        "Salesforce/blip2-opt-2.7b); for captions use blip caption")
    r = m.generate(args.image, args.prompt, **decoding)
    _emit(args, {"image": str(args.image), "prompt": args.prompt, "text": r.text, "model": m.name,
                 "timings_ms": r.timings.as_dict()}, r.text)
    return 0


def cmd_match(args) -> int:
    _texts(a_text=args.texts)
    m = _load(args, "match")
    results = m.match(args.image, args.texts)
    for r in results:
        _emit(args, {"image": str(args.image), "text": r.text, "itm": r.itm, "itc": r.itc},
              f"itm {r.itm:.4f}  itc {r.itc:+.4f}  {r.text}")
    return 0


def cmd_export(args) -> int:
    from blip_core.checkpoints import export_hf, load_model

    model, tok, report = load_model(_local(args.model))
    out = export_hf(model, args.output, tok, task=args.task)
    print(f"{report.summary()}\nwrote {out}")
    return 0


def cmd_convert(args) -> int:
    from blip_core.checkpoints import open_checkpoint
    from blip_core.int8.convert_blip2 import export_int8  # either family

    ck = open_checkpoint(_local(args.model))
    with _StepBar() as bar:
        out = export_int8(ck, args.output, tasks=tuple(args.task) if args.task else None, progress=bar,
                          llm_bits=args.llm_bits)
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(f"wrote {out} ({size:.0f} MB; tasks {'+'.join(ck.cfg.tasks)}): load it with precision='int8' "
          "(blip --precision int8 --model, blip-cam --model), on any machine with this blipcam release")
    return 0


def _shape(cfg) -> str:
    """One line of a model's architecture, whichever family."""
    v = cfg.vision
    vision = f"{v.image_size}px; vision {v.width}x{v.layers}"
    if getattr(cfg, "family", "blip") == "blip2":
        q, llm = cfg.qformer, cfg.llm
        tail = "ITM heads" if llm is None else f"{cfg.llm_kind.upper()} {llm.width}x{llm.layers}"
        return f"BLIP-2; {vision}, Q-Former {q.width}x{q.layers} with {q.num_queries} queries, {tail}"
    return f"{vision}, text {cfg.text.width}x{cfg.text.layers}"


def cmd_info(args) -> int:
    from blip_core.checkpoints import INT8_FORMAT, load_model, open_checkpoint

    path = _local(args.model)
    if open_checkpoint(path).report.format == INT8_FORMAT:
        from blip_core import load

        m = load(path, precision="int8", warmup=False)
        print(f"{m.report.summary()}\nint8 graphs; {_shape(m.cfg)}")
        return 0
    model, _, report = load_model(path)
    n = sum(p.numel() for p in model.parameters())
    print(f"{report.summary()}\n{n / 1e6:.1f}M parameters; {_shape(model.cfg)}")
    return 0


def cmd_bench(args) -> int:
    from blip_core.bench import main as bench_main

    return bench_main(args)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=_model_source,
                   help="hub id, model folder or .pth (default: the Salesforce checkpoint for the task)")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads, 1 to 4 per CPU (default: physical cores)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line, in UTF-8: file names that are not valid UTF-8 appear with "
                        "\\xNN escapes")


def _decoding_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beams", type=int, default=1, help="beam search with N beams (1 = greedy)")
    p.add_argument("--strategy", choices=("greedy", "beam", "nucleus"), default=None)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="seed for nucleus sampling")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="blip", description="BLIP and BLIP-2 captioning, VQA and image-text matching on the CPU")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("caption", help="caption one or more images")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--prompt", default=None,
                   help='conditional prompt (default: BLIP "a picture of ", BLIP-2 none; "" for none)')
    _decoding_arguments(p)
    p.add_argument("--min-new-tokens", type=int, default=None, help="default: BLIP 5, BLIP-2 1")
    _common(p)
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("generate", help="BLIP-2: continue a free-form prompt about an image")
    p.add_argument("image", type=Path)
    p.add_argument("prompt", help='e.g. "Question: what is unusual about this? Answer:"')
    _decoding_arguments(p)
    _common(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("ask", help="answer a question about an image")
    p.add_argument("image", type=Path)
    p.add_argument("question")
    p.add_argument("--answers", help="comma-separated answer list to rank instead of generating (BLIP)")
    p.add_argument("--beams", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--template", default=None,
                   help='BLIP-2: how the question is put to the LLM (default "Question: {} Answer:" for OPT, '
                        '"Question: {} Short answer:" for Flan-T5)')
    _common(p)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("match", help="score how well texts match an image (ITM probability, ITC cosine)")
    p.add_argument("image", type=Path)
    p.add_argument("texts", nargs="+")
    _common(p)
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("export", help="write a checkpoint in the Hugging Face BLIP layout")
    p.add_argument("model", type=_model_source)
    p.add_argument("output", type=Path)
    p.add_argument("--task", choices=("caption", "vqa", "match"), default=None)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("convert", help="write a checkpoint's int8 graphs to a folder that loads without torch "
                                       "(e.g. convert on a desktop, run on a Pi)")
    p.add_argument("model", type=_model_source, help="hub id, model folder or .pth")
    p.add_argument("output", type=Path, help="a new folder")
    p.add_argument("--task", choices=("caption", "vqa", "match"), action="append",
                   help="keep only this task (repeatable; default: all the checkpoint has)")
    p.add_argument("--llm-bits", type=int, choices=(4, 8), default=8,
                   help="BLIP-2: the language model's weights in 8 bits (default, faithful) or 4 (OPT-2.7B: "
                        "1.7 instead of 3.0 GB, less faithful: see docs/benchmarks.md)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="load a checkpoint and print its report")
    p.add_argument("model", type=_model_source)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="side-by-side speed/memory benchmark; rewrites docs/benchmarks.md")
    from blip_core.bench import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except BlipError as e:
        _fail(str(e))
        return 2
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
