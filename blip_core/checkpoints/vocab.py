"""The vocabulary file of a checkpoint: its ``vocab.txt``, one made from its ``tokenizer.json``, or
BERT's (every Salesforce model uses bert-base-uncased plus [DEC] and [ENC])."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from blip_core.checkpoints.atomic import atomic_file
from blip_core.checkpoints.sources import read_json
from blip_core.errors import CheckpointError
from blip_core.model.config import BlipConfig, TextConfig
from blip_core.tokenizer import BERT_VOCAB, BlipTokenizer, LlmTokenizer


def vocab_for(folder: Path, cfg: BlipConfig) -> Path:
    """The ``vocab.txt`` of the checkpoint in ``folder`` (``cfg``: its config)."""
    if (folder / "vocab.txt").is_file():
        return folder / "vocab.txt"
    if (folder / "tokenizer.json").is_file():
        return vocab_from_tokenizer_json(folder / "tokenizer.json")
    if cfg.text.vocab_size == TextConfig.vocab_size:  # the default: bert-base-uncased + [DEC] + [ENC]
        return BERT_VOCAB
    raise CheckpointError(f"no vocab.txt in {folder} and the vocabulary ({cfg.text.vocab_size}) is not BERT's")


def vocab_from_tokenizer_json(path: Path) -> Path:
    """A ``vocab.txt`` (one token a line, by id) made from a tokenizers ``tokenizer.json``. It is
    named by a digest of its content, so every process and every load of the same vocabulary
    shares one file instead of leaving a new one behind each time."""
    vocab = _tokenizer_json_vocab(path)
    text = "\n".join(sorted(vocab, key=vocab.get)) + "\n"
    out = Path(tempfile.gettempdir()) / f"blip-vocab-{hashlib.sha256(text.encode()).hexdigest()[:32]}.txt"
    try:
        if out.read_text(encoding="utf-8") == text:  # whole: only atomic writes make it
            return out
    except (OSError, ValueError):  # absent, unreadable or garbled: (re)write it
        pass
    atomic_file(out, text)
    return out


def _tokenizer_json_vocab(path: Path) -> dict[str, int]:
    """The WordPiece vocabulary (token -> id) of a tokenizers ``tokenizer.json``."""
    model = read_json(path).get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if not (isinstance(vocab, dict) and vocab and all(type(i) is int for i in vocab.values())):
        raise CheckpointError(f"{path}: model.vocab must be an object of token ids; put the model's vocab.txt "
                              "next to it instead")
    return vocab


def tokenizer_for(ck) -> BlipTokenizer | LlmTokenizer:
    """The tokenizer of an opened checkpoint ``ck`` (``opening.Checkpoint``), checked against its
    model: BLIP's WordPiece with [DEC]/[ENC]; BLIP-2's LLM tokenizer (OPT or Flan-T5), or BERT's
    WordPiece for the ITM model's Q-Former."""
    if ck.family != "blip2":
        tokenizer = BlipTokenizer(ck.vocab)
        tokenizer.check_model(ck.cfg.text)
        return tokenizer
    cfg = ck.cfg
    if cfg.llm is None:
        return BlipTokenizer(ck.vocab / "vocab.txt" if (ck.vocab / "vocab.txt").is_file() else BERT_VOCAB)
    return LlmTokenizer(ck.vocab, cfg.llm_kind, getattr(cfg.llm, "bos_id", None), cfg.llm.eos_id, cfg.llm.vocab_size)
