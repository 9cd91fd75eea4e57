"""The bundled demo model: small, complete, loadable, and it really sees the scene world."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import blip_core
from blip_core import scenes

DEMO = Path(blip_core.demo_model_path())


@pytest.fixture(scope="module")
def demo():
    assert (DEMO / "config.json").is_file(), f"{DEMO} is missing: rebuild it with `make demo-model`"
    return blip_core.load(DEMO, warmup=False)


def test_small_and_documented():
    size = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert size <= 50 * 2**20
    card = (DEMO / "README.md").read_text()
    assert "knows only" in card and "not real photos" in card
    figures = json.loads((DEMO / "eval.json").read_text())
    assert f"| {figures['caption']['cider']:.3f} |" in card  # the card shows the measured figures
    assert f"| {figures['vqa']['accuracy_generate']:.3f} |" in card
    assert figures["caption"]["cider"] >= 1.0 and figures["vqa"]["n_questions"] > 1000


def test_one_model_for_every_task(demo):
    assert demo.tasks >= {"caption", "vqa", "match"}


def test_captions_and_answers_see_colours_and_backgrounds(demo):
    """What the demo model has learnt best (docs/demo_model.md): colours and backgrounds."""
    seeds = [scenes.stream_seed(424242, i) for i in range(12)]  # no training or evaluation stream uses 424242
    right_colours = right_answers = questions = 0
    for seed in seeds:
        scene = scenes.render(seed, demo.image_size, 3)
        f = demo.encode_image(scene.image)
        text = demo.caption(f, prompt="a picture of ", max_new_tokens=30).text
        colours = {w for w in text.split() if w in scenes.COLOURS}
        backgrounds = re.findall(r"(\w+) background", text)
        right_colours += (colours == {o.colour for o in scene.objects}
                          and all(b == scene.background for b in backgrounds))
        for q, a in scene.qa:
            if q.startswith("what colour"):
                right_answers += demo.answer(f, q).text == a
                questions += 1
    assert right_colours >= 9  # 12 of 12 when measured
    assert right_answers / questions >= 0.7  # 23 of 23 when measured


def _answers(demo, kinds: tuple[str, ...], seed: int, scenes_count: int, objects: int = 1,
             min_objects: int = 1) -> tuple[int, int]:
    """(right, asked) over the questions of these ``kinds`` about the first ``scenes_count`` scenes
    of up to ``objects`` objects, leaving out those of fewer than ``min_objects``."""
    right = asked = 0
    for i in range(scenes_count):
        scene = scenes.render(scenes.stream_seed(seed, i), demo.image_size, objects)
        if len(scene.objects) < min_objects:
            continue
        f = demo.encode_image(scene.image)
        for q, a in scene.qa:
            if scenes.question_kind(q) in kinds:
                right += demo.answer(f, q).text == a
                asked += 1
    return right, asked


def test_answers_where_a_lone_object_is(demo):
    """Positions, taught by the VQA curriculum (chance is 1 in 9)."""
    right, asked = _answers(demo, ("position",), 434343, 30)
    assert asked >= 20 and right / asked >= 0.8  # 37 of 37 when measured


def test_tells_the_shape_of_a_lone_object(demo):
    """Shapes, taught by the first stage of the VQA curriculum (chance is 1 in 6)."""
    right, asked = _answers(demo, ("shape",), 454545, 40)
    assert asked >= 30 and right / asked >= 0.75  # 36 of 44 when measured (the previous model: 41)


@pytest.mark.slow  # make test's time budget; shape answers about a lone object stay in make test
def test_captions_name_the_shape_of_a_lone_object(demo):
    """Taught by the recipe's caption stage over the shape-aware vision encoder (the model
    before it: 15 of 40 here; chance is 1 in 6)."""
    right = 0
    for i in range(40):
        scene = scenes.render(scenes.stream_seed(484848, i), demo.image_size, 1)
        text = demo.caption(scene.image, prompt="a picture of ", max_new_tokens=20).text
        right += [w for w in text.split() if w in scenes.SHAPES] == [scene.objects[0].shape]
    assert right >= 22  # 28 of 40 when measured


@pytest.mark.slow  # make test's time budget; the shapes and counts of one object stay in make test
def test_tells_shapes_and_counts_on_crowded_scenes(demo):
    """Shapes and counts among up to three objects, taught by the curriculum's later stages (the
    model before them: shapes 0.54, counts 0.65 on the held-out scenes)."""
    right, asked = _answers(demo, ("shape", "count"), 464646, 40, objects=3)
    assert asked >= 60 and right / asked >= 0.6  # 62 of 87 when measured


def test_answers_where_an_object_is_among_others(demo):
    """Positions among two or three objects: the model must find the object asked about ("where
    is the red object?"), not just see where objects are. Taught by the curriculum's last stages,
    on such scenes only; the model before them: 49 of 80 here."""
    right, asked = _answers(demo, ("position",), 474747, 120, objects=3, min_objects=2)
    assert asked >= 60 and right / asked >= 0.75  # 67 of 80 when measured


def test_match_prefers_the_true_caption(demo):
    wins = 0
    for i in range(10):
        scene = scenes.render(scenes.stream_seed(515151, i), demo.image_size, 2)
        other = scenes.render(scenes.stream_seed(515151, i + 100), demo.image_size, 2)
        true, false = demo.match(scene.image, [scene.captions[0], other.captions[0]])
        wins += true.itm > false.itm
    assert wins >= 7


def test_merge_joins_the_vqa_encoders_to_the_caption_decoder(tmp_path):
    """Steps 4 and 5 of the recipe: encoders and answer decoder from the VQA curriculum, caption
    decoder and matching heads from the multitask model; then the caption stage's decoder."""
    import torch

    from blip_core.checkpoints import load_model, save
    from blip_core.model.blip import BlipModel
    from blip_core.model.config import preset
    from training.experiments.demo_model import merge
    from training.run_state import text_ids
    from training.vocab import make_tokenizer

    tok = make_tokenizer("scenes", tmp_path)
    torch.manual_seed(0)
    full = BlipModel(preset("tiny", ("caption", "vqa", "match"), **text_ids(tok)))
    vqa = BlipModel(preset("tiny", ("vqa",), **text_ids(tok)))
    save(full, tmp_path / "multitask", tok)
    save(vqa, tmp_path / "vqa", tok)
    merged, _, _ = load_model(merge(tmp_path, tmp_path / "multitask", tmp_path / "vqa"))
    assert merged.cfg.tasks == full.cfg.tasks
    for name, value in merged.state_dict().items():
        source = vqa if name.split(".")[0] in ("vision", "text_encoder", "answer_decoder") else full
        assert torch.equal(value, source.state_dict()[name]), name
    # step 5: the caption stage's decoder (and its frozen vision encoder) joined back
    captioner = BlipModel(preset("tiny", ("caption",), **text_ids(tok)))
    save(captioner, tmp_path / "captions", tok)
    kept = ("text_encoder.", "answer_decoder.", "vision_proj.", "text_proj.", "itm_head.")
    final, _, _ = load_model(merge(tmp_path, tmp_path / "merged", tmp_path / "captions", "final-captions", kept))
    for name, value in final.state_dict().items():
        source = captioner if name.split(".")[0] in ("vision", "text_decoder") else merged
        assert torch.equal(value, source.state_dict()[name]), name
    with pytest.raises(SystemExit, match="cannot merge"):  # the donor lacks parts not listed as kept
        merge(tmp_path, tmp_path / "merged", tmp_path / "captions", "bad")
