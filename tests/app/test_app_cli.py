"""The command line: argument parsing and errors, and ``--exit-after-captions`` run as a real
process (offscreen) with the fake model injected through ``main(loader=...)``, plus the same
with the real bundled demo model once it exists."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from app_fakes import FakeSource
from PIL import Image

from app.arguments import parse_args
from app.main import ExitAfterCaptions
from app.model_choice import DEFAULT_CAPTION_MODEL, DEFAULT_VQA_MODEL, demo_model_path
from app.sources import OpenCVSource
from app.sources.base import SourceSpec

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def test_defaults():
    config = parse_args([])
    assert config.source == SourceSpec("auto") and config.exit_after_captions is None
    assert (config.models.caption, config.models.vqa, config.models.precision) == (
        DEFAULT_CAPTION_MODEL, DEFAULT_VQA_MODEL, "int8")


def test_model_shortcut_and_options(tmp_path):
    config = parse_args(["--model", "m.pth", "--precision", "fp32", "--threads", "2", "--source", "webcam:1",
                         "--exit-after-captions", "3", "--snapshot-dir", str(tmp_path), "--interval", "0.5"])
    assert (config.models.caption, config.models.vqa, config.models.threads) == ("m.pth", "m.pth", 2)
    assert config.source == SourceSpec("webcam", "1") and config.exit_after_captions == 3
    assert config.snapshot_dir == tmp_path and config.interval == 0.5
    assert parse_args(["--vqa-model", "none"]).models.vqa is None


@pytest.mark.parametrize("argv, fragment", [
    (["--source", "usb"], "unknown source"),
    (["--source", "folder:/no/such/dir"], "not found"),
    (["--precision", "fp16"], "invalid choice"),
    (["--threads", "0"], "--threads must be in [1, "),
    (["--threads", "100000"], "--threads must be in [1, "),  # hung the machine
    (["--exit-after-captions", "0"], "at least 1"),
    (["--interval", "-1"], "--interval must be in [0.01, 3600] seconds"),
    (["--interval", "inf"], "--interval must be in"),  # overflowed the capture thread's wait
    (["--interval", "nan"], "--interval must be in"),
    (["--model", ""], "--model is empty"),  # silently loaded the default model
    (["--caption-model", ""], "--caption-model is empty"),
    (["--vqa-model", "  "], "--vqa-model is empty"),
    (["--model", "a", "--vqa-model", "b"], "do not combine"),
    (["--bogus"], "unrecognized arguments"),
])
def test_argument_errors_are_one_line_and_exit_2(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and fragment in err
    assert err.startswith("blip-cam: error: ") and err.count("\n") == 1


def _run(args, tmp_path, code=None, timeout=90):
    """Run the app in a fresh process, offscreen, with isolated settings and home."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path / "home"),
           "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "BLIP_CAM_SETTINGS": str(tmp_path / "settings.ini")}
    env.pop("DISPLAY", None)
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "app.main", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_threads_bound_follows_the_cpu_count(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert parse_args(["--threads", "8"]).models.threads == 8
    with pytest.raises(SystemExit):
        parse_args(["--threads", "9"])
    monkeypatch.setattr("os.cpu_count", lambda: 128)
    assert parse_args(["--threads", "256"]).models.threads == 256
    with pytest.raises(SystemExit):
        parse_args(["--threads", "257"])


def test_bad_argument_in_a_real_process(tmp_path):
    result = _run(["--source", "nonsense"], tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and "unknown source" in result.stderr


# the product has no hidden switch for fakes: tests inject one through main()'s loader argument
FAKE_MAIN = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import app.model_choice
from app.main import main
from app_fakes import FakeLoader
app.model_choice.demo_model_path = lambda: None  # deterministic whether or not the demo model is installed
sys.exit(main(sys.argv[1:], loader=FakeLoader(unavailable={{"missing://model"}})))
"""


# capture retries every 10 ms instead of after 0.5, 1, 2, 5 s: a source that never comes back
# gives up (5 attempts) in well under a second
FAST_RETRIES = "import app.capture\napp.capture.RETRY_DELAYS = (0.01,)\n"


@pytest.fixture
def colour_folder(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, rgb in enumerate([(220, 40, 40), (40, 170, 60), (40, 80, 220)]):
        Image.new("RGB", (64, 48), rgb).save(folder / f"{i}.png")
    return folder


def test_exit_after_captions_prints_n_captions_and_exits_0(tmp_path, colour_folder):
    result = _run(["--source", f"folder:{colour_folder}", "--interval", "0.1", "--model", "fake://blip",
                   "--exit-after-captions", "3"], tmp_path, code=FAKE_MAIN)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(
        re.fullmatch(r"a picture of a (red|green|blue) scene", line) for line in lines), lines
    assert "Traceback" not in result.stderr


def test_exit_after_captions_reports_model_failure(tmp_path, colour_folder):
    result = _run(["--source", f"folder:{colour_folder}", "--model", "missing://model", "--exit-after-captions", "1"],
                  tmp_path, code=FAKE_MAIN)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("blip-cam: error: ") and "not in the cache" in result.stderr


def test_exit_after_captions_in_process(qtbot, make_window, fake_loader):
    window = make_window(loader=fake_loader, continuous=False)
    out, err = io.StringIO(), io.StringIO()
    checker = ExitAfterCaptions(window, 2, out, err)  # forces continuous captioning
    qtbot.waitUntil(lambda: checker.exit_code is not None, timeout=5000)
    assert checker.exit_code == 0 and not window.isVisible()
    assert out.getvalue().splitlines() == ["a picture of a red scene"] * 2


def test_exit_after_captions_gives_up_on_an_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run(["--source", f"folder:{empty}", "--model", "fake://blip", "--exit-after-captions", "1"],
                  tmp_path, code=FAST_RETRIES + FAKE_MAIN, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert re.fullmatch(rf"blip-cam: error: folder {re.escape(str(empty))}: .*\(gave up after 5 attempts\)\n",
                        result.stderr), result.stderr


def test_exit_after_captions_says_why_a_folder_of_corrupt_images_gave_nothing(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"not a jpeg at all")
    (bad / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    result = _run(["--source", f"folder:{bad}", "--model", "fake://blip", "--exit-after-captions", "1"],
                  tmp_path, code=FAST_RETRIES + FAKE_MAIN, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    last = result.stderr.splitlines()[-1]  # before it, one log line per skipped file
    assert re.fullmatch(rf"blip-cam: error: folder {re.escape(str(bad))}: "
                        r"has no readable images \(2 skipped; the first: "
                        r".*not an image in a supported format.*\) \(gave up after 5 attempts\)", last), last
    assert "camera" not in result.stderr


def test_a_folder_with_a_non_utf8_name_works(tmp_path, colour_folder):
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    colour_folder.rename(folder)
    result = _run(["--source", f"folder:{folder}", "--interval", "0.1", "--model", "fake://blip",
                   "--exit-after-captions", "1"], tmp_path, code=FAKE_MAIN)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"a picture of a (red|green|blue) scene\n", result.stdout)


@pytest.mark.parametrize("make_source, message", [
    (lambda tmp: OpenCVSource(99), "webcam 99: could not be opened"),
    (lambda tmp: OpenCVSource(str(_garbage(tmp / "garbage.mp4"))), "garbage.mp4: not a video OpenCV can read"),
    (lambda tmp: OpenCVSource(str(_frameless_avi(tmp / "frameless.avi"))),
     "frameless.avi: no frame could be decoded: not a video OpenCV can read"),
    (lambda tmp: FakeSource(script={n: "none" for n in range(1, 10**6)}), "fake camera: no frame"),
])
def test_exit_after_captions_gives_up_on_a_source_that_never_comes_back(qtbot, make_window, fake_loader, tmp_path,
                                                                        make_source, message):
    window = make_window(make_source(tmp_path), loader=fake_loader, retry_delays=(0.01,), start=False)
    out, err = io.StringIO(), io.StringIO()
    checker = ExitAfterCaptions(window, 1, out, err)  # before start(), as main() does
    window.start()
    qtbot.waitUntil(lambda: checker.exit_code is not None, timeout=5000)
    assert checker.exit_code == 1 and not window.isVisible() and out.getvalue() == ""
    assert err.getvalue().startswith("blip-cam: error: ") and message in err.getvalue()
    assert err.getvalue().endswith("(gave up after 5 attempts)\n") and err.getvalue().count("\n") == 1


def test_the_window_keeps_retrying_and_shows_why(qtbot, make_window, fake_loader):
    source = FakeSource(open_failures=10**6)
    window = make_window(source, loader=fake_loader, retry_delays=(0.01,))
    qtbot.waitUntil(lambda: source.opens > 2 * ExitAfterCaptions.max_source_failures, timeout=5000)
    assert window.isVisible() and window.capture.isRunning()
    assert window.source_label.text().startswith("fake camera: fake camera not connected — retrying")


def _garbage(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 20)
    return path


def _frameless_avi(path: Path) -> Path:
    import cv2

    cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48)).release()
    return path


@pytest.mark.skipif(demo_model_path() is None, reason="needs blip_core.load and the bundled demo model")
def test_exit_after_captions_with_the_real_demo_model(tmp_path):
    result = _run(["--source", "scenes", "--interval", "0.5", "--model", str(demo_model_path()), "--precision", "fp32",
                   "--threads", "1", "--exit-after-captions", "2"], tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(line.strip() for line in lines)
