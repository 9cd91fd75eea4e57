"""Fixtures for the app tests: offscreen Qt, isolated settings, a fake model behind the
``model_loader`` swap point, a window factory, and a napari-style dangling-QThread check.

When the bundled demo model exists, ``model_loader`` is ``CountingLoader(blip_core.load)`` and
``model_source`` the demo model's path: the window tests then run a real small BLIP (int8, as the
app defaults to; converted once per session into a shared cache). Without it (a checkout that has
not built it yet) they fall back to the fake. Tests that use ``model_loader`` (via
``make_window``'s default) check only what holds for any model: prompts and options reaching it,
encode counts, overlay format, snapshot files, threads. Tests that need predictable text ("a red
scene") or slow calls pass ``fake_loader`` or their own ``FakeLoader`` explicitly.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

# offscreen unless the caller chose a platform (Dangerzone's pattern); set before Qt loads
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# `import app_fakes` from any test module (named apart from other suites' fakes)
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
from app_fakes import FakeLoader, FakeModel, FakeSource  # noqa: E402


def pytest_collection_modifyitems(items):
    """Qt warnings fail app tests (e.g. "QThread: Destroyed while thread is still running"),
    except the offscreen platform's "This plugin does not support raise()" and the like."""
    for item in items:
        if "tests/app/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.qt_log_level_fail("WARNING"))
            item.add_marker(pytest.mark.qt_log_ignore("This plugin does not support"))


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path, monkeypatch):
    """Never read or write the user's real settings or pictures folder."""
    monkeypatch.setenv("BLIP_CAM_SETTINGS", str(tmp_path / "env-settings.ini"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture(autouse=True)
def dangling_qthreads(monkeypatch):
    """Fail a test that leaves a QThread running (napari PR #5373): record every start() with
    its stack, and check after the test's own fixtures have shut their threads down."""
    from PySide6.QtCore import QThread
    from shiboken6 import isValid

    started: list[tuple[QThread, str]] = []
    base_start = QThread.start

    def start(self, *args):
        started.append((self, "".join(traceback.format_stack(limit=8))))
        base_start(self, *args)

    monkeypatch.setattr(QThread, "start", start)
    yield
    dangling = [stack for thread, stack in started if isValid(thread) and thread.isRunning()]
    for thread, _ in started:  # don't let one leak abort the next tests
        if isValid(thread) and thread.isRunning():
            getattr(thread, "shutdown", thread.quit)()  # our threads stop via shutdown(), not an event loop
            thread.wait(2000)
    assert not dangling, "QThread(s) still running after the test, started at:\n" + "\n".join(dangling)


@pytest.fixture
def fake_model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def fake_loader(fake_model) -> FakeLoader:
    """Always the fake: for tests that predict the model's text."""
    return FakeLoader(fake_model)


from app.model_choice import demo_model_path  # noqa: E402

DEMO_MODEL = demo_model_path()  # computed once, before any test monkeypatches it


@pytest.fixture(scope="session", autouse=True)
def _shared_int8_cache(tmp_path_factory):
    """One int8 conversion of the demo model per session (HOME changes per test)."""
    before = os.environ.get("BLIPCAM_CACHE")
    os.environ["BLIPCAM_CACHE"] = str(tmp_path_factory.mktemp("blipcam-cache"))
    if DEMO_MODEL is not None:  # convert now, not inside the first test's 10 s model wait
        import blip_core

        blip_core.load(DEMO_MODEL, precision="int8", warmup=False)
    yield
    if before is None:
        os.environ.pop("BLIPCAM_CACHE", None)
    else:
        os.environ["BLIPCAM_CACHE"] = before


@pytest.fixture
def model_loader(fake_loader):
    """Swap point: a callable with blip_core.load's signature whose models count their calls."""
    if DEMO_MODEL is None:
        return fake_loader
    from app_fakes import CountingLoader

    import blip_core

    return CountingLoader(blip_core.load)


@pytest.fixture
def model_source() -> str:
    """Swap point: what --model names (a hub id or a path the loader understands)."""
    return str(DEMO_MODEL) if DEMO_MODEL is not None else "fake://blip"


@pytest.fixture
def settings(tmp_path):
    from app.settings import Settings

    s = Settings(tmp_path / "settings.ini")
    s.set("snapshots/folder", str(tmp_path / "snapshots"))
    return s


@pytest.fixture
def make_window(qtbot, settings, model_loader, model_source):
    """Factory: a started MainWindow on a FakeSource; shut down (threads joined) at teardown."""
    from app.arguments import AppConfig
    from app.main_window import MainWindow
    from app.model_choice import ModelRequest

    windows = []

    def make(source=None, *, loader=None, models: ModelRequest | None = None, continuous: bool | None = True,
             start=True, retry_delays=(0.02,), wait_models=True):
        models = models or ModelRequest(caption=model_source, vqa=model_source, precision="int8")
        window = MainWindow(AppConfig(models=models), settings, loader=loader or model_loader,
                            source=source or FakeSource(), retry_delays=retry_delays)
        if continuous is not None:  # None: as the settings say
            window.set_continuous(continuous, persist=False)
        qtbot.addWidget(window)
        windows.append(window)
        # shortcuts only fire in the active window, so show and activate it (offscreen too)
        window.show()
        window.activateWindow()
        qtbot.waitUntil(lambda: window.isActiveWindow(), timeout=3000)
        if start:
            window.start()
            if wait_models:
                qtbot.waitUntil(lambda: window.models is not None and (window.models.answerer is not None
                                                                      or bool(window.models.notices)), timeout=10_000)
        return window

    yield make
    for window in windows:
        window.shutdown()
