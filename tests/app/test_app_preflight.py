"""Before any window: a missing system library or display is one line and exit 2 (not Qt's abort), and
a Qt binding that frees ``None`` is refused (it crashed the app after ~15 s at camera rate)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from app import main as app_main
from app import qt_preflight

MISSING = "libblipcam-missing-xcb.so.4"  # a soname no system has


@pytest.fixture(scope="module")
def broken_plugin(tmp_path_factory):
    """A shared object linked against a library that is then deleted: what Qt's xcb plugin looks
    like to the dynamic loader on a desktop without libxcb-icccm4 and friends."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler to build the stand-in plugin")
    root = tmp_path_factory.mktemp("plugin")
    (root / "stub.c").write_text("int stub(void) { return 1; }\n")
    (root / "plugin.c").write_text("int stub(void);\nint plugin(void) { return stub(); }\n")
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(root / MISSING), f"-Wl,-soname,{MISSING}", str(root / "stub.c")],
                   check=True)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(root / "libqxcb.so"), str(root / "plugin.c"),
                    f"-L{root}", f"-l:{MISSING}", "-Wl,--no-as-needed"], check=True)
    (root / MISSING).unlink()
    return root / "libqxcb.so"


@pytest.fixture
def debian(tmp_path):
    path = tmp_path / "os-release"
    path.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n')
    return path


def test_missing_library_is_named_with_the_apt_line(broken_plugin, debian, monkeypatch):
    monkeypatch.setitem(qt_preflight.APT_PACKAGES, MISSING, "libblipcam-missing-xcb4")
    monkeypatch.setattr(qt_preflight, "loadable", lambda soname: soname != "libxcb-cursor.so.0")
    message = qt_preflight.platform_problem({"DISPLAY": ":0"}, plugins={"xcb": broken_plugin}, os_release=debian)
    assert MISSING in message and "libxcb-cursor.so.0" in message
    assert message.endswith("Install them with: sudo apt-get install libblipcam-missing-xcb4 libxcb-cursor0")
    assert "\n" not in message


def test_sound_plugin_passes(debian, monkeypatch):
    sound = qt_preflight.plugin_path("offscreen")  # ships with PySide6, needs no X libraries
    monkeypatch.setattr(qt_preflight, "loadable", lambda soname: True)
    assert qt_preflight.unresolved_libraries(sound) == []
    assert qt_preflight.platform_problem({"DISPLAY": ":0"}, plugins={"xcb": sound}, os_release=debian) == ""


def test_other_systems_get_the_library_names(broken_plugin, tmp_path, monkeypatch):
    fedora = tmp_path / "os-release"
    fedora.write_text("ID=fedora\n")
    monkeypatch.setattr(qt_preflight, "loadable", lambda soname: True)
    message = qt_preflight.platform_problem({"DISPLAY": ":0"}, plugins={"xcb": broken_plugin}, os_release=fedora)
    assert "apt-get" not in message and f"provide {MISSING}" in message


@pytest.mark.parametrize("environ, expected", [
    ({}, ["xcb"]),
    ({"QT_QPA_PLATFORM": "offscreen"}, ["offscreen"]),
    ({"QT_QPA_PLATFORM": "wayland;xcb"}, ["wayland", "xcb"]),
    ({"QT_QPA_PLATFORM": "vnc:size=800x480"}, ["vnc"]),
    ({"XDG_SESSION_TYPE": "wayland", "WAYLAND_DISPLAY": "wayland-0"}, ["wayland", "xcb"]),
])
def test_candidate_platforms(environ, expected):
    assert qt_preflight.candidate_platforms(environ) == expected


def test_no_display_suggests_offscreen_and_the_cli():
    message = qt_preflight.platform_problem({})
    assert "DISPLAY is not set" in message and "QT_QPA_PLATFORM=offscreen" in message and "blip caption" in message
    assert qt_preflight.platform_problem({"QT_QPA_PLATFORM": "offscreen"}) == ""


def test_blip_cam_exits_2_with_the_hint_before_qt(broken_plugin, debian, monkeypatch, capsys):
    """The entry point itself: one line on stderr, status 2, no QApplication needed."""
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.setattr(qt_preflight, "plugin_path", lambda platform: broken_plugin)
    assert app_main.main(["--source", "scenes"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (len(err) == 1 and err[0].startswith("blip-cam: error: Qt cannot load its xcb platform plugin")
            and MISSING in err[0])


def test_no_display_exits_2_in_a_fresh_process(tmp_path):
    """As a user on an SSH session would see it: no DISPLAY, no QT_QPA_PLATFORM."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "BLIP_CAM_SETTINGS": str(tmp_path / "s.ini")}
    run = subprocess.run([sys.executable, "-m", "app", "--source", "scenes"], env=env, capture_output=True,
                         text=True, timeout=60, cwd=str(app_main.__file__).rsplit("/app/", 1)[0])
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("blip-cam: error: no display") and run.stderr.count("\n") == 1


def test_installed_binding_keeps_none_alive(qapp):
    """Thousands of void calls into Qt (what the overlay makes per second at 30 fps) must not change
    None's reference count: PySide6 6.12.0 on Python 3.11 lost one per call."""
    from PySide6.QtWidgets import QLabel

    label = QLabel()
    before = sys.getrefcount(None)
    for _ in range(5000):
        label.setText("caption")
        label.update()
    assert before - sys.getrefcount(None) < 100
    assert qt_preflight.binding_problem() == ""


def test_a_leaking_binding_is_refused(monkeypatch):
    monkeypatch.setattr(qt_preflight, "none_refcount_drift", lambda calls=64: calls)
    if sys.version_info >= (3, 12):
        assert qt_preflight.binding_problem() == ""  # None is immortal there
    else:
        message = qt_preflight.binding_problem()
        assert "loses a reference to None" in message and "PySide6-Essentials>=6.8,<6.12" in message


def test_drift_measurement_gives_back_what_it_lost():
    before = sys.getrefcount(None)
    assert qt_preflight.none_refcount_drift() == 0  # the pinned binding is sound
    assert abs(sys.getrefcount(None) - before) < 50


def test_without_qt_installed_blip_cam_names_the_extra(tmp_path):
    """The library installs without Qt; `blip-cam` then says which extra to install."""
    code = ("import sys; sys.modules['PySide6'] = None\nfrom app.main import main\n"
            "sys.exit(main(['--source', 'scenes']))")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "QT_QPA_PLATFORM": "offscreen"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                         cwd=str(app_main.__file__).rsplit("/app/", 1)[0])
    assert run.returncode == 2 and run.stderr == (
        "blip-cam: error: blip-cam needs Qt for Python, which is not installed: pip install 'blipcam[app]' "
        "(or run make run)\n")
