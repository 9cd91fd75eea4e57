"""Hostile input on the app's side (issue 15: items 2-app, 3, 4 and the snapshot part of 9), every
attack generated here: an EPS file named like a JPEG, PNGs that decode to 169 and 67 megapixels
from 20 KB, crafted sidecars, FIFOs named like snapshots, markup in every text the GUI shows,
captions that no metadata block can carry as they are.

The window tests reuse the app tests' fixtures (offscreen Qt, isolated settings, the window
factory and its dangling-QThread check) from tests/app/conftest.py, and always pass a fake loader:
a real model is beside the point here (and its int8 conversion is cached per session only there).
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from xml.etree import ElementTree

import pytest
from PIL import EpsImagePlugin, Image

_APP_TESTS = Path(__file__).resolve().parents[1] / "app"


def _load_app_conftest():
    spec = importlib.util.spec_from_file_location("app_tests_conftest", _APP_TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # also puts tests/app on sys.path for app_fakes
    return module


_app_conftest = _load_app_conftest()
_isolated_config = _app_conftest._isolated_config
dangling_qthreads = _app_conftest.dangling_qthreads
fake_model = _app_conftest.fake_model
fake_loader = _app_conftest.fake_loader
model_loader = _app_conftest.model_loader
model_source = _app_conftest.model_source
settings = _app_conftest.settings
make_window = _app_conftest.make_window

from app_fakes import FakeLoader, FakeModel, solid  # noqa: E402
from PySide6 import QtGui  # noqa: E402  (after the conftest chose the offscreen platform)
from PySide6.QtCore import QElapsedTimer, Qt  # noqa: E402
from PySide6.QtGui import QTextDocument  # noqa: E402
from PySide6.QtWidgets import QLabel, QWidget  # noqa: E402

from app import snapshots  # noqa: E402
from app.inference import InferenceEngine  # noqa: E402
from app.model_choice import ModelRequest  # noqa: E402
from app.snapshots import (  # noqa: E402
    SnapshotRecord,
    list_snapshots,
    read_embedded_caption,
    read_snapshot,
    word_search,
    write_snapshot,
)
from app.sources import FolderSource  # noqa: E402
from blip_core.errors import BadImageError  # noqa: E402
from blip_core.preprocess import load_image  # noqa: E402

pytestmark = [pytest.mark.qt_log_level_fail("WARNING"), pytest.mark.qt_log_ignore("This plugin does not support"),
              pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]

WHEN = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)

# An Encapsulated PostScript file: PIL identifies it by content, whatever its name, and decoding
# it runs Ghostscript (a PostScript interpreter) on the file.
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 48\n%%EndComments\n"
       b"newpath 0 0 moveto 64 48 lineto stroke\nshowpage\n%%EOF\n")


def black_png(width: int, height: int) -> bytes:
    """A valid, fully decodable 1-bit black PNG of ``width x height``: 13000 x 13000 is 20 KB on
    disk and 169 MB once PIL decodes it (676 MB as RGB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    pixels = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.fixture
def ghostscript_calls(monkeypatch) -> list:
    """Records every attempt to run Ghostscript (not installed here; this sees the attempt)."""
    calls = []

    def ghostscript(*args, **kwargs):
        calls.append(args)
        raise OSError("Ghostscript would run here")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    return calls


def hostile_snapshot(folder: Path, stem: str, data: bytes, caption: str) -> Path:
    """A snapshot whose JPEG is ``data`` and whose sidecar is valid (so it is listed)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(SnapshotRecord(caption, image=f"{stem}.jpg").to_json())
    path = folder / f"{stem}.jpg"
    path.write_bytes(data)
    return path


# --- item 2: every image the app reads goes through blip_core's checked loader --------------------


@pytest.mark.timeout(30)  # before the fix, opening the FIFO waited for a writer forever
@pytest.mark.parametrize("name, attack", [
    ("a-photo.jpg", "eps"), ("a-bomb.png", "bomb"), ("a-fifo.jpg", "fifo"), ("a-folder.jpg", "folder"),
])
def test_folder_source_skips_what_the_checked_loader_refuses(tmp_path, ghostscript_calls, name, attack):
    hostile = tmp_path / name
    if attack == "eps":
        hostile.write_bytes(EPS)
    elif attack == "bomb":
        hostile.write_bytes(black_png(13000, 13000))
    elif attack == "fifo":
        os.mkfifo(hostile)
    else:
        hostile.mkdir()
    Image.new("RGB", (40, 30), (0, 0, 255)).save(tmp_path / "b-good.png")
    source = FolderSource(tmp_path, interval=0.01)
    source.open()
    frame = source.read()
    assert ghostscript_calls == []
    assert frame.shape == (30, 40, 3) and tuple(frame[0, 0]) == (0, 0, 255)  # the next, good image
    assert source.read_meta()["path"].endswith("b-good.png")
    assert list(source.skipped) == [hostile]  # counted, with the reason
    source.read()  # the next pass skips it again, without a second warning entry
    assert list(source.skipped) == [hostile]


def test_folder_source_bomb_is_refused_from_its_header(tmp_path):
    (tmp_path / "bomb.png").write_bytes(black_png(13000, 13000))
    source = FolderSource(tmp_path)
    source.open()
    t0 = time.perf_counter()
    assert source.read() is None  # nothing else to show: the thread reopens later
    assert time.perf_counter() - t0 < 0.5  # decoding it took ~1 s and 169 MB before
    assert "megapixels" in source.skipped[tmp_path / "bomb.png"]


def test_ranking_leaves_out_snapshots_the_checked_loader_refuses(tmp_path, ghostscript_calls):
    good = write_snapshot(tmp_path, solid("blue", (32, 32)), SnapshotRecord("a blue thing"), now=WHEN)
    hostile_snapshot(tmp_path, "blipcam-20250304-050608-000", EPS, "eps")
    # 8200 x 8200 = 67 MP: over blip_core's 64 MP limit, under PIL's own bomb warning (89 MP)
    hostile_snapshot(tmp_path, "blipcam-20250304-050609-000", black_png(8200, 8200), "bomb")
    records = list_snapshots(tmp_path)
    assert len(records) == 3  # listed: their sidecars are fine
    engine = InferenceEngine(FakeLoader())
    engine.load_captioner(ModelRequest(caption="m", vqa="m"))
    ranked = engine.rank_snapshots("something blue", records)
    assert [record.path for record, _itm, _itc in ranked] == [good.path]
    assert ghostscript_calls == []


def test_snapshots_without_sidecar_are_decoded_by_the_checked_loader_only(tmp_path, ghostscript_calls):
    good = write_snapshot(tmp_path, solid("red"), SnapshotRecord("from exif"), now=WHEN)
    good.path.with_suffix(".json").unlink()
    (tmp_path / "blipcam-20250304-050608-000.jpg").write_bytes(EPS)
    (tmp_path / "blipcam-20250304-050609-000.jpg").write_bytes(black_png(13000, 13000))
    assert [r.caption for r in list_snapshots(tmp_path)] == ["from exif"]
    listing = snapshots.scan_snapshots(tmp_path)
    assert sorted(name for name, _why in listing.skipped) == ["blipcam-20250304-050608-000.jpg",
                                                              "blipcam-20250304-050609-000.jpg"]
    for name, _why in listing.skipped:  # the browser's thumbnails use the same loader
        with pytest.raises(BadImageError):
            snapshots.read_thumbnail(tmp_path / name, (160, 120))
    with pytest.raises(BadImageError):
        read_embedded_caption(tmp_path / "blipcam-20250304-050608-000.jpg")
    assert ghostscript_calls == []


# --- item 4: crafted sidecars and FIFOs ----------------------------------------------------------------

CRAFTED_SIDECARS = {
    "caption is a number": b'{"caption": 42}',
    "nested 100k deep": b'{"caption": "deep", "frame": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "huge file": b'{"caption": "' + b"x" * 3_000_000 + b'"}',
    "wrong types": json.dumps({"caption": "ok", "qa": "not a list", "timings": [1, 2]}).encode(),
    "Q&A of the wrong types": json.dumps({"caption": "ok", "qa": [{"question": ["q"], "answer": {}}]}).encode(),
    "timings that break formatting": b'{"caption": "ok", "timings": {"total_ms": 1' + b"0" * 400 + b"}}",
    "non-UTF-8 bytes": b'{"caption": "caf\xe9 au lait"}',
    "not an object": b'["a", "list"]',
}
CAPTIONS = ("a dog on a beach", "two cats on a sofa", "a red bus")


def folder_with_one_crafted_sidecar(folder: Path, sidecar: bytes) -> Path:
    """Three good snapshots and, newest, one whose sidecar is ``sidecar``; returns its JPEG."""
    for i, caption in enumerate(CAPTIONS):
        write_snapshot(folder, solid("red"), SnapshotRecord(caption), now=WHEN.replace(second=i))
    bad = write_snapshot(folder, solid("red"), SnapshotRecord("crafted"), now=WHEN.replace(second=9))
    bad.path.with_suffix(".json").write_bytes(sidecar)
    return bad.path


@pytest.mark.parametrize("attack", CRAFTED_SIDECARS)
def test_a_crafted_sidecar_is_skipped_and_the_rest_stay_listed_and_searchable(tmp_path, attack):
    bad = folder_with_one_crafted_sidecar(tmp_path, CRAFTED_SIDECARS[attack])
    records = list_snapshots(tmp_path)
    assert [r.caption for r in records] == list(reversed(CAPTIONS))
    assert [r.caption for r, _score in word_search(records, "dog")] == ["a dog on a beach"]
    listing = snapshots.scan_snapshots(tmp_path)
    assert [name for name, _why in listing.skipped] == [bad.name]


@pytest.mark.timeout(30)  # before the fix, reading the FIFO waited for a writer forever
def test_fifos_named_like_a_snapshot_or_its_sidecar_never_block(tmp_path):
    good = write_snapshot(tmp_path, solid("red"), SnapshotRecord("kept"), now=WHEN)
    os.mkfifo(tmp_path / "blipcam-20250304-050609-000.jpg")  # a FIFO as the JPEG (no sidecar)
    fifo_sidecar = write_snapshot(tmp_path, solid("red"), SnapshotRecord("fifo sidecar"), now=WHEN.replace(second=8))
    fifo_sidecar.path.with_suffix(".json").unlink()
    os.mkfifo(fifo_sidecar.path.with_suffix(".json"))  # a FIFO as the sidecar of a good JPEG
    t0 = time.monotonic()
    assert [r.path for r in list_snapshots(tmp_path)] == [good.path]
    listing = snapshots.scan_snapshots(tmp_path)
    assert time.monotonic() - t0 < 5
    assert sorted(name for name, _why in listing.skipped) == [fifo_sidecar.path.name, "blipcam-20250304-050609-000.jpg"]
    assert all("not a regular file" in why for _name, why in listing.skipped)


def open_browser(qtbot, window):
    browser = window.open_browser()
    qtbot.waitUntil(lambda: not browser.loading, timeout=5000)
    return browser


@pytest.mark.parametrize("attack", ["caption is a number", "nested 100k deep"])
def test_the_browser_shows_the_rest_and_counts_the_skipped(qtbot, make_window, settings, attack):
    bad = folder_with_one_crafted_sidecar(settings.snapshot_dir(), CRAFTED_SIDECARS[attack])
    window = make_window(loader=FakeLoader(FakeModel(tasks=("caption", "vqa"))))  # word search
    browser = open_browser(qtbot, window)
    assert [r.caption for r in browser.shown_records()] == list(reversed(CAPTIONS))
    assert browser.skipped_label.isVisible() and browser.skipped_label.text() == "1 snapshot(s) skipped: unreadable"
    assert bad.name in rendered(browser.skipped_label.toolTip()).toPlainText()  # hover says which, and why
    browser.search.setText("cats")
    browser.run_search()
    assert [r.caption for r in browser.shown_records()] == ["two cats on a sofa"]


@pytest.mark.timeout(60)  # before the fix, the GUI thread waited for the FIFO's writer forever
def test_the_browser_never_blocks_the_gui_thread_on_a_fifo(qtbot, make_window, settings):
    folder = settings.snapshot_dir()
    write_snapshot(folder, solid("red"), SnapshotRecord("kept"), now=WHEN)
    os.mkfifo(folder / "blipcam-20250304-050609-000.jpg")
    window = make_window(continuous=False, loader=FakeLoader())
    clock = QElapsedTimer()
    clock.start()
    browser = window.open_browser()
    assert clock.elapsed() < 500
    qtbot.waitUntil(lambda: not browser.loading, timeout=5000)
    assert [r.caption for r in browser.shown_records()] == ["kept"]
    assert browser.skipped_label.text() == "1 snapshot(s) skipped: unreadable"


# --- item 3: outside text is never rendered as rich text ----------------------------------------------


def rendered(tooltip: str) -> QTextDocument:
    """The document a tooltip shows: QToolTip renders rich text when Qt.mightBeRichText guesses so."""
    doc = QTextDocument()
    if QtGui.Qt.mightBeRichText(tooltip):
        doc.setHtml(tooltip)
    else:
        doc.setPlainText(tooltip)
    return doc


def images_in(doc: QTextDocument) -> list[str]:
    found = []
    block = doc.begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            fmt = it.fragment().charFormat()
            if fmt.isImageFormat():
                found.append(fmt.toImageFormat().name())
            it += 1
        block = block.next()
    return found


def test_no_text_from_outside_is_rendered_as_rich_text(qtbot, make_window, settings, tmp_path):
    picture = tmp_path / "x.png"
    Image.new("RGB", (60, 60), (255, 0, 0)).save(picture)
    img = f'<img src="{picture}" width=6000>'  # rich text would load it and scale it to 6000 px
    # a model whose config.json model_type is markup (the name shows it), a --source folder and a
    # snapshot folder named with tags, a snapshot whose sidecar caption, model and Q&A are markup
    snapshot_folder = tmp_path / "<b>snapshots"
    settings.set("snapshots/folder", str(snapshot_folder))
    caption = f"a caption {img}"
    write_snapshot(snapshot_folder, solid("red"), SnapshotRecord(
        caption, prompt="<i>a picture of</i> ", model=img, precision="<u>int8</u>",
        qa=[{"question": "<b>what?</b>", "answer": img}], time="<s>now</s>"), now=WHEN)
    photos = tmp_path / "<b>photos"
    photos.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(photos / "a.png")
    window = make_window(FolderSource(photos, interval=0.05), loader=FakeLoader(FakeModel(name=img)))

    qtbot.waitUntil(lambda: "running" in window.source_label.text(), timeout=5000)
    ask_question(qtbot, window, "is <b>this</b> bold?")
    with qtbot.waitSignal(window.snapshot_saved, timeout=5000):
        window.save_snapshot()
    browser = open_browser(qtbot, window)
    hostile_row = next(i for i, r in enumerate(browser.shown_records()) if r.caption == caption)
    browser.grid.setCurrentRow(hostile_row)

    labels = window.findChildren(QLabel)
    assert browser in window.findChildren(QWidget) and browser.details in labels
    assert [label.text() for label in labels if label.textFormat() != Qt.TextFormat.PlainText] == []
    shown = "\n".join(label.text() for label in labels)
    for text in (img, str(photos), str(snapshot_folder), "is <b>this</b> bold?", "<b>what?</b>"):
        assert text in shown  # literally, tags and all
    assert max(label.sizeHint().width() for label in labels) < 3000  # no 6000 px picture inside

    tooltips = [w.toolTip() for w in (window, *window.findChildren(QWidget)) if w.toolTip()]
    tooltips += [browser.grid.item(i).toolTip() for i in range(browser.grid.count())]
    assert [t for t in tooltips if images_in(rendered(t))] == []
    assert rendered(browser.grid.item(hostile_row).toolTip()).toPlainText() == caption


def ask_question(qtbot, window, question: str) -> None:
    with qtbot.waitSignal(window.answer_shown, timeout=5000):
        window.ask(question)


# --- item 9: captions that the JPEG's metadata cannot carry as they are --------------------------------

XMP_NAMESPACES = {"dc": "http://purl.org/dc/elements/1.1/", "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#"}
EVIL_CAPTIONS = {
    "NUL and control characters": "a\x00b\x07c\x1bd\x7fe\x85f",
    "65k characters": "word " * 13_000,
    "lone high surrogate": "before \ud800 after",
    "lone low surrogate": "\udc00 at the start",
    "markup closing the packet": '</rdf:li></x:xmpmeta><?xpacket end="w"?> & <img src=x>',
    "XML non-characters": "\ufffe\uffff end",
}


@pytest.mark.parametrize("name", EVIL_CAPTIONS)
def test_evil_captions_never_lose_the_snapshot(tmp_path, name):
    caption = EVIL_CAPTIONS[name]
    saved = write_snapshot(tmp_path, solid("red", (80, 60)), SnapshotRecord(caption), now=WHEN)
    image = load_image(saved.path)  # the JPEG opens with the checked loader
    assert image.size == (80, 60)
    packet = ElementTree.fromstring(image.info["xmp"])  # valid XML
    li = packet.find(".//dc:description/rdf:Alt/rdf:li", XMP_NAMESPACES)
    assert li is not None and li.text and set(li.text) <= set(caption) | {"\ufffd", "…"}  # cleaned, cut
    assert json.loads(saved.path.with_suffix(".json").read_bytes())["caption"] == caption  # the full text
    assert read_snapshot(saved.path).caption == caption
