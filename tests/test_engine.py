"""Training and evaluation functions: a few steps learn, NaN losses stop training, scores are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trainables.data.base import IGNORE_INDEX, SegmentationData
from trainables.data.loading import SegmentationDataset, make_loader
from trainables.engine import evaluate_classification, evaluate_segmentation, predict, train_one_epoch
from trainables.losses import make_loss
from trainables.models import small_fcn


def _tiny_dataset() -> SegmentationDataset:
    """4 images of 16x16: a bright square (class 1) on a dark background."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, size=(4, 3, 16, 16), dtype=np.uint8)
    labels = np.zeros((4, 16, 16), dtype=np.uint8)
    for i in range(4):
        top, left = rng.integers(0, 8, size=2)
        images[i, :, top : top + 8, left : left + 8] += 180
        labels[i, top : top + 8, left : left + 8] = 1
    return SegmentationDataset(SegmentationData(images, labels, (labels > 0).astype(np.uint16), ("bg", "square")))


def test_a_few_epochs_reduce_the_loss():
    torch.set_num_threads(1)
    model = small_fcn(2, width=4, generator=torch.Generator().manual_seed(0))
    loader = make_loader(_tiny_dataset(), 4, shuffle=True, augment=False, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for epoch in range(15):
        loader.set_epoch(epoch)
        losses.append(train_one_epoch(model, loader, make_loss("ce"), optimizer, device="cpu")["train_loss"])
    assert losses[-1] < 0.5 * losses[0]
    scores = evaluate_segmentation(model, make_loader(_tiny_dataset(), 4, shuffle=False, augment=False, seed=0), 2,
                                   device="cpu")
    assert scores["mean_iu"] > 0.6


def test_train_loss_is_the_batch_size_weighted_mean():
    class Constant(nn.Module):
        def forward(self, logits, target):
            return logits.sum() * 0 + target.float().mean()

    dataset = _tiny_dataset()
    model = small_fcn(2, width=4)
    loader = make_loader(dataset, 3, shuffle=False, augment=False, seed=0)
    stats = train_one_epoch(model, loader, Constant(), torch.optim.SGD(model.parameters(), lr=0.0), device="cpu")
    expected = (3 * dataset.labels[:3].mean() + 1 * dataset.labels[3:].mean()) / 4
    assert stats["train_loss"] == pytest.approx(expected)


def test_nan_loss_raises_naming_epoch_and_batch():
    class NanAfterFirst(nn.Module):
        calls = 0

        def forward(self, logits, target):
            self.calls += 1
            return logits.mean() * (float("nan") if self.calls == 2 else 1.0)

    model = small_fcn(2, width=4)
    loader = make_loader(_tiny_dataset(), 2, shuffle=False, augment=False, seed=0)
    loader.set_epoch(3)
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 3, batch 1"):
        train_one_epoch(model, loader, NanAfterFirst(), torch.optim.SGD(model.parameters(), lr=0.1), device="cpu")


def test_a_last_step_that_leaves_a_weight_non_finite_raises_diverged():
    from trainables.engine import Diverged

    model = small_fcn(2, width=4)
    loader = make_loader(_tiny_dataset(), 4, shuffle=False, augment=False, seed=0)  # one batch: no later loss
    loader.set_epoch(2)
    # an infinite learning rate: the loss of the only batch is finite, the step after it is not
    optimizer = torch.optim.SGD(model.parameters(), lr=float("inf"))
    with pytest.raises(Diverged, match="non-finite weights, training diverged: .* after epoch 2"):
        train_one_epoch(model, loader, make_loss("ce"), optimizer, device="cpu")
    finite = small_fcn(2, width=4)
    train_one_epoch(finite, loader, make_loss("ce"), torch.optim.SGD(finite.parameters(), lr=0.1), device="cpu")


def test_float16_autocast_is_refused():
    model = small_fcn(2, width=4)
    loader = make_loader(_tiny_dataset(), 2, shuffle=False, augment=False, seed=0)
    with pytest.raises(ValueError, match="autocast_dtype must be None or torch.bfloat16, got torch.float16"):
        train_one_epoch(model, loader, make_loss("ce"), torch.optim.SGD(model.parameters(), lr=0.1), device="cpu",
                        autocast_dtype=torch.float16)


class _Lookup(nn.Module):
    """Logits whose argmax is the input's first channel (a class id), so predictions are known."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0].long(), self.num_classes).movedim(-1, 1).float()


def test_evaluate_segmentation_counts_exactly():
    predicted = torch.tensor([[[0, 1], [1, 2]]])
    target = torch.tensor([[[0, 1], [2, IGNORE_INDEX]]])
    inputs = predicted[:, None].expand(1, 3, 2, 2).float()
    scores = evaluate_segmentation(_Lookup(3), [(inputs, target)] * 2, 3, device="cpu")
    assert scores["confusion"] == [[2, 0, 0], [0, 2, 0], [0, 2, 0]]
    assert scores["pixel_acc"] == pytest.approx(4 / 6)
    assert scores["iu"] == pytest.approx([1.0, 0.5, 0.0])
    assert scores["mean_iu"] == pytest.approx(0.5)



def test_evaluation_equals_the_old_per_batch_host_counts(monkeypatch):
    """A trained-from-init small_fcn over a loader of several batches: the confusion matrix and scores
    counted on the device and read once equal the old per-batch host accumulation exactly."""
    from trainables.metrics import scores_from_matrix

    torch.manual_seed(0)
    model = small_fcn(2, width=4, generator=torch.Generator().manual_seed(0))
    loader = make_loader(_tiny_dataset(), 3, shuffle=False, augment=False, seed=0)
    reads = []
    real = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: reads.append(1) or real(self, *a, **k))
    scores = evaluate_segmentation(model, loader, 2, device="cpu")
    assert len(reads) == 1  # one copy for the whole evaluation, not one per batch (2 batches here)
    monkeypatch.undo()
    old = np.zeros((2, 2), dtype=np.int64)
    for inputs, labels in loader:
        pred, target = predict(model, inputs, device="cpu").reshape(-1), labels.reshape(-1).long()
        keep = target != IGNORE_INDEX
        old += torch.bincount(target[keep] * 2 + pred[keep], minlength=4).reshape(2, 2).cpu().numpy()
    assert scores["confusion"] == old.tolist()
    assert {k: v for k, v in scores.items() if k != "confusion"} == scores_from_matrix(old)

def test_evaluate_classification_and_predict():
    inputs = torch.tensor([[0.0, 9.0], [1.0, 9.0], [1.0, 9.0], [0.0, 9.0]])
    labels = torch.tensor([0, 1, 0, 0])

    class FirstFeature(nn.Module):
        def forward(self, x):
            return torch.stack([1 - x[:, 0], x[:, 0]], dim=1)

    model = FirstFeature()
    assert predict(model, inputs, device="cpu").tolist() == [0, 1, 1, 0]
    scores = evaluate_classification(model, [(inputs, labels)], 2, device="cpu")
    assert scores["confusion"] == [[2, 1], [0, 1]]
    assert scores["acc"] == pytest.approx(0.75)
    assert scores["mean_precision"] == pytest.approx((1.0 + 0.5) / 2)
    assert scores["mean_recall"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert scores["mean_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
