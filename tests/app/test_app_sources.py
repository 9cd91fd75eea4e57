"""Frame sources and the capture thread: OpenCV video (colour order, end of video, replay),
folders, scenes, and a camera that fails, disappears and comes back."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from app_fakes import FakeSource
from PIL import Image

from app.capture import CaptureThread, FpsMeter, FrameMailbox
from app.sources import FolderSource, OpenCVSource, ScenesSource, make_source, parse_source_spec
from app.sources.base import Frame, SourceError


@pytest.fixture
def capture_factory():
    threads = []

    def make(source, **kw):
        thread = CaptureThread(source, **kw)
        threads.append(thread)
        return thread

    yield make
    for thread in threads:
        thread.shutdown()


@pytest.fixture
def short_video(tmp_path):
    """Eight 64x48 frames at 50 fps of pure BGR blue, as OpenCV writes them."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 50.0, (64, 48))
    assert writer.isOpened()
    bgr_blue = np.zeros((48, 64, 3), np.uint8)
    bgr_blue[:, :, 0] = 255
    for _ in range(8):
        writer.write(bgr_blue)
    writer.release()
    return path


def test_opencv_video_is_rgb_and_ends_with_none(short_video):
    source = OpenCVSource(str(short_video))
    source.open()
    try:
        assert source.interval == pytest.approx(0.02, abs=1e-3)
        frames = []
        while (image := source.read()) is not None:
            frames.append(image)
    finally:
        source.close()
    assert len(frames) == 8
    r, g, b = frames[0][24, 32]
    assert b > 200 and r < 50, "BGR from OpenCV must be converted to RGB"
    assert frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8


@pytest.fixture
def frameless_video(tmp_path):
    """A well-formed AVI that OpenCV opens but that holds no frame."""
    path = tmp_path / "frameless.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    writer.release()
    return path


def _garbage_video(tmp_path):
    path = tmp_path / "garbage.mp4"
    path.write_bytes(bytes(range(256)) * 20)
    return path


@pytest.mark.parametrize("make_target, message", [
    (lambda tmp: str(tmp / "missing.avi"), "no such file"),
    (lambda tmp: str(_garbage_video(tmp)), "not a video OpenCV can read"),
    (lambda tmp: 99, "could not be opened (no such camera"),
])
def test_opencv_open_failures_say_what_is_wrong(tmp_path, make_target, message):
    with pytest.raises(SourceError) as exc:
        OpenCVSource(make_target(tmp_path)).open()
    assert str(exc.value).startswith(message)


def test_a_video_without_frames_is_not_called_an_ended_video(frameless_video, short_video):
    empty, good = OpenCVSource(str(frameless_video)), OpenCVSource(str(short_video))
    for source in (empty, good):
        source.open()
        while source.read() is not None:
            pass
        source.close()
    assert empty.end_message == "no frame could be decoded: not a video OpenCV can read"
    assert good.end_message == "end of the video"
    assert OpenCVSource(0).end_message == "no frame: the camera stopped or was unplugged"


def test_non_utf8_video_paths_are_refused_before_opencv_sees_them(tmp_path):
    # cv2.VideoCapture segfaults on a str holding surrogate escapes; the whole app would die
    path = os.fsdecode(bytes(tmp_path) + b"/caf\xe9.avi")
    with pytest.raises(SourceError, match="not valid UTF-8"):
        OpenCVSource(path).open()
    with pytest.raises(ValueError, match=r"caf\\xe9\.avi is not valid UTF-8"):
        parse_source_spec(f"file:{path}", check_paths=False)


def test_failures_count_until_a_frame_arrives_not_until_an_open(qtbot, capture_factory):
    """A source that opens and then gives nothing is failing as surely as one that does not open:
    a headless run must see the count grow (it was reset at every successful open)."""
    source = FakeSource(script={n: "none" for n in range(1, 5)}, open_failures=1)
    thread = capture_factory(source, retry_delays=(0.01,))
    failing = []
    thread.failing.connect(lambda message, failures: failing.append((message, failures)))
    thread.start()
    qtbot.waitUntil(lambda: thread.frames_captured >= 2, timeout=5000)
    # open fails (1), then 4 opens each read None (2..5), then frames flow
    assert [n for _, n in failing] == [1, 2, 3, 4, 5]
    assert failing[0][0] == "fake camera: fake camera not connected"  # a SourceError is shown as it is
    assert failing[1][0] == "fake camera: no frame: the source delivered nothing"


def test_failure_count_restarts_after_a_frame(qtbot, capture_factory):
    source = FakeSource(script={2: "none", 4: "none"})
    thread = capture_factory(source, retry_delays=(0.01,))
    failing = []
    thread.failing.connect(lambda message, failures: failing.append(failures))
    thread.start()
    qtbot.waitUntil(lambda: thread.frames_captured >= 4, timeout=5000)
    assert failing == [1, 1]


def test_status_shows_bytes_that_are_not_utf8(qtbot, capture_factory):
    # Qt silently drops lone surrogates, so "caf\xe9" would read "caf"
    thread = capture_factory(FakeSource(open_failures=10**6, name="folder caf\udce9"), retry_delays=(0.01,))
    statuses = []
    thread.status.connect(lambda message, ok: statuses.append(message))
    thread.start()
    qtbot.waitUntil(lambda: len(statuses) > 0, timeout=2000)
    assert statuses[0].startswith("folder caf\\xe9: fake camera not connected")


def test_video_end_is_reported_and_replayed(qtbot, capture_factory, short_video):
    thread = capture_factory(make_source(parse_source_spec(f"file:{short_video}")), retry_delays=(0.05,))
    statuses = []
    thread.status.connect(lambda msg, ok: statuses.append((msg, ok)))
    thread.start()
    qtbot.waitUntil(lambda: thread.frames_captured > 12, timeout=5000)  # more than one pass of 8 frames
    assert any("end of the video" in m and not ok for m, ok in statuses)
    assert any("running again" in m and ok for m, ok in statuses)


def test_camera_loss_and_recovery(qtbot, capture_factory):
    source = FakeSource(script={3: "none", 6: "raise"}, open_failures=1)
    thread = capture_factory(source, retry_delays=(0.01,))
    statuses = []
    thread.status.connect(lambda msg, ok: statuses.append((msg, ok)))
    thread.start()
    # open fails; runs; read 3 gives None; runs again; read 6 raises; runs again
    qtbot.waitUntil(lambda: len(statuses) >= 6 and thread.frames_captured >= 6, timeout=5000)
    messages = [m for m, _ in statuses]
    assert "fake camera: fake camera not connected — retrying in 0.01 s" in messages
    assert any("unplugged" in m and "OSError" in m for m in messages)
    assert any("no frame: the source delivered nothing" in m for m in messages)
    assert statuses[-1][1] is True and source.opens == 4 and source.closes == 2
    frame = thread.mailbox.take()
    assert frame.index == thread.frames_captured and not frame.image.flags.writeable


def test_capture_thread_stops_promptly_while_waiting_to_retry(qtbot, capture_factory):
    thread = capture_factory(FakeSource(open_failures=10**6), retry_delays=(30.0,))
    thread.start()
    qtbot.waitUntil(lambda: thread.source.opens >= 1, timeout=2000)
    with qtbot.waitSignal(thread.finished, timeout=2000):
        thread.shutdown()


def test_mailbox_keeps_only_the_newest_frame():
    box = FrameMailbox()
    frames = [Frame(np.zeros((2, 2, 3), np.uint8), i, 0.0) for i in range(3)]
    assert box.put(frames[0]) is True
    assert box.put(frames[1]) is False  # reader already notified; no second wake-up
    assert box.put(frames[2]) is False
    assert box.take().index == 2
    assert box.put(frames[0]) is True


def test_fps_meter_converges():
    meter = FpsMeter()
    fps = [meter.tick(t / 25) for t in range(50)]
    assert fps[0] == 0.0 and fps[-1] == pytest.approx(25.0, rel=1e-3)


def test_folder_source_cycles_and_skips_bad_files(tmp_path):
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (40, 30), colour).save(tmp_path / f"{i}.png")
    (tmp_path / "2.jpg").write_bytes(b"broken")
    (tmp_path / "notes.txt").write_text("ignored")
    source = FolderSource(tmp_path, interval=0.01)
    source.open()
    reds = [source.read()[0, 0, 0] for _ in range(4)]
    assert reds == [255, 0, 255, 0]
    assert source.read_meta()["path"].endswith("1.png")


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(Exception, match="no images"):
        FolderSource(tmp_path).open()


def test_scenes_source_yields_rgb_frames():
    source = ScenesSource(interval=0.01, size=96)
    source.open()
    a, b = source.read(), source.read()
    assert a.shape[2] == 3 and a.dtype == np.uint8 and not np.array_equal(a, b)
    assert source.read_meta()["seed"] == 1


class _FakePicamera2:
    """Stands in for picamera2.Picamera2 (the real module is never imported in tests)."""

    cameras = [{"Model": "imx708"}]
    calls: list = []

    def __init__(self, num):
        if not self.cameras:
            raise IndexError("list index out of range")  # what picamera2 raises with no camera
        self.calls.append(("init", num))

    @classmethod
    def global_camera_info(cls):
        return cls.cameras

    def create_preview_configuration(self, main, buffer_count):
        self.calls.append(("config", main))
        return {"main": main}

    def configure(self, config):
        self.calls.append("configure")

    def start(self):
        self.calls.append("start")

    def capture_array(self, name):
        self.calls.append(("capture", name))
        return np.full((48, 64, 3), (10, 20, 30), np.uint8)

    def stop(self):
        self.calls.append("stop")

    def close(self):
        self.calls.append("close")


@pytest.fixture
def fake_picamera2(monkeypatch):
    import importlib.machinery
    import sys
    import types

    module = types.ModuleType("picamera2")
    module.__spec__ = importlib.machinery.ModuleSpec("picamera2", None)
    module.Picamera2 = _FakePicamera2
    monkeypatch.setitem(sys.modules, "picamera2", module)
    monkeypatch.setattr(_FakePicamera2, "cameras", [{"Model": "imx708"}])
    monkeypatch.setattr(_FakePicamera2, "calls", [])
    return _FakePicamera2


def test_picamera2_source_asks_for_rgb_order_and_releases_the_camera(fake_picamera2):
    from app.sources import Picamera2Source, picamera2_available

    assert picamera2_available()
    source = Picamera2Source()
    source.open()
    image = source.read()
    source.close()
    source.close()  # twice is fine
    # libcamera's "BGR888" is R,G,B in memory, what BLIP wants (picamera2 #1148)
    assert ("config", {"size": (640, 480), "format": "BGR888"}) in fake_picamera2.calls
    assert tuple(image[0, 0]) == (10, 20, 30) and ("capture", "main") in fake_picamera2.calls
    assert fake_picamera2.calls[-2:] == ["stop", "close"]


def test_picamera2_without_a_camera(fake_picamera2, monkeypatch):
    from app.sources import Picamera2Source, picamera2_available

    monkeypatch.setattr(fake_picamera2, "cameras", [])
    assert not picamera2_available()
    with pytest.raises(Exception, match="cannot open Pi camera 0"):
        Picamera2Source().open()


def test_auto_prefers_picamera2_then_webcam_then_scenes(monkeypatch, fake_picamera2):
    import app.sources as sources

    auto = sources.AutoSource(interval=0.01)
    auto.open()
    assert isinstance(auto.chosen, sources.Picamera2Source) and auto.name == "picamera2"
    auto.close()

    monkeypatch.setattr(sources, "picamera2_available", lambda: False)
    monkeypatch.setattr(sources, "webcam_available", lambda index=0: True)
    monkeypatch.setattr(sources.OpenCVSource, "open", lambda self: None)
    auto = sources.AutoSource()
    auto.open()
    assert isinstance(auto.chosen, sources.OpenCVSource) and auto.name == "webcam 0"

    monkeypatch.setattr(sources, "webcam_available", lambda index=0: False)
    auto = sources.AutoSource(interval=0.01)
    auto.open()
    assert isinstance(auto.chosen, sources.ScenesSource) and "no camera found" in auto.notice
    assert auto.read().shape[2] == 3 and auto.interval == 0.01
