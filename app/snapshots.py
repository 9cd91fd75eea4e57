"""Snapshots: a JPEG carrying its caption (EXIF + XMP) and a JSON sidecar, written atomically;
reading them back; word search over them. Pure Python (PIL), no Qt.

Atomicity: each file is written to a temp file in the destination folder, flushed and fsynced,
then ``os.replace``d into place, and the folder is fsynced. Names are new for every snapshot, so
an earlier snapshot is never opened for writing: a full disk or a read-only folder can lose only
the snapshot being written, and that one leaves no partial files behind. The sidecar is published
before the JPEG, so a visible ``.jpg`` always has its ``.json``.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

PREFIX = "blipcam-"
JPEG_QUALITY = 92
SIDECAR_VERSION = 1

# EXIF tag numbers (EXIF 2.32 / TIFF 6.0)
TAG_IMAGE_DESCRIPTION = 0x010E
TAG_SOFTWARE = 0x0131
TAG_DATETIME = 0x0132
TAG_EXIF_IFD = 0x8769
TAG_USER_COMMENT = 0x9286

_NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
}


class SnapshotError(Exception):
    """A snapshot could not be saved or read; the message is meant for the status bar."""


@dataclass
class SnapshotRecord:
    """Everything the sidecar stores about one snapshot.

    ``qa`` items are ``{"question", "answer", "total_ms", ...}``; ``timings`` is the caption's
    ``Timings.as_dict()``; ``time`` is local ISO 8601 with offset. ``path`` (the JPEG) is filled
    when a snapshot is written or read and is not serialised.
    """

    caption: str
    prompt: str = ""
    model: str = ""
    precision: str = ""
    vqa_model: str = ""
    qa: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    decoding: dict = field(default_factory=dict)
    frame: dict = field(default_factory=dict)
    time: str = ""
    image: str = ""
    version: int = SIDECAR_VERSION
    path: Path | None = field(default=None, compare=False)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("path")
        return json.dumps(data, ensure_ascii=False, indent=2)

    @classmethod
    def from_dict(cls, data: dict, path: Path | None = None) -> "SnapshotRecord":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "path"}
        return cls(**{"caption": "", **known}, path=path)

    def search_text(self) -> str:
        parts = [self.caption] + [f"{q.get('question', '')} {q.get('answer') or ''}" for q in self.qa]
        return " ".join(parts)


# --- writing ---------------------------------------------------------------------------------


def write_snapshot(folder: str | Path, image: np.ndarray | Image.Image, record: SnapshotRecord,
                   *, now: datetime | None = None) -> SnapshotRecord:
    """Write ``<folder>/blipcam-<time>.jpg`` and its ``.json``; return the record with ``path``.

    ``image`` is an RGB PIL image or an HxWx3 uint8 RGB array. Raises SnapshotError with a
    message that says what happened (disk full, read-only folder, ...) and what to do.
    """
    folder = Path(folder)
    now = now or datetime.now().astimezone()
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8), "RGB")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stem = _unique_stem(folder, now)
        record = SnapshotRecord.from_dict({**asdict(record), "time": record.time or now.isoformat(timespec="seconds"),
                                           "image": f"{stem}.jpg"})
        jpeg = encode_jpeg(pil, record.caption, now)
        sidecar = record.to_json().encode("utf-8")
        _publish(folder, [(f"{stem}.json", sidecar), (f"{stem}.jpg", jpeg)])
    except OSError as e:
        raise SnapshotError(describe_os_error(e, folder)) from e
    record.path = folder / f"{stem}.jpg"
    return record


def encode_jpeg(image: Image.Image, caption: str, when: datetime) -> bytes:
    """JPEG bytes with the caption in EXIF ImageDescription + UserComment and in XMP dc:description."""
    exif = Image.Exif()
    # ImageDescription is an ASCII tag; UTF-8 bytes are what exiftool and most viewers read
    exif[TAG_IMAGE_DESCRIPTION] = caption.encode("utf-8")
    exif[TAG_SOFTWARE] = "blip-cam"
    exif[TAG_DATETIME] = when.strftime("%Y:%m:%d %H:%M:%S")
    # UserComment: 8-byte charset header, then UTF-16 in the EXIF block's own byte order
    big_endian = exif.tobytes()[6:8] == b"MM"
    exif.get_ifd(TAG_EXIF_IFD)[TAG_USER_COMMENT] = b"UNICODE\x00" + caption.encode("utf-16-be" if big_endian else "utf-16-le")
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY, exif=exif, xmp=_xmp_packet(caption))
    return out.getvalue()


def _xmp_packet(caption: str) -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        f'<x:xmpmeta xmlns:x="{_NS["x"]}"><rdf:RDF xmlns:rdf="{_NS["rdf"]}">'
        f'<rdf:Description rdf:about="" xmlns:dc="{_NS["dc"]}">'
        f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{escape(caption)}</rdf:li></rdf:Alt></dc:description>'
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    ).encode("utf-8")


def _unique_stem(folder: Path, now: datetime) -> str:
    base = f"{PREFIX}{now.strftime('%Y%m%d-%H%M%S')}-{now.microsecond // 1000:03d}"
    stem, n = base, 1
    while (folder / f"{stem}.jpg").exists() or (folder / f"{stem}.json").exists():
        n += 1
        stem = f"{base}-{n}"
    return stem


def _write_fully(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_temp(folder: Path, name: str, data: bytes) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        _write_fully(fd, data)
        os.fsync(fd)  # the bytes are on disk before the rename makes them visible
    except BaseException:
        os.close(fd)
        _remove_quietly(tmp)
        raise
    os.close(fd)
    return tmp


def _publish(folder: Path, files: list[tuple[str, bytes]]) -> None:
    """Write every file to a temp file first, then rename them all into place, in order."""
    temps: list[str] = []
    published: list[Path] = []
    try:
        for name, data in files:
            temps.append(_write_temp(folder, name, data))
        for (name, _), tmp in zip(files, temps):
            os.replace(tmp, folder / name)
            published.append(folder / name)
        _fsync_dir(folder)
    except BaseException:
        for tmp in temps:
            _remove_quietly(tmp)
        for path in published:  # only this snapshot's new files, never an older one
            _remove_quietly(path)
        raise


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported (e.g. Windows); the data itself is already synced
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def describe_os_error(e: OSError, folder: Path) -> str:
    """A one-line, actionable description of why a snapshot could not be written."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"Snapshot not saved: the disk is full ({folder}). Free some space or choose another folder."
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"Snapshot not saved: {folder} is read-only or not writable. Choose another folder."
    return f"Snapshot not saved: {e.strerror or e} ({folder})."


# --- reading ---------------------------------------------------------------------------------


def read_embedded_caption(jpeg_path: str | Path) -> dict[str, str]:
    """The caption as stored in the JPEG itself: ``ImageDescription``, ``UserComment``, ``xmp``."""
    out: dict[str, str] = {}
    with Image.open(jpeg_path) as im:
        exif = im.getexif()
        raw = im.info.get("exif", b"")
        xmp = im.info.get("xmp")
    desc = exif.get(TAG_IMAGE_DESCRIPTION)
    if desc is not None:
        out["ImageDescription"] = _utf8_from_latin1(desc)
    comment = exif.get_ifd(TAG_EXIF_IFD).get(TAG_USER_COMMENT)
    if isinstance(comment, bytes) and len(comment) >= 8:
        out["UserComment"] = _decode_user_comment(comment, big_endian=raw[6:8] == b"MM")
    if xmp:
        text = _xmp_description(xmp)
        if text is not None:
            out["xmp"] = text
    return out


def _utf8_from_latin1(value: str | bytes) -> str:
    # PIL decodes ASCII tags as latin-1; we wrote UTF-8, so undo that when it round-trips
    data = value if isinstance(value, bytes) else value.encode("latin-1", errors="replace")
    return data.decode("utf-8", errors="replace").rstrip("\x00")


def _decode_user_comment(value: bytes, *, big_endian: bool) -> str:
    header, body = value[:8], value[8:]
    if header.startswith(b"UNICODE"):
        return body.decode("utf-16-be" if big_endian else "utf-16-le", errors="replace").rstrip("\x00")
    return body.decode("ascii" if header.startswith(b"ASCII") else "latin-1", errors="replace").rstrip("\x00")


def _xmp_description(xmp: bytes | str) -> str | None:
    text = xmp.decode("utf-8", errors="replace") if isinstance(xmp, bytes) else xmp
    start, end = text.find("<x:xmpmeta"), text.rfind("</x:xmpmeta>")
    if start < 0 or end < 0:
        return None
    try:
        root = ElementTree.fromstring(text[start:end + len("</x:xmpmeta>")])
    except ElementTree.ParseError:
        return None
    li = root.find(".//dc:description/rdf:Alt/rdf:li", _NS)
    return (li.text or "") if li is not None else None


def read_snapshot(jpeg_path: str | Path) -> SnapshotRecord:
    """The record of a snapshot: from its sidecar, else (sidecar missing/corrupt) from the EXIF."""
    jpeg_path = Path(jpeg_path)
    sidecar = jpeg_path.with_suffix(".json")
    try:
        data = json.loads(sidecar.read_text("utf-8"))
        if isinstance(data, dict):
            return SnapshotRecord.from_dict({**data, "image": jpeg_path.name}, path=jpeg_path)
    except (OSError, ValueError):
        pass
    try:
        embedded = read_embedded_caption(jpeg_path)
    except Exception as e:  # truncated/corrupt JPEG: still listed, so the user can see and delete it
        embedded = {}
        caption = f"(unreadable: {e})"
    else:
        caption = embedded.get("xmp") or embedded.get("UserComment") or embedded.get("ImageDescription", "")
    stamp = datetime.fromtimestamp(_mtime(jpeg_path)).astimezone().isoformat(timespec="seconds")
    return SnapshotRecord(caption=caption, image=jpeg_path.name, time=stamp, path=jpeg_path)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def list_snapshots(folder: str | Path, limit: int | None = None) -> list[SnapshotRecord]:
    """Snapshots in ``folder``, newest first (names embed the time, so name order is time order)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    paths = sorted((p for p in folder.glob("*.jpg") if not p.name.startswith(".")), key=_name_order, reverse=True)
    return [read_snapshot(p) for p in paths[:limit]]


_STEM = re.compile(rf"^({PREFIX}\d{{8}}-\d{{6}}-\d{{3}})(?:-(\d+))?$")


def _name_order(path: Path) -> tuple[str, int]:
    # "...-123-2" was written after "...-123" in the same millisecond; plain string order disagrees
    m = _STEM.match(path.stem)
    return (m.group(1), int(m.group(2) or 1)) if m else (path.stem, 0)


# --- search ----------------------------------------------------------------------------------

_WORD = re.compile(r"[\w']+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def word_search(records: list[SnapshotRecord], query: str) -> list[tuple[SnapshotRecord, float]]:
    """Rank snapshots by the fraction of query words found in their caption and Q&A.

    A query word matches a word that starts with it ("cat" finds "cats"). Records matching no
    word are left out; ties keep the input order (newest first). An empty query returns all.
    """
    query_words = list(dict.fromkeys(words(query)))
    if not query_words:
        return [(r, 0.0) for r in records]
    scored = []
    for record in records:
        have = words(record.search_text())
        hits = sum(any(w.startswith(q) for w in have) for q in query_words)
        if hits:
            scored.append((record, hits / len(query_words)))
    scored.sort(key=lambda rs: -rs[1])  # stable: ties stay newest first
    return scored
