"""BLIP-2 in blip-cam: a BLIP-2 model answers the questions while a BLIP model keeps captioning
live; the overlay and the question history say which model answered and how long it took."""

from __future__ import annotations

import pytest
from app_fakes import FakeSource
from PySide6.QtCore import Qt

from app.model_choice import ModelRequest, short_name
from tests.helpers import save_blip2_hf, tiny_blip2_hf

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def blip2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blip2") / "blip2-tiny-opt"
    return str(save_blip2_hf(tiny_blip2_hf("opt", seed=3), folder, "opt"))


def test_blip2_answers_while_blip_keeps_captioning(qtbot, make_window, model_loader, model_source, blip2_folder):
    import blip_core

    def loader(source, **kw):  # the tiny BLIP-2 in fp32 (its int8 conversion is tested in tests/core)
        if source == blip2_folder:
            return blip_core.load(source, **{**kw, "precision": "fp32"})
        return model_loader(source, **kw)

    window = make_window(FakeSource(colours=("red", "blue")), loader=loader,
                         models=ModelRequest(caption=model_source, vqa=blip2_folder, precision="int8"))
    assert window.models.answerer.family == "blip2" and window.models.captioner is not window.models.answerer
    with qtbot.waitSignal(window.caption_shown, timeout=10_000):
        pass
    window.questions.box.setFocus()
    qtbot.keyClicks(window.questions.box, "what is it ?")
    with qtbot.waitSignal(window.answer_shown, timeout=20_000) as blocker:
        qtbot.keyClick(window.questions.box, Qt.Key.Key_Return)
    outcome = blocker.args[0]
    assert outcome.result is not None and outcome.model == blip2_folder
    name = short_name(blip2_folder)
    entry = window.history.frames()[-1].entries[-1]
    assert entry.model == name and entry.answer == outcome.result.text
    assert f"({name}, " in window.questions.answer.text()
    assert any(line.startswith("Q: what is it ? → ") and f"· {name}, " in line and line.endswith(" s")
               for line in window.preview.overlay_text())
    # captions go on, from the BLIP model, while and after BLIP-2 answered
    with qtbot.waitSignal(window.caption_shown, timeout=10_000) as caption:
        pass
    assert caption.args[0].model == window.models.captioner.name != blip2_folder
