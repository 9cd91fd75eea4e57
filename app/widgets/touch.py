"""Touch-sized controls: the one minimum height for buttons and boxes a finger must hit.

Touch guidelines ask for ~7-9 mm targets; on the 7" Raspberry Pi Touch Displays (about 5.5 px/mm)
that is ~40-48 px, so 44 px keeps taps reliable while the 480-px-high screen still fits the
preview, the main buttons and the question box.
"""

from __future__ import annotations

from PySide6.QtWidgets import QWidget

TOUCH_MIN_HEIGHT = 44


def touch_sized(*widgets: QWidget) -> None:
    """Give each widget at least TOUCH_MIN_HEIGHT pixels of height."""
    for widget in widgets:
        widget.setMinimumHeight(TOUCH_MIN_HEIGHT)
