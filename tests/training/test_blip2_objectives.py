"""BLIP-2's training modules on tiny models built in the test: what is trained and what stays
frozen in each stage, where the gradients go, and how the stage-2 inputs are laid out."""

from __future__ import annotations

import pytest
import torch

from blip_core.model.blip2 import Blip2Model
from blip_core.model.blip2_config import Blip2Config, OptConfig, QFormerConfig, T5Config
from blip_core.model.config import VisionConfig
from blip_core.model.text import LMHead
from blip_core.tokenizer import LlmTokenizer
from training.blip2.objectives import Stage1Objective, Stage2Objective
from training.blip2.text_data import BOS_ID, EOS_ID, PAD_ID, build_tokenizer, llm_vocab
from training.vocab import make_tokenizer

VISION = VisionConfig(image_size=16, patch_size=8, width=16, layers=1, heads=2, mlp_dim=32)
CAPTIONS = ["a red circle above a blue square", "a small green triangle", "two yellow squares on the left",
            "a large black star"]


def _qformer(tok=None, text_input=True) -> QFormerConfig:
    ids = {} if tok is None else dict(vocab_size=tok.vocab_size, pad_id=tok.pad_id, cls_id=tok.cls_id,
                                      sep_id=tok.sep_id, dec_id=tok.dec_id)
    return QFormerConfig(width=16, layers=2, heads=2, mlp_dim=32, num_queries=4, vision_width=16,
                         text_input=text_input, max_positions=40, **ids)


def _batch(n=4) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"captions": {"pixels": torch.randn(n, 3, 16, 16, generator=g), "caption": CAPTIONS[:n],
                         "image_ids": torch.arange(n)},
            "vqa": {"pixels": torch.randn(n, 3, 16, 16, generator=g), "question": ["what colour is the circle?"] * n,
                    "answers": [["red"], ["blue"], ["green"], ["red"]][:n], "image_ids": torch.arange(n)}}


@pytest.fixture
def stage1(tmp_path):
    torch.manual_seed(0)
    tok = make_tokenizer("scenes", tmp_path)
    model = Blip2Model(Blip2Config(vision=VISION, qformer=_qformer(tok), llm=None, embed_dim=8))
    return Stage1Objective(model, tok, LMHead(model.cfg.qformer), max_tokens=20)


@pytest.fixture(scope="module")
def llm_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llm")
    build_tokenizer(folder / "tokenizer.json")
    return folder


def _stage2(llm_folder, kind="opt", **options) -> Stage2Objective:
    torch.manual_seed(0)
    V = len(llm_vocab())
    if kind == "opt":
        llm = OptConfig(vocab_size=V, width=16, embed_dim=16, layers=1, heads=2, ffn_dim=32, max_positions=64,
                        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID)
        tok = LlmTokenizer(llm_folder, "opt", BOS_ID, EOS_ID, V)
    else:
        llm = T5Config(vocab_size=V, width=16, kv_dim=8, heads=2, ffn_dim=32, layers=1, decoder_layers=1,
                       pad_id=PAD_ID, eos_id=EOS_ID, decoder_start_id=PAD_ID)
        tok = LlmTokenizer(llm_folder, "t5", None, EOS_ID, V)
    model = Blip2Model(Blip2Config(vision=VISION, qformer=_qformer(text_input=False), llm=llm))
    return Stage2Objective(model, None, tok, max_tokens=20, **options).train()


def _grads(objective) -> dict[str, bool]:
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in objective.named_parameters()}


def test_stage1_losses_and_what_they_train(stage1):
    x = stage1.prepare(_batch(), torch.device("cpu"))
    assert (x["ids"][:, 0] == stage1.tokenizer.cls_id).all()
    losses = stage1(x)
    assert set(losses) == {"loss_itc", "loss_itm", "loss_lm"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    g = _grads(stage1)
    # the image encoder is frozen but for its final norm (ln_vision)
    assert not any(g[n] for n in g if n.startswith("model.vision.") and not n.startswith("model.vision.norm."))
    assert all(p.grad is None for n, p in stage1.model.vision.named_parameters() if not n.startswith("norm."))
    assert g["model.vision.norm.weight"]
    for name in ("model.qformer.query_tokens", "model.qformer.layers.0.cross_attn.query.weight",
                 "model.qformer.layers.0.query_mlp.fc1.weight", "model.qformer.layers.0.mlp.fc1.weight",
                 "model.qformer.tokens.weight", "model.itm_head.weight", "model.vision_proj.weight",
                 "model.text_proj.weight", "lm_head.dense.weight", "temp"):
        assert g[name], name


def test_stage1_extra_state_holds_temperature_and_itg_head(stage1):
    state = {k: v.clone() for k, v in stage1.extra_state().items()}
    assert "temp" in state and "lm_head.dense.weight" in state and not any(k.startswith("model.") for k in state)
    stage1.temp.data.fill_(0.3)
    stage1.load_extra_state({**state})
    assert float(stage1.temp.detach()) == pytest.approx(0.07)


def test_stage1_itm_negatives_exclude_the_positive(stage1, monkeypatch):
    """The images of the B (negative image, text) pairs and the texts of the B (image, negative
    text) pairs are never the row's own."""
    seen = {}

    def spy(images, texts, masks):
        seen.update(images=images.detach(), texts=texts)
        return torch.zeros(images.shape[0], 2, requires_grad=True)

    monkeypatch.setattr(stage1.model, "itm_logits", spy)
    x = stage1.prepare(_batch(), torch.device("cpu"))
    for _ in range(5):
        stage1(x)
        B = x["ids"].shape[0]
        pos, neg_img = seen["images"][:B], seen["images"][B:2 * B]
        assert all(not torch.equal(pos[i], neg_img[i]) for i in range(B))
        neg_txt = seen["texts"][2 * B:]
        assert all(not torch.equal(x["ids"][i], neg_txt[i]) for i in range(B))


@pytest.mark.parametrize("kind", ["opt", "t5"])
def test_stage2_llm_frozen_and_soft_prompt_gradient_reaches_the_qformer(llm_folder, kind):
    obj = _stage2(llm_folder, kind)
    before = {n: p.detach().clone() for n, p in obj.model.language_model.named_parameters()}
    trainable = [p for p in obj.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    x = obj.prepare(_batch(), torch.device("cpu"))
    for _ in range(2):
        loss = obj(x)["loss_lm"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    g = _grads(obj)
    assert all(p.grad is None and not p.requires_grad for p in obj.model.language_model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in obj.model.language_model.named_parameters())
    assert not obj.model.language_model.training  # frozen: eval mode even under .train()
    for name in ("model.qformer.query_tokens", "model.qformer.layers.0.cross_attn.key.weight",
                 "model.qformer.layers.1.query_mlp.fc2.weight", "model.language_projection.weight",
                 "model.vision.norm.weight"):
        assert g[name], name
    assert not g["model.vision.blocks.0.attn.qkv.weight"]


def test_stage2_opt_labels_cover_the_caption_and_eos_only(llm_folder):
    obj = _stage2(llm_folder, "opt")
    x = obj.prepare(_batch(), torch.device("cpu"))
    Q, tok = 4, obj.llm_tokenizer
    assert (x["ids"][:, 0] == BOS_ID).all() and x["labels"].shape[1] == Q + x["ids"].shape[1]
    row = x["labels"][0]
    assert (row[: Q + 1] == -100).all()  # soft prompt and BOS
    target = tok.tokens(CAPTIONS[0]) + [EOS_ID]
    assert row[Q + 1: Q + 1 + len(target)].tolist() == target
    assert (x["labels"][1][Q + 1 + len(tok.tokens(CAPTIONS[1])) + 1:] == -100).all()  # padding


def test_stage2_prompt_and_vqa_template_are_masked_out(llm_folder):
    obj = _stage2(llm_folder, "opt", prompt="a photo of")
    x = obj.prepare(_batch(), torch.device("cpu"))
    head = len(obj.llm_tokenizer.prompt_ids("a photo of"))
    assert (x["labels"][:, : 4 + head] == -100).all() and (x["labels"][:, 4 + head] != -100).all()
    vqa = _stage2(llm_folder, "opt", task="vqa")
    x = vqa.prepare(_batch(), torch.device("cpu"))
    tok = vqa.llm_tokenizer
    head = len(tok.prompt_ids("Question: what colour is the circle? Answer:"))
    kept = x["labels"][0][x["labels"][0] != -100].tolist()
    assert kept == tok.tokens("red") + [EOS_ID] and x["ids"][0, head] == tok.tokens("red")[0]
    assert torch.isfinite(vqa(x)["loss_lm"])


def test_stage2_t5_prefix_lm_splits_each_caption(llm_folder):
    obj = _stage2(llm_folder, "t5")
    torch.manual_seed(3)
    x = obj.prepare(_batch(), torch.device("cpu"))
    tok = obj.llm_tokenizer
    for i, caption in enumerate(CAPTIONS):
        enc = [t for t in x["ids"][i].tolist() if t != PAD_ID]
        target = [t for t in x["labels"][i].tolist() if t != -100]
        assert enc[-1] == EOS_ID and target[-1] == EOS_ID
        assert enc[:-1] + target[:-1] == tok.tokens(caption)  # prefix + suffix = the caption
        n = len(caption.split())
        assert 1 <= len(tok.tokens(tok.decode(enc))) <= n // 2
    # the decoder reads the targets shifted right behind its start id
    assert (x["dec_ids"][:, 0] == PAD_ID).all()
    real = x["labels"][:, :-1] != -100
    assert torch.equal(x["dec_ids"][:, 1:][real], x["labels"][:, :-1][real])


def test_scene_text_parts_are_true_of_their_scene_and_tokenise_as_read(tmp_path):
    """The frozen LLM's pre-training text: captions of the scene (one or two different ones),
    then true question/answer pairs, joined by ". " or OPT's ``</s>`` (one token, id EOS_ID)."""
    from blip_core import scenes
    from blip_core.scenes.truth import is_true
    from blip_core.tokenizer import LlmTokenizer
    from training.blip2.text_data import SEPARATOR, SceneText, caption_text, qa_text

    data = SceneText(3, 400, 3)
    tok = LlmTokenizer(build_tokenizer(tmp_path / "t" / "tokenizer.json").parent, "opt", BOS_ID, EOS_ID,
                       len(llm_vocab()))
    seen = {"separator": 0, "two captions": 0, "no caption": 0, "no question": 0}
    for key in range(400):
        text = data[key]["text"]
        scene = scenes.render(scenes.stream_seed(3, key), 16, 3)
        sep = f". {SEPARATOR} Question:" in text  # captions end with "."; answers never do
        seen["separator"] += sep
        questions = [q for q, a in scene.qa if qa_text(q, a) in text]
        captions = [c for c in scene.captions if caption_text(c) in text]
        assert questions or captions, text
        assert all(is_true(c, scene) for c in captions)
        seen["two captions"] += len(captions) >= 2
        seen["no caption"] += not captions
        seen["no question"] += not questions
        ids = tok.tokens(text)
        # </s> between captions and questions when chosen, and after every answer but the last
        n_q = tok.decode(ids).count("question")
        assert n_q == len(questions) and ids.count(EOS_ID) == int(sep) + max(0, n_q - 1)
    # every kind of text occurs often (P_SEPARATOR 0.5, P_SECOND_CAPTION 0.3, P_CAPTION 0.85)
    assert all(n >= 20 for n in seen.values()), seen
