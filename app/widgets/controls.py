"""Caption controls: conditional prompt, decoding strategy and length, continuous / on-demand,
pause, where the overlay sits. The widget turns its state into ``CaptionOptions``; it knows
nothing about models.

The caption-now and pause buttons are used all the time, the rest seldom: the buttons live in
``buttons``, a separate widget the window keeps in reach, while this widget can sit in a drawer."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.prompts import (
    MAX_PROMPT_CHARS,
    MAX_TOKENS,
    MIN_TOKENS,
    PROMPT_LABELS,
    PROMPT_MODES,
    CaptionOptions,
    build_prompt,
)
from app.settings import Settings
from app.widgets.overlay import OVERLAY_POSITIONS
from app.widgets.plain_text import plain_label
from app.widgets.touch import touch_sized
from blip_core.generation import STRATEGIES


class CaptionControls(QWidget):
    """``options_changed`` fires on any prompt/decoding edit; the buttons have their own signals;
    ``overlay_moved(position)`` when the overlay position changes."""

    options_changed = Signal()
    overlay_moved = Signal(str)
    continuous_toggled = Signal(bool)
    caption_now = Signal()
    pause_toggled = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)

        prompt_box = QGroupBox("Prompt")
        prompt_layout = QVBoxLayout(prompt_box)
        self.prompt_group = QButtonGroup(self)
        self.prompt_buttons: dict[str, QRadioButton] = {}
        for i, mode in enumerate(PROMPT_MODES):
            button = QRadioButton(PROMPT_LABELS[mode])
            button.setObjectName(f"prompt_{mode}")
            self.prompt_group.addButton(button, i)
            self.prompt_buttons[mode] = button
            prompt_layout.addWidget(button)
        self.custom_prompt = QLineEdit()
        self.custom_prompt.setObjectName("custom_prompt")
        self.custom_prompt.setPlaceholderText("e.g. a close-up of")
        self.custom_prompt.setMaxLength(MAX_PROMPT_CHARS)
        prompt_layout.addWidget(self.custom_prompt)
        self.prompt_buttons["picture"].setChecked(True)
        layout.addWidget(prompt_box)

        decoding_box = QGroupBox("Decoding")
        form = QFormLayout(decoding_box)
        self.strategy = QComboBox()
        self.strategy.setObjectName("strategy")
        self.strategy.addItems(STRATEGIES)
        self.max_tokens = QSpinBox()
        self.max_tokens.setObjectName("max_tokens")
        self.max_tokens.setRange(MIN_TOKENS, MAX_TOKENS)
        self.max_tokens.setValue(20)
        form.addRow(plain_label("Strategy"), self.strategy)
        form.addRow(plain_label("Max tokens"), self.max_tokens)
        layout.addWidget(decoding_box)

        mode_box = QGroupBox("Captioning")
        mode_layout = QVBoxLayout(mode_box)
        self.continuous = QCheckBox("Continuous (whenever the model is free)")
        self.continuous.setObjectName("continuous")
        self.continuous.setChecked(True)
        mode_layout.addWidget(self.continuous)
        layout.addWidget(mode_box)
        layout.addWidget(self._display_box())
        self.buttons = self._action_buttons()

        self.prompt_group.idToggled.connect(lambda _id, checked: checked and self._prompt_changed())
        self.custom_prompt.textEdited.connect(self._custom_edited)
        self.strategy.currentTextChanged.connect(self.options_changed)
        self.max_tokens.valueChanged.connect(self.options_changed)
        self.continuous.toggled.connect(self.continuous_toggled)
        self.overlay_position.currentTextChanged.connect(self.overlay_moved)
        self.caption_button.clicked.connect(self.caption_now)
        self.pause_button.toggled.connect(self._pause_toggled)
        self._prompt_changed()

    def _display_box(self) -> QGroupBox:
        box = QGroupBox("Display")
        form = QFormLayout(box)
        self.overlay_position = QComboBox()
        self.overlay_position.setObjectName("overlay_position")
        self.overlay_position.addItems(OVERLAY_POSITIONS)
        form.addRow(plain_label("Caption overlay"), self.overlay_position)
        return box

    def _action_buttons(self) -> QWidget:
        """Caption now and pause, touch-sized, in a widget of their own (see the module docstring)."""
        buttons = QWidget()
        row = QHBoxLayout(buttons)
        row.setContentsMargins(0, 0, 0, 0)
        self.caption_button = QPushButton("Caption now (Space)")
        self.pause_button = QPushButton("Pause (P)")
        self.pause_button.setCheckable(True)
        touch_sized(self.caption_button, self.pause_button)
        row.addWidget(self.caption_button)
        row.addWidget(self.pause_button)
        return buttons

    # --- state -------------------------------------------------------------------------------

    def prompt_mode(self) -> str:
        return PROMPT_MODES[max(0, self.prompt_group.checkedId())]

    def set_prompt_mode(self, mode: str) -> None:
        self.prompt_buttons.get(mode, self.prompt_buttons["picture"]).setChecked(True)

    def options(self) -> CaptionOptions:
        return CaptionOptions(
            prompt=build_prompt(self.prompt_mode(), self.custom_prompt.text()),
            strategy=self.strategy.currentText(),
            max_new_tokens=self.max_tokens.value(),
        )

    def set_paused(self, paused: bool) -> None:
        self.pause_button.setChecked(paused)

    def load(self, settings: Settings) -> None:
        # silent while loading: a half-loaded state must not be reported (and saved) as a change
        self.blockSignals(True)
        try:
            self._load(settings)
        finally:
            self.blockSignals(False)

    def _load(self, settings: Settings) -> None:
        self.custom_prompt.setText(settings.get("prompt/custom"))
        self.set_prompt_mode(settings.get("prompt/mode"))
        strategy = settings.get("decoding/strategy")
        if strategy in STRATEGIES:
            self.strategy.setCurrentText(strategy)
        self.max_tokens.setValue(settings.get("decoding/max_tokens"))
        self.continuous.setChecked(settings.get("captioning/continuous"))
        self.overlay_position.setCurrentText(settings.get("overlay/position"))

    def save(self, settings: Settings) -> None:
        settings.set("prompt/mode", self.prompt_mode())
        settings.set("prompt/custom", self.custom_prompt.text())
        settings.set("decoding/strategy", self.strategy.currentText())
        settings.set("decoding/max_tokens", self.max_tokens.value())
        settings.set("captioning/continuous", self.continuous.isChecked())
        settings.set("overlay/position", self.overlay_position.currentText())

    # --- slots -------------------------------------------------------------------------------

    def _prompt_changed(self) -> None:
        self.options_changed.emit()

    def _custom_edited(self) -> None:
        # typing a custom prompt selects it: nobody types one to leave it unused
        if self.prompt_mode() == "custom":
            self.options_changed.emit()
        else:
            self.set_prompt_mode("custom")

    def _pause_toggled(self, paused: bool) -> None:
        self.pause_button.setText("Resume (P)" if paused else "Pause (P)")
        self.pause_toggled.emit(paused)
