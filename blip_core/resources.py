"""Will a model fit? The memory a load needs, estimated from the checkpoint's tensor shapes before
anything is allocated, against what the kernel says is available (``MemAvailable``): a load that
cannot fit is refused with a message saying what would, instead of being killed by the OOM
killer halfway through (a 15 GB fp32 BLIP-2 on an 8 GB Pi)."""

from __future__ import annotations

import math
from pathlib import Path

from blip_core.errors import InsufficientMemoryError

GB = 1 << 30
OVERHEAD = 400 << 20  # interpreter, torch or ONNX Runtime, activations of one image: measured 250-380 MB
LLM_PREFIX = "language_model."
# bytes per weight; the LLM's int8/int4 blocks carry one fp32 scale per 32 weights
BYTES_PER_PARAM = {"fp32": 4.0, "int8": 1.0, "llm8": 1 + 4 / 32, "llm4": 0.5 + 4 / 32}


def mem_available() -> int | None:
    """Bytes the kernel could give this process without swapping (Linux ``MemAvailable``), or None
    where that is unknown (other systems): no check then."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def parameter_counts(shapes: dict[str, tuple[int, ...]]) -> tuple[int, int]:
    """(parameters of the language model, all other parameters) from a checkpoint's tensor shapes."""
    llm = other = 0
    for key, shape in shapes.items():
        n = math.prod(shape)
        if key.startswith(LLM_PREFIX) or key.startswith(("opt_model.", "t5_model.")):
            llm += n
        else:
            other += n
    return llm, other


def needed_bytes(shapes: dict[str, tuple[int, ...]], precision: str, llm_bits: int = 8) -> int:
    """Resident memory a model of these tensors needs at ``precision``: fp32 everywhere, or int8
    with the language model in blocks of ``llm_bits`` (8 by default, 4 on request)."""
    llm, other = parameter_counts(shapes)
    if precision == "fp32":
        return int(4 * (llm + other)) + OVERHEAD
    return int(BYTES_PER_PARAM["int8"] * other + BYTES_PER_PARAM[f"llm{llm_bits}"] * llm) + OVERHEAD


def check_memory(name: str, shapes: dict[str, tuple[int, ...]], precision: str,
                 available: int | None = None) -> None:
    """Refuse (InsufficientMemoryError) a load of ``name`` that cannot fit in the memory available
    now, saying what it needs, what there is, and what would fit."""
    available = mem_available() if available is None else available
    need = needed_bytes(shapes, precision)
    if available is None or need <= available:
        return
    hint = ""
    if precision == "fp32":
        smaller, smallest = needed_bytes(shapes, "int8"), needed_bytes(shapes, "int8", llm_bits=4)
        if smaller <= available:
            hint = f"; with precision='int8' it needs {smaller / GB:.1f} GB, which fits: use --precision int8"
        elif smallest <= available and smallest < smaller:
            hint = (f"; in int8 it needs {smaller / GB:.1f} GB, and {smallest / GB:.1f} GB (which fits) with the "
                    "language model in 4 bits: blip convert --llm-bits 4 MODEL DIR, then load DIR in int8")
        else:
            hint = (f"; even in int8 it needs {smallest / GB:.1f} GB (a machine with at least "
                    f"{math.ceil(smallest / GB) + 1} GB of memory)")
    raise InsufficientMemoryError(
        f"{name} needs about {need / GB:.1f} GB of memory in {precision} but only {available / GB:.1f} GB is "
        f"available{hint}; close other programs or pick a smaller model (BLIP base: about 0.3 GB in int8)")
