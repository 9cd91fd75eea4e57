"""Snapshots: a JPEG carrying its caption (EXIF + XMP) and a JSON sidecar, written atomically;
reading them back; word search over them. Pure Python (PIL), no Qt.

A snapshot folder is untrusted input (files can be copied in, crafted or replaced): every JPEG is
decoded by ``blip_core.preprocess.load_image`` (format whitelist, pixel limit), sidecars are read
from regular files only, size-capped, parsed with a guard against deep nesting and validated field
by field; a snapshot that fails any of that is skipped and counted (``scan_snapshots``), never
fatal to the listing.

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
import stat
import tempfile
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

# Reading limits. Our own sidecars are ~1-2 KB; the caps bound what a crafted one can cost (a
# 100k-character caption of non-ASCII text, JSON-escaped, is ~1.2 MB).
MAX_SIDECAR_BYTES = 2 * 1024 * 1024
MAX_TEXT_CHARS = 100_000  # any one string in a sidecar
MAX_JSON_ITEMS = 1_000  # entries of any one list or object
MAX_JSON_DEPTH = 6  # ours nest 3 deep (frame -> scene -> captions)

# The caption embedded in the JPEG: each of EXIF and XMP must fit one APP1 segment (65533 bytes).
# EXIF carries it twice (UTF-8 ImageDescription + UTF-16 UserComment: up to 8 bytes per character
# for characters outside the BMP), XMP escaped (up to 5 bytes, "&amp;"): 8000 characters fit both.
# The sidecar keeps the full text.
MAX_EMBEDDED_CHARS = 8_000

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
    watch: dict = field(default_factory=dict)  # the watch that took it: {"text", "itm", "itc"}; empty when S did
    version: int = SIDECAR_VERSION
    path: Path | None = field(default=None, compare=False)

    def to_json(self) -> str:
        """The sidecar's text: ASCII only (``\\uXXXX`` escapes), so any caption round-trips, even one
        with a lone surrogate that no UTF-8 encoder accepts."""
        data = asdict(self)
        data.pop("path")
        return json.dumps(data, ensure_ascii=True, indent=2)

    @classmethod
    def from_dict(cls, data: dict, path: Path | None = None) -> "SnapshotRecord":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "path"}
        return cls(**{"caption": "", **known}, path=path)

    def search_text(self) -> str:
        parts = [self.caption] + [f"{q.get('question', '')} {q.get('answer') or ''}" for q in self.qa]
        if isinstance(self.watch, dict) and isinstance(self.watch.get("text"), str):
            parts.append(self.watch["text"])
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
    """JPEG bytes with the caption in EXIF ImageDescription + UserComment and in XMP dc:description
    (as ``embedded_caption`` makes it fit there)."""
    caption = embedded_caption(caption)
    exif = Image.Exif()
    # ImageDescription is an ASCII tag; UTF-8 bytes are what exiftool and most viewers read
    exif[TAG_IMAGE_DESCRIPTION] = caption.encode("utf-8")
    exif[TAG_SOFTWARE] = "blip-cam"
    exif[TAG_DATETIME] = when.strftime("%Y:%m:%d %H:%M:%S")
    # UserComment: 8-byte charset header, then UTF-16 in the EXIF block's own byte order
    big_endian = exif.tobytes()[6:8] == b"MM"
    comment = b"UNICODE\x00" + caption.encode("utf-16-be" if big_endian else "utf-16-le")
    exif.get_ifd(TAG_EXIF_IFD)[TAG_USER_COMMENT] = comment
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY, exif=exif, xmp=_xmp_packet(caption))
    return out.getvalue()


# What XML 1.0 text cannot carry (C0 controls but tab and newline, U+FFFE, U+FFFF), plus CR (XML
# parsers turn it into a newline anyway) and DEL and the C1 controls (legal XML, but no text).
_NOT_METADATA_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffe\uffff]")


def embedded_caption(caption: str) -> str:
    """The caption as the JPEG's EXIF and XMP carry it: lone surrogates replaced by U+FFFD (no UTF
    encoder takes them), control characters other than tab and newline removed (they make the XMP
    invalid XML), cut to MAX_EMBEDDED_CHARS (ending in "…") so each block fits its JPEG segment."""
    # a UTF-16 round trip joins surrogate pairs into one character and replaces the lone ones
    text = caption.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return shorten(_NOT_METADATA_TEXT.sub("", text), MAX_EMBEDDED_CHARS)


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, the last one "…" when it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


@dataclass
class SnapshotListing:
    """A folder's snapshots: ``records`` newest first, and ``skipped``: (file name, reason) of each
    snapshot that could not be read (not a regular file, a bad sidecar, an undecodable image)."""

    folder: Path
    records: list[SnapshotRecord]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_embedded_caption(jpeg_path: str | Path) -> dict[str, str]:
    """The caption as stored in the JPEG itself: ``ImageDescription``, ``UserComment``, ``xmp``.

    The file is decoded by the library's checked loader. Raises ``blip_core.errors.BadImageError``
    for anything it refuses (not a regular file, not a supported format, too many pixels, corrupt).
    """
    from blip_core.preprocess import load_image  # lazily, as all of blip_core (see app.model_choice)

    im = load_image(jpeg_path)
    exif = im.getexif()
    raw = im.info.get("exif", b"")
    xmp = im.info.get("xmp")
    out: dict[str, str] = {}
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


def read_thumbnail(jpeg_path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """An ``H x W x 3`` uint8 RGB thumbnail fitting in ``size`` (w, h), aspect kept, decoded by the
    library's checked loader; raises ``blip_core.errors.BadImageError`` for what it refuses."""
    from blip_core.preprocess import load_image

    image = load_image(jpeg_path)
    image.thumbnail(size)
    return np.asarray(image)


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
    """The record of a snapshot: from its sidecar, else (no sidecar: an older snapshot, or a JPEG
    copied alone) from the caption embedded in the JPEG.

    Raises SnapshotError, naming the file and the reason, when the JPEG is not a regular file, the
    sidecar is unusable (see ``read_sidecar``), or, without a sidecar, the JPEG cannot be decoded.
    """
    jpeg_path = Path(jpeg_path)
    try:
        jpeg_stat = _regular_file_stat(jpeg_path)
    except FileNotFoundError as e:
        raise SnapshotError(f"{jpeg_path.name} no longer exists") from e
    fields = read_sidecar(jpeg_path.with_suffix(".json"))
    if fields is not None:
        return SnapshotRecord.from_dict({**fields, "image": jpeg_path.name}, path=jpeg_path)
    from blip_core.errors import BadImageError

    try:
        embedded = read_embedded_caption(jpeg_path)
    except BadImageError as e:
        raise SnapshotError(f"{jpeg_path.name} has no sidecar and cannot be decoded: {e}") from e
    caption = embedded.get("xmp") or embedded.get("UserComment") or embedded.get("ImageDescription", "")
    stamp = datetime.fromtimestamp(jpeg_stat.st_mtime).astimezone().isoformat(timespec="seconds")
    return SnapshotRecord(caption=caption, image=jpeg_path.name, time=stamp, path=jpeg_path)


def scan_snapshots(folder: str | Path, limit: int | None = None) -> SnapshotListing:
    """The newest ``limit`` snapshots in ``folder`` (names embed the time, so name order is time
    order); the ones that cannot be read are skipped and listed with the reason."""
    folder = Path(folder)
    if not folder.is_dir():
        return SnapshotListing(folder, [])
    paths = sorted((p for p in folder.glob("*.jpg") if not p.name.startswith(".")), key=_name_order, reverse=True)
    listing = SnapshotListing(folder, [])
    for path in paths[:limit]:
        try:
            listing.records.append(read_snapshot(path))
        except SnapshotError as e:
            listing.skipped.append((path.name, str(e)))
    return listing


def list_snapshots(folder: str | Path, limit: int | None = None) -> list[SnapshotRecord]:
    """The readable snapshots in ``folder``, newest first (see ``scan_snapshots``)."""
    return scan_snapshots(folder, limit).records


# --- sidecars: untrusted JSON ----------------------------------------------------------------


def read_sidecar(path: Path) -> dict | None:
    """The known fields of the sidecar at ``path``, validated; None if there is no such file.

    Raises SnapshotError saying what is wrong: not a regular file (a FIFO would block a reader
    forever), over MAX_SIDECAR_BYTES, not UTF-8, not JSON, nested too deeply, or a field of the
    wrong type or size (see ``sidecar_fields``).
    """
    data = _read_regular_file(path, MAX_SIDECAR_BYTES)
    if data is None:
        return None
    try:
        parsed = json.loads(data.decode("utf-8"))
    except RecursionError as e:  # json's C parser recurses once per nesting level
        raise SnapshotError(f"{path.name} is nested too deeply to be a sidecar") from e
    except UnicodeDecodeError as e:
        raise SnapshotError(f"{path.name} is not UTF-8 text") from e
    except ValueError as e:
        raise SnapshotError(f"{path.name} is not valid JSON ({e})") from e
    try:
        return sidecar_fields(parsed)
    except SnapshotError as e:
        raise SnapshotError(f"{path.name}: {e}") from None


def sidecar_fields(data: object) -> dict:
    """The SnapshotRecord fields of a parsed sidecar, each checked for type and size; unknown keys
    are dropped. Raises SnapshotError naming the first bad field."""
    if not isinstance(data, dict):
        raise SnapshotError(f"a sidecar is a JSON object, not {_json_type(data)}")
    _check_json(data, "the sidecar", depth=1)
    fields: dict = {}
    for name in ("caption", "prompt", "model", "precision", "vqa_model", "time", "image"):
        if name in data:
            fields[name] = _expect(data[name], str, name)
    if "version" in data:
        fields["version"] = _expect(data["version"], int, "version")
    if "qa" in data:
        fields["qa"] = [_qa_item(item, f"qa[{i}]") for i, item in enumerate(_expect(data["qa"], list, "qa"))]
    if "timings" in data:
        timings = _expect(data["timings"], dict, "timings")
        fields["timings"] = {k: _expect(v, float, f"timings.{k}") for k, v in timings.items()}
    for name in ("decoding", "frame"):
        if name in data:
            fields[name] = _expect(data[name], dict, name)
    return fields


_QA_TYPES = {"question": str, "answer": (str, type(None)), "total_ms": float, "reused_features": bool, "error": str,
             "model": str}


def _qa_item(item: object, where: str) -> dict:
    item = _expect(item, dict, where)
    for key, kind in _QA_TYPES.items():
        if key in item:
            _expect(item[key], kind, f"{where}.{key}")
    return item


def _expect(value, kind, where: str):
    """``value`` if it is of JSON type ``kind`` (``float`` means any finite number, bool excluded)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if any(_is_json_type(value, k) for k in kinds):
        return value
    wanted = " or ".join(_TYPE_NAMES[k] for k in kinds)
    raise SnapshotError(f"{where} must be {wanted}, not {_json_type(value)}")


_TYPE_NAMES = {str: "text", int: "an integer", float: "a number", bool: "true or false", list: "a list",
               dict: "an object", type(None): "null"}


def _is_json_type(value, kind) -> bool:
    if isinstance(value, bool):  # bool is an int subclass in Python, not in JSON
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _json_type(value) -> str:
    return next((name for kind, name in _TYPE_NAMES.items() if _is_json_type(value, kind)), type(value).__name__)


def _check_json(value, where: str, depth: int) -> None:
    """Bound a parsed JSON value: at most MAX_JSON_DEPTH levels, MAX_JSON_ITEMS entries per list or
    object, MAX_TEXT_CHARS per string, finite numbers that fit a float. Recursion stops at the
    depth limit, so this never recurses deeper than MAX_JSON_DEPTH."""
    if isinstance(value, (dict, list)):
        if depth > MAX_JSON_DEPTH:
            raise SnapshotError(f"{where} nests more than {MAX_JSON_DEPTH} levels deep")
        if len(value) > MAX_JSON_ITEMS:
            raise SnapshotError(f"{where} has {len(value)} entries, over the limit of {MAX_JSON_ITEMS}")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            _check_json(key, f"a key in {where}", depth)
            _check_json(item, f"{where}[{key!r}]" if isinstance(key, int) else f"{where}.{key[:40]}", depth + 1)
    elif isinstance(value, str):
        if len(value) > MAX_TEXT_CHARS:
            raise SnapshotError(f"{where} is {len(value)} characters long, over the limit of {MAX_TEXT_CHARS}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if not abs(value) < 1e300:  # false for NaN, the infinities and 400-digit integers
            raise SnapshotError(f"{where} is not a usable number")


def _read_regular_file(path: Path, limit: int) -> bytes | None:
    """The bytes of ``path``, None if it does not exist. Raises SnapshotError when it is not a
    regular file, is over ``limit`` bytes, or cannot be read.

    Checked before opening (opening a device can have side effects) and again on the open file
    (it may have been swapped in between); opened non-blocking, so even a FIFO swapped in at that
    moment cannot make the read wait for a writer forever; never more than ``limit + 1`` bytes
    read, even from a file that grows meanwhile.
    """
    try:
        size = _regular_file_stat(path).st_size
    except FileNotFoundError:
        return None
    too_large = SnapshotError(f"{path.name} is over {limit} bytes: too large to be a sidecar")
    if size > limit:
        raise too_large
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        with os.fdopen(os.open(path, flags), "rb") as f:
            _check_regular(os.fstat(f.fileno()), path)
            data = f.read(limit + 1)
    except OSError as e:
        raise SnapshotError(f"{path.name} cannot be read ({e.strerror or e})") from e
    if len(data) > limit:
        raise too_large
    return data


def _regular_file_stat(path: Path) -> os.stat_result:
    """``os.stat(path)`` of a regular file; SnapshotError for anything else, except that a missing
    file raises FileNotFoundError (the caller knows whether that is fine)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise SnapshotError(f"{path.name} cannot be accessed ({e.strerror or e})") from e
    return _check_regular(st, path)


def _check_regular(st: os.stat_result, path: Path) -> os.stat_result:
    if not stat.S_ISREG(st.st_mode):
        raise SnapshotError(f"{path.name} is not a regular file (a folder, pipe or device)")
    return st


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
