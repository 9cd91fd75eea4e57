"""Write generated scenes to disk in the layouts the trainer reads from real corpora.

    python -m training.make_scenes OUT --count 1000 [--size 128] [--seed 0] [--noise 0.3] [--shards 4]

OUT/images/000000.png ...
OUT/captions.json   [{"image": "images/000000.png", "caption": [clean captions]}]   (BLIP caption JSON)
OUT/web.json        [{"image": ..., "caption": web alt-text, "kind": clean|wrong_colour|...}]
OUT/vqa.json        [{"image": ..., "question": ..., "answer": ...}]                   (BLIP VQA JSON)
OUT/shards/000000.tar ...  (with --shards) img2dataset layout: {key}.jpg, {key}.txt (web text), {key}.json,
                           and 000000_stats.json beside each shard ({"count": n, "successes": n})
"""

from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

from blip_core import scenes


def write_scene_json(out: str | Path, count: int, size: int = 128, seed: int = 0, max_objects: int = 3,
                     noise: float = 0.0) -> dict[str, Path]:
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    captions, web, vqa = [], [], []
    rng = random.Random(f"web/{seed}")
    for i in range(count):
        scene = scenes.render(scenes.stream_seed(seed, i), size, max_objects)
        name = f"images/{i:06d}.png"
        scene.image.save(out / name)
        captions.append({"image": name, "caption": list(scene.captions)})
        text, kind = scenes.web_caption(scene, noise, rng)
        web.append({"image": name, "caption": text, "kind": kind})
        vqa += [{"image": name, "question": q, "answer": a} for q, a in scene.qa]
    paths = {}
    for name, entries in (("captions", captions), ("web", web), ("vqa", vqa)):
        paths[name] = out / f"{name}.json"
        paths[name].write_text(json.dumps(entries, indent=1))
    return paths


def write_scene_shards(out: str | Path, count: int, shards: int, size: int = 128, seed: int = 0,
                       max_objects: int = 3, noise: float = 0.0) -> list[Path]:
    """``shards`` tar files of ``count`` samples in total, img2dataset layout (with its per-shard
    ``_stats.json``, which lets a reader count what a shard cut short lost)."""
    import webdataset as wds

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"web/{seed}")
    paths = [out / f"{s:06d}.tar" for s in range(shards)]
    writers = [wds.TarWriter(str(p)) for p in paths]
    try:
        for i in range(count):
            scene = scenes.render(scenes.stream_seed(seed, i), size, max_objects)
            buf = io.BytesIO()
            scene.image.save(buf, format="JPEG", quality=95)
            text, kind = scenes.web_caption(scene, noise, rng)
            meta = {"caption": text, "kind": kind, "seed": scene.seed}
            sample = {"__key__": f"{i:09d}", "jpg": buf.getvalue(), "txt": text, "json": json.dumps(meta)}
            writers[i % shards].write(sample)
    finally:
        for w in writers:
            w.close()
    for s, path in enumerate(paths):
        n = len(range(s, count, shards))
        path.with_name(f"{path.stem}_stats.json").write_text(json.dumps({"count": n, "successes": n}))
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.make_scenes", description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-objects", type=int, default=3)
    p.add_argument("--noise", type=float, default=0.0, help="fraction of wrong web captions")
    p.add_argument("--shards", type=int, default=0, help="also write this many WebDataset shards")
    a = p.parse_args(argv)
    for name, path in write_scene_json(a.out, a.count, a.size, a.seed, a.max_objects, a.noise).items():
        print(f"{name}: {path}")
    if a.shards:
        shards = write_scene_shards(Path(a.out) / "shards", a.count, a.shards, a.size, a.seed, a.max_objects, a.noise)
        for path in shards:
            print(f"shard: {path}")


if __name__ == "__main__":
    main()
