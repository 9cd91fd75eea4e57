"""Hostile inputs to blip-cam's command line, settings file and sources, and to training runs.

Every attack is generated here: settings files of garbage, arguments that are not UTF-8, empty
and corrupt image folders, a garbage video, a camera that does not exist, WebDataset shards cut
short at many offsets, a training process killed in the middle of a checkpoint save.
The app runs in a real process (offscreen, fake model injected through ``main(loader=...)``,
capture retries shortened so a source that never comes back gives up in well under a second).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before anything loads Qt

REPO = Path(__file__).resolve().parents[2]

APP_MAIN = f"""
import sys
sys.path.insert(0, {str(REPO / "tests" / "app")!r})
import app.capture
import app.model_choice
from app.main import main
from app_fakes import FakeLoader
app.capture.RETRY_DELAYS = (0.01,)
app.model_choice.demo_model_path = lambda: None
sys.exit(main(sys.argv[1:], loader=FakeLoader()))
"""


def blip_cam(tmp_path: Path, *args: str, settings: Path | None = None) -> subprocess.CompletedProcess:
    """``blip-cam ARGS`` with the fake model, isolated home and settings; args may hold surrogate
    escapes, which reach the process as the original bytes."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path / "home"),
           "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "BLIP_CAM_SETTINGS": str(settings or tmp_path / "s.ini")}
    env.pop("DISPLAY", None)
    return subprocess.run([sys.executable, "-c", APP_MAIN, "--model", "fake://blip", *args], cwd=REPO, env=env,
                          capture_output=True, timeout=60)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The stderr line starting with ``blip-cam: error:`` (OpenCV/FFmpeg may print warnings too)."""
    lines = [line for line in result.stderr.decode("utf-8", "replace").splitlines() if line.startswith("blip-cam: ")]
    assert len(lines) == 1, result.stderr
    assert b"Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def red_folder(tmp_path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.new("RGB", (64, 48), (220, 40, 40)).save(folder / "0.png")
    return folder


def non_utf8(parent: Path, name: bytes) -> Path:
    """A path under ``parent`` whose last part is bytes that are not UTF-8 (as str, surrogate-escaped)."""
    return Path(os.fsdecode(bytes(parent) + b"/" + name))


# --- the settings file ----------------------------------------------------------------------------

def garbage_values(rng: random.Random) -> list[str]:
    """INI values of every kind a damaged or hand-edited file can hold."""
    return [
        "3000000000", "-1", "0", str(2**64), "9" * 5000, "1e9", "20.5", "nan", "", "  ", "a, b, c",
        "x" * 1_000_000, "@ByteArray(" + "\\xff" * 5000 + ")", "@Variant(\\0\\0\\0\\x7f\\0\\0\\0\\x5QRect)",
        "@Rect(0 0 -5 99999999)", "\\0\\0\\0", "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(200)),
    ]


@pytest.fixture
def hostile_settings(tmp_path) -> Path:
    """Every key of the settings file set to garbage (one value per key, varying), max_tokens to
    the value that stopped the app from starting on every launch."""
    from app.settings import DEFAULTS

    rng = random.Random(15)
    values = garbage_values(rng)
    sections: dict[str, list[str]] = {}
    for i, key in enumerate(DEFAULTS):
        section, name = key.split("/")
        value = "3000000000" if key == "decoding/max_tokens" else values[(i * 5 + 1) % len(values)]
        sections.setdefault(section, []).append(f"{name}={value}")
    path = tmp_path / "hostile.ini"
    path.write_text("".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items()), encoding="utf-8")
    return path


@pytest.mark.parametrize("value_index", range(17))
def test_garbage_in_any_setting_gives_a_valid_value(tmp_path, value_index):
    from app.settings import RULES, Settings

    value = garbage_values(random.Random(15))[value_index]
    path = tmp_path / "s.ini"
    path.write_text("".join(f"[{key.split('/')[0]}]\n{key.split('/')[1]}={value}\n" for key in RULES), encoding="utf-8")
    settings = Settings(path)
    for key, rule in RULES.items():
        got = settings.get(key)
        assert type(got) is type(rule.default), (key, value[:40])
        if rule.low is not None:
            assert rule.low <= got <= rule.high
        if rule.choices:
            assert got in rule.choices
        if rule.max_len is not None:
            assert len(got) <= rule.max_len


def test_the_controls_load_any_settings_file(qtbot, tmp_path):
    from app.settings import Settings
    from app.widgets.controls import CaptionControls

    for value in garbage_values(random.Random(15)):
        path = tmp_path / "s.ini"
        path.write_text(f"[decoding]\nmax_tokens={value}\nstrategy={value}\n[prompt]\nmode={value}\ncustom={value}\n"
                        f"[captioning]\ncontinuous={value}\n", encoding="utf-8")
        controls = CaptionControls()
        qtbot.addWidget(controls)
        controls.load(Settings(path))  # max_tokens=3000000000 raised OverflowError here, on every launch
        assert 1 <= controls.options().max_new_tokens <= 60


def test_the_app_starts_with_a_settings_file_of_garbage(tmp_path, red_folder, hostile_settings):
    result = blip_cam(tmp_path, "--source", f"folder:{red_folder}", "--interval", "0.05", "--exit-after-captions", "1",
                      settings=hostile_settings)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "a picture of a red scene\n"


# --- arguments ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--threads", "100000"], "--threads must be in [1, "),
    (["--threads", "-3"], "--threads must be in [1, "),
    (["--model", ""], "--model is empty"),
    (["--caption-model", ""], "--caption-model is empty"),
    (["--vqa-model", "\t"], "--vqa-model is empty"),
    (["--interval", "inf"], "--interval must be in"),
    (["--interval", "1e-300"], "--interval must be in"),
])
def test_bad_numbers_and_empty_models_are_refused(capsys, args, message):
    from app.arguments import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(f"blip-cam: error: {message}") and err.count("\n") == 1


def test_a_video_path_that_is_not_utf8_is_refused_not_a_crash(tmp_path):
    video = non_utf8(tmp_path, b"clip\xff.avi")
    video.write_bytes(b"\0" * 1024)
    result = blip_cam(tmp_path, "--source", f"file:{video}", "--exit-after-captions", "1")
    # it was SIGSEGV: cv2.VideoCapture crashes on a str holding surrogate escapes
    assert result.returncode == 2
    assert one_error_line(result) == (f"blip-cam: error: video path {tmp_path}/clip\\xff.avi is not valid UTF-8, "
                                      "which OpenCV cannot open; rename the file")


def test_a_settings_path_that_is_not_utf8_is_refused(tmp_path):
    result = blip_cam(tmp_path, "--settings", str(non_utf8(tmp_path, b"s\xe9.ini")), "--exit-after-captions", "1",
                      settings=tmp_path / "env.ini")
    assert result.returncode == 2 and "is not valid UTF-8, which Qt cannot open" in one_error_line(result)
    assert not (tmp_path / "s.ini").exists()  # Qt would have dropped the byte and written "s.ini"


def test_a_folder_path_that_is_not_utf8_works(tmp_path, red_folder):
    folder = non_utf8(tmp_path, b"caf\xe9")
    red_folder.rename(folder)
    result = blip_cam(tmp_path, "--source", f"folder:{folder}", "--interval", "0.05", "--exit-after-captions", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "a picture of a red scene\n"


# --- sources that never come back -----------------------------------------------------------------

def _empty_folder(tmp: Path) -> str:
    (tmp / "empty").mkdir()
    return f"folder:{tmp / 'empty'}"


def _corrupt_folder(tmp: Path) -> str:
    folder = tmp / "corrupt"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\xff\xd8 not really")
    (folder / "b.png").write_bytes(os.urandom(300))
    (folder / "c.gif").write_text("GIF89a")
    return f"folder:{folder}"


def _garbage_video(tmp: Path) -> str:
    (tmp / "garbage.mp4").write_bytes(random.Random(8).randbytes(20_000))
    return f"file:{tmp / 'garbage.mp4'}"


@pytest.mark.parametrize("make_spec, message", [
    (_empty_folder, "empty: "),
    (_corrupt_folder, "corrupt: "),
    (_garbage_video, "garbage.mp4: not a video OpenCV can read"),
    (lambda tmp: "webcam:99", "webcam 99: could not be opened"),
])
def test_a_headless_run_ends_when_its_source_never_comes_back(tmp_path, make_spec, message):
    result = blip_cam(tmp_path, "--source", make_spec(tmp_path), "--interval", "0.05", "--exit-after-captions", "1")
    assert result.returncode == 1 and result.stdout == b""
    line = one_error_line(result)
    assert message in line and line.endswith("(gave up after 5 attempts)")
    assert "camera stopped or was unplugged" not in line  # what a folder of corrupt files used to report


# --- training: shards cut short, empty captions, killed saves -------------------------------------

@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.33, 0.5, 0.61, 0.77, 0.9, 0.99])
def test_a_shard_cut_anywhere_counts_what_it_lost(tmp_path, fraction):
    from training.data import ImageTransform, WebCaptions
    from training.make_scenes import write_scene_shards

    shard = write_scene_shards(tmp_path, count=12, shards=1, size=16)[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: int(len(data) * fraction)])
    ds = WebCaptions(str(shard), ImageTransform(16), shuffle_buffer=0)
    ds.set_epoch(0)
    items = list(ds)
    good = sum("pixels" in s for s in items)
    assert good + sum(s["skipped"] for s in items) == 12 and good < 12


def test_empty_web_captions_are_not_trained_on(tmp_path):
    import webdataset as wds

    from training.data import ImageTransform, WebCaptions

    blank = [" ", "...", "\t\n", "#*~", '"()"', "!!!"]
    with wds.TarWriter(str(tmp_path / "000000.tar")) as w:
        for i, text in enumerate(blank + ["a green star"]):
            image = Image.new("RGB", (16, 16), (40, 170, 60))
            path = tmp_path / f"{i}.png"
            image.save(path)
            w.write({"__key__": f"{i:03d}", "png": path.read_bytes(), "json": json.dumps({"caption": text})})
    ds = WebCaptions(str(tmp_path / "000000.tar"), ImageTransform(16), shuffle_buffer=0)
    ds.set_epoch(0)
    items = list(ds)
    assert [s["caption"] for s in items if "pixels" in s] == ["a green star"]
    assert sum(s["skipped"] for s in items) == len(blank)


KILLED_RUN = """
import os, signal, sys
import training.run_state as ck
from training import config as C, pretrain
from tests.training.tiny_runs import tiny

save = ck.torch.save
def save_then_die(obj, path, *a, **k):
    save(obj, path, *a, **k)
    if isinstance(obj, dict) and obj.get("step") == 2:  # mid-save: state written, folder not renamed yet
        os.kill(os.getpid(), signal.SIGKILL)
ck.torch.save = save_then_die
pretrain.run(tiny(C.PretrainConfig, sys.argv[1], max_steps=2, save_every=1, keep_checkpoints=5))
"""


def test_a_run_killed_during_a_save_resumes_cleanly(tmp_path):
    from tests.training.tiny_runs import records, tiny
    from training import config as C
    from training import pretrain

    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(out)], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f".step-0000002.partial-{child.pid}",
                                                                       "step-0000001"]
    assert [r["step"] for r in records(out)] == [1, 2]

    pretrain.run(tiny(C.PretrainConfig, out, resume=str(out), max_steps=2, save_every=1, keep_checkpoints=5))
    assert [r["step"] for r in records(out)] == [1, 2]  # step 2 once, not twice
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000001", "step-0000002"]
