"""Per-object label corruption: the synthetic segmentation noises of thesis section 3.2, plus boundary noise.

Label maps are integer ``(H, W)`` arrays (0 background, 1..K classes, 255 ignore); instance maps are
integer ``(H, W)`` arrays (0 no object, 1..M object ids). An object is every pixel with one instance id;
its class is the one value in 1..K its pixels carry. Pixels of an object labelled 255 stay 255, and
pixels labelled 0 stay 0 (inside an object they are background, e.g. after an erosion), so noise acts on
whole objects. Every function returns a new map with the input's dtype and draws randomness only from
the ``numpy.random.Generator`` it is given: one draw per object, in ascending instance id order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
from scipy import ndimage

from trainables.data.base import IGNORE_INDEX

NOISE_KINDS = ("none", "unsegment", "misclassify", "false_segment", "boundary")
# The NoiseConfig fields each kind reads; any other field must keep its default.
_KIND_PARAMS = {
    "none": (),
    "unsegment": ("p",),
    "misclassify": ("rate", "num_classes"),
    "false_segment": ("p", "target"),
    "boundary": ("max_radius",),
}
_COLUMN_SUM_TOLERANCE = 1e-6


def _check_probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_rng(rng: object) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


def _check_maps(label: np.ndarray, instances: np.ndarray) -> None:
    for name, array in (("label", label), ("instances", instances)):
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer numpy array, got {getattr(array, 'dtype', type(array))}")
    if label.shape != instances.shape:
        raise ValueError(
            f"label and instances must have the same shape, got label {label.shape} and instances {instances.shape}"
        )
    if instances.size and instances.min() < 0:
        raise ValueError(f"instances must be >= 0 (0 = no object), got minimum {instances.min()}")


def _labelled_object_pixels(label: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """Boolean ``(H, W)`` mask of pixels that belong to an object and carry a class 1..K."""
    return (instances > 0) & (label != 0) & (label != IGNORE_INDEX)


def _objects(label: np.ndarray, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted object ids ``(M,)`` and each object's class ``(M,)`` (0 where no pixel carries a class).

    Raises ValueError when an object's pixels carry more than one class in 1..K.
    """
    _check_maps(label, instances)
    ids = np.unique(instances[instances > 0]).astype(np.int64)
    labelled = _labelled_object_pixels(label, instances)
    pairs = np.unique(np.stack([instances[labelled], label[labelled]]).astype(np.int64), axis=1)
    pair_ids, pair_classes = pairs
    repeated = pair_ids[1:] == pair_ids[:-1]
    if repeated.any():
        bad = pair_ids[1:][repeated][0]
        raise ValueError(
            f"object {bad} in instances has pixels of more than one class in label: "
            f"{pair_classes[pair_ids == bad].tolist()}; an object must carry a single class (255 aside)"
        )
    classes = np.zeros(len(ids), dtype=np.int64)
    classes[np.searchsorted(ids, pair_ids)] = pair_classes
    return ids, classes


def _relabel(label: np.ndarray, instances: np.ndarray, ids: np.ndarray, new_classes: np.ndarray) -> np.ndarray:
    """A copy of ``label`` whose labelled object pixels take their object's new class (lookup by id)."""
    out = label.copy()
    table = np.zeros(int(ids.max(initial=0)) + 1, dtype=label.dtype)
    table[ids] = new_classes
    labelled = _labelled_object_pixels(label, instances)
    out[labelled] = table[instances[labelled]]
    return out


def unsegment(
    label: np.ndarray, instances: np.ndarray, p: float | Mapping[int, float], rng: np.random.Generator
) -> np.ndarray:
    """Inexhaustive segmentation: each object is flipped whole to 0 with probability ``p`` (thesis p_0k).

    ``p`` is one probability for every class, or a mapping ``{class: p_0k}`` where classes missing from
    the mapping use 0. ``label``/``instances`` are ``(H, W)``; returns the ``(H, W)`` noisy label map.
    """
    _check_rng(rng)
    ids, classes = _objects(label, instances)
    if isinstance(p, Mapping):
        for cls, value in p.items():
            _check_int("p class key", cls, 1)
            _check_probability(f"p[{cls}]", value)
        table = np.zeros(max([int(classes.max(initial=0)), *p.keys()]) + 1)
        table[list(p.keys())] = list(p.values())
        p_object = table[classes]
    else:
        p_object = np.full(len(ids), _check_probability("p", p))
    flip = rng.random(len(ids)) < p_object
    return _relabel(label, instances, ids, np.where(flip, 0, classes))


def _check_confusion(confusion: object) -> np.ndarray:
    matrix = np.asarray(confusion, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
        raise ValueError(f"confusion must be a square (K, K) matrix with K >= 1, got shape {matrix.shape}")
    if not np.isfinite(matrix).all() or (matrix < 0).any():
        raise ValueError(f"confusion must have finite entries >= 0, got minimum {np.nanmin(matrix)}")
    column_sums = matrix.sum(axis=0)
    if np.abs(column_sums - 1.0).max() > _COLUMN_SUM_TOLERANCE:
        raise ValueError(
            f"confusion columns must each sum to 1 (column-stochastic, tolerance {_COLUMN_SUM_TOLERANCE}), "
            f"got column sums {column_sums.tolist()}"
        )
    return matrix / column_sums


def misclassify(
    label: np.ndarray, instances: np.ndarray, confusion: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Misclassification: each object of true class k gets an observed class drawn from column k-1.

    ``confusion`` is ``(K, K)`` column-stochastic over classes 1..K:
    ``confusion[j-1, k-1] = P(observed j | true k)``. ``label`` values must lie in 0..K or be 255.
    """
    _check_rng(rng)
    matrix = _check_confusion(confusion)
    num_classes = matrix.shape[0]
    ids, classes = _objects(label, instances)
    bad = (label != IGNORE_INDEX) & ((label < 0) | (label > num_classes))
    if bad.any():
        raise ValueError(
            f"label values must be in 0..{num_classes} (K from confusion) or {IGNORE_INDEX}, "
            f"got {np.unique(label[bad]).tolist()}"
        )
    cdf = np.cumsum(matrix, axis=0)
    draws = rng.random(len(ids))
    has_class = classes > 0
    # The observed index is how many cumulative probabilities of the true class's column are <= the
    # draw; the clip guards against a last cumulative sum a rounding error below 1.
    column = cdf[:, classes[has_class] - 1]
    observed = np.minimum((column <= draws[has_class]).sum(axis=0), num_classes - 1) + 1
    new_classes = classes.copy()
    new_classes[has_class] = observed
    return _relabel(label, instances, ids, new_classes)


def random_label_confusion(num_classes: int, rate: float) -> np.ndarray:
    """The ``(K, K)`` confusion of the thesis's random labels: ``(1 - rate) * I + rate / K``.

    With probability ``rate`` an object's class is replaced by one drawn uniformly from 1..K (which may
    be the true one): AllRandomLabels is ``rate=1``, HalfRandomLabels ``rate=0.5``.
    """
    num_classes = _check_int("num_classes", num_classes, 1)
    rate = _check_probability("rate", rate)
    return (1.0 - rate) * np.eye(num_classes) + rate / num_classes


def target_only(label: np.ndarray, target: int) -> np.ndarray:
    """The clean labels of the false-segmentation experiment: only ``target`` stays, every other class -> 0.

    ``label`` is ``(H, W)``; 255 is kept. Returns a new ``(H, W)`` map of the same dtype.
    """
    target = _check_int("target", target, 1)
    if target == IGNORE_INDEX:
        raise ValueError(f"target must not be the ignore index {IGNORE_INDEX}, got {target}")
    kept = (label == target) | (label == IGNORE_INDEX)
    return np.where(kept, label, 0).astype(label.dtype)


def false_segment(
    label: np.ndarray, instances: np.ndarray, target: int, p: float, rng: np.random.Generator
) -> np.ndarray:
    """False segmentation: :func:`target_only`, then each object of another class is labelled ``target``
    with probability ``p`` (thesis p_10; FalseSegmentedHalf is ``p=0.5``)."""
    _check_rng(rng)
    p = _check_probability("p", p)
    ids, classes = _objects(label, instances)
    clean = target_only(label, target)
    flip = (rng.random(len(ids)) < p) & (classes > 0) & (classes != target)
    flipped = np.zeros(int(ids.max(initial=0)) + 1, dtype=bool)
    flipped[ids] = flip
    pixels = _labelled_object_pixels(label, instances) & flipped[instances]
    clean[pixels] = target
    return clean


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def boundary_noise(
    label: np.ndarray, instances: np.ndarray, max_radius: int, rng: np.random.Generator
) -> np.ndarray:
    """Mis-segmentation noise (beyond the thesis): each object's mask is dilated or eroded (50/50) by a
    disk whose radius is drawn uniformly from 0..max_radius pixels.

    Objects never overwrite one another: a dilation claims only background pixels (label 0 outside every
    object), first come first served in ascending id order; an eroded object's lost pixels become 0 and
    its 255 pixels stay 255. The image frame does not erode an object (it may continue beyond it).
    """
    _check_rng(rng)
    max_radius = _check_int("max_radius", max_radius, 0)
    ids, classes = _objects(label, instances)
    if label.ndim != 2:
        raise ValueError(f"label must be a 2-D (H, W) map for boundary noise, got shape {label.shape}")
    dilate = rng.random(len(ids)) < 0.5
    radii = rng.integers(0, max_radius + 1, size=len(ids))
    out = label.copy()
    free = (label == 0) & (instances == 0)
    boxes = ndimage.find_objects(instances)
    height, width = label.shape
    # A loop over objects (a handful per image), each working on its bounding box padded by its radius.
    for obj, cls, grow, radius in zip(ids, classes, dilate, radii):
        if cls == 0 or radius == 0:
            continue
        rows, cols = boxes[obj - 1]
        box = (
            slice(max(rows.start - radius, 0), min(rows.stop + radius, height)),
            slice(max(cols.start - radius, 0), min(cols.stop + radius, width)),
        )
        mask = instances[box] == obj
        if grow:
            claimed = ndimage.binary_dilation(mask, _disk(radius)) & free[box]
            out[box][claimed] = cls
            free[box][claimed] = False
        else:
            lost = mask & ~ndimage.binary_erosion(mask, _disk(radius), border_value=1)
            out[box][lost & (label[box] == cls)] = 0
    return out


@dataclass(frozen=True)
class NoiseConfig:
    """One label noise and its parameters.

    kind: one of ``NOISE_KINDS``.
    p: unsegment: P(object -> 0); false_segment: P(non-target object -> target).
    rate: misclassify: random-label rate (confusion = ``random_label_confusion(num_classes, rate)``).
    num_classes: misclassify: K, the number of object classes.
    target: false_segment: the target class.
    max_radius: boundary: the largest dilation/erosion radius, in pixels.
    """

    kind: str
    p: float = 0.0
    rate: float = 0.0
    num_classes: int = 0
    target: int = 0
    max_radius: int = 0

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"kind must be one of {NOISE_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "p", _check_probability("p", self.p))
        object.__setattr__(self, "rate", _check_probability("rate", self.rate))
        _check_int("max_radius", self.max_radius, 0)
        _check_int("num_classes", self.num_classes, 1 if self.kind == "misclassify" else 0)
        _check_int("target", self.target, 1 if self.kind == "false_segment" else 0)
        used = _KIND_PARAMS[self.kind]
        for field in dataclasses.fields(self):
            if field.name not in ("kind", *used) and getattr(self, field.name) != field.default:
                raise ValueError(
                    f"{field.name}={getattr(self, field.name)!r} is not used by kind {self.kind!r} "
                    f"(it reads {used or 'no parameters'}); leave it at {field.default!r}"
                )

    def to_dict(self) -> dict[str, object]:
        """Every field as a flat dict (for Tune configs, MLflow params and parquet columns)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> NoiseConfig:
        """The inverse of :meth:`to_dict`; unknown keys are a ValueError naming them."""
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown NoiseConfig keys {unknown}; valid keys are {names}")
        if "kind" not in d:
            raise ValueError(f"NoiseConfig needs 'kind', one of {NOISE_KINDS}; got keys {sorted(d)}")
        return cls(**d)


def _apply(label: np.ndarray, instances: np.ndarray, config: NoiseConfig, rng: np.random.Generator) -> np.ndarray:
    if config.kind == "unsegment":
        return unsegment(label, instances, config.p, rng)
    if config.kind == "misclassify":
        confusion = random_label_confusion(config.num_classes, config.rate)
        return misclassify(label, instances, confusion, rng)
    if config.kind == "false_segment":
        return false_segment(label, instances, config.target, config.p, rng)
    if config.kind == "boundary":
        return boundary_noise(label, instances, config.max_radius, rng)
    return label.copy()


def _as_configs(config: NoiseConfig | Sequence[NoiseConfig]) -> tuple[NoiseConfig, ...]:
    configs = (config,) if isinstance(config, NoiseConfig) else tuple(config)
    for item in configs:
        if not isinstance(item, NoiseConfig):
            raise TypeError(f"config must be a NoiseConfig or a sequence of them, got {type(item).__name__}")
    return configs


def corrupt(
    label: np.ndarray,
    instances: np.ndarray,
    config: NoiseConfig | Sequence[NoiseConfig],
    seed: int,
    index: int,
) -> np.ndarray:
    """Image ``index`` of a data set corrupted by ``config`` (one noise or a sequence applied in order).

    Config i draws from child i of ``SeedSequence([seed, index]).spawn(len(configs))``, so the noisy
    map depends only on (image, configs, seed, index): not on which worker loads it or in what order,
    and each noise's draws do not depend on the other noises. ``label``/``instances`` are ``(H, W)``.
    """
    configs = _as_configs(config)
    _check_maps(label, instances)
    seed = _check_int("seed", seed, 0)
    index = _check_int("index", index, 0)
    noisy = label.copy()
    for item, child in zip(configs, np.random.SeedSequence([seed, index]).spawn(len(configs))):
        noisy = _apply(noisy, instances, item, np.random.default_rng(child))
    return noisy


def corrupt_dataset(
    labels: np.ndarray,
    instances: np.ndarray,
    config: NoiseConfig | Sequence[NoiseConfig],
    seed: int,
) -> np.ndarray:
    """The ``(N, H, W)`` noisy labels of a data set: image i is ``corrupt(..., seed, index=i)``."""
    configs = _as_configs(config)
    _check_maps(labels, instances)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (N, H, W), got shape {labels.shape}")
    noisy = np.empty_like(labels)
    for i in range(len(labels)):
        noisy[i] = corrupt(labels[i], instances[i], configs, seed, i)
    return noisy
