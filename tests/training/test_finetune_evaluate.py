"""Fine-tuning from a pre-trained checkpoint (caption / VQA / retrieval / multitask) and the
evaluation command."""

from __future__ import annotations

import json
from collections import Counter
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

import blip_core
from blip_core import scenes
from blip_core.preprocess import pixel_values
from tests.training.tiny_runs import records, tiny
from training import config as C
from training import evaluate, finetune
from training.data import pre_question, scene_answer_list, scene_caption_eval
from training.run_state import init_model

EXPECTED = {  # task -> (losses logged, checkpoint tasks, eval metrics)
    "caption": ({"loss_lm"}, {"caption"}, {"caption": {"bleu4", "cider"}}),
    "vqa": ({"loss_vqa"}, {"vqa"}, {"vqa": {"accuracy_generate", "accuracy_rank"}}),
    "retrieval": ({"loss_itc", "loss_itm"}, {"match"},
                  {"retrieval": {"txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean"}}),
}


@pytest.fixture(scope="module")
def multitask(pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("multitask")
    cfg = tiny(C.FinetuneConfig, out, init=str(pretrained), tasks="caption,vqa,retrieval", scene_count=16, max_steps=2)
    finetune.run(cfg)
    return out


@pytest.mark.parametrize("task", ["caption", "vqa", "retrieval"])
def test_finetune_each_task(pretrained, tmp_path, task):
    losses, tasks, metrics = EXPECTED[task]
    # 16 scenes / batch 8: an epoch is 2 steps, so the epoch-end evaluation runs
    finetune.run(tiny(C.FinetuneConfig, tmp_path, init=str(pretrained), tasks=task, scene_count=16, max_steps=2))
    recs = records(tmp_path)
    train = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train] == [1, 2] and all(losses <= set(r) for r in train)
    assert not any(k.startswith("loss_") and k[5:] not in {name[5:] for name in losses} for k in train[0])
    evals = [r["eval"] for r in recs if "eval" in r]
    assert len(evals) == 1 and evals[0].keys() == metrics.keys()
    for name, keys in metrics.items():
        assert keys <= set(evals[0][name])
    blip = blip_core.load(tmp_path / "checkpoints" / "step-0000002")
    assert blip.tasks == tasks


def test_multitask_is_one_model_with_one_vision_encoder(multitask):
    recs = records(multitask)
    assert {"loss_itc", "loss_itm", "loss_lm", "loss_vqa"} <= set(recs[0])
    assert {"caption", "vqa", "retrieval"} == set(next(r["eval"] for r in recs if "eval" in r))
    blip = blip_core.load(multitask / "checkpoints" / "step-0000002")
    assert blip.tasks == {"caption", "vqa", "match"}
    assert sum(1 for name, _ in blip.model.named_children() if name == "vision") == 1
    f = blip.encode_image(scenes.render(3, 16).image)  # one vision pass ...
    cap, ans = blip.caption(f, max_new_tokens=4), blip.answer(f, "what colour is the background?")
    assert cap.timings.vision_ms == 0 and ans.timings.vision_ms == 0  # ... serves both
    assert isinstance(cap.text, str) and isinstance(ans.text, str)


def test_frozen_parts_stay_as_loaded(multitask, tmp_path):
    """freeze=vision: a caption decoder learns over a vision encoder other tasks share."""
    init = multitask / "checkpoints" / "step-0000002"
    finetune.run(tiny(C.FinetuneConfig, tmp_path, init=str(init), tasks="caption", freeze="vision", max_steps=2))
    before, after = (load_file(p / "model.safetensors") for p in (init, tmp_path / "checkpoints" / "step-0000002"))
    vision = [k for k in after if k.startswith("vision.")]
    decoder = [k for k in after if k.startswith("text_decoder.")]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    with pytest.raises(C.ConfigError, match="this model has no answer_decoder"):
        finetune.run(tiny(C.FinetuneConfig, tmp_path / "x", init=str(init), tasks="caption", freeze="answer_decoder"))


def test_vqa_answer_decoder_starts_as_the_pretrained_text_decoder(pretrained):
    model, tok = init_model(str(pretrained), ("vqa",))
    saved = load_file(str(pretrained / "model.safetensors"))
    for name, tensor in model.answer_decoder.state_dict().items():
        assert torch.equal(tensor, saved[f"text_decoder.{name}"]), name
    for name, tensor in model.text_encoder.state_dict().items():
        assert torch.equal(tensor, saved[f"text_encoder.{name}"]), name
    # the fine-tuned parts are independent parameters (BLIP's VQA model does not tie)
    assert model.answer_decoder.layers[0].mlp.fc1.weight is not model.text_encoder.layers[0].mlp.fc1.weight


def test_init_resamples_position_embeddings_for_a_new_image_size(pretrained):
    model, _ = init_model(str(pretrained), ("caption",), image_size=32)
    assert model.cfg.vision.image_size == 32 and model.vision.pos_embed.shape[1] == 1 + (32 // 8) ** 2


def test_evaluate_command_writes_json(multitask, tmp_path, capsys):
    ck = multitask / "checkpoints" / "step-0000002"
    evaluate.main([f"init={ck}", "data=scenes", "val_count=6", "image_size=16", "k_test=4", "eval_batch_size=4",
                   f"output_dir={tmp_path}"])
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert printed == saved
    assert {"bleu4", "cider", "n_images"} <= set(saved["caption"]) and saved["caption"]["n_images"] == 6
    assert {"accuracy_generate", "accuracy_rank", "n_questions"} <= set(saved["vqa"])
    questions = [q for i in range(6) for q, _ in scenes.render(scenes.stream_seed(1, i), 16, 3).qa]
    counts = Counter(scenes.question_kind(q) for q in questions)
    for mode in ("generate", "rank"):  # scenes: accuracy per question family, weighting to the total
        by_kind = saved["vqa"][f"accuracy_{mode}_by_kind"]
        assert set(by_kind) == set(counts)
        total = sum(by_kind[k] * n for k, n in counts.items()) / len(questions)
        assert total == pytest.approx(saved["vqa"][f"accuracy_{mode}"])
    r = saved["retrieval"]
    assert {"txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean", "itc"} <= set(r)
    assert r["img_r10"] == 100.0 and r["n_images"] == 6  # 6 images: every text finds its image in the top 10


def test_batched_evaluation_matches_the_single_image_api(multitask):
    """Batched greedy captions and ranked answers equal what ``Blip.caption`` / ``Blip.answer``
    give one image at a time."""
    ck = multitask / "checkpoints" / "step-0000002"
    blip = blip_core.load(ck)
    cfg = C.parse(C.EvalConfig, None, ["eval_batch_size=4", "k_test=8", "max_new_tokens=6", "min_new_tokens=2"])
    ev = scene_caption_eval(1, 5, 16, 3)
    with mock.patch.object(evaluate, "generate", wraps=evaluate.generate) as gen:
        preds = {}
        real = evaluate.caption_scores

        def capture(p, r):
            preds.update(p)
            return real(p, r)

        with mock.patch.object(evaluate, "caption_scores", capture):
            evaluate.caption_metrics(blip.model, blip.tokenizer, ev, cfg)
    assert gen.call_args_list[0].args[1].shape[0] == 4  # four images decoded in one call
    for i in range(5):
        image = scenes.render(scenes.stream_seed(1, i), 16).image
        assert preds[i] == blip.caption(image, max_new_tokens=6, min_new_tokens=2).text
    scene = scenes.render(scenes.stream_seed(1, 0), 16)
    questions = [pre_question(q) for q, _ in scene.qa]
    batch = {"pixels": pixel_values(scene.image, 16).repeat(len(questions), 1, 1, 1), "question": questions}
    states, q_mask = evaluate._question_states(blip.model, blip.tokenizer, batch)
    answers = scene_answer_list()
    ranked = evaluate.rank_answers(blip.model, blip.tokenizer, states, q_mask, answers, k=8)
    generated = evaluate.generate_answers(blip.model, blip.tokenizer, states, q_mask, cfg)
    assert ranked == [blip.answer(scene.image, q, answers=answers, k=8).text for q in questions]
    assert generated == [blip.answer(scene.image, q).text for q in questions]


def test_evaluate_needs_a_checkpoint_and_data(tmp_path, pretrained):
    with pytest.raises(C.ConfigError, match="init="):
        evaluate.run(C.parse(C.EvalConfig, None, []))
    with pytest.raises(Exception, match="no evaluation data"):
        evaluate.run(C.parse(C.EvalConfig, None, [f"init={pretrained}", "data=json"]))


@pytest.mark.parametrize("progress", [True, False])
def test_evaluate_shows_a_bar_per_task_reaching_its_total(multitask, tmp_path, capsys, progress):
    ck = multitask / "checkpoints" / "step-0000002"
    cfg = C.parse(C.EvalConfig, None, [f"init={ck}", "data=scenes", "val_count=3", "image_size=16", "k_test=2",
                                       "eval_batch_size=2", f"output_dir={tmp_path}", f"progress={progress}"])
    result = evaluate.run(cfg)
    out, err = capsys.readouterr()
    assert out == ""  # bars go to stderr: stdout stays the JSON's
    if not progress:
        assert err == ""
        return
    n_questions, n_texts = result["vqa"]["n_questions"], result["retrieval"]["n_texts"]
    lines = err.replace("\r", "\n").splitlines()  # tqdm redraws a line with \r
    for desc, total, unit in [("caption", 3, "img"), ("vqa", n_questions, "question"),
                              ("retrieval: images", 3, "img"), ("retrieval: re-rank", 3 + n_texts, "query")]:
        rate = (f"{unit}/s", f"s/{unit}")  # items per second, or seconds per item when slow
        assert any(line.startswith(f"{desc}: 100%") and f" {total}/{total} " in line and any(r in line for r in rate)
                   for line in lines), (desc, err)
