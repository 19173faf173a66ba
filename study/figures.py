"""Small figures the driver attaches to each trial's MLflow run (the analysis package draws the rest).

Drawn with numpy and Pillow, not matplotlib: they are rendered on Ray Tune's controller loop when a trial
ends, where matplotlib's layout and PNG writer took ~0.4 s per figure (two per trial) and held up every
other trial's scheduling; composing the panels as arrays takes milliseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from trainables.labels import PALETTE, label_rgb  # noqa: F401  (PALETTE: the colours the tests check)

PANEL_PX = 160  # a panel's longer side is scaled up to at most this, by a whole factor (pixels stay square)
GAP_PX = 4  # white between panels
TITLE_PX = 16  # the band above the first row that holds the column titles
TITLES = {"clean": "ground truth", "noisy": "noisy label"}


def panel_scale(height: int, width: int) -> int:
    """The whole factor each panel is scaled up by: its longer side at most PANEL_PX (at least 1)."""
    return max(1, PANEL_PX // max(height, width))


def render_samples(samples: Mapping[str, np.ndarray], path: Path) -> Path:
    """Rows of (image, ground truth, noisy label, prediction) panels, written as a PNG.

    ``samples`` holds ``images`` ``(N, 3, H, W)`` uint8 and label maps ``(N, H, W)`` under any of
    ``clean``, ``noisy``, ``prediction`` (each drawn as a column when present). Each panel is scaled up
    by :func:`panel_scale` with nearest neighbours; panels sit GAP_PX apart under a TITLE_PX title band.
    """
    from PIL import Image, ImageDraw

    columns = [name for name in ("clean", "noisy", "prediction") if name in samples]
    images = np.asarray(samples["images"])
    rows, _, height, width = images.shape
    scale = panel_scale(height, width)
    step_y, step_x = height * scale + GAP_PX, width * scale + GAP_PX
    canvas = np.full((TITLE_PX + rows * step_y, (1 + len(columns)) * step_x, 3), 255, dtype=np.uint8)
    for row in range(rows):
        panels = [np.transpose(images[row], (1, 2, 0)), *(label_rgb(np.asarray(samples[name][row])) for name in columns)]
        for col, panel in enumerate(panels):
            top, left = TITLE_PX + row * step_y, col * step_x
            canvas[top:top + height * scale, left:left + width * scale] = panel.repeat(scale, 0).repeat(scale, 1)
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for col, name in enumerate(["image", *columns]):
        draw.text((col * step_x + 2, 2), TITLES.get(name, name), fill=(0, 0, 0))
    picture.save(path)
    return Path(path)
