"""Tokenizers for training: the scene-world WordPiece vocabulary, BERT's, or a given vocab.txt.

The scene vocabulary keeps small models small: ~250 rows of embeddings instead of BERT's 30,524.
Layout of ``vocab.txt`` (one token per line, the line number is the id)::

    [PAD] [UNK] [CLS] [SEP] [MASK]      ids 0-4, the BERT specials
    every word of scenes.VOCABULARY     letters, digits and punctuation as split_words makes them
    ##0 .. ##9                          BERT keeps "0231" as one word; WordPiece splits it in digits
    a..z, ##a..##z, punctuation         so an unseen word becomes letters, never one [UNK]

``BlipTokenizer`` appends ``[DEC]`` and ``[ENC]`` after the last line.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

from blip_core.checkpoints.atomic import atomic_file
from blip_core.scenes import VOCABULARY
from blip_core.tokenizer import BERT_VOCAB, BlipTokenizer

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def scene_vocab() -> list[str]:
    """The scene-world vocabulary as an ordered token list (deterministic)."""
    tokens = list(SPECIALS)
    for t in (*VOCABULARY, *(f"##{d}" for d in string.digits), *string.ascii_lowercase,
              *(f"##{c}" for c in string.ascii_lowercase), *string.digits, *string.punctuation):
        if t not in tokens:
            tokens.append(t)
    return tokens


def write_vocab(tokens: list[str], path: str | os.PathLike) -> Path:
    """Write atomically (several ranks may write the same file at once)."""
    return atomic_file(path, "\n".join(tokens) + "\n")


def make_tokenizer(vocab: str, output_dir: str | os.PathLike) -> BlipTokenizer:
    """``scenes`` -> build ``output_dir/vocab.txt``; ``bert`` -> bert-base-uncased; else a path."""
    if vocab == "scenes":
        return BlipTokenizer(write_vocab(scene_vocab(), Path(output_dir) / "vocab.txt"))
    if vocab == "bert":
        return BlipTokenizer(BERT_VOCAB)
    return BlipTokenizer(vocab)  # raises CheckpointError (a BlipError) if unreadable


def text_ids(tokenizer: BlipTokenizer) -> dict[str, int]:
    """The TextConfig fields a model needs from its tokenizer (``preset(..., **text_ids(tok))``)."""
    return dict(vocab_size=tokenizer.vocab_size, dec_id=tokenizer.dec_id, enc_id=tokenizer.enc_id,
                pad_id=tokenizer.pad_id, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id)
