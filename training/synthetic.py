"""A small synthetic dataset of coloured shapes, in both supported layouts.

Single-label: one shape per image, class = shape, written as ``root/<shape>/*.jpg``.
Multi-label: one to three distinct shapes per image, labels = shapes present, written as
JPEGs plus ``manifest.csv`` (``path,labels`` with ``;``-separated labels). Colours, sizes and
positions are random, so only the shapes carry the label; a small CNN learns both in a minute
on a CPU.
"""

from __future__ import annotations

import csv
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "cross", "ring")
_MANIFEST = "manifest.csv"


@dataclass(frozen=True)
class SyntheticSpec:
    image_size: int = 64
    single_label_per_class: int = 100
    multi_label_images: int = 800
    max_shapes: int = 3
    seed: int = 0


def _random_colour(rng: random.Random) -> tuple[int, int, int]:
    # Saturated colours well away from the grey background.
    base = [rng.randint(150, 255), rng.randint(0, 90), rng.randint(0, 255)]
    rng.shuffle(base)
    return tuple(base)  # type: ignore[return-value]


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    *,
    cx: float,
    cy: float,
    r: float,
    colour: tuple[int, int, int],
) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r / 3)))
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        pts = [
            (cx + r * math.cos(a), cy + r * math.sin(a))
            for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
        draw.polygon(pts, fill=colour)
    elif shape == "cross":
        w = max(2, r / 2.5)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _canvas(size: int, rng: random.Random) -> Image.Image:
    grey = rng.randint(20, 70)
    image = Image.new("RGB", (size, size), (grey, grey, grey))
    noise = Image.effect_noise((size, size), 12).convert("RGB")
    return Image.blend(image, noise, 0.15)


def render(shapes: list[str], size: int, rng: random.Random) -> Image.Image:
    """One image with the given shapes at non-overlapping random places."""
    image = _canvas(size, rng)
    draw = ImageDraw.Draw(image)
    cells = _cells(len(shapes), size, rng)
    for shape, (cx, cy, r) in zip(shapes, cells, strict=False):
        _draw_shape(draw, shape, cx=cx, cy=cy, r=r, colour=_random_colour(rng))
    return image


def _cells(count: int, size: int, rng: random.Random) -> list[tuple[float, float, float]]:
    """Centres and radii in separate grid cells, so shapes never hide each other."""
    grid = 1 if count == 1 else 2
    cell = size / grid
    slots = rng.sample([(i, j) for i in range(grid) for j in range(grid)], count)
    out = []
    for i, j in slots:
        r = rng.uniform(0.22, 0.34) * cell
        cx = (i + 0.5) * cell + rng.uniform(-0.12, 0.12) * cell
        cy = (j + 0.5) * cell + rng.uniform(-0.12, 0.12) * cell
        out.append((cx, cy, r))
    return out


def write_single_label(root: Path, spec: SyntheticSpec) -> Path:
    rng = random.Random(spec.seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(spec.single_label_per_class):
            render([shape], spec.image_size, rng).save(root / shape / f"{i:04d}.jpg", quality=95)
    return root


def write_multi_label(root: Path, spec: SyntheticSpec) -> Path:
    rng = random.Random(spec.seed + 1)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    with open(root / _MANIFEST, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "labels"])
        for i in range(spec.multi_label_images):
            shapes = rng.sample(SHAPES, rng.randint(1, spec.max_shapes))
            name = f"images/{i:05d}.jpg"
            render(shapes, spec.image_size, rng).save(root / name, quality=95)
            writer.writerow([name, ";".join(sorted(shapes))])
    return root / _MANIFEST


def generate(out_dir: str | Path, spec: SyntheticSpec | None = None) -> dict[str, Path]:
    """Write both layouts under ``out_dir``; returns the single-label root and the manifest."""
    spec = spec or SyntheticSpec()
    out_dir = Path(out_dir)
    single = write_single_label(out_dir / "single_label", spec)
    manifest = write_multi_label(out_dir / "multi_label", spec)
    logger.info(
        "Wrote synthetic data to %s (%d single-label, %d multi-label images)",
        out_dir,
        spec.single_label_per_class * len(SHAPES),
        spec.multi_label_images,
    )
    return {"single_label": single, "multi_label": manifest}
