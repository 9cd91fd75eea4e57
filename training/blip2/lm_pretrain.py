"""Pre-train the small frozen LLM of the BLIP-2 experiments: an OPT-architecture decoder
(``blip_core.model.opt.OptLM``) on scene-world text, captions followed by questions and answers.

    python -m training.blip2.lm_pretrain training/configs/blip2_lm_smoke.yaml [key=value ...]

Every checkpoint folder is a Hugging Face ``OPTForCausalLM`` folder (config.json with model_type
opt, model.safetensors, tokenizer.json) that transformers' ``from_pretrained`` and stage 2
(``llm=``) load; the training state sits beside it for exact resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from blip_core.model.blip2_config import OptConfig
from blip_core.model.opt import OptLM
from blip_core.tokenizer import LlmTokenizer
from training import dist
from training.config import arg_parser, parse, run_cli
from training.loop import Run, launch
from training.objectives import Objective

from .config import LmConfig, config_and_overrides
from .losses import causal_lm_loss
from .objectives import pad_rows
from .text_data import BOS_ID, EOS_ID, PAD_ID, SceneText, build_tokenizer, llm_vocab


def opt_config(cfg: LmConfig, vocab_size: int) -> OptConfig:
    return OptConfig(vocab_size=vocab_size, width=cfg.width, embed_dim=cfg.width, layers=cfg.layers, heads=cfg.heads,
                     ffn_dim=cfg.ffn_dim, max_positions=cfg.max_positions, pad_id=PAD_ID, bos_id=BOS_ID,
                     eos_id=EOS_ID)


def hf_opt_config(c: OptConfig) -> dict:
    """transformers' OPTConfig fields for ``c`` (BLIP-2's reader takes the same dict as its text_config)."""
    return {"architectures": ["OPTForCausalLM"], "model_type": "opt", "vocab_size": c.vocab_size,
            "hidden_size": c.width, "word_embed_proj_dim": c.embed_dim, "num_hidden_layers": c.layers,
            "num_attention_heads": c.heads, "ffn_dim": c.ffn_dim, "max_position_embeddings": c.max_positions,
            "do_layer_norm_before": c.pre_norm, "activation_function": "relu", "enable_bias": True,
            "layer_norm_elementwise_affine": True, "_remove_final_layer_norm": False, "dropout": 0.0,
            "attention_dropout": 0.0, "activation_dropout": 0.0, "layerdrop": 0.0, "init_std": 0.02,
            "pad_token_id": c.pad_id, "bos_token_id": c.bos_id, "eos_token_id": c.eos_id,
            "tie_word_embeddings": True, "use_cache": True, "torch_dtype": "float32"}


class LmObjective(nn.Module):
    """The OPT model and its tokenizer; loss = next-token cross-entropy over each text
    (``</s>`` text ``</s>``), padding ignored."""

    def __init__(self, model: OptLM, tokenizer: LlmTokenizer, *, max_tokens: int):
        super().__init__()
        self.model, self.tokenizer, self.max_tokens = model, tokenizer, max_tokens

    extra_state = Objective.extra_state
    load_extra_state = Objective.load_extra_state

    def prepare(self, batches: dict[str, dict], device: torch.device) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        rows = [([tok.bos_id] + tok.tokens(t))[: self.max_tokens - 1] + [tok.eos_id] for t in batches["text"]["text"]]
        ids, mask = pad_rows(rows, self.model.cfg.pad_id)
        return {"ids": ids.to(device), "mask": mask.to(device)}

    def forward(self, x: dict[str, torch.Tensor], alpha: float = 0.0) -> dict[str, torch.Tensor]:
        ids, mask = x["ids"], x["mask"]
        hidden = self.model(self.model.embed(ids), mask=mask)
        return {"loss_lm": causal_lm_loss(self.model.logits(hidden), ids.masked_fill(mask == 0, -100))}

    def write_model(self, folder: Path, extra: dict) -> None:
        """The Hugging Face OPTForCausalLM layout (the LM head is tied: no lm_head.weight)."""
        (folder / "config.json").write_text(json.dumps({**hf_opt_config(self.model.cfg), "blipcam_training": extra},
                                                       indent=2))
        sd = {k: v.detach().float().contiguous() for k, v in self.model.state_dict().items()}
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "tokenizer.json").write_bytes((self.tokenizer.folder / "tokenizer.json").read_bytes())


def build(cfg: LmConfig, info: dist.DistInfo) -> Run:
    torch.manual_seed(cfg.seed)
    folder = Path(cfg.output_dir) / "tokenizer"
    if info.main:
        build_tokenizer(folder / "tokenizer.json")
    dist.barrier()
    vocab_size = len(llm_vocab())
    tokenizer = LlmTokenizer(folder, "opt", BOS_ID, EOS_ID, vocab_size)
    model = OptLM(opt_config(cfg, vocab_size))
    for m in model.modules():  # OPT's init: N(0, 0.02), zero biases (nn.Linear's default is wider)
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
    objective = LmObjective(model.train(), tokenizer, max_tokens=cfg.max_tokens)
    datasets = {"text": SceneText(cfg.scene_seed, cfg.scene_count, cfg.scene_max_objects, cfg.seed, cfg.max_qa)}
    return Run("blip2-lm", cfg, info, objective, datasets)


def run(cfg: LmConfig) -> Run:
    return launch(build, cfg)


def main(argv: list[str]) -> None:
    args = arg_parser("python -m training.blip2.lm_pretrain", __doc__.splitlines()[0]).parse_args(argv)
    config, overrides = config_and_overrides(args)
    run(parse(LmConfig, config, overrides))


if __name__ == "__main__":
    run_cli(main)
