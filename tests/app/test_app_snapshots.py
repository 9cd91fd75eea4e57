"""Snapshot files without Qt: metadata round trip, atomic writes, failures that leave earlier
snapshots intact, reading back (sidecar checks, skipped snapshots), word search. Crafted files
and folders are in tests/hostile/test_hostile_app.py."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from app_fakes import solid
from PIL import Image

from app import snapshots
from app.snapshots import (
    SnapshotError,
    SnapshotRecord,
    embedded_caption,
    list_snapshots,
    read_embedded_caption,
    read_snapshot,
    scan_snapshots,
    sidecar_fields,
    word_search,
    write_snapshot,
)

WHEN = datetime(2025, 3, 4, 5, 6, 7, 890_000, tzinfo=timezone.utc)


def record(caption="a red scene on a café terrace", **kw) -> SnapshotRecord:
    base = dict(prompt="a picture of ", model="fake-blip", precision="int8", vqa_model="fake-blip",
                qa=[{"question": "what colour?", "answer": "red", "total_ms": 12.5}],
                timings={"vision_ms": 10.0, "decode_ms": 20.0, "total_ms": 31.0}, frame={"index": 7})
    return SnapshotRecord(caption=caption, **{**base, **kw})


def test_jpeg_carries_caption_in_exif_and_xmp_and_sidecar_has_everything(tmp_path):
    saved = write_snapshot(tmp_path, solid("red", (80, 60)), record(), now=WHEN)
    assert saved.path == tmp_path / "blipcam-20250304-050607-890.jpg"
    embedded = read_embedded_caption(saved.path)
    caption = "a red scene on a café terrace"
    assert embedded == {"ImageDescription": caption, "UserComment": caption, "xmp": caption}
    with Image.open(saved.path) as im:
        assert im.format == "JPEG" and im.size == (80, 60)
        assert im.getexif()[snapshots.TAG_SOFTWARE] == "blip-cam"
        r, g, b = im.convert("RGB").getpixel((40, 30))
        assert r > 180 and g < 80 and b < 80  # RGB order kept
    data = json.loads(saved.path.with_suffix(".json").read_text("utf-8"))
    assert data["caption"] == caption and data["prompt"] == "a picture of "
    assert data["model"] == "fake-blip" and data["precision"] == "int8"
    assert data["qa"][0]["answer"] == "red" and data["timings"]["total_ms"] == 31.0
    assert data["time"] == "2025-03-04T05:06:07+00:00" and data["image"] == saved.path.name
    assert read_snapshot(saved.path) == saved


def test_xmp_escapes_markup(tmp_path):
    saved = write_snapshot(tmp_path, solid("red"), record(caption='a <b>bold</b> & "quoted" sign'))
    assert read_embedded_caption(saved.path)["xmp"] == 'a <b>bold</b> & "quoted" sign'


def test_names_are_unique_and_listing_is_newest_first(tmp_path):
    a = write_snapshot(tmp_path, solid("red"), record("first"), now=WHEN)
    b = write_snapshot(tmp_path, solid("blue"), record("second"), now=WHEN)  # same millisecond
    c = write_snapshot(tmp_path, solid("green"), record("third"), now=WHEN.replace(second=9))
    assert len({a.path, b.path, c.path}) == 3
    assert [r.caption for r in list_snapshots(tmp_path)] == ["third", "second", "first"]


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def _bytes(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_disk_full_keeps_earlier_snapshots_and_leaves_no_partial_files(tmp_path, monkeypatch):
    write_snapshot(tmp_path, solid("red"), record("kept"), now=WHEN)
    before = _bytes(tmp_path)
    calls = []

    def full_disk(fd, data):
        calls.append(len(data))
        os.write(fd, data[: len(data) // 2])  # a partial write, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(snapshots, "_write_fully", full_disk)
    with pytest.raises(SnapshotError, match="disk is full"):
        write_snapshot(tmp_path, solid("blue"), record("lost"), now=WHEN.replace(second=30))
    assert calls and _bytes(tmp_path) == before  # no temp file, no half JPEG, old one untouched


def test_failure_after_the_first_file_is_published_rolls_it_back(tmp_path, monkeypatch):
    write_snapshot(tmp_path, solid("red"), record("kept"), now=WHEN)
    before = _bytes(tmp_path)
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(".jpg"):
            raise OSError(errno.EIO, "I/O error")
        real_replace(src, dst)

    monkeypatch.setattr(snapshots.os, "replace", replace)
    with pytest.raises(SnapshotError, match="I/O error"):
        write_snapshot(tmp_path, solid("blue"), record("lost"), now=WHEN.replace(second=30))
    monkeypatch.undo()
    assert _bytes(tmp_path) == before


def test_unwritable_folder_is_reported_simulated(tmp_path, monkeypatch):
    write_snapshot(tmp_path, solid("red"), record("kept"), now=WHEN)
    before = _bytes(tmp_path)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(snapshots.tempfile, "mkstemp", denied)
    with pytest.raises(SnapshotError, match="read-only or not writable"):
        write_snapshot(tmp_path, solid("blue"), record("lost"))
    assert _bytes(tmp_path) == before


def _as_unprivileged(fn) -> int:
    """Run ``fn`` in a forked child as user ``nobody`` (root ignores permission bits); its
    return value is the exit status."""
    pid = os.fork()
    if pid == 0:  # child: no Qt, no pytest machinery, just the write
        code = 98
        try:
            os.setgid(65534)
            os.setuid(65534)
            code = fn()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork for the unprivileged write")
def test_read_only_folder_is_reported():
    folder = Path(tempfile.mkdtemp(prefix="blipcam-ro-"))
    try:
        write_snapshot(folder, solid("red"), record("kept"), now=WHEN)
        before = _bytes(folder)
        folder.chmod(0o555)

        def attempt() -> int:
            try:
                write_snapshot(folder, solid("blue"), record("lost"))
            except SnapshotError as e:
                return 0 if "read-only or not writable" in str(e) else 2
            return 1  # written despite the permissions: the test setup is wrong

        if os.geteuid() == 0:
            assert _as_unprivileged(attempt) == 0
        else:
            assert attempt() == 0
        assert _bytes(folder) == before
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


def test_missing_sidecar_falls_back_to_exif(tmp_path):
    saved = write_snapshot(tmp_path, solid("red"), record("from exif"))
    saved.path.with_suffix(".json").unlink()  # an older snapshot, or a JPEG copied alone
    assert read_snapshot(saved.path).caption == "from exif"
    assert [r.caption for r in list_snapshots(tmp_path)] == ["from exif"]


def test_unreadable_snapshots_are_skipped_and_named_not_fatal(tmp_path):
    kept = write_snapshot(tmp_path, solid("red"), record("kept"), now=WHEN)
    corrupt = write_snapshot(tmp_path, solid("red"), record("corrupt sidecar"), now=WHEN.replace(second=8))
    corrupt.path.with_suffix(".json").write_text("{ not json")
    (tmp_path / "blipcam-99999999-000000-000.jpg").write_bytes(b"not a jpeg")  # and no sidecar
    listing = scan_snapshots(tmp_path)
    assert [r.caption for r in listing.records] == ["kept"] and listing.records[0].path == kept.path
    reasons = dict(listing.skipped)
    assert "is not valid JSON" in reasons[corrupt.path.name]
    assert "has no sidecar and cannot be decoded" in reasons["blipcam-99999999-000000-000.jpg"]
    with pytest.raises(SnapshotError, match="not valid JSON"):
        read_snapshot(corrupt.path)


def test_every_field_the_app_writes_passes_the_sidecar_checks(tmp_path):
    scene = {"seed": 3, "captions": ["a red circle left of a blue square", "two shapes"]}
    full = record(decoding={"strategy": "beam", "num_beams": 3, "max_new_tokens": 20, "top_p": 0.9},
                  frame={"index": 7, "source": "scenes", "width": 384, "height": 384, "scene": scene},
                  qa=[{"question": "what colour?", "answer": "red", "total_ms": 12.5, "reused_features": True},
                      {"question": "why?", "answer": None, "total_ms": 0.0, "reused_features": False,
                       "error": "no model"}])
    saved = write_snapshot(tmp_path, solid("red"), full, now=WHEN)
    assert read_snapshot(saved.path) == saved
    assert sidecar_fields(json.loads(saved.path.with_suffix(".json").read_text("ascii")))["frame"]["scene"] == scene


@pytest.mark.parametrize("data, complaint", [
    ({"caption": 5}, "caption must be text, not an integer"),
    ({"caption": "ok", "qa": {"question": "q"}}, "qa must be a list, not an object"),
    ({"caption": "ok", "qa": [["q", "a"]]}, "qa[0] must be an object, not a list"),
    ({"caption": "ok", "qa": [{"question": "q", "answer": 42}]}, "qa[0].answer must be text or null, not an integer"),
    ({"caption": "ok", "timings": {"total_ms": "fast"}}, "timings.total_ms must be a number, not text"),
    ({"caption": "ok", "timings": {"total_ms": True}}, "timings.total_ms must be a number, not true or false"),
    ({"caption": "ok", "timings": {"total_ms": float("nan")}}, "timings.total_ms is not a usable number"),
    ({"caption": "ok", "version": 10 ** 400}, "version is not a usable number"),
    ({"caption": "ok", "frame": {"a": {"b": {"c": {"d": {"e": {}}}}}}}, "nests more than 6 levels deep"),
    ({"caption": "x" * (snapshots.MAX_TEXT_CHARS + 1)}, "characters long, over the limit"),
    ({"caption": "ok", "frame": {"list": list(range(snapshots.MAX_JSON_ITEMS + 1))}}, "entries, over the limit"),
    ("a caption", "a sidecar is a JSON object, not text"),
])
def test_sidecar_fields_are_checked_by_type_and_size(data, complaint):
    with pytest.raises(SnapshotError) as info:
        sidecar_fields(data)
    assert complaint in str(info.value)


def test_embedded_caption_is_valid_metadata_text():
    assert embedded_caption("tab\there\nnext line") == "tab\there\nnext line"  # kept
    assert embedded_caption("nul\x00 bell\x07 esc\x1b cr\r del\x7f c1\x85 end") == "nul bell esc cr del c1 end"
    assert embedded_caption("lone \ud800 high, pair \ud83d\ude00") == "lone \ufffd high, pair \U0001f600"
    assert embedded_caption("\ufffe\uffffok") == "ok"  # not XML characters
    long = embedded_caption("a" * 70_000)
    assert len(long) == snapshots.MAX_EMBEDDED_CHARS and long.endswith("…")


@pytest.mark.parametrize("caption", [
    "a" * 70_000,  # the most bytes per character in each block: EXIF (astral) and XMP (&amp;)
    "\U0001f600" * 70_000,
    "&" * 70_000,
])
def test_the_longest_embedded_caption_fits_its_jpeg_segments(tmp_path, caption):
    saved = write_snapshot(tmp_path, solid("red"), record(caption), now=WHEN)
    embedded = read_embedded_caption(saved.path)
    assert embedded["xmp"] == embedded["UserComment"] == embedded_caption(caption)
    assert read_snapshot(saved.path).caption == caption  # the sidecar keeps it all


def test_word_search_ranks_by_words_in_caption_and_answers():
    recs = [SnapshotRecord("a dog on a beach"), SnapshotRecord("two cats on a sofa"),
            SnapshotRecord("a kitchen", qa=[{"question": "is there a dog?", "answer": "yes"}])]
    assert [r.caption for r, _ in word_search(recs, "dog beach")] == ["a dog on a beach", "a kitchen"]
    assert [r.caption for r, _ in word_search(recs, "CAT")] == ["two cats on a sofa"]
    assert word_search(recs, "zebra") == []
    assert len(word_search(recs, "  ")) == 3
