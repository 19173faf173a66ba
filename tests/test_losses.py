"""Negative-class losses: exact values against hand computation, reductions to cross-entropy, the
saturating gradient of thesis Figure 2, nnPU edge cases, and make_loss's validation."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainables.losses import (
    LOSS_PARAMS,
    BootstrapNegativeLoss,
    CrossEntropyLoss,
    FocalLoss,
    NNPULoss,
    SigmoidalNegativeLoss,
    WeightedNegativeLoss,
    frequency_class_weights,
    make_loss,
)

# Three scored elements and one ignored, C = 3: element i has logits ELEMENTS[i] and target TARGETS[i].
ELEMENTS = [(1.0, 2.0, 0.5), (0.2, -1.0, 1.5), (3.0, 0.0, -2.0), (5.0, -5.0, 0.0)]
TARGETS = [0, 2, 0, 255]
PARAMS = {"ce": {}, "weighted_neg": {"q": 0.3}, "sigmoidal_neg": {}, "bootstrap_neg": {"beta": 0.6},
          "focal": {"gamma": 2.0}, "nnpu": {"prior": 0.4}}  # fmt: skip


def log_softmax(z):
    log_total = math.log(sum(math.exp(v) for v in z))
    return [v - log_total for v in z]


def batch(elements=ELEMENTS, targets=TARGETS):
    """``(1, C, L)`` logits and ``(1, L)`` targets from per-element logits."""
    logits = torch.tensor(elements, dtype=torch.float64).T[None].clone().requires_grad_(True)
    return logits, torch.tensor([targets])


def hand_mean(element_losses, targets, weights=None):
    scored = [(loss, y) for loss, y in zip(element_losses, targets) if y != 255]
    w = [1.0 if weights is None else weights[y] for _, y in scored]
    return sum(wi * loss for wi, (loss, _) in zip(w, scored)) / sum(w)


LP = [log_softmax(z) for z in ELEMENTS]


def expected(name, weights=None):
    """The loss of ELEMENTS/TARGETS computed by hand from the thesis formulas."""
    losses = []
    for lp, y in zip(LP, TARGETS):
        if y == 255:
            losses.append(float("nan"))
        elif name == "focal":
            losses.append(-((1 - math.exp(lp[y])) ** 2) * lp[y])
        elif y > 0 or name == "ce":
            losses.append(-lp[y])
        elif name == "weighted_neg":
            losses.append(-0.3 * lp[0])
        elif name == "sigmoidal_neg":
            losses.append(1 - math.exp(lp[0]))
        elif name == "bootstrap_neg":
            losses.append(-0.6 * lp[0] - 0.4 * max(lp))
    return hand_mean(losses, TARGETS, weights)


@pytest.mark.parametrize("name", ["ce", "weighted_neg", "sigmoidal_neg", "bootstrap_neg", "focal"])
@pytest.mark.parametrize("weights", [None, (0.5, 1.0, 2.0)])
def test_exact_values_on_hand_computed_logits(name, weights):
    logits, target = batch()
    loss = make_loss(name, class_weights=weights, **PARAMS[name])(logits, target)
    assert loss.item() == pytest.approx(expected(name, weights), rel=1e-12)


def test_bootstrap_uses_the_prediction_for_the_second_term():
    # element 0 predicts class 1, element 2 predicts class 0: only element 0 differs from -log p_0.
    logits, target = batch()
    by_hand = (-0.6 * LP[0][0] - 0.4 * LP[0][1] - LP[1][2] - LP[2][0]) / 3
    assert BootstrapNegativeLoss(0.6)(logits, target).item() == pytest.approx(by_hand, rel=1e-12)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def nnpu_by_hand(elements, targets, prior):
    g = [math.log(math.exp(z[1]) + math.exp(z[2])) - z[0] for z in elements]
    pos = [i for i, y in enumerate(targets) if y > 0]
    unl = [i for i, y in enumerate(targets) if y == 0]
    r_p_plus = sum(sigmoid(-g[i]) for i in pos) / len(pos)
    r_p_minus = sum(sigmoid(g[i]) for i in pos) / len(pos)
    r_u_minus = sum(sigmoid(g[i]) for i in unl) / len(unl)
    ce = sum(-(elements[i][targets[i]] - math.log(math.exp(elements[i][1]) + math.exp(elements[i][2]))) for i in pos)
    return prior * r_p_plus + max(0.0, r_u_minus - prior * r_p_minus) + ce / len(pos)


@pytest.mark.parametrize(
    "elements",
    [
        [(0.5, 1.0, -1.0), (1.0, 0.0, 2.0), (2.0, -1.0, 0.0), (-1.0, 0.5, 0.5)],  # R_u^- > prior R_p^-
        [(0.5, 1.0, -1.0), (1.0, 0.0, 2.0), (9.0, -1.0, 0.0), (8.0, 0.5, 0.5)],  # clamped at 0
    ],
)
def test_nnpu_exact_value(elements):
    targets = [1, 2, 0, 0]
    logits, target = batch(elements, targets)
    loss = NNPULoss(0.4)(logits, target)
    assert loss.item() == pytest.approx(nnpu_by_hand(elements, targets, 0.4), rel=1e-12)


@pytest.mark.parametrize("targets", [[0, 0, 0, 0], [1, 2, 2, 1], [255, 255, 0, 0]])
def test_nnpu_without_positives_or_unlabelled_is_finite(targets):
    logits, target = batch([(0.5, 1.0, -1.0), (1.0, 0.0, 2.0), (2.0, -1.0, 0.0), (-1.0, 0.5, 0.5)], targets)
    loss = NNPULoss(0.3)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    if 1 not in targets and 2 not in targets:
        scored = [i for i, y in enumerate(targets) if y == 0]
        g = [math.log(math.exp(z[1]) + math.exp(z[2])) - z[0] for z in logits.detach()[0].T.tolist()]
        assert loss.item() == pytest.approx(sum(sigmoid(g[i]) for i in scored) / len(scored), rel=1e-12)


@pytest.mark.parametrize("name", sorted(LOSS_PARAMS))
def test_all_ignored_batch_gives_zero_loss_with_a_gradient(name):
    logits = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    target = torch.full((2, 4, 4), 255)
    loss = make_loss(name, **PARAMS[name])(logits, target)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize(
    ("name", "params"),
    [("ce", {}), ("weighted_neg", {"q": 1.0}), ("bootstrap_neg", {"beta": 1.0}), ("focal", {"gamma": 0.0})],
)
@pytest.mark.parametrize("weights", [None, torch.tensor([0.7, 1.75, 0.3, 2.0])])
def test_losses_reduce_to_cross_entropy(name, params, weights):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 5, 6, generator=gen, requires_grad=True)
    target = torch.randint(0, 4, (2, 5, 6), generator=gen)
    target[torch.rand(2, 5, 6, generator=gen) < 0.2] = 255
    loss = make_loss(name, class_weights=weights, **params)(logits, target)
    reference = F.cross_entropy(logits, target, weight=weights, ignore_index=255)
    torch.testing.assert_close(loss, reference)
    (grad,) = torch.autograd.grad(loss, logits)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(grad, reference_grad)


def test_sigmoidal_gradient_vanishes_for_a_confident_positive_on_a_negative_label():
    # thesis Figure 2: the sigmoidal loss saturates, the weighted logistic loss keeps pushing.
    target = torch.tensor([[0]])
    grads = {}
    for name, loss in (("sigmoidal", SigmoidalNegativeLoss()), ("weighted", WeightedNegativeLoss(0.5))):
        logits = torch.tensor([[[0.0], [20.0]]], requires_grad=True)
        loss(logits, target).backward()
        grads[name] = logits.grad.abs().max().item()
    assert grads["sigmoidal"] < 1e-6
    assert grads["weighted"] == pytest.approx(0.5, rel=1e-6)


def test_focal_gradient_is_finite_at_certain_predictions():
    logits = torch.tensor([[[0.0, 200.0], [200.0, 0.0]]], requires_grad=True)
    loss = FocalLoss(0.5)(logits, torch.tensor([[1, 0]]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_frequency_class_weights():
    torch.testing.assert_close(frequency_class_weights([75, 25]), torch.tensor([2 / 3, 2.0]))
    torch.testing.assert_close(frequency_class_weights([3, 0, 1]), torch.tensor([4 / 9, 0.0, 4 / 3]))
    with pytest.raises(ValueError, match=r"counts must be finite and >= 0, got \[1.0, -2.0\]"):
        frequency_class_weights([1, -2])


def test_make_loss_builds_each_loss():
    expected_types = {"ce": CrossEntropyLoss, "weighted_neg": WeightedNegativeLoss,
                      "sigmoidal_neg": SigmoidalNegativeLoss, "bootstrap_neg": BootstrapNegativeLoss,
                      "focal": FocalLoss, "nnpu": NNPULoss}  # fmt: skip
    assert set(expected_types) == set(LOSS_PARAMS)
    for name, loss_type in expected_types.items():
        assert type(make_loss(name, **PARAMS[name])) is loss_type
        assert set(PARAMS[name]) == set(LOSS_PARAMS[name])


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("dice", {}, r"unknown loss 'dice'; valid losses are \['bootstrap_neg', 'ce', 'focal'"),
        ("ce", {"q": 0.5}, r"loss 'ce' does not take parameters \['q'\]; its parameters are \[\]"),
        ("focal", {"gama": 2}, r"does not take parameters \['gama'\]; its parameters are \['gamma'\]"),
        ("weighted_neg", {}, r"loss 'weighted_neg' needs parameters \['q'\]"),
        ("weighted_neg", {"q": 0.0}, r"q must be a number in \(0.0, 1.0\], got 0.0"),
        ("weighted_neg", {"q": 1.5}, r"q must be a number in \(0.0, 1.0\], got 1.5"),
        ("bootstrap_neg", {"beta": -0.1}, r"beta must be a number in \[0.0, 1.0\], got -0.1"),
        ("focal", {"gamma": -1}, r"gamma must be a number in \[0.0, inf\), got -1"),
        ("nnpu", {"prior": 1.0}, r"prior must be a number in \(0.0, 1.0\), got 1.0"),
    ],
)
def test_make_loss_rejects_bad_names_and_parameters(name, params, message):
    with pytest.raises(ValueError, match=message):
        make_loss(name, **params)


def test_bad_inputs_are_rejected():
    logits, target = batch()
    with pytest.raises(ValueError, match="class_weights are not supported by nnpu"):
        make_loss("nnpu", class_weights=[1.0, 1.0, 1.0], prior=0.5)
    with pytest.raises(ValueError, match="class_weights has 2 entries but logits have C=3 classes"):
        CrossEntropyLoss(class_weights=[1.0, 2.0])(logits, target)
    with pytest.raises(ValueError, match=r"class_weights must be finite and >= 0"):
        CrossEntropyLoss(class_weights=[1.0, -2.0, 1.0])
    with pytest.raises(ValueError, match=r"target values must be in 0..2 or 255 \(ignored\), got \[3\]"):
        CrossEntropyLoss()(logits, torch.tensor([[0, 3, 0, 255]]))
    with pytest.raises(ValueError, match=r"target must have shape \(1, 4\) to match logits"):
        CrossEntropyLoss()(logits, torch.tensor([0, 1, 0, 255]))
    with pytest.raises(TypeError, match="target must be an integer"):
        CrossEntropyLoss()(logits, target.float())


@pytest.mark.parametrize("name", sorted(set(LOSS_PARAMS) - {"nnpu"}))
def test_an_ignored_element_changes_neither_the_loss_nor_any_gradient(name):
    # Every element is scored in place and an ignored one weighs 0: with extreme logits there (a
    # log-probability of -1e4, a saturated sigmoid) it must still add exactly nothing, to the loss or to
    # the gradient of any element, ignored ones included.
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 3, 5, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 3, 5), generator=gen)
    weights = torch.tensor([0.7, 1.75, 0.3, 2.0])
    loss_fn = make_loss(name, class_weights=weights, **PARAMS[name])
    reference = loss_fn(logits, target)
    extreme = logits.clone()
    extreme[0, :, 1, 2] = torch.tensor([1e4, -1e4, 0.0, -1e4], dtype=torch.float64)
    ignored = target.clone()
    ignored[0, 1, 2] = 255
    with_ignored = extreme.clone().requires_grad_(True)
    loss = loss_fn(with_ignored, ignored)
    (grad,) = torch.autograd.grad(loss, with_ignored)
    # the reference without that element: its loss is the weighted mean over the other elements
    others = torch.ones_like(target, dtype=torch.bool)
    others[0, 1, 2] = False
    alone = logits.clone().requires_grad_(True)
    expected_loss = loss_fn(alone.movedim(1, -1)[others].T[None], target[others][None])
    (expected_grad,) = torch.autograd.grad(expected_loss, alone)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-15)
    assert torch.all(grad[0, :, 1, 2] == 0.0)
    assert not torch.equal(reference, loss)  # the element did count before it was ignored
