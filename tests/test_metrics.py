"""ConfusionMatrix and scores_from_matrix on hand-built cases with ignore pixels, and their invariants."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainables.metrics import ConfusionMatrix, scores_from_matrix

# Scored (target, pred) pairs: (0,0) x2, (0,1), (1,1) x2, (2,2), (2,0); the 255 pixel is skipped.
TARGET = np.array([[0, 0, 1, 1], [2, 255, 2, 0]])
PRED = np.array([[0, 1, 1, 1], [2, 0, 0, 0]])
MATRIX = [[2, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_hand_built_case():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    np.testing.assert_array_equal(cm.matrix, MATRIX)
    assert cm.matrix.dtype == np.int64
    scores = cm.compute()
    assert scores["pixel_acc"] == pytest.approx(5 / 7)
    assert scores["recall"] == pytest.approx([2 / 3, 1, 1 / 2])
    assert scores["mean_acc"] == pytest.approx(13 / 18)
    assert scores["mean_recall"] == pytest.approx(13 / 18)
    assert scores["precision"] == pytest.approx([2 / 3, 2 / 3, 1])
    assert scores["mean_precision"] == pytest.approx(7 / 9)
    assert scores["iu"] == pytest.approx([1 / 2, 2 / 3, 1 / 2])
    assert scores["mean_iu"] == pytest.approx(5 / 9)
    assert scores["fw_iu"] == pytest.approx(3 / 7 * 1 / 2 + 2 / 7 * 2 / 3 + 2 / 7 * 1 / 2)
    assert scores["f1"] == pytest.approx([2 / 3, 4 / 5, 2 / 3])
    assert scores["mean_f1"] == pytest.approx(32 / 45)
    assert all(type(v) is float for k, v in scores.items() if not isinstance(v, list))
    assert all(type(x) is float for k, v in scores.items() if isinstance(v, list) for x in v)


def test_absent_classes_are_left_out_of_means():
    cm = ConfusionMatrix(5)
    cm.update(PRED, TARGET)
    cm.update(np.array([3]), np.array([7]))  # target outside 0..4: skipped
    cm.update(np.array([4]), np.array([0]))  # class 4 predicted, never in ground truth
    scores = cm.compute()
    assert math.isnan(scores["iu"][3]) and math.isnan(scores["precision"][3]) and math.isnan(scores["f1"][3])
    assert math.isnan(scores["recall"][4]) and scores["precision"][4] == 0.0 and scores["iu"][4] == 0.0
    assert scores["recall"][0] == pytest.approx(2 / 4)
    assert scores["mean_acc"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert scores["mean_iu"] == pytest.approx((2 / 5 + 2 / 3 + 1 / 2 + 0) / 4)
    assert scores["pixel_acc"] == pytest.approx(5 / 8)


def test_torch_and_numpy_inputs_agree_and_accumulate():
    from_numpy, from_torch = ConfusionMatrix(3), ConfusionMatrix(3)
    from_numpy.update(PRED, TARGET)
    from_numpy.update(PRED, TARGET)
    from_torch.update(torch.from_numpy(PRED), torch.from_numpy(TARGET))
    from_torch.update(torch.from_numpy(PRED).to(torch.uint8), TARGET)
    np.testing.assert_array_equal(from_numpy.matrix, 2 * np.array(MATRIX))
    np.testing.assert_array_equal(from_torch.matrix, from_numpy.matrix)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), split=st.integers(0, 60))
def test_merge_of_parts_equals_one_update(seed, split):
    g = np.random.default_rng(seed)
    target = g.integers(0, 4, size=60)
    target[g.random(60) < 0.2] = 255
    pred = g.integers(0, 4, size=60)
    whole, first, second = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    whole.update(pred, target)
    first.update(pred[:split], target[:split])
    second.update(pred[split:], target[split:])
    assert first.merge(second) is first
    np.testing.assert_array_equal(first.matrix, whole.matrix)
    assert whole.matrix.sum() == (target != 255).sum()
    assert np.trace(whole.matrix) == ((pred == target) & (target != 255)).sum()


def test_reset_and_empty_matrix():
    cm = ConfusionMatrix(2)
    cm.update(PRED.clip(0, 1), TARGET.clip(0, 1))
    cm.reset()
    assert cm.matrix.sum() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = cm.compute()
    assert all(math.isnan(v) for v in scores.values() if not isinstance(v, list))


def test_bad_inputs_are_rejected():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"pred values must be in 0..2, got \[3\]"):
        cm.update(np.array([0, 3]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"pred and target must have the same shape, got \(2,\) and \(3,\)"):
        cm.update(np.array([0, 1]), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1, got 0"):
        ConfusionMatrix(0)
    with pytest.raises(ValueError, match="other must be a ConfusionMatrix with num_classes=3"):
        cm.merge(ConfusionMatrix(4))
    with pytest.raises(ValueError, match=r"matrix must be a square \(C, C\) array of counts >= 0"):
        scores_from_matrix(np.ones((2, 3)))
    assert cm.matrix.sum() == 0  # a rejected update counts nothing


def test_a_class_in_the_ground_truth_never_predicted_has_precision_0():
    """scikit-learn's zero_division=0: class 2 (in the ground truth, never predicted) counts as 0 in the
    mean precision; class 3 (in neither) stays out; class 4 (predicted, never true) is 0 as before."""
    matrix = np.array([[2, 1, 0, 0, 0],
                       [0, 2, 0, 0, 0],
                       [1, 0, 0, 0, 1],
                       [0, 0, 0, 0, 0],
                       [0, 0, 0, 0, 0]])
    scores = scores_from_matrix(matrix)
    assert scores["precision"][:3] == [2 / 3, 2 / 3, 0.0] and scores["precision"][4] == 0.0
    assert math.isnan(scores["precision"][3])
    assert scores["mean_precision"] == pytest.approx((2 / 3 + 2 / 3 + 0 + 0) / 4)  # was 4/9 skipping class 2
    assert scores["mean_recall"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # class 4 has no recall: not in truth
    assert scores["mean_f1"] == pytest.approx((2 * 2 / 6 + 2 * 2 / 5 + 0 + 0) / 4)


def test_a_collapsed_classifier_gets_no_precision_credit_for_classes_it_never_predicts():
    # Everything predicted negative (the CE lower baseline at small labelled fractions).
    scores = scores_from_matrix(np.array([[5, 0], [3, 0]]))
    assert scores["precision"] == [5 / 8, 0.0]
    assert scores["mean_precision"] == pytest.approx(5 / 16)  # not 5/8


# --- device-side accumulation: no host copy per batch, the old per-batch host result exactly ----------


def old_host_counts(batches: list[tuple[torch.Tensor, torch.Tensor]], c: int) -> np.ndarray:
    """The accumulation before counts stayed on the device: mask, bincount, ``.cpu().numpy()`` per batch."""
    matrix = np.zeros((c, c), dtype=np.int64)
    for pred, target in batches:
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
        keep = (target != 255) & (target >= 0) & (target < c)
        counts = torch.bincount(target[keep] * c + pred[keep], minlength=c * c).reshape(c, c)
        matrix += counts.cpu().numpy()
    return matrix


def test_device_counts_equal_the_old_per_batch_host_counts_exactly():
    generator = torch.Generator().manual_seed(3)
    c = 6
    batches = []
    for size in (1, 7, 16, 3):
        target = torch.randint(0, c, (size, 9, 11), generator=generator)
        target[torch.rand(target.shape, generator=generator) < 0.2] = 255
        target[0, 0, :2] = torch.tensor([-1, c])  # outside 0..C-1: skipped like the ignore index
        batches.append((torch.randint(0, c, target.shape, generator=generator), target))
    cm = ConfusionMatrix(c)
    for pred, target in batches:
        cm.update(pred, target)
    np.testing.assert_array_equal(cm.matrix, old_host_counts(batches, c))
    assert cm.matrix.dtype == np.int64
    cm.update(*batches[0])  # counting continues after a read
    np.testing.assert_array_equal(cm.matrix, old_host_counts(batches + batches[:1], c))


def test_torch_batches_are_never_read_back_per_batch():
    # Meta tensors hold no data: any host read (.item(), bool(), .cpu(), boolean indexing) would raise.
    cm = ConfusionMatrix(4)
    for _ in range(3):
        cm.update(torch.zeros(2, 5, 5, dtype=torch.long, device="meta"),
                  torch.zeros(2, 5, 5, dtype=torch.long, device="meta"))
    assert cm._pending is not None and cm._pending.device.type == "meta"


def test_bad_device_prediction_raises_on_read_and_counts_nothing():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    cm.update(torch.tensor([5, 0, -2, 7]), torch.tensor([0, 0, 1, 255]))  # 7 is on an ignored pixel
    with pytest.raises(ValueError, match=r"pred values must be in 0..2, got 2 predictions from -2 to 5"):
        cm.compute()
    assert cm.matrix.sum() == 0  # neither batch since the last read was counted
    cm.update(torch.tensor([2]), torch.tensor([2]))
    cm.update(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))  # an empty batch
    np.testing.assert_array_equal(cm.matrix, [[0, 0, 0], [0, 0, 0], [0, 0, 1]])


def test_mixed_numpy_torch_merge_and_reset_keep_one_matrix():
    cm, other = ConfusionMatrix(3), ConfusionMatrix(3)
    cm.update(torch.as_tensor(PRED), torch.as_tensor(TARGET))
    cm.update(PRED, TARGET)
    other.update(torch.as_tensor(PRED), torch.as_tensor(TARGET))
    cm.merge(other)
    np.testing.assert_array_equal(cm.matrix, 3 * np.array(MATRIX))
    cm.update(torch.as_tensor(PRED), torch.as_tensor(TARGET))
    cm.reset()  # drops the device counts too
    assert cm.matrix.sum() == 0
