"""Small figures the driver attaches to each trial's MLflow run (the analysis package draws the rest)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

IGNORE_INDEX = 255


def _colour(label: np.ndarray) -> np.ndarray:
    """A label map ``(H, W)`` as an RGB image: tab20 colours, background black, ignore white."""
    from matplotlib import colormaps

    palette = (colormaps["tab20"](np.arange(20))[:, :3] * 255).astype(np.uint8)
    rgb = palette[(label.astype(np.int64) - 1) % 20]
    rgb[label == 0] = 0
    rgb[label == IGNORE_INDEX] = 255
    return rgb


def render_samples(samples: Mapping[str, np.ndarray], path: Path) -> Path:
    """Rows of (image, ground truth, noisy label, prediction) panels, written as a PNG.

    ``samples`` holds ``images`` ``(N, 3, H, W)`` uint8 and label maps ``(N, H, W)`` under any of
    ``clean``, ``noisy``, ``prediction`` (each drawn as a column when present).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [name for name in ("clean", "noisy", "prediction") if name in samples]
    images = samples["images"]
    rows = len(images)
    fig, axes = plt.subplots(rows, 1 + len(columns), figsize=(2 * (1 + len(columns)), 2 * rows), squeeze=False)
    for row in range(rows):
        axes[row, 0].imshow(np.transpose(images[row], (1, 2, 0)))
        for col, name in enumerate(columns, start=1):
            axes[row, col].imshow(_colour(samples[name][row]), interpolation="nearest")
        for col, title in enumerate(["image", *columns]):
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title({"clean": "ground truth", "noisy": "noisy label"}.get(title, title))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)
