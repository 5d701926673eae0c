"""A small synthetic digit set: the glyphs 0-9 of Pillow's built-in font, randomly sized, placed, rotated and
noised, so examples and tests can train a digit classifier with no download (needs the ``image`` extra)."""
from __future__ import annotations

import numpy as np

from cnnkit.data.dataset import Dataset


def synthetic_digits(per_class: int = 50, size: int = 28, seed: int = 0) -> Dataset:
    """``per_class`` images of each digit 0-9, uint8 (N, 1, size, size), white on black, shuffled."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as exc:
        raise ImportError("synthetic_digits needs Pillow: pip install 'cnnkit[image]'") from exc
    if not isinstance(per_class, int) or per_class < 1 or not isinstance(size, int) or size < 16:
        raise ValueError(f"per_class must be a positive int and size an int >= 16, got {per_class!r}, {size!r}")
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for digit in range(10):
        for _ in range(per_class):
            font = ImageFont.load_default(size=int(rng.integers(size * 5 // 8, size * 7 // 8 + 1)))
            canvas = Image.new("L", (size, size))
            left, top, right, bottom = font.getbbox(str(digit))
            x = rng.integers(0, max(1, size - (right - left))) - left
            y = rng.integers(0, max(1, size - (bottom - top))) - top
            ImageDraw.Draw(canvas).text((int(x), int(y)), str(digit), fill=255, font=font)
            canvas = canvas.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
            noisy = np.asarray(canvas, dtype=np.float64) + rng.normal(0, 12, (size, size))
            images.append(np.clip(noisy, 0, 255).astype(np.uint8))
            labels.append(digit)
    order = rng.permutation(len(labels))
    return Dataset(np.stack(images)[order, None], np.asarray(labels, dtype=np.int64)[order],
                   [str(d) for d in range(10)], "synthetic-digits", source="cnnkit.data.synthetic_digits")
