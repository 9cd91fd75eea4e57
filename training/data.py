"""Datasets for pre-training, fine-tuning and evaluation.

Three sources, one sample format (a dict, batched by ``collate``):

- BLIP annotation JSON: ``[{"image": path, "caption": str | [str]}]`` (pairs, one per caption) or
  ``[{"image": path, "question": str, "answer": str | [str]}]``, paths relative to ``image_root``;
- WebDataset tar shards in the img2dataset layout (``{key}.jpg`` + ``{key}.txt`` / ``.json``),
  split over ranks and workers (``wds.split_by_node`` / ``split_by_worker``);
- scenes from ``blip_core.scenes``: clean captions, noisy "web" captions, question/answer pairs.

Samples: ``{"pixels": [3, S, S], "image_id": int, "skipped": int}`` plus ``"caption": str`` or
``"question": str, "answers": [str], "weights": [float]``. A missing or corrupt image never stops
a run: map-style datasets serve the next readable sample instead, streams drop it; either way the
count travels in ``"skipped"`` to the training loop, which logs it.

Determinism: map-style datasets receive keys ``epoch * len + i`` from ``EpochBatches`` and draw
augmentation and caption choices from a generator seeded by ``(seed, key)``, so the data of step
``s`` is the same in a resumed run, whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from blip_core import scenes
from blip_core.errors import BadImageError, BlipError
from blip_core.preprocess import load_image, pixel_values

log = logging.getLogger(__name__)
MAX_TRIES = 20  # consecutive unreadable images before we blame the configuration
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class DatasetError(BlipError):
    """A dataset is missing, unreadable or malformed (as opposed to one bad image)."""


# ---------------------------------------------------------------------------- text
def pre_caption(caption: str, max_words: int = 50) -> str:
    """BLIP's caption normalisation: lower-case, ``.!"()*#:;~`` -> space, collapse spaces,
    keep the first ``max_words`` words."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    return " ".join(caption.split(" ")[:max_words])


def pre_question(question: str, max_words: int = 50) -> str:
    """BLIP's question normalisation: lower-case, ``.!"()*#:;~`` deleted (not replaced)."""
    question = re.sub(r"([.!\"()*#:;~])", "", question.lower()).rstrip(" ")
    return " ".join(question.split(" ")[:max_words])


_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def swap_left_right(text: str) -> str:
    """The text of a mirrored image: ``"top left"`` <-> ``"top right"``."""
    return _LEFT_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", text)


def rng_for(*parts) -> random.Random:
    """A generator determined by ``parts`` (str seeding hashes with SHA-512: stable)."""
    return random.Random("/".join(map(str, parts)))


def stable_id(key: str) -> int:
    """A 62-bit image id from a sample key (web shards have no integer ids)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 2


# ---------------------------------------------------------------------- transforms
@dataclass(frozen=True)
class ImageTransform:
    """RandomResizedCrop(scale=(min_scale, 1), ratio 3/4..4/3, bicubic) + optional horizontal
    flip, then BLIP's eval preprocessing (square bicubic resize, CLIP mean/std).

    ``min_scale=1`` and ``hflip="off"`` is the eval transform. ``hflip="swap"`` flips and tells
    the dataset to swap "left"/"right" in the texts (the scene world names positions).
    """

    size: int
    min_scale: float = 1.0
    hflip: str = "off"  # off | on | swap

    def __call__(self, img: Image.Image, rng: random.Random) -> tuple[torch.Tensor, bool]:
        """PIL RGB image -> (pixels [3, S, S], flipped)."""
        if self.min_scale < 1.0:
            img = img.resize((self.size, self.size), Image.Resampling.BICUBIC, box=self._crop_box(img, rng))
        flipped = self.hflip != "off" and rng.random() < 0.5
        if flipped:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return pixel_values(img, self.size)[0], flipped

    def _crop_box(self, img: Image.Image, rng: random.Random) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params, with our generator."""
        W, H = img.size
        area = W * H
        for _ in range(10):
            target = area * rng.uniform(self.min_scale, 1.0)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < w <= W and 0 < h <= H:
                x, y = rng.randint(0, W - w), rng.randint(0, H - h)
                return x, y, x + w, y + h
        return 0, 0, W, H  # fallback: the whole image (torchvision centre-crops; close enough)


def train_transform(size: int, data: str, min_scale: float | None, hflip: str,
                    photo_min_scale: float) -> ImageTransform:
    """Per-dataset defaults: photos get BLIP's crop (``photo_min_scale``: 0.2 pre-training, 0.5
    fine-tuning) and flips; scenes get neither, because a crop can cut objects out of the picture
    and a flip turns "left" into "right" (``hflip=swap`` flips and swaps the words instead)."""
    scenes_data = data == "scenes"
    if min_scale is None:
        min_scale = 1.0 if scenes_data else photo_min_scale
    if hflip == "auto":
        hflip = "off" if scenes_data else "on"
    return ImageTransform(size, min_scale, hflip)


# ------------------------------------------------------------------- map datasets
_skips = 0


def _note_skip(what: str, err: Exception) -> None:
    global _skips
    _skips += 1
    if _skips <= 10 or _skips % 1000 == 0:
        log.warning("skipping unreadable image %s (%d so far in this process): %s", what, _skips, err)


class Samples(Dataset):
    """Base of the map-style datasets: retries unreadable images, augments, swaps words."""

    def __init__(self, transform: ImageTransform, seed: int):
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        raise NotImplementedError

    def example(self, i: int, rng: random.Random) -> dict[str, Any]:
        """-> {"image": PIL RGB image, "image_id": int, texts...}; raises BadImageError."""
        raise NotImplementedError

    def __getitem__(self, key: int) -> dict[str, Any]:
        n = len(self)
        for attempt in range(MAX_TRIES):
            rng = rng_for(self.seed, key, attempt)
            try:
                item = self.example((key + attempt) % n, rng)
            except BadImageError as e:
                _note_skip(str(self.describe((key + attempt) % n)), e)
                continue
            item["pixels"], flipped = self.transform(item.pop("image"), rng)
            if flipped and self.transform.hflip == "swap":
                item = _swapped(item)
            item["skipped"] = attempt
            return item
        raise DatasetError(f"{MAX_TRIES} images in a row could not be read (the last: {self.describe(key % n)}); "
                           "check image_root and the annotation paths")

    def describe(self, i: int) -> str:
        return f"sample {i}"


def _swapped(item: dict) -> dict:
    for k in ("caption", "question"):
        if k in item:
            item[k] = swap_left_right(item[k])
    if "answers" in item:
        item["answers"] = [swap_left_right(a) for a in item["answers"]]
    return item


def read_annotations(path: str, what: str) -> list[dict]:
    if not path:
        raise DatasetError(f"{what} is not set; give {what}=path/to/annotations.json (or data=scenes)")
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{what}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{what}: cannot read {path}: {e}") from None
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"{what}: {path} must hold a non-empty JSON list of annotations")
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("image"), str):
            raise DatasetError(f"{what}: entry {i} of {path} has no \"image\" path: {str(e)[:80]}")
    return entries


def _texts(value, what: str) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise DatasetError(f"{what} must be a string or a non-empty list of strings, got {str(value)[:80]}")
    return texts


class ImageFiles:
    """Unique image paths of an annotation file; ``id(path)`` is the image id."""

    def __init__(self, image_root: str):
        if image_root and not Path(image_root).is_dir():
            raise DatasetError(f"image_root {image_root} is not a directory")
        self.root = Path(image_root) if image_root else None
        self.paths: list[str] = []
        self._ids: dict[str, int] = {}

    def id(self, path: str) -> int:
        if path not in self._ids:
            self._ids[path] = len(self.paths)
            self.paths.append(path)
        return self._ids[path]

    def full(self, image_id: int) -> str:
        p = self.paths[image_id]
        return str(self.root / p) if self.root and not os.path.isabs(p) else p

    def load(self, image_id: int) -> Image.Image:
        return load_image(self.full(image_id))


class JsonCaptions(Samples):
    """(image, caption) pairs of a caption annotation file; an entry with n captions gives n pairs."""

    def __init__(self, path: str, image_root: str, transform: ImageTransform, seed: int = 0,
                 max_words: int = 50, what: str = "train_json"):
        super().__init__(transform, seed)
        self.files = ImageFiles(image_root)
        self.pairs: list[tuple[int, str]] = []
        self.empty_captions = 0  # empty after cleaning ("", "  ", "..."): nothing to learn, so not served
        for i, e in enumerate(read_annotations(path, what)):
            if "caption" not in e:
                raise DatasetError(f"{what}: entry {i} of {path} has no \"caption\" (is it a VQA file?)")
            image_id = self.files.id(e["image"])
            captions = [pre_caption(c, max_words) for c in _texts(e["caption"], f"{what} entry {i} caption")]
            self.pairs += [(image_id, c) for c in captions if c]
            self.empty_captions += sum(not c for c in captions)
        if self.empty_captions:
            log.warning("%s: %d captions of %s are empty after cleaning and are skipped", what, self.empty_captions,
                        path)
        if not self.pairs:
            raise DatasetError(f"{what}: every caption in {path} is empty after cleaning")

    def __len__(self) -> int:
        return len(self.pairs)

    def example(self, i, rng):
        image_id, caption = self.pairs[i]
        return {"image": self.files.load(image_id), "caption": caption, "image_id": image_id}

    def describe(self, i):
        return self.files.full(self.pairs[i][0])


def answer_weights(answers: list[str]) -> tuple[list[str], list[float]]:
    """VQAv2: each distinct answer weighted by its share of the annotators' answers."""
    counts: dict[str, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    return list(counts), [c / len(answers) for c in counts.values()]


class JsonVqa(Samples):
    """Questions of a VQA annotation file, with their (weighted) answers."""

    def __init__(self, path: str, image_root: str, transform: ImageTransform, seed: int = 0,
                 max_words: int = 50, what: str = "train_json"):
        super().__init__(transform, seed)
        self.files = ImageFiles(image_root)
        self.items: list[tuple[int, str, list[str]]] = []
        for i, e in enumerate(read_annotations(path, what)):
            if "question" not in e or "answer" not in e:
                raise DatasetError(f"{what}: entry {i} of {path} needs \"question\" and \"answer\" "
                                   "(is it a caption file?)")
            answers = [pre_question(a) for a in _texts(e["answer"], f"{what} entry {i} answer")]
            self.items.append((self.files.id(e["image"]), pre_question(e["question"], max_words), answers))

    def __len__(self) -> int:
        return len(self.items)

    def example(self, i, rng):
        image_id, question, answers = self.items[i]
        unique, weights = answer_weights(answers)
        return {"image": self.files.load(image_id), "question": question, "answers": unique,
                "weights": weights, "image_id": image_id}

    def describe(self, i):
        return self.files.full(self.items[i][0])


class SceneCaptions(Samples):
    """Scene ``i`` = ``scenes.render(stream_seed(scene_seed, i))`` with, per epoch, one of its
    clean captions or a web alt-text that is false with probability ``web_noise``."""

    def __init__(self, scene_seed: int, count: int, size: int, max_objects: int, transform: ImageTransform,
                 seed: int = 0, captions: str = "clean", web_noise: float = 0.0, max_words: int = 50):
        super().__init__(transform, seed)
        self.scene_seed, self.count, self.size, self.max_objects = scene_seed, count, size, max_objects
        self.captions, self.web_noise, self.max_words = captions, web_noise, max_words

    def __len__(self) -> int:
        return self.count

    def example(self, i, rng):
        scene = scenes.render(scenes.stream_seed(self.scene_seed, i), self.size, self.max_objects)
        if self.captions == "web":
            text, _kind = scenes.web_caption(scene, self.web_noise, rng)
        else:
            text = rng.choice(scene.captions)
        return {"image": scene.image, "caption": pre_caption(text, self.max_words), "image_id": i}


class SceneVqa(SceneCaptions):
    """Scene ``i`` with, per epoch, one of its question/answer pairs; with ``kinds``, one of those
    families only; with ``min_objects``, only scenes of at least that many objects (a scene that
    does not qualify gives way to the next scene that does)."""

    def __init__(self, *args, kinds: tuple[str, ...] = (), min_objects: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.kinds, self.min_objects = frozenset(kinds), min_objects

    def example(self, i, rng):
        for j in range(i, i + self.count):
            scene = scenes.render(scenes.stream_seed(self.scene_seed, j % self.count), self.size, self.max_objects)
            pairs = [(q, a) for q, a in scene.qa if not self.kinds or scenes.question_kind(q) in self.kinds]
            if pairs and len(scene.objects) >= self.min_objects:
                break
        else:
            raise DatasetError(f"no scene has {self.min_objects}+ objects and a question of the kinds "
                               f"{sorted(self.kinds)}")
        question, answer = rng.choice(pairs)
        return {"image": scene.image, "question": pre_question(question, self.max_words),
                "answers": [answer], "weights": [1.0], "image_id": j % self.count}


# ------------------------------------------------------------------- web shards
class WebCaptions(IterableDataset):
    """(image, caption) pairs from WebDataset shards (img2dataset layout).

    Shards are shuffled per epoch (same order on every rank), split by rank then by worker, read
    with a handler that logs and skips broken tar members; samples without a readable image or a
    caption are dropped and counted. Call ``set_epoch`` before iterating.
    """

    def __init__(self, urls: str, transform: ImageTransform, seed: int = 0, max_words: int = 50,
                 shuffle_buffer: int = 1000):
        import braceexpand

        self.urls = [u for part in urls.split("::") for u in braceexpand.braceexpand(part)]
        missing = [u for u in self.urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
        if not self.urls or missing:
            raise DatasetError(f"train_shards: {missing[0] if missing else urls!r} does not exist")
        self.transform, self.seed, self.max_words, self.shuffle_buffer = transform, seed, max_words, shuffle_buffer
        self.epoch = 0
        self.pass_no = 0  # when a rank's share runs out within an epoch, it reads it again

    def set_epoch(self, epoch: int, pass_no: int = 0) -> None:
        self.epoch, self.pass_no = epoch, pass_no

    def __iter__(self):
        import webdataset as wds

        urls = list(self.urls)
        rng_for(self.seed, "shards", self.epoch, self.pass_no).shuffle(urls)
        stages = [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker, shard_samples]
        if self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer),
                                      rng=rng_for(self.seed, "samples", self.epoch, self.pass_no, _worker_tag())))
        return iter(wds.DataPipeline(*stages, wds.map(self._decode), _drop_bad))

    def _decode(self, sample: dict) -> dict:
        if "bad" in sample:  # samples a cut-short shard lost (shard_samples)
            return sample
        key = sample.get("__key__", "?")
        data = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
        caption = _web_text(sample)
        caption = pre_caption(caption, self.max_words) if caption is not None else ""
        if data is None or not caption:  # an empty caption (or one of only punctuation) teaches nothing
            what = "no image" if data is None else "an empty caption"
            _note_skip(f"{sample.get('__url__', '')}:{key}", BadImageError(f"{what} in the sample"))
            return {"bad": 1}  # wds.map drops None silently; this marker gets counted
        try:
            img = load_image(data)
        except BadImageError as e:
            _note_skip(f"{sample.get('__url__', '')}:{key}", e)
            return {"bad": 1}
        rng = rng_for(self.seed, self.epoch, self.pass_no, key)
        pixels, flipped = self.transform(img, rng)
        if flipped and self.transform.hflip == "swap":
            caption = swap_left_right(caption)
        return {"pixels": pixels, "caption": caption, "image_id": stable_id(key)}


def _worker_tag() -> str:
    info = torch.utils.data.get_worker_info()
    return f"{os.environ.get('RANK', 0)}-{info.id if info else 0}"


def _web_text(sample: dict) -> str | None:
    try:
        if "txt" in sample:
            return sample["txt"].decode("utf-8")
        if "json" in sample:
            meta = json.loads(sample["json"])
            return meta.get("caption") if isinstance(meta, dict) else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return None


def _log_and_continue(exn: Exception) -> bool:
    """wds handler: a broken shard member is logged and skipped, never fatal."""
    log.warning("skipping a broken shard member: %s", exn)
    return True


def _drop_bad(src: Iterator[dict]) -> Iterator[dict]:
    """Drop failed samples (``{"bad": n}`` markers), adding their number to the next good one's
    ``skipped``; failures after the last good sample come as a final ``{"skipped": n}`` without
    pixels (``_Batches`` folds it into the counts), so none goes uncounted."""
    skipped = 0
    for sample in src:
        if "bad" in sample:
            skipped += int(sample["bad"])
            continue
        sample["skipped"], skipped = skipped, 0
        yield sample
    if skipped:
        yield {"skipped": skipped}


# ------------------------------------------------------------------ shard reading
def shard_samples(shards: Iterator[dict]) -> Iterator[dict]:
    """``wds.tarfile_samples`` one shard at a time, so that a shard cut short is noticed.

    A tar file cut short (a copy or download that stopped) reads as a shorter shard: tarfile
    stops quietly at a missing header. A local ``.tar`` that does not end in tar's end-of-archive
    blocks is cut short: its last sample (the one the cut went through) is dropped, and what the
    shard lost comes as a ``{"bad": n}`` marker: n from img2dataset's ``{shard}_stats.json``
    ("successes") when there is one, else 1 (the rest is unknowable without an index).
    """
    import webdataset as wds

    for shard in shards:
        samples = wds.tarfile_samples([shard], handler=_log_and_continue)
        url = shard["url"]
        if not _cut_short(url):
            yield from samples
            continue
        read, last = 0, None
        for sample in samples:
            if last is not None:
                yield last
            read, last = read + 1, sample
        kept = max(0, read - 1)
        expected = _shard_size(url)
        lost = max(1, expected - kept) if expected is not None else 1
        log.warning("shard %s is cut short (no tar end-of-archive) after %d samples: %d counted as lost%s", url,
                    kept, lost, "" if expected is not None else " (at least; without an img2dataset "
                    "_stats.json the shard's size is unknown)")
        yield {"bad": lost, "__url__": url, "__key__": "cut-short"}


TAR_END = 2 * 512  # tar ends in two zero blocks (then padding to a record of 10240 bytes, also zeros)


def _cut_short(url: str) -> bool:
    """A local uncompressed tar file that does not end like one."""
    if not url.endswith(".tar") or not os.path.isfile(url):
        return False  # remote or compressed: nothing to check cheaply
    size = os.path.getsize(url)
    if size % 512 or size < TAR_END:
        return True
    with open(url, "rb") as f:
        f.seek(size - TAR_END)
        return f.read(TAR_END).count(0) != TAR_END


def _shard_size(url: str) -> int | None:
    """The sample count img2dataset records beside a shard (``00012.tar`` -> ``00012_stats.json``)."""
    try:
        stats = json.loads(Path(url[: -len(".tar")] + "_stats.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    n = stats.get("successes") if isinstance(stats, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


# ------------------------------------------------------------------------ loading
def collate(items: list[dict]) -> dict[str, Any]:
    """Samples -> batch: pixels [B, 3, S, S] (text-only samples have none), image_ids [B],
    skipped (int), text lists."""
    batch = {"image_ids": torch.tensor([it["image_id"] for it in items], dtype=torch.long),
             "skipped": sum(it.get("skipped", 0) for it in items)}
    if "pixels" in items[0]:
        batch["pixels"] = torch.stack([it["pixels"] for it in items])
    for key in ("caption", "question", "answers", "weights", "text"):
        if key in items[0]:
            batch[key] = [it[key] for it in items]
    return batch


class EpochBatches(Sampler):
    """Keys for one epoch on one rank: a permutation of ``range(n)`` seeded by (seed, epoch),
    cut into global batches of ``batch * world`` (the remainder is dropped, so every rank runs
    the same number of full steps), rank r taking slice r of each. Starts at batch ``start``
    (resume). Yields lists of keys ``epoch * n + i``."""

    def __init__(self, n: int, batch: int, rank: int, world: int, seed: int, epoch: int, start: int = 0):
        self.n, self.batch, self.rank, self.world = n, batch, rank, world
        self.seed, self.epoch, self.start = seed, epoch, start

    def steps(self) -> int:
        return self.n // (self.batch * self.world)

    def __len__(self) -> int:
        return max(0, self.steps() - self.start)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        step_size = self.batch * self.world
        for s in range(self.start, self.steps()):
            chunk = perm[s * step_size + self.rank * self.batch: s * step_size + (self.rank + 1) * self.batch]
            yield (chunk + self.epoch * self.n).tolist()


def steps_per_epoch(ds: Dataset, batch: int, world: int, samples_per_epoch: int = 0) -> int:
    """Optimisation steps in one epoch of ``ds`` (web streams: ``samples_per_epoch``)."""
    n = samples_per_epoch if isinstance(ds, IterableDataset) else len(ds)
    if isinstance(ds, IterableDataset) and n <= 0:
        raise DatasetError("a WebDataset has no length: set samples_per_epoch=N")
    steps = n // (batch * world)
    if steps == 0:
        raise DatasetError(f"the dataset has {n} samples, fewer than one global batch ({batch} x {world} processes)")
    return steps


def epoch_batches(ds: Dataset, *, epoch: int, start: int, steps: int, batch: int, rank: int, world: int,
                  seed: int, workers: int) -> Iterator[dict]:
    """Batches ``start .. steps - 1`` of ``epoch`` for this rank."""
    if not isinstance(ds, IterableDataset):
        sampler = EpochBatches(len(ds), batch, rank, world, seed, epoch, start)
        yield from DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                              generator=_own_generator(seed, epoch))
        return
    yield from itertools.islice(_stream_batches(ds, epoch, batch, workers, seed), start, steps)


def _own_generator(seed: int, epoch: int) -> torch.Generator:
    # a DataLoader draws its worker seed from the global RNG unless given a generator; that
    # draw would shift the hard-negative sampling of a resumed run by one
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class _Batches(IterableDataset):
    """Full batches of ``size`` collated from a sample stream, in the process that reads it (as a
    DataLoader's own batching would). The skip counts that would be lost with the samples of an
    unfinished last batch, or with the failures after the last good sample, come in a final
    ``{"skipped": n}`` without pixels."""

    def __init__(self, samples: IterableDataset, size: int):
        self.samples, self.size = samples, size

    def __iter__(self):
        items, skipped = [], 0
        for sample in self.samples:
            if "pixels" not in sample:  # _drop_bad's trailing count
                skipped += sample["skipped"]
                continue
            items.append(sample)
            if len(items) == self.size:
                batch = collate(items)
                batch["skipped"] += skipped
                items, skipped = [], 0
                yield batch
        skipped += sum(it["skipped"] for it in items)
        if skipped:
            yield {"skipped": skipped}


def _stream_batches(ds: WebCaptions, epoch: int, batch: int, workers: int, seed: int) -> Iterator[dict]:
    pending = 0  # skips reported without a batch: they ride on the next one
    for pass_no in itertools.count():
        ds.set_epoch(epoch, pass_no)
        got = 0
        for b in DataLoader(_Batches(ds, batch), batch_size=None, num_workers=workers,
                            generator=_own_generator(seed, epoch)):
            if "pixels" not in b:
                pending += b["skipped"]
                continue
            b["skipped"], pending = b["skipped"] + pending, 0
            got += 1
            yield b
        if got == 0:
            raise DatasetError("this rank's share of train_shards holds no full batch of readable samples; "
                               "use more shards (at least one per process and worker) or a smaller batch_size")


# -------------------------------------------------------------------- evaluation
@dataclass
class CaptionEval:
    """Images with their reference captions (captioning and retrieval evaluation)."""

    images: Dataset  # index -> {"pixels", "index"} or a failure marker
    refs: list[list[str]]  # per image


@dataclass
class VqaEval:
    items: Dataset  # index -> {"pixels", "question", "answers", "index"}
    answers: list[list[str]]
    kinds: list[str] | None = None  # each question's family (scenes.QUESTION_KINDS), on scenes


class _EvalImages(Dataset):
    def __init__(self, load, n: int, size: int, extra=None):
        self.load, self.n, self.size, self.extra = load, n, size, extra

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        try:
            pixels = pixel_values(self.load(i), self.size)[0]
        except BadImageError as e:
            _note_skip(f"eval image {i}", e)
            pixels = None
        item = {"pixels": pixels, "index": i}
        if self.extra:
            item.update(self.extra(i))
        return item


def eval_collate(items: list[dict]) -> dict[str, Any]:
    """Like ``collate``, but unreadable images are dropped and listed in ``"bad"``."""
    good = [it for it in items if it["pixels"] is not None]
    batch: dict[str, Any] = {"bad": [it["index"] for it in items if it["pixels"] is None],
                             "index": [it["index"] for it in good]}
    batch["pixels"] = torch.stack([it["pixels"] for it in good]) if good else None
    for key in ("question", "answers"):
        if items and key in items[0]:
            batch[key] = [it[key] for it in good]
    return batch


def scene_caption_eval(seed: int, count: int, size: int, max_objects: int) -> CaptionEval:
    seeds = [scenes.stream_seed(seed, i) for i in range(count)]
    refs = [[pre_caption(c) for c in scenes.render(s, 16, max_objects).captions] for s in seeds]
    return CaptionEval(_EvalImages(lambda i: scenes.render(seeds[i], size, max_objects).image, count, size), refs)


def json_caption_eval(path: str, image_root: str, size: int, what: str = "val_json") -> CaptionEval:
    files = ImageFiles(image_root)
    refs: dict[int, list[str]] = {}
    for i, e in enumerate(read_annotations(path, what)):
        if "caption" not in e:
            raise DatasetError(f"{what}: entry {i} of {path} has no \"caption\"")
        captions = _texts(e["caption"], f"{what} entry {i}")
        refs.setdefault(files.id(e["image"]), []).extend(pre_caption(c) for c in captions)
    n = len(files.paths)
    return CaptionEval(_EvalImages(files.load, n, size), [refs[i] for i in range(n)])


def scene_vqa_eval(seed: int, count: int, size: int, max_objects: int) -> VqaEval:
    qa, kinds = [], []  # (scene seed, question, answer), question family
    for i in range(count):
        s = scenes.stream_seed(seed, i)
        pairs = scenes.render(s, 16, max_objects).qa
        qa += [(s, pre_question(q), a) for q, a in pairs]
        kinds += [scenes.question_kind(q) for q, _ in pairs]
    items = _EvalImages(lambda i: scenes.render(qa[i][0], size, max_objects).image, len(qa), size,
                        extra=lambda i: {"question": qa[i][1], "answers": [qa[i][2]]})
    return VqaEval(items, [[a] for _, _, a in qa], kinds)


def json_vqa_eval(path: str, image_root: str, size: int, what: str = "val_json") -> VqaEval:
    ds = JsonVqa(path, image_root, ImageTransform(size), what=what)
    items = _EvalImages(lambda i: ds.files.load(ds.items[i][0]), len(ds.items), size,
                        extra=lambda i: {"question": ds.items[i][1], "answers": ds.items[i][2]})
    return VqaEval(items, [it[2] for it in ds.items])


def scene_answer_list() -> list[str]:
    """Every answer the scene world's questions can have."""
    words = [*scenes.COLOURS, *scenes.SHAPES, *scenes.SIZES, *scenes.POSITIONS, *scenes.BACKGROUNDS,
             *scenes.NUMBER_WORDS, "yes", "no"]
    return list(dict.fromkeys(words))


# ------------------------------------------------------------------------ builders
def train_captions(cfg, size: int, photo_min_scale: float) -> Dataset:
    """The (image, caption) training set a config describes (``data`` = scenes / json / wds)."""
    transform = train_transform(size, cfg.data, cfg.crop_min_scale, cfg.hflip, photo_min_scale)
    if cfg.data == "scenes":
        return SceneCaptions(cfg.scene_seed, cfg.scene_count, size, cfg.scene_max_objects, transform, cfg.seed,
                             cfg.scene_captions, cfg.web_noise, cfg.max_words)
    if cfg.data == "json":
        return JsonCaptions(cfg.train_json, cfg.image_root, transform, cfg.seed, cfg.max_words)
    if not cfg.train_shards:
        raise DatasetError("data=wds needs train_shards=path/{00000..00099}.tar")
    return WebCaptions(cfg.train_shards, transform, cfg.seed, cfg.max_words)


def train_vqa(cfg, size: int, photo_min_scale: float, path: str, what: str) -> Dataset:
    """The VQA training set: scenes, or the annotation file ``path``."""
    transform = train_transform(size, cfg.data, cfg.crop_min_scale, cfg.hflip, photo_min_scale)
    if cfg.data == "scenes":
        return SceneVqa(cfg.scene_seed, cfg.scene_count, size, cfg.scene_max_objects, transform, cfg.seed,
                        max_words=cfg.max_words, kinds=cfg.question_kinds, min_objects=cfg.scene_min_objects)
    if cfg.data == "wds":
        raise DatasetError("VQA needs annotation JSON (data=json) or scenes; web shards hold captions only")
    return JsonVqa(path, cfg.image_root, transform, cfg.seed, cfg.max_words, what=what)
