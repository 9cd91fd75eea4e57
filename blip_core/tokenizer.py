"""BLIP tokenizer: a WordPiece vocab (bert-base-uncased for Salesforce checkpoints) plus two
special tokens appended after it, exactly where the checkpoint's embeddings expect them:
``[DEC]`` (bos of the decoder, id = vocab size) and ``[ENC]`` (first token of the image-grounded
encoder, the next id). Works offline from a ``vocab.txt``.

The first token of every sequence selects the MED mode: ``[CLS]`` unimodal text encoder (ITC),
``[ENC]`` image-grounded encoder (ITM, VQA questions), ``[DEC]`` decoder (captions, answers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from blip_core.errors import BadInputError, CheckpointError

BERT_VOCAB = Path(__file__).parent / "data" / "bert-base-uncased-vocab.txt"
First = Literal["cls", "enc", "dec"]


def require_text(text, what: str = "the text") -> str:
    """``text`` if it is a str that is valid Unicode; else a BadInputError naming ``what``. A
    command-line argument that is not valid UTF-8 arrives with its bad bytes as lone surrogates
    (``'\\udcff'``), which no tokenizer (and no UTF-8 file) can take."""
    if not isinstance(text, str):
        raise BadInputError(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadInputError(f"{what} is not valid UTF-8 ('{escaped(text)}'): type it again or fix the "
                            "terminal's encoding") from e
    return text


def escaped(text: str) -> str:
    """``text`` writable as UTF-8: what is not valid Unicode in it (the undecodable bytes of a file
    name or an argument, which Python keeps as lone surrogates) becomes ``\\xff`` escapes (other
    lone surrogates ``\\udxxx``)."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that are not escaped bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def read_vocab(path: str | Path) -> dict[str, int]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read vocabulary {path}: {e}") from e
    vocab = {tok: i for i, tok in enumerate(lines)}
    for required in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
        if required not in vocab:
            raise CheckpointError(f"vocabulary {path} has no {required} token; is it a BERT WordPiece vocab.txt?")
    return vocab


class BlipTokenizer:
    def __init__(self, vocab_file: str | Path = BERT_VOCAB):
        self.vocab_file = Path(vocab_file)
        vocab = read_vocab(vocab_file)
        self.wordpiece_size = len(vocab)
        tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        # bert-base-uncased: clean text, split CJK characters, lower-case and strip accents
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.add_special_tokens(["[DEC]", "[ENC]"])
        self._tok = tok
        self.pad_id, self.unk_id = vocab["[PAD]"], vocab["[UNK]"]
        self.cls_id, self.sep_id = vocab["[CLS]"], vocab["[SEP]"]
        self.dec_id, self.enc_id = tok.token_to_id("[DEC]"), tok.token_to_id("[ENC]")
        self._first = {"cls": self.cls_id, "enc": self.enc_id, "dec": self.dec_id}

    @property
    def vocab_size(self) -> int:
        """Rows the embeddings need: WordPiece tokens + [DEC] + [ENC]."""
        return self.wordpiece_size + 2

    def check_model(self, text_cfg) -> None:
        """Refuse a vocabulary whose special ids differ from what the checkpoint was trained with."""
        ours = (self.vocab_size, self.dec_id, self.enc_id, self.pad_id, self.sep_id)
        theirs = (text_cfg.vocab_size, text_cfg.dec_id, text_cfg.enc_id, text_cfg.pad_id, text_cfg.sep_id)
        if ours != theirs:
            raise CheckpointError(
                f"vocabulary {self.vocab_file} does not fit the model: (size, [DEC], [ENC], [PAD], [SEP]) "
                f"= {ours} vs the model's {theirs}; put the checkpoint's own vocab.txt next to it"
            )

    def tokens(self, text: str) -> list[int]:
        """Word-piece ids of ``text`` without special tokens."""
        try:
            return self._tok.encode(text, add_special_tokens=False).ids
        except TypeError:  # not a str, or one with lone surrogates: say which
            require_text(text)
            raise

    def __call__(self, texts: str | Sequence[str], **options):
        """Texts -> (ids, mask), both LongTensor [B, T]; ``options`` as for :meth:`arrays`."""
        import torch  # here, not at import: an int8 model never loads torch (it uses ``arrays``)

        ids, mask = self.arrays(texts, **options)
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def arrays(
        self,
        texts: str | Sequence[str],
        first: First = "cls",
        max_length: int = 35,
        padding: Literal["longest", "max_length"] = "longest",
        add_sep: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> (ids, mask), int64 [B, T]: ``<first> pieces... [SEP] [PAD]...``, truncated to
        ``max_length`` tokens (``[SEP]`` kept), right-padded."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise BadInputError("no texts given")
        budget = max_length - (2 if add_sep else 1)
        rows = []
        for text in texts:
            require_text(text)
            rows.append([self._first[first]] + self.tokens(text)[:budget] + ([self.sep_id] if add_sep else []))
        width = max_length if padding == "max_length" else max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return ids, mask

    def prompt_ids(self, prompt: str) -> list[int]:
        """``[DEC]`` + the prompt's pieces, without ``[SEP]`` (so the decoder continues it)."""
        return [self.dec_id] + self.tokens(prompt)

    def decode(self, ids: Sequence[int]) -> str:
        # [PAD]/[CLS]/[SEP] are plain vocab.txt entries, which skip_special_tokens does not skip
        special = {self.pad_id, self.cls_id, self.sep_id}
        return self._tok.decode([i for i in ids if i not in special], skip_special_tokens=True).strip()

    def continuation(self, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> str:
        """Text of ``new_ids`` after a prompt. Decoded together with the prompt so a word-piece that
        continues the prompt's last word comes out right, then the prompt's text is cut off."""
        full = self.decode(list(prompt_ids) + list(new_ids))
        head = self.decode(prompt_ids)
        return full[len(head):].strip() if head and full.startswith(head) else full


class LlmTokenizer:
    """The tokenizer of BLIP-2's language model, read from the checkpoint folder: a tokenizers
    ``tokenizer.json`` (every Hugging Face BLIP-2 folder has one), else OPT's byte-level BPE
    ``vocab.json`` + ``merges.txt``. Special tokens are added here, by rule, never by the file's
    post-processor (which differs between tokenizer versions): OPT prompts start with BOS ``</s>``;
    T5 inputs end with EOS ``</s>``."""

    def __init__(self, folder: str | Path, kind: str, bos_id: int | None, eos_id: int, vocab_size: int):
        self.folder = Path(folder)
        self.kind = kind
        self._tok = self._read(self.folder)
        self.bos_id, self.eos_id = bos_id, eos_id
        size = self._tok.get_vocab_size(with_added_tokens=True)
        if size > vocab_size:
            raise CheckpointError(f"the tokenizer in {self.folder} has {size} tokens but the language model's "
                                  f"embeddings only {vocab_size}; the tokenizer belongs to another model")

    @staticmethod
    def _read(folder: Path) -> Tokenizer:
        try:
            if (folder / "tokenizer.json").is_file():
                return Tokenizer.from_file(str(folder / "tokenizer.json"))
            if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
                from tokenizers import ByteLevelBPETokenizer

                bpe = ByteLevelBPETokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
                return bpe._tokenizer
        except Exception as e:  # tokenizers raises its own exception type for a garbled file
            raise CheckpointError(f"cannot read the tokenizer in {folder}: {str(e)[:200]}; download the model "
                                  "again") from e
        raise CheckpointError(f"{folder} has no tokenizer.json (nor vocab.json + merges.txt) for its language "
                              "model; copy the model's tokenizer files next to its weights")

    def tokens(self, text: str) -> list[int]:
        require_text(text)
        return self._tok.encode(text, add_special_tokens=False).ids

    def prompt_ids(self, prompt: str) -> list[int]:
        """What the LLM reads after the visual prefix: OPT ``</s> prompt``; T5 ``prompt </s>``."""
        if self.kind == "t5":
            return self.tokens(prompt) + [self.eos_id]
        return [self.bos_id] + self.tokens(prompt)

    def decode(self, ids: Sequence[int]) -> str:
        specials = {self.bos_id, self.eos_id}
        return self._tok.decode([i for i in ids if i not in specials], skip_special_tokens=True).strip()
