"""CapFilt: bootstrap a cleaner caption corpus with a captioner and a filter (BLIP, section 3.3).

    python -m training.capfilt --config training/configs/smoke.yaml init=runs/smoke \\
        data=json train_json=clean.json web_json=web.json image_root=corpus
    torchrun --nproc_per_node=4 -m training.capfilt --config FILE init=... web_shards='web/{00000..00099}.tar'

Stages; each one whose output exists is skipped, so an interrupted run resumes where it stopped:

1. ``captioner``: fine-tune ``init`` with LM on the clean (human-annotated) pairs -> ``output_dir/captioner``;
2. ``filter``: fine-tune ``init`` with ITC + ITM on the same pairs -> ``output_dir/filter``;
3. ``bootstrap``: for every web image, sample ``captions_per_image`` synthetic captions (nucleus,
   ``top_p``), score the web text and the synthetic ones with the filter's ITM head, keep each
   text whose match probability is at least ``itm_threshold``. Work is cut into chunks of
   ``chunk_size`` images (annotation input) or shards (web shards), split over the ranks, each
   written atomically as it finishes.

Outputs (annotation input): ``bootstrap.json`` (the clean pairs, then every web image with a kept
text; BLIP's caption format plus ``"texts"``: origin ``clean``/``web``/``synthetic`` and ITM score of
each), ``candidates.json`` (every scored text, kept or not) and ``report.json`` (counts). Shard
input: ``output_dir/shards/<same names>.tar``, one sample per kept text (``.jpg`` as read, ``.txt``,
``.json`` with origin and score), and the report.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from blip_core.checkpoints.atomic import atomic_file

from . import dist, finetune
from .config import (
    Common,
    ConfigError,
    Contrastive,
    EvalOptions,
    FinetuneConfig,
    Optimisation,
    _positive,
    arg_parser,
    from_dict,
    parse,
    run_cli,
    setup_process,
    to_dict,
)
from .data import DatasetError, _texts, pre_caption, read_annotations
from .loop import train
from .run_state import find_checkpoint, list_checkpoints

log = logging.getLogger("training.capfilt")
STAGES = ("captioner", "filter", "bootstrap")
DONE = "DONE"  # marker file in a finished fine-tuning stage: the path of its final checkpoint


@dataclass(frozen=True)
class CapFiltConfig(EvalOptions, Contrastive, Optimisation, Common):
    """Clean data: the usual ``data`` / ``train_json`` / ``image_root`` keys. Web data:
    ``web_json`` (BLIP caption JSON) or ``web_shards`` (img2dataset tar shards)."""

    web_json: str = ""
    web_shards: str = ""
    web_image_root: str = ""  # "" = image_root
    stages: str = ",".join(STAGES)
    captioner: str = ""  # an already fine-tuned captioner: skips stage 1
    filter: str = ""  # an already fine-tuned filter: skips stage 2
    captioner_epochs: int = 0  # 0 = epochs
    filter_epochs: int = 0
    captions_per_image: int = 1  # synthetic captions sampled per web image
    top_p: float = 0.9  # nucleus sampling (BLIP: more diverse, noisier captions help)
    itm_threshold: float = 0.5  # keep a text when p(match) >= this
    chunk_size: int = 256  # web images per resumable work unit (annotation input)
    lr: float = 1e-5
    schedule: str = "cosine"
    max_tokens: int = 40
    prompt: str = "a picture of "  # the captioner's prompt (BLIP's CapFilt captioner used it too)
    eval_each_epoch: bool = False

    def __post_init__(self):
        Common.__post_init__(self)
        self._check_optimisation()
        self._check_contrastive()
        self._check_eval()
        bad = [s for s in self.stage_list if s not in STAGES]
        if bad or not self.stage_list:
            raise ConfigError(f"stages={self.stages!r}: use a comma list of {', '.join(STAGES)}")
        _positive("captions_per_image", self.captions_per_image, allow_zero=True)
        _positive("chunk_size", self.chunk_size)
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.itm_threshold <= 1.0:
            raise ConfigError(f"itm_threshold must be in [0, 1], got {self.itm_threshold}")
        if bool(self.web_json) == bool(self.web_shards):
            raise ConfigError("give the web corpus as web_json=annotations.json or web_shards=path/{00000..00009}.tar")

    @property
    def stage_list(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.stages.split(",") if s.strip())


# ------------------------------------------------------------------- stages 1 and 2
def finetune_config(cfg: CapFiltConfig, stage: str) -> FinetuneConfig:
    """The fine-tuning run of ``stage`` (captioner: LM; filter: ITC + ITM) on the clean data."""
    keys = {f.name for f in fields(FinetuneConfig)}
    values = {k: v for k, v in to_dict(cfg).items() if k in keys}
    epochs = (cfg.captioner_epochs if stage == "captioner" else cfg.filter_epochs) or cfg.epochs
    out = Path(cfg.output_dir) / stage
    values.update(tasks="caption" if stage == "captioner" else "retrieval", output_dir=str(out), epochs=epochs,
                  eval_each_epoch=False, export_hf=False, resume=str(out) if list_checkpoints(out) else "")
    return from_dict(FinetuneConfig, values)


def fine_tuned(cfg: CapFiltConfig, stage: str, info: dist.DistInfo) -> str:
    """The checkpoint of ``stage``: given, already trained (``DONE``), or trained now."""
    given = cfg.captioner if stage == "captioner" else cfg.filter
    if given:
        return given
    out = Path(cfg.output_dir) / stage
    if (out / DONE).is_file():
        return (out / DONE).read_text().strip()
    if stage not in cfg.stage_list:
        raise ConfigError(f"no {stage}: add it to stages= or give {stage}=CHECKPOINT")
    ft = finetune_config(cfg, stage)
    log.info("stage %s: fine-tuning %s on the clean data -> %s", stage, cfg.init or "a new model", out)
    train(finetune.build(ft, info))
    final = str(find_checkpoint(str(out)))
    if info.main:
        _write_atomic(out / DONE, final + "\n")
    dist.barrier()
    return final


# ----------------------------------------------------------------------- stage 3
@dataclass
class Scored:
    text: str
    origin: str  # web | synthetic
    itm: float

    def as_dict(self, threshold: float) -> dict:
        return {"text": self.text, "origin": self.origin, "itm": round(self.itm, 4), "kept": self.itm >= threshold}


class Bootstrapper:
    """Caption and filter one image at a time, through the public ``blip_core`` API: the
    filter's vision pass is shared by all the image's texts, the captioner's cross-attention
    keys/values by all its samples."""

    def __init__(self, cfg: CapFiltConfig, captioner_path: str, filter_path: str):
        import blip_core

        threads = cfg.threads or None
        self.captioner = blip_core.load(captioner_path, task="caption", threads=threads, warmup=False) \
            if cfg.captions_per_image else None
        self.filter = blip_core.load(filter_path, task="match", threads=threads, warmup=False)
        self.cfg = cfg

    def score(self, image, web_text: str | None, key: str) -> list[Scored]:
        """PIL image + its web text -> web and synthetic texts with their ITM probabilities."""
        cfg = self.cfg
        texts: list[tuple[str, str]] = []
        if web_text:
            texts.append((pre_caption(web_text, cfg.max_words), "web"))
        if self.captioner is not None:
            seed = random.Random(f"capfilt/{cfg.seed}/{key}").getrandbits(31)  # same captions when resumed
            result = self.captioner.caption(image, prompt=cfg.prompt, strategy="nucleus", top_p=cfg.top_p,
                                            max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens,
                                            num_return_sequences=cfg.captions_per_image, seed=seed)
            texts += [(pre_caption(t, cfg.max_words), "synthetic") for t in result.texts]
        texts = [(t, o) for t, o in texts if t]
        if not texts:
            return []
        matches = self.filter.match(image, [t for t, _ in texts])
        return [Scored(t, o, float(m.itm)) for (t, o), m in zip(texts, matches, strict=True)]


def _write_atomic(path: Path, text: str) -> None:
    """``atomic_file``, its OSError (a full disk, a read-only folder) said as a StorageError."""
    from blip_core.errors import StorageError

    try:
        atomic_file(path, text)
    except OSError as e:
        raise StorageError(f"cannot write {path}: {e.strerror or e}") from e


def _web_entries(cfg: CapFiltConfig) -> list[tuple[str, str]]:
    """(image path as written in web_json, web text) pairs; an entry with n captions gives n."""
    pairs = []
    for i, e in enumerate(read_annotations(cfg.web_json, "web_json")):
        for text in _texts(e.get("caption", ""), f"web_json entry {i} caption") if "caption" in e else [""]:
            pairs.append((e["image"], text))
    return pairs


def _chunks_of_rank(n_chunks: int, info: dist.DistInfo) -> list[int]:
    return [c for c in range(n_chunks) if c % info.world == info.rank]


def bootstrap_json(cfg: CapFiltConfig, boot: Bootstrapper, info: dist.DistInfo) -> dict:
    """Score every web pair; rank 0 merges the chunks into bootstrap.json / candidates.json."""
    from blip_core.errors import BadImageError
    from blip_core.preprocess import load_image

    pairs = _web_entries(cfg)
    root = Path(cfg.web_image_root or cfg.image_root or ".")
    parts = Path(cfg.output_dir) / "parts"
    n_chunks = -(-len(pairs) // cfg.chunk_size)
    mine = _chunks_of_rank(n_chunks, info)
    todo = [c for c in mine if not (parts / f"chunk-{c:06d}.json").is_file()]
    if len(todo) < len(mine):
        log.info("bootstrap: %d of this rank's %d chunks already done", len(mine) - len(todo), len(mine))
    bar = tqdm(total=sum(len(pairs[c * cfg.chunk_size:(c + 1) * cfg.chunk_size]) for c in todo), desc="capfilt",
               disable=not (info.main and cfg.progress), dynamic_ncols=True, unit="img")
    for c in todo:
        out, skipped = [], 0
        for j, (image, web_text) in enumerate(pairs[c * cfg.chunk_size:(c + 1) * cfg.chunk_size]):
            path = Path(image) if os.path.isabs(image) else root / image
            try:
                img = load_image(str(path))
            except BadImageError as e:
                skipped += 1
                log.warning("skipping unreadable web image %s: %s", path, e)
                bar.update(1)
                continue
            scored = boot.score(img, web_text, f"{c * cfg.chunk_size + j}/{image}")
            out.append({"image": image, "texts": [s.as_dict(cfg.itm_threshold) for s in scored]})
            bar.update(1)
        _write_atomic(parts / f"chunk-{c:06d}.json", json.dumps({"entries": out, "skipped": skipped}))
    bar.close()
    dist.barrier()
    return _merge_json(cfg, parts, n_chunks) if info.main else {}


def _merge_json(cfg: CapFiltConfig, parts: Path, n_chunks: int) -> dict:
    candidates, skipped = [], 0
    for c in range(n_chunks):
        part = json.loads((parts / f"chunk-{c:06d}.json").read_text())
        candidates += part["entries"]
        skipped += part["skipped"]
    clean = _clean_entries(cfg)
    dataset = list(clean)
    for e in candidates:
        kept = [t for t in e["texts"] if t["kept"]]
        if kept:
            dataset.append({"image": e["image"], "caption": [t["text"] for t in kept],
                            "texts": [{k: t[k] for k in ("text", "origin", "itm")} for t in kept]})
    out = Path(cfg.output_dir)
    _write_atomic(out / "candidates.json", json.dumps(candidates, indent=0))
    _write_atomic(out / "bootstrap.json", json.dumps(dataset, indent=0))
    report = {"web_images": len(candidates), "skipped_images": skipped, "itm_threshold": cfg.itm_threshold,
              "captions_per_image": cfg.captions_per_image, "top_p": cfg.top_p, "clean_entries": len(clean),
              **_counts(t for e in candidates for t in e["texts"])}
    _write_atomic(out / "report.json", json.dumps(report, indent=2))
    return report


def _clean_entries(cfg: CapFiltConfig) -> list[dict]:
    """The human-annotated pairs, carried into the bootstrapped corpus (annotation input only)."""
    if cfg.data != "json":
        return []  # scenes / shards as clean data: the trainer reads them from their own keys
    entries = read_annotations(cfg.train_json, "train_json")
    return [{"image": e["image"], "caption": _texts(e["caption"], "train_json caption"),
             "texts": [{"text": t, "origin": "clean", "itm": None} for t in _texts(e["caption"], "caption")]}
            for e in entries if "caption" in e]


def _counts(texts: Iterator[dict]) -> dict:
    counts: dict[str, int] = {}
    for t in texts:
        for key in (f"{t['origin']}_texts", f"{t['origin']}_kept" if t["kept"] else None):
            if key:
                counts[key] = counts.get(key, 0) + 1
    return counts


def bootstrap_shards(cfg: CapFiltConfig, boot: Bootstrapper, info: dist.DistInfo) -> dict:
    """Each rank filters its shards (i % world == rank) into ``output_dir/shards``; a finished
    output shard is never redone."""
    import braceexpand
    import webdataset as wds

    from blip_core.errors import BadImageError
    from blip_core.preprocess import load_image

    from .data import IMAGE_EXTS, _web_text, shard_samples

    urls = [u for part in cfg.web_shards.split("::") for u in braceexpand.braceexpand(part)]
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if missing:
        raise DatasetError(f"web_shards: {missing[0]} does not exist")
    out_dir = Path(cfg.output_dir) / "shards"
    out_dir.mkdir(parents=True, exist_ok=True)
    stats: list[dict] = []
    for i, url in enumerate(urls):
        target = out_dir / Path(url).name
        if i % info.world != info.rank or target.is_file():
            continue
        tmp = target.with_name(f".{target.name}.tmp")
        n = {"web_images": 0, "skipped_images": 0}
        texts: list[dict] = []
        with wds.TarWriter(str(tmp)) as sink:
            for sample in tqdm(wds.DataPipeline(wds.SimpleShardList([url]), shard_samples),
                               desc=Path(url).name, disable=not (info.main and cfg.progress), unit="img"):
                if "bad" in sample:  # what a shard cut short lost
                    n["skipped_images"] += sample["bad"]
                    continue
                ext = next((e for e in IMAGE_EXTS if e in sample), None)
                data = sample[ext] if ext else None
                try:
                    img = load_image(data) if data is not None else None
                except BadImageError:
                    img = None
                if img is None:
                    n["skipped_images"] += 1
                    continue
                n["web_images"] += 1
                scored = [s.as_dict(cfg.itm_threshold) for s in boot.score(img, _web_text(sample), sample["__key__"])]
                texts += scored
                for j, s in enumerate(t for t in scored if t["kept"]):
                    sink.write({"__key__": f"{sample['__key__']}_{j}", ext: data, "txt": s["text"],
                                "json": json.dumps({**s, "source_key": sample["__key__"]})})
        os.replace(tmp, target)
        stats.append({**n, **_counts(texts)})
    gathered = [s for rank_stats in dist.all_gather_object(stats) for s in rank_stats]
    report: dict = {"itm_threshold": cfg.itm_threshold, "captions_per_image": cfg.captions_per_image,
                    "top_p": cfg.top_p}
    for s in gathered:
        for k, v in s.items():
            report[k] = report.get(k, 0) + v
    if info.main:
        _write_atomic(Path(cfg.output_dir) / f"report-{len(urls)}-shards.json", json.dumps(report, indent=2))
    return report


# ----------------------------------------------------------------------------- run
def run(cfg: CapFiltConfig) -> dict:
    info = dist.init()
    setup_process(cfg, info.main)
    captioner = fine_tuned(cfg, "captioner", info) if cfg.captions_per_image else ""
    filt = fine_tuned(cfg, "filter", info)
    if "bootstrap" not in cfg.stage_list:
        return {"captioner": captioner, "filter": filt}
    boot = Bootstrapper(cfg, captioner, filt)
    report = bootstrap_json(cfg, boot, info) if cfg.web_json else bootstrap_shards(cfg, boot, info)
    if info.main:
        log.info("capfilt: %s", json.dumps(report))
    return {"captioner": captioner, "filter": filt, **report}


def main(argv: list[str]) -> None:
    args = arg_parser("python -m training.capfilt", __doc__.splitlines()[0]).parse_args(argv)
    cfg = parse(CapFiltConfig, args.config, args.overrides)
    report = run(cfg)
    if dist.rank() == 0:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    run_cli(main)
