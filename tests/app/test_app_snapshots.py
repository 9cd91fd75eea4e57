"""Snapshot files without Qt: metadata round trip, atomic writes, failures that leave earlier
snapshots intact, reading back, word search."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image

from app import snapshots
from app.snapshots import SnapshotError, SnapshotRecord, list_snapshots, read_embedded_caption, read_snapshot, word_search, write_snapshot
from app_fakes import solid

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


def test_missing_or_corrupt_sidecar_falls_back_to_exif(tmp_path):
    saved = write_snapshot(tmp_path, solid("red"), record("from exif"))
    saved.path.with_suffix(".json").write_text("{ not json")
    assert read_snapshot(saved.path).caption == "from exif"
    saved.path.with_suffix(".json").unlink()
    assert read_snapshot(saved.path).caption == "from exif"
    (tmp_path / "blipcam-99999999-000000-000.jpg").write_bytes(b"not a jpeg")
    assert "unreadable" in list_snapshots(tmp_path)[0].caption  # listed, not a crash


def test_word_search_ranks_by_words_in_caption_and_answers():
    recs = [SnapshotRecord("a dog on a beach"), SnapshotRecord("two cats on a sofa"),
            SnapshotRecord("a kitchen", qa=[{"question": "is there a dog?", "answer": "yes"}])]
    assert [r.caption for r, _ in word_search(recs, "dog beach")] == ["a dog on a beach", "a kitchen"]
    assert [r.caption for r, _ in word_search(recs, "CAT")] == ["two cats on a sofa"]
    assert word_search(recs, "zebra") == []
    assert len(word_search(recs, "  ")) == 3
