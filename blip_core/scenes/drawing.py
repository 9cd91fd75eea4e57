"""Drawing a layout: supersampled polygons, then a light texture."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from blip_core.scenes.layout import Placement
from blip_core.scenes.world import BACKGROUNDS

_GRADIENT_MAX = 8.0  # brightness gradient amplitude (levels), "lighting"
_NOISE_MAX = 4  # per-pixel texture noise (levels)


def _shape_polygons(shape: str, cx: float, cy: float, r: float) -> list[list[tuple[float, float]]]:
    """Polygons (in pixels) whose union is ``shape`` with half-extent ``r`` centred at (cx, cy)."""
    if shape == "square":
        return [[(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]]
    if shape == "triangle":
        return [[(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]]
    if shape == "diamond":
        return [[(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]]
    if shape == "cross":
        t = 0.38 * r  # half arm thickness: thick enough to stay a cross at ~12 px
        return [
            [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy + r), (cx - t, cy + r)],
            [(cx - r, cy - t), (cx + r, cy - t), (cx + r, cy + t), (cx - r, cy + t)],
        ]
    if shape == "star":
        # A five-pointed star spans [-r, 0.81 r] vertically; shift it down to centre it, and
        # use a fat inner radius so the points survive downscaling.
        cy += r * (1 - math.cos(math.pi / 5)) / 2
        pts = []
        for i in range(10):
            a = -math.pi / 2 + i * math.pi / 5
            rr = r if i % 2 == 0 else 0.5 * r
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return [pts]
    raise ValueError(f"unknown shape {shape!r}")


def draw(background: str, placements: list[Placement], size: int, texture_seed: list[int]) -> Image.Image:
    """Supersampled drawing, box-filter downscale (anti-aliasing), then light texture."""
    ss = 4 if size <= 192 else 2  # keep the supersampled canvas around 400-800 px
    big = size * ss
    canvas = Image.new("RGB", (big, big), BACKGROUNDS[background])
    draw = ImageDraw.Draw(canvas)
    for p in placements:
        r = p.extent * big / 2
        if p.shape == "circle":
            draw.ellipse((p.cx * big - r, p.cy * big - r, p.cx * big + r, p.cy * big + r), fill=p.rgb)
        else:
            for poly in _shape_polygons(p.shape, p.cx * big, p.cy * big, r):
                draw.polygon(poly, fill=p.rgb)
    image = canvas.resize((size, size), Image.Resampling.BOX)

    # Texture: a gentle lighting gradient plus grey pixel noise, the same for all channels so
    # hues are untouched. Seeded separately from the layout so content is size-independent.
    gen = np.random.default_rng(texture_seed)
    amp = gen.uniform(0.0, _GRADIENT_MAX)
    angle = gen.uniform(0.0, 2 * math.pi)
    lin = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    shade = amp * math.cos(angle) * lin[None, :] + amp * math.sin(angle) * lin[:, None]
    shade = shade + gen.integers(-_NOISE_MAX, _NOISE_MAX + 1, (size, size)).astype(np.float32)
    pixels = np.asarray(image, dtype=np.float32) + shade[:, :, None]
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")
