"""The samples.png each trial's MLflow run carries: every panel's pixels are the input's, scaled up."""

from __future__ import annotations

import numpy as np
from PIL import Image

from study.figures import GAP_PX, PALETTE, PANEL_PX, TITLE_PX, panel_scale, render_samples


def panel(picture: np.ndarray, row: int, col: int, height: int, width: int) -> np.ndarray:
    """The (row, col) panel of a rendered grid, shrunk back to (height, width) by taking every scale-th pixel."""
    scale = panel_scale(height, width)
    top, left = TITLE_PX + row * (height * scale + GAP_PX), col * (width * scale + GAP_PX)
    block = picture[top:top + height * scale, left:left + width * scale]
    shrunk = block[::scale, ::scale]
    # every pixel of a scale x scale block is its source pixel (nearest neighbour)
    np.testing.assert_array_equal(block, shrunk.repeat(scale, 0).repeat(scale, 1))
    return shrunk


def test_panels_hold_the_image_and_the_label_colours_in_a_grid_with_titles(tmp_path):
    rng = np.random.default_rng(0)
    n, height, width = 2, 12, 20
    images = rng.integers(0, 256, (n, 3, height, width), dtype=np.uint8)
    clean = rng.integers(0, 22, (n, height, width)).astype(np.uint8)
    clean[0, 0, :3] = (0, 255, 21)  # background, ignore, and a class that wraps round the palette
    prediction = (clean + 1) % 22
    path = render_samples({"images": images, "clean": clean, "prediction": prediction}, tmp_path / "s.png")
    picture = np.asarray(Image.open(path).convert("RGB"))

    scale = panel_scale(height, width)
    assert scale == PANEL_PX // width == 8
    assert picture.shape == (TITLE_PX + n * (height * scale + GAP_PX), 3 * (width * scale + GAP_PX), 3)
    for row in range(n):
        np.testing.assert_array_equal(panel(picture, row, 0, height, width), images[row].transpose(1, 2, 0))
        for col, labels in ((1, clean), (2, prediction)):
            colours = panel(picture, row, col, height, width)
            for label in np.unique(labels[row]):
                expected = {0: (0, 0, 0), 255: (255, 255, 255)}.get(int(label), PALETTE[(int(label) - 1) % 20])
                assert (colours[labels[row] == label] == expected).all(), (row, col, label)
    assert tuple(panel(picture, 0, 1, height, width)[0, 2]) == tuple(PALETTE[0])  # class 21 -> tab20 colour 0
    band = picture[:TITLE_PX]
    for col in range(3):  # a title is drawn in dark (antialiased black) pixels over each column
        left = col * (width * scale + GAP_PX)
        assert (band[:, left:left + width * scale] < 128).all(axis=2).sum() > 20, col


def test_a_large_image_is_not_scaled_and_absent_columns_are_left_out(tmp_path):
    images = np.zeros((1, 3, 200, 300), dtype=np.uint8)
    path = render_samples({"images": images, "noisy": np.ones((1, 200, 300), np.uint8)}, tmp_path / "s.png")
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert panel_scale(200, 300) == 1
    assert picture.shape == (TITLE_PX + 200 + GAP_PX, 2 * (300 + GAP_PX), 3)
    assert (panel(picture, 0, 1, 200, 300) == PALETTE[0]).all()


def test_sample_images_are_spread_over_a_split_stored_class_by_class():
    import torch

    from trainables.data.base import SegmentationData
    from trainables.data.loading import SegmentationDataset
    from trainables.pretrain_finetune import _samples, sample_indices

    assert sample_indices(100) == [0, 33, 66, 99]
    assert sample_indices(10, 3) == [0, 4, 9] and sample_indices(3) == [0, 1, 2] and sample_indices(0) == []
    # 5 classes, 20 images each, in class order (as the synthetic test split is stored)
    labels = np.repeat(np.arange(1, 6, dtype=np.uint8), 20)[:, None, None] * np.ones((1, 4, 4), np.uint8)
    images = np.arange(100, dtype=np.uint8)[:, None, None, None] * np.ones((1, 3, 4, 4), np.uint8)
    data = SegmentationData(images, labels, (labels > 0).astype(np.uint16), tuple(f"c{i}" for i in range(6)))

    class Constant(torch.nn.Module):  # predicts class 2 everywhere: (N, 6, H, W) logits
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(torch.full(x.shape[:1] + x.shape[2:], 2), 6).permute(0, 3, 1, 2).float()

    samples = _samples(Constant(), SegmentationDataset(data), torch.device("cpu"), noisy=True)
    assert samples["images"][:, 0, 0, 0].tolist() == [0, 33, 66, 99], "the images of the chosen indices"
    assert [int(m[0, 0]) for m in samples["clean"]] == [1, 2, 4, 5], "four classes, not the first one only"
    assert torch.equal(samples["noisy"], samples["clean"]) and (samples["prediction"] == 2).all()
