"""Conditional-caption prompts and decoding options, turned into ``model.caption`` keyword
arguments (no Qt).

BLIP's captioner continues a text prefix: "a picture of " (BLIP's training prompt) or
"a photography of " (the Hugging Face model card's example) steer the style; an empty prefix
lets it start from ``[DEC]`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from blip_core.generation import DEFAULT_BEAMS, STRATEGIES, beam_count

PROMPT_MODES = ("none", "picture", "photography", "custom")
PRESET_PROMPTS = {"none": "", "picture": "a picture of ", "photography": "a photography of "}
PROMPT_LABELS = {
    "none": "No prompt", "picture": "“a picture of”", "photography": "“a photography of”", "custom": "Custom:",
}
MAX_PROMPT_CHARS = 80  # the caption decoder has ~40 positions; a long prefix leaves none for the caption

MIN_TOKENS, MAX_TOKENS = 1, 60


def build_prompt(mode: str, custom: str = "") -> str:
    """The prefix sent to the model for a prompt mode.

    Custom text is whitespace-normalised, cut to MAX_PROMPT_CHARS and given the trailing space
    the decoder expects before the next word; blank custom text means no prompt.
    """
    if mode not in PROMPT_MODES:
        raise ValueError(f"unknown prompt mode {mode!r}")
    if mode != "custom":
        return PRESET_PROMPTS[mode]
    text = " ".join(custom.split())[:MAX_PROMPT_CHARS].strip()
    return f"{text} " if text else ""


@dataclass(frozen=True)
class CaptionOptions:
    """What the user chose in the prompt and decoding controls."""

    prompt: str = "a picture of "
    strategy: str = "greedy"
    max_new_tokens: int = 20
    num_beams: int = DEFAULT_BEAMS  # used by "beam" only
    top_p: float = 0.9  # used by "nucleus" only
    repetition_penalty: float = 1.0

    def kwargs(self) -> dict:
        """Keyword arguments for ``model.caption`` (the blip_core contract)."""
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown decoding strategy {self.strategy!r}")
        max_new = max(MIN_TOKENS, min(MAX_TOKENS, int(self.max_new_tokens)))
        return {
            "prompt": self.prompt,
            "strategy": self.strategy,
            "max_new_tokens": max_new,
            # the library's default minimum is 5; never ask for more than the maximum
            "min_new_tokens": min(5, max_new),
            "num_beams": beam_count(self.num_beams) if self.strategy == "beam" else 1,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
        }
