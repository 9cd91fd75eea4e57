"""Evaluate a checkpoint: captioning (BLEU-4, CIDEr), VQA accuracy (generated and ranked answers),
image-text retrieval (recall@1/5/10 both ways, ITC then top-k ITM re-ranking). JSON output.

    python -m training.evaluate --config FILE init=CKPT [tasks=caption,vqa,retrieval] [key=value ...]

Writes ``output_dir/eval.json`` and prints it. Generation is batched over images
(``blip_core.generation.generate`` with a ``DecoderSession`` per batch). Runs on rank 0 only, with a
tqdm bar per task on stderr (``progress=false`` turns them off).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from blip_core import ranking
from blip_core.checkpoints import load_model
from blip_core.generation import DecodingOptions, generate
from blip_core.metrics import caption_scores, recall_at_k, vqa_accuracy
from blip_core.model.blip import BlipModel
from blip_core.model.limits import MAX_QUESTION_TOKENS, MAX_TEXT_TOKENS
from blip_core.model.text import DecoderSession
from blip_core.tokenizer import BlipTokenizer

from . import dist
from .config import TRAINING_ONLY, ConfigError, EvalConfig, arg_parser, parse, run_cli, setup_process, task_list
from .data import (
    CaptionEval,
    DatasetError,
    VqaEval,
    eval_collate,
    json_caption_eval,
    json_vqa_eval,
    pre_question,
    read_annotations,
    scene_answer_list,
    scene_caption_eval,
    scene_vqa_eval,
)
from .run_state import resolve_init

log = logging.getLogger("training.evaluate")
MODEL_TASK = {"caption": "caption", "vqa": "vqa", "retrieval": "match"}  # task -> the model part it needs


@dataclass
class EvalSets:
    captions: CaptionEval | None = None  # captioning and retrieval
    vqa: VqaEval | None = None
    answer_list: list[str] | None = None


def _loader(ds, batch_size: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, collate_fn=eval_collate)


def _bar(cfg, total: int, desc: str, unit: str) -> tqdm:
    """A bar on stderr with its total known up front; evaluation only runs on rank 0 (``run`` and
    finetune's epoch-end evaluation), so ``cfg.progress`` alone decides."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not cfg.progress, dynamic_ncols=True)


def _batches(ds, cfg, desc: str, unit: str):
    """``_loader`` batches, advancing a bar by each batch's items (unreadable ones included)."""
    with _bar(cfg, len(ds), desc, unit) as bar:
        for batch in _loader(ds, cfg.eval_batch_size):
            yield batch
            bar.update(len(batch["index"]) + len(batch["bad"]))


# ------------------------------------------------------------------------ captions
@torch.no_grad()
def caption_metrics(model: BlipModel, tokenizer: BlipTokenizer, ev: CaptionEval, cfg) -> dict:
    """Batched decoding (greedy, or beam with ``num_beams``) of every image, then BLEU-4/CIDEr."""
    opts = DecodingOptions.build(None, cfg.num_beams, max_new_tokens=cfg.max_new_tokens,
                                 min_new_tokens=cfg.min_new_tokens)
    prompt_ids = tokenizer.prompt_ids(cfg.prompt)
    predictions, bad = {}, []
    for batch in _batches(ev.images, cfg, "caption", "img"):
        bad += batch["bad"]
        if batch["pixels"] is None:
            continue
        embeds = model.encode_image(batch["pixels"])
        session = DecoderSession(model.text_decoder, model.text_decoder.cross_kv(embeds))
        prompts = torch.tensor([prompt_ids] * len(embeds))
        for i, hyps in zip(batch["index"], generate(session, prompts, opts, tokenizer.sep_id, tokenizer.pad_id)):
            predictions[i] = tokenizer.continuation(prompt_ids, hyps[0].tokens)
    if not predictions:
        raise DatasetError("no readable evaluation image")
    scores = caption_scores(predictions, {i: ev.refs[i] for i in predictions})
    samples = [{"prediction": predictions[i], "references": ev.refs[i][:3]} for i in sorted(predictions)[:5]]
    return {**scores, "n_images": len(predictions), "skipped_images": len(bad), "samples": samples}


# ----------------------------------------------------------------------------- VQA
@torch.no_grad()
def _question_states(model, tokenizer, batch):
    embeds = model.encode_image(batch["pixels"])
    ids, mask = tokenizer(batch["question"], first="enc", max_length=MAX_QUESTION_TOKENS)
    return model.encode_question(embeds, ids, mask), mask


@torch.no_grad()
def rank_answers(model: BlipModel, tokenizer: BlipTokenizer, states: torch.Tensor, q_mask: torch.Tensor,
                 answers: list[str], k: int) -> list[str]:
    """BLIP's rank mode for a batch of questions (states [B, Tq, D], q_mask [B, Tq]) -> the best
    answer of each: ``blip_core.ranking.rank_answers`` (what ``Blip.answer`` uses), question by question."""
    best = []
    for b in range(states.shape[0]):
        kv = model.cross_kv("answer_decoder", states[b : b + 1])
        best.append(ranking.rank_answers(model, tokenizer, kv, q_mask[b : b + 1], answers, k)[0][0])
    return best


@torch.no_grad()
def generate_answers(model: BlipModel, tokenizer: BlipTokenizer, states, q_mask, cfg) -> list[str]:
    opts = DecodingOptions.build(None, cfg.num_beams, max_new_tokens=cfg.answer_max_new_tokens, min_new_tokens=1)
    session = DecoderSession(model.answer_decoder, model.answer_decoder.cross_kv(states), q_mask)
    start = torch.full((states.shape[0], 1), tokenizer.dec_id)
    return [tokenizer.decode(h[0].tokens) for h in generate(session, start, opts, tokenizer.sep_id, tokenizer.pad_id)]


def vqa_metrics(model: BlipModel, tokenizer: BlipTokenizer, ev: VqaEval, answer_list: list[str] | None, cfg) -> dict:
    modes = ("generate", "rank") if cfg.vqa_mode == "both" else (cfg.vqa_mode,)
    preds: dict[str, dict[int, str]] = {m: {} for m in modes}
    bad = []
    for batch in _batches(ev.items, cfg, "vqa", "question"):
        bad += batch["bad"]
        if batch["pixels"] is None:
            continue
        states, q_mask = _question_states(model, tokenizer, batch)
        if "generate" in modes:
            preds["generate"].update(zip(batch["index"], generate_answers(model, tokenizer, states, q_mask, cfg)))
        if "rank" in modes:
            ranked = rank_answers(model, tokenizer, states, q_mask, answer_list, cfg.k_test)
            preds["rank"].update(zip(batch["index"], ranked))
    if not preds[modes[0]]:
        raise DatasetError("no readable evaluation image")
    out = {"n_questions": len(preds[modes[0]]), "skipped_images": len(bad)}
    for mode, p in preds.items():
        idx = sorted(p)
        out[f"accuracy_{mode}"] = vqa_accuracy([p[i] for i in idx], [ev.answers[i] for i in idx])
        if ev.kinds is not None:
            out[f"accuracy_{mode}_by_kind"] = _accuracy_by_kind(p, ev)
    return out


def _accuracy_by_kind(preds: dict[int, str], ev: VqaEval) -> dict[str, float]:
    groups: dict[str, list[int]] = {}
    for i in sorted(preds):
        groups.setdefault(ev.kinds[i], []).append(i)
    return {k: vqa_accuracy([preds[i] for i in idx], [ev.answers[i] for i in idx]) for k, idx in sorted(groups.items())}


# ----------------------------------------------------------------------- retrieval
@torch.no_grad()
def _embed_all(model, ev: CaptionEval, cfg):
    """-> image embeds [n, N, Dv], image feats [n, E], kept image indices, texts' image index."""
    embeds, feats, kept = [], [], []
    for batch in _batches(ev.images, cfg, "retrieval: images", "img"):
        if batch["pixels"] is not None:
            e = model.encode_image(batch["pixels"])
            embeds.append(e)
            feats.append(model.image_features(e))
            kept += batch["index"]
    if not kept:
        raise DatasetError("no readable evaluation image")
    return torch.cat(embeds), torch.cat(feats), kept


@torch.no_grad()
def retrieval_metrics(model: BlipModel, tokenizer: BlipTokenizer, ev: CaptionEval, cfg) -> dict:
    """ITC similarities for all pairs, then BLIP's re-ranking: each image's top-k texts (and each
    text's top-k images) get ``itm_logit[match] + cosine``, all other pairs -100."""
    embeds, img_feat, kept = _embed_all(model, ev, cfg)
    texts, txt2img, img2txt = [], [], []
    for row, i in enumerate(kept):  # texts of unreadable images are left out with them
        img2txt.append(list(range(len(texts), len(texts) + len(ev.refs[i]))))
        texts += ev.refs[i]
        txt2img += [row] * len(ev.refs[i])
    cls_ids, mask = tokenizer(texts, first="cls", max_length=MAX_TEXT_TOKENS)
    txt_feat = torch.cat([model.text_features(cls_ids[s:s + 256], mask[s:s + 256]) for s in range(0, len(texts), 256)])
    sim = img_feat @ txt_feat.T  # [n_img, n_txt] cosine
    enc_ids = cls_ids.clone()
    enc_ids[:, 0] = tokenizer.enc_id
    k = min(cfg.k_test, len(texts), len(kept))
    chunk = max(1, cfg.eval_batch_size // k)

    def rerank(scores_src: torch.Tensor, image_of, text_of, bar: tqdm) -> torch.Tensor:
        """scores_src [Q, C]: queries x candidates; image_of/text_of map (query, candidate) -> index."""
        out = torch.full_like(scores_src, -100.0)
        top_sim, top = scores_src.topk(k, dim=1)
        for s in range(0, scores_src.shape[0], chunk):
            q = torch.arange(s, min(s + chunk, scores_src.shape[0])).repeat_interleave(k)
            c = top[s:s + chunk].flatten()
            img, txt = image_of(q, c), text_of(q, c)
            itm = model.itm_logits(embeds[img], enc_ids[txt], mask[txt])[:, 1]
            out[q, c] = itm + top_sim[s:s + chunk].flatten()
            bar.update(min(chunk, scores_src.shape[0] - s))
        return out

    # one bar for both directions: every image, then every text, is a query re-ranked by ITM
    with _bar(cfg, len(kept) + len(texts), "retrieval: re-rank", "query") as bar:
        i2t = rerank(sim, lambda q, c: q, lambda q, c: c, bar)
        t2i = rerank(sim.T, lambda q, c: c, lambda q, c: q, bar)
    itm_txt = recall_at_k(i2t, img2txt, txt2img)  # image -> text keys (txt_r*)
    itm_img = recall_at_k(t2i.T, img2txt, txt2img)  # text -> image keys (img_r*)
    result = {k_: v for k_, v in itm_txt.items() if k_.startswith("txt_")}
    result.update({k_: v for k_, v in itm_img.items() if k_.startswith("img_")})
    result["r_mean"] = (result["txt_r_mean"] + result["img_r_mean"]) / 2
    result["itc"] = recall_at_k(sim, img2txt, txt2img)
    result.update(n_images=len(kept), n_texts=len(texts), skipped_images=len(ev.refs) - len(kept), k_test=k)
    return result


# ---------------------------------------------------------------------------- sets
def _answers_of(path: str) -> list[str]:
    answers = []
    for e in read_annotations(path, "answer source"):
        ans = e.get("answer", [])
        answers += [pre_question(a) for a in ([ans] if isinstance(ans, str) else ans)]
    return list(dict.fromkeys(answers))


def eval_sets(cfg, tasks: tuple[str, ...], image_size: int) -> EvalSets:
    """Validation data for ``tasks`` from the config; empty when the config has none."""
    sets = EvalSets()
    want_captions = "caption" in tasks or "retrieval" in tasks
    if cfg.data == "scenes":
        if cfg.val_count:
            if want_captions:
                sets.captions = scene_caption_eval(cfg.val_seed, cfg.val_count, image_size, cfg.scene_max_objects)
            if "vqa" in tasks:
                sets.vqa = scene_vqa_eval(cfg.val_seed, cfg.val_count, image_size, cfg.scene_max_objects)
                sets.answer_list = scene_answer_list()
    else:
        vqa_path = cfg.vqa_val_json or (cfg.val_json if not want_captions else "")
        if want_captions and cfg.val_json:
            sets.captions = json_caption_eval(cfg.val_json, cfg.image_root, image_size)
        if "vqa" in tasks and vqa_path:
            what = "vqa_val_json" if cfg.vqa_val_json else "val_json"
            sets.vqa = json_vqa_eval(vqa_path, cfg.image_root, image_size, what)
            sets.answer_list = _answer_list(cfg, vqa_path)
    if sets.vqa is not None and cfg.answer_list:
        sets.answer_list = _load_answer_list(cfg.answer_list)
    return sets


def _answer_list(cfg, val_path: str) -> list[str]:
    train = cfg.vqa_train_json or (cfg.train_json if cfg.train_json and cfg.train_json != cfg.val_json else "")
    if train:
        try:
            return _answers_of(train)
        except DatasetError:
            pass  # a caption file: fall back below
    log.warning("no answer_list and no VQA training annotations: ranking among the validation answers (optimistic)")
    return _answers_of(val_path)


def _load_answer_list(path: str) -> list[str]:
    try:
        answers = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"answer_list: cannot read {path}: {e}") from None
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise DatasetError(f"answer_list: {path} must be a JSON list of strings")
    return list(dict.fromkeys(pre_question(a) for a in answers))


def evaluate_model(model: BlipModel, tokenizer: BlipTokenizer, sets: EvalSets, tasks: tuple[str, ...], cfg) -> dict:
    """Every requested task the model has and the data allows."""
    if next(model.parameters()).device.type != "cpu":
        # blip_core's decoding loop keeps its bookkeeping on the CPU: evaluate a CPU copy
        model = copy.deepcopy(model).cpu()
    was_training = model.training
    model.eval()
    out = {}
    try:
        if "caption" in tasks and sets.captions is not None:
            out["caption"] = caption_metrics(model, tokenizer, sets.captions, cfg)
        if "vqa" in tasks and sets.vqa is not None:
            out["vqa"] = vqa_metrics(model, tokenizer, sets.vqa, sets.answer_list, cfg)
        if "retrieval" in tasks and sets.captions is not None:
            out["retrieval"] = retrieval_metrics(model, tokenizer, sets.captions, cfg)
    finally:
        model.train(was_training)
    return out


# ----------------------------------------------------------------------------- CLI
def run(cfg: EvalConfig) -> dict:
    if not cfg.init:
        raise ConfigError("init=CHECKPOINT is required: the model to evaluate")
    model, tokenizer, _ = load_model(resolve_init(cfg.init))
    requested = task_list(cfg.tasks)
    tasks = tuple(t for t in requested if MODEL_TASK[t] in model.cfg.tasks)
    if not tasks:
        raise ConfigError(f"{cfg.init} has parts for {', '.join(model.cfg.tasks)}, none of tasks={cfg.tasks}")
    if skipped := [t for t in requested if t not in tasks]:
        log.info("the checkpoint cannot do %s: skipped", ", ".join(skipped))
    sets = eval_sets(cfg, tasks, model.cfg.vision.image_size)
    if sets.captions is None and sets.vqa is None:
        raise DatasetError("no evaluation data: set val_json= (and vqa_val_json=), or data=scenes with val_count > 0")
    result = {"checkpoint": cfg.init, **evaluate_model(model, tokenizer, sets, tasks, cfg)}
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.output_dir) / "eval.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str]) -> None:
    args = arg_parser("python -m training.evaluate", __doc__.splitlines()[0]).parse_args(argv)
    cfg = parse(EvalConfig, args.config, args.overrides, ignore_in_file=TRAINING_ONLY)
    info = dist.init()
    setup_process(cfg, info.main, log_file=False)
    if info.main:
        with torch.no_grad():
            result = run(cfg)
        print(json.dumps(result, indent=2))
    dist.barrier()


if __name__ == "__main__":
    run_cli(main)
