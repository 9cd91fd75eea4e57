"""blip-cam on the Raspberry Pi Touch Displays (800x480 landscape, 720x1280 portrait): the preview
with its caption overlay, the question box and the main buttons all in view without scrolling;
touch-sized buttons; the drawer of seldom-used controls; the overlay at the top or the bottom;
``--fullscreen`` kiosk mode."""

from __future__ import annotations

import pytest
from app_fakes import FakeSource
from PySide6.QtCore import QPoint, QRect, Qt, QTimer
from PySide6.QtWidgets import QAbstractScrollArea, QApplication, QWidget

from app import main as app_main
from app.arguments import parse_args
from app.widgets.touch import TOUCH_MIN_HEIGHT

TOUCH_DISPLAYS = [(800, 480), (720, 1280)]


def visible_rect(window, widget: QWidget, rect: QRect | None = None) -> QRect:
    """``rect`` (default: the whole widget) in window coordinates, after checking that the widget
    is shown and that no scroll area between it and the window hides any of it."""
    assert widget.isVisible(), f"{widget.objectName() or type(widget).__name__} is hidden"
    rect = rect if rect is not None else widget.rect()
    mapped = QRect(widget.mapTo(window, rect.topLeft()), rect.size())
    parent = widget.parentWidget()
    while parent is not None and parent is not window:
        if isinstance(parent, QAbstractScrollArea):
            viewport = parent.viewport()
            shown = QRect(viewport.mapTo(window, QPoint(0, 0)), viewport.size())
            assert shown.contains(mapped), f"{widget.objectName()} is scrolled out of view"
        parent = parent.parentWidget()
    return mapped


def caption_at_size(qtbot, make_window, fake_loader, size):
    window = make_window(FakeSource(colours=("blue",)), loader=fake_loader)
    window.resize(*size)
    qtbot.waitUntil(lambda: window.size().width() == size[0] and window.size().height() == size[1], timeout=3000)
    with qtbot.waitSignal(window.caption_shown, timeout=5000):
        pass
    window.preview.grab()  # paints the overlay, which records where it went
    return window


@pytest.mark.parametrize("size", TOUCH_DISPLAYS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_preview_caption_and_question_box_fit_a_touch_display(qtbot, make_window, fake_loader, size):
    window = caption_at_size(qtbot, make_window, fake_loader, size)
    inside = window.rect()
    assert inside.contains(visible_rect(window, window.questions.box))
    assert window.preview.overlay_text()[0] == "a picture of a blue scene"
    overlay = window.preview.overlay_rect.toAlignedRect()
    assert not overlay.isEmpty() and window.preview.rect().contains(overlay)
    assert inside.contains(visible_rect(window, window.preview, overlay))
    preview = visible_rect(window, window.preview)
    assert preview.width() * preview.height() >= 0.4 * size[0] * size[1]
    buttons = (window.controls.caption_button, window.controls.pause_button, window.save_button,
               window.more_button, window.questions.ask_button)
    for button in buttons:
        assert inside.contains(visible_rect(window, button))
        assert button.height() >= TOUCH_MIN_HEIGHT, button.text()
    assert window.questions.box.height() >= TOUCH_MIN_HEIGHT
    assert not window.drawer.isVisible()  # the seldom-used controls wait in the drawer
    if size[1] > size[0]:  # portrait: the questions under the preview
        assert visible_rect(window, window.questions.box).top() > preview.bottom()


def test_the_drawer_opens_in_reach_and_keeps_the_question_box_in_view(qtbot, make_window, fake_loader):
    window = caption_at_size(qtbot, make_window, fake_loader, (800, 480))
    qtbot.mouseClick(window.more_button, Qt.MouseButton.LeftButton)
    assert window.drawer.isVisible() and window.controls.strategy.isVisible()
    assert window.rect().contains(visible_rect(window, window.questions.box))
    assert window.rect().contains(visible_rect(window, window.drawer))
    window.resize(1280, 800)  # a desktop size: the drawer opens by itself
    qtbot.waitUntil(window.drawer.isVisible, timeout=3000)


def test_the_overlay_moves_to_the_top_and_the_choice_is_kept(qtbot, make_window, fake_loader, settings):
    window = caption_at_size(qtbot, make_window, fake_loader, (800, 480))
    bottom = window.preview.overlay_rect
    window.controls.overlay_position.setCurrentText("top")
    window.preview.grab()
    top = window.preview.overlay_rect
    assert top.height() == pytest.approx(bottom.height()) and top.bottom() < bottom.top()
    assert settings.get("overlay/position") == "top"
    again = make_window(loader=fake_loader, start=False)  # a new window starts with the overlay on top
    assert again.preview.overlay_position == "top"


def test_fullscreen_parses_and_is_a_command_line_choice():
    assert parse_args(["--fullscreen"]).fullscreen and not parse_args([]).fullscreen


def test_fullscreen_in_process(qtbot, fake_loader, monkeypatch, tmp_path):
    """main() with --fullscreen shows the window full screen; the run ends as soon as it is shown."""
    from app.main_window import MainWindow

    states = []

    def start_and_quit(window):
        states.append(window.windowState())
        qtbot.addWidget(window)  # deleted at teardown: a stale window would stay the active one
        QTimer.singleShot(0, window.close)

    monkeypatch.setattr(MainWindow, "start", start_and_quit)
    monkeypatch.setattr(app_main, "_quiet_offscreen", lambda: None)  # keep pytest-qt's message handler
    timed_out = []
    watchdog = QTimer(singleShot=True, interval=10_000)  # closing the last window ends the loop; if not, fail
    watchdog.timeout.connect(lambda: timed_out.append(True) or QApplication.instance().quit())
    watchdog.start()
    try:
        status = app_main.main(["--fullscreen", "--settings", str(tmp_path / "s.ini")], loader=fake_loader,
                               source=FakeSource())
    finally:
        watchdog.stop()
    assert not timed_out, "closing the window did not end the event loop"
    assert status == 0 and len(states) == 1 and states[0] & Qt.WindowState.WindowFullScreen


def test_f11_and_escape_leave_and_enter_full_screen(qtbot, make_window, fake_loader):
    window = make_window(loader=fake_loader, start=False)
    window.showFullScreen()
    qtbot.waitUntil(window.isFullScreen, timeout=3000)
    qtbot.keyClick(window, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: not window.isFullScreen(), timeout=3000)
    qtbot.keyClick(window, Qt.Key.Key_F11)
    qtbot.waitUntil(window.isFullScreen, timeout=3000)
    qtbot.keyClick(window, Qt.Key.Key_F11)
    qtbot.waitUntil(lambda: not window.isFullScreen(), timeout=3000)
