"""The BLIP-2 int8 runtime: runs the graphs ``blip_core.int8.convert_blip2`` wrote, numpy in and
out, without torch (``OrtBlip2Model`` duck-types what ``api_blip2.Blip2`` drives on ``Blip2Model``).

One session per graph (one per ViT block, per LLM layer), all made with ``runtime.session_options``:
one thread pool and one memory arena for the process. The LLM's word table is memory-mapped, so
only the rows of tokens actually used are read from disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blip_core.errors import BadInputError
from blip_core.int8.runtime import _l2_normalize, open_session, session_options
from blip_core.int8.spec import (
    LLM_SMALL,
    LLM_TOKENS_F16,
    LLM_TOKENS_Q8,
    LLM_TOKENS_SCALE,
    OPT_POSITIONS,
    blip2_graph_names,
)

POSITION_OFFSET = 2  # OPT's learned position table starts at row 2 (model.opt.POSITION_OFFSET; that module needs torch)
MASKED = np.float32(-1e9)  # additive bias of a hidden key: exp underflows to 0 in fp32


class WordTable:
    """The LLM's word embeddings from the converted folder: ids [...] -> [..., D] float32, int8 rows
    in blocks with fp32 scales (or fp16), memory-mapped."""

    def __init__(self, folder: Path):
        if (folder / LLM_TOKENS_Q8).is_file():
            self.q = np.load(folder / LLM_TOKENS_Q8, mmap_mode="r")  # [V, D/32, 32] int8
            self.scale = np.load(folder / LLM_TOKENS_SCALE, mmap_mode="r")  # [V, D/32, 1]
        else:
            self.q, self.scale = np.load(folder / LLM_TOKENS_F16, mmap_mode="r"), None  # [V, D]

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        flat = ids.reshape(-1)
        rows = self.q[flat].astype(np.float32)
        if self.scale is not None:
            rows = rows * self.scale[flat]
        return rows.reshape(*ids.shape, -1)


def causal_bias(T: int, P: int) -> np.ndarray:
    """[1, 1, T, P + T]: new token i sees the P cached keys and new keys 0..i."""
    keys = np.arange(P + T)[None, :]
    return np.where(keys <= np.arange(T)[:, None] + P, np.float32(0), MASKED)[None, None].astype(np.float32)


class OrtBlip2Model:
    """BLIP-2 on int8 graphs: ``encode_frame``, then OPT's ``llm_prefix`` / Flan-T5's
    ``encode_prompt`` and ``llm_session``, or the ITM model's ``itm_logits`` / ``itc``."""

    numpy_io = True

    def __init__(self, cfg, folder: Path, threads: int):
        import onnxruntime as ort

        self.cfg = cfg
        folder = Path(folder)
        opts = session_options(ort, threads)
        self.sessions = {name: open_session(ort, folder / f"{name}.int8.onnx", opts) for name in blip2_graph_names(cfg)}
        if cfg.llm is None:
            with np.load(folder / "heads.npz") as heads:
                self.heads = {k: heads[k] for k in heads.files}
            self._last_match: tuple | None = None
            return
        self.tokens = WordTable(folder)
        if cfg.llm_kind == "opt":
            self.positions = np.load(folder / OPT_POSITIONS, mmap_mode="r")  # [max_positions + 2, width]
            with np.load(folder / LLM_SMALL) as small:
                self.project_in = small["project_in"] if "project_in" in small.files else None  # OPT-350m

    def eval(self):
        return self

    def run(self, name: str, **feed) -> list[np.ndarray]:
        return self.sessions[name].run(None, feed)

    # ------------------------------------------------------------ image
    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """pixels [B, 3, S, S] -> image tokens [B, N, Dv] after ln_vision."""
        x = self.run("vision.embed", pixels=np.ascontiguousarray(pixels, dtype=np.float32))[0]
        for i in range(self.cfg.vision.layers):
            x = self.run(f"vision.block{i}", x=x)[0]
        return x

    def encode_frame(self, pixels: np.ndarray) -> np.ndarray:
        """pixels -> the soft prompt [B, Q, D_llm] (LLM models) or the image tokens [B, N, Dv] (ITM)."""
        image = self.encode_image(pixels)
        return image if self.cfg.llm is None else self.run("qformer", image_embeds=image)[0]

    # ------------------------------------------------------------ OPT
    def _opt_input(self, embeds: np.ndarray, start: int) -> np.ndarray:
        """embeds [R, T, E] at positions start.. -> the first layer's input [R, T, W]."""
        T = embeds.shape[1]
        if start + T > self.cfg.llm.max_positions:
            raise BadInputError(f"the OPT sequence would be {start + T} tokens long; the model reads at most "
                                f"{self.cfg.llm.max_positions}")
        x = embeds if self.project_in is None else embeds @ self.project_in.T
        return (x + self.positions[start + POSITION_OFFSET: start + POSITION_OFFSET + T]).astype(np.float32)

    def opt_layers(self, x: np.ndarray, past: list[tuple[np.ndarray, np.ndarray]]):
        """x [R, T, W] after ``past`` (per layer keys, values [R, h, P, hd]) -> last hidden [R, T, W]
        and the grown keys/values."""
        bias = causal_bias(x.shape[1], past[0][0].shape[2])
        out = []
        for i, (k, v) in enumerate(past):
            x, k, v = self.run(f"opt.layer{i}", x=x, past_k=k, past_v=v, bias=bias)
            out.append((k, v))
        return x, out

    def _empty_past(self, rows: int, layers: int, heads: int, head_dim: int):
        empty = np.zeros((rows, heads, 0, head_dim), np.float32)
        return [(empty, empty)] * layers

    def llm_prefix(self, soft: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """OPT: per layer keys, values [1, h, Q, hd] over the soft prompt [1, Q, E]; computed once
        per image and never modified (sessions build new arrays)."""
        c = self.cfg.llm
        x = self._opt_input(np.asarray(soft, np.float32), 0)
        return self.opt_layers(x, self._empty_past(x.shape[0], c.layers, c.heads, c.width // c.heads))[1]

    # ------------------------------------------------------------ Flan-T5
    def encode_prompt(self, soft: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """[soft prompt [1, Q, D]; words of ids [1, T]] through the encoder -> states [1, Q + T, D]."""
        x = np.concatenate([np.asarray(soft, np.float32), self.tokens(ids)], axis=1)
        S = np.arange(x.shape[1], dtype=np.int64)
        bias = self.run("t5.enc_bias", query=S, key=S)[0]
        for i in range(self.cfg.llm.layers):
            x = self.run(f"t5.enc{i}", x=x, bias=bias)[0]
        return x

    def llm_session(self, state):
        """A ``generation.StepDecoder``: OPT after its ``llm_prefix``, Flan-T5 over ``encode_prompt``'s states."""
        return OrtOptSession(self, state) if self.cfg.llm_kind == "opt" else OrtT5Session(self, state)

    # ------------------------------------------------------------ ITM
    def _match(self, image_embeds, ids, mask) -> list[np.ndarray]:
        """The Q-Former's passes (ITM query rows [R, Q, W], queries [1, Q, W], text CLS [R, W]),
        remembered for the last inputs: ``match`` asks for ITM and ITC of the same texts."""
        ids = np.asarray(ids, np.int64)
        mask = np.ones_like(ids) if mask is None else np.asarray(mask, np.int64)
        key = (id(image_embeds), ids.tobytes(), ids.shape, mask.tobytes())
        if self._last_match is None or self._last_match[0] != key:
            out = self.run("qformer.match", image_embeds=np.asarray(image_embeds, np.float32), ids=ids, mask=mask)
            self._last_match = (key, image_embeds, out)  # the image kept alive: its id cannot be reused
        return self._last_match[2]

    def _linear(self, head: str, x: np.ndarray) -> np.ndarray:
        return x @ self.heads[f"{head}.weight"].T + self.heads[f"{head}.bias"]

    def itm_logits(self, image_embeds, ids, mask) -> np.ndarray:
        """-> [R, 2]: ``itm_head`` over every query row, averaged."""
        return self._linear("itm_head", self._match(image_embeds, ids, mask)[0]).mean(1)

    def itc(self, image_embeds, ids, mask) -> np.ndarray:
        """-> [1, R]: the best cosine over the queries."""
        _, queries, text = self._match(image_embeds, ids, mask)
        img = _l2_normalize(self._linear("vision_proj", queries))  # [1, Q, E]
        txt = _l2_normalize(self._linear("text_proj", text))  # [R, E]
        return np.einsum("iqe,te->itq", img, txt).max(-1)


class OrtOptSession:
    """``StepDecoder`` for OPT after a prefix (``OrtBlip2Model.llm_prefix``), which it never modifies."""

    def __init__(self, model: OrtBlip2Model, prefix: list[tuple[np.ndarray, np.ndarray]]):
        self.m, self.prefix = model, prefix
        self.past = prefix

    def _run(self, ids: np.ndarray) -> np.ndarray:
        m = self.m
        x = m._opt_input(m.tokens(ids), self.past[0][0].shape[2])
        x, self.past = m.opt_layers(x, self.past)
        return m.run("opt.head", hidden=np.ascontiguousarray(x[:, -1:]))[0]

    def start(self, prompt_ids: np.ndarray, group: int) -> np.ndarray:
        """prompt_ids [B, T] (BOS first) -> logits [B * group, V]."""
        ids = np.asarray(prompt_ids, np.int64)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"OPT prompt must be [batch, tokens] with at least one token, got {ids.shape}")
        B, rows = ids.shape[0], self.prefix[0][0].shape[0]
        if rows not in (1, B):
            raise ValueError(f"prefix has {rows} rows, prompt has {B}")
        self.past = [(np.repeat(k, B, 0), np.repeat(v, B, 0)) for k, v in self.prefix] if rows != B else self.prefix
        logits = self._run(ids)
        if group > 1:
            return self._select(np.repeat(np.arange(B), group), logits)
        return logits

    def _select(self, rows: np.ndarray, logits: np.ndarray | None = None):
        self.past = [(k[rows], v[rows]) for k, v in self.past]
        return None if logits is None else logits[rows]

    def step(self, tokens: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        if rows is not None:
            self._select(np.asarray(rows))
        return self._run(np.asarray(tokens, np.int64)[:, None])


class OrtT5Session(OrtOptSession):
    """``StepDecoder`` for the Flan-T5 decoder over one image's encoder states [1, S, D]: each
    layer's cross keys/values computed once, shared by every step and beam (broadcast over rows)."""

    def __init__(self, model: OrtBlip2Model, states: np.ndarray):
        c = model.cfg.llm
        states = np.asarray(states, np.float32)
        if states.shape[0] != 1:
            raise BadInputError("the int8 engine decodes one image's prompt at a time")
        self.m = model
        self.cross = [model.run(f"t5.dec{i}.cross", states=states) for i in range(c.decoder_layers)]
        self.prefix = model._empty_past(1, c.decoder_layers, c.heads, c.kv_dim)
        self.past = self.prefix

    def _run(self, ids: np.ndarray) -> np.ndarray:
        m = self.m
        P, T = self.past[0][0].shape[2], ids.shape[1]
        bias = m.run("t5.dec_bias", query=np.arange(P, P + T, dtype=np.int64),
                     key=np.arange(P + T, dtype=np.int64))[0] + causal_bias(T, P)
        x, past = m.tokens(ids), []
        for i, ((k, v), (ck, cv)) in enumerate(zip(self.past, self.cross)):
            x, k, v = m.run(f"t5.dec{i}", x=x, past_k=k, past_v=v, bias=bias, cross_k=ck, cross_v=cv)
            past.append((k, v))
        self.past = past
        return m.run("t5.head", hidden=np.ascontiguousarray(x[:, -1:]))[0]
