"""CIFAR-10 positives against CIFAR-100 negatives: the 11-class PU set-up of thesis Table 2, from disk.

Nothing is downloaded. The batches are read with torchvision's ``CIFAR10`` / ``CIFAR100``
(``download=False``) from the user's root, laid out as the official python archives unpack::

    ROOT/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta}
    ROOT/cifar-100-python/{train, test, meta}

Class 0 is the negative class (every CIFAR-100 image), classes 1..10 are the CIFAR-10 classes in the
order of ``batches.meta``. The two sets share no category, so the negatives are true negatives.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100

from trainables.data.base import ClassificationData

SPLITS = ("train", "val", "test")
EXPECTED_LAYOUT = """expected layout:
  ROOT/cifar-10-batches-py/{data_batch_1..data_batch_5,test_batch,batches.meta}
  ROOT/cifar-100-python/{train,test,meta}"""
# The train/val split of the official training sets is a fixed property of the data, not of a trial's
# seed, so every trial validates on the same images.
_TRAIN_VAL_SEED = 20_111
_STREAM = {"train": 0, "val": 1}
_UNPICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    ImportError,
    IndexError,
    KeyError,
    OverflowError,
    OSError,
)


class _StructuralIntegrity:
    """Check CIFAR files by structure instead of md5.

    torchvision compares every batch with the md5 of the official release, which rejects the
    miniature copies the tests write and any re-packed copy of the data. Here a file passes when it
    exists, unpickles, and holds ``data`` ``(n, 3072)`` uint8 with ``n`` labels in range; otherwise
    the error names the file and the expected layout instead of torchvision's generic RuntimeError.
    """

    base_folder: str
    train_list: list[list[str]]
    test_list: list[list[str]]
    meta: dict[str, str]
    root: str
    train: bool
    num_labels: int

    def _check_integrity(self) -> bool:
        folder = Path(self.root, self.base_folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"CIFAR folder {folder} is missing; {EXPECTED_LAYOUT}")
        for filename, _md5 in self.train_list if self.train else self.test_list:
            _check_batch(folder / filename, self.num_labels)
        return True

    def _load_meta(self) -> None:
        path = Path(self.root, self.base_folder, self.meta["filename"])
        names = _unpickle(path).get(self.meta["key"])
        if not isinstance(names, list) or len(names) != self.num_labels:
            raise ValueError(
                f"CIFAR meta file {path} must hold {self.num_labels} names under "
                f"{self.meta['key']!r}; {EXPECTED_LAYOUT}"
            )
        self.classes = names
        self.class_to_idx = {name: i for i, name in enumerate(names)}


class LocalCIFAR10(_StructuralIntegrity, CIFAR10):
    """torchvision's CIFAR10 with the structural integrity check of :class:`_StructuralIntegrity`."""

    num_labels = 10


class LocalCIFAR100(_StructuralIntegrity, CIFAR100):
    """torchvision's CIFAR100 (fine labels) with the structural integrity check."""

    num_labels = 100


def load_cifar_pu(
    root: str | os.PathLike,
    split: str,
    labelled_fraction: float,
    seed: int,
    *,
    pn: bool = False,
    val_fraction: float = 0.1,
    max_per_source: int | None = None,
) -> ClassificationData:
    """One split of the CIFAR P/U (or P/N) classification set of thesis Table 2.

    split: ``"test"`` is the official test sets with true labels; ``"train"`` and ``"val"`` divide the
    official training sets (a fixed ``val_fraction`` in [0, 1) of each goes to ``"val"``).
    labelled_fraction: in [0, 1]. On train and val (each its own draw from ``seed``), exactly
    ``round(labelled_fraction * P)`` of the P positives keep their class and the rest are labelled 0,
    joining the negatives in the unlabelled set. ``pn=True`` is the "50%(P+N)" baseline instead: that
    share of the positives and of the negatives is kept with true labels and the rest dropped.
    max_per_source: keep only the first that many images of each of CIFAR-10 and CIFAR-100 (smoke
    runs), taken before the train/val division.

    Returns inputs ``(N, 3, 32, 32)`` uint8, labels and true_labels ``(N,)`` int64 (0 negative,
    1..10 CIFAR-10 classes), positives first. Missing or corrupt files raise FileNotFoundError /
    ValueError naming the file.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _check_fraction("labelled_fraction", labelled_fraction, upper_inclusive=True)
    _check_fraction("val_fraction", val_fraction, upper_inclusive=False)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(pn, bool):
        raise TypeError(f"pn must be a bool, got {pn!r}")
    if max_per_source is not None and (
        isinstance(max_per_source, bool) or not isinstance(max_per_source, (int, np.integer))
        or max_per_source < 1
    ):
        raise ValueError(f"max_per_source must be None or an integer >= 1, got {max_per_source!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR root {root} is not a directory; {EXPECTED_LAYOUT}")

    train = split != "test"
    positives = LocalCIFAR10(str(root), train=train, download=False)
    negatives = LocalCIFAR100(str(root), train=train, download=False)
    pos_x, pos_y = _select(positives, split, val_fraction, max_per_source)
    neg_x, _ = _select(negatives, split, val_fraction, max_per_source)
    inputs = np.concatenate([pos_x, neg_x])
    true_labels = np.concatenate([pos_y + 1, np.zeros(len(neg_x), np.int64)])
    class_names = ("negative", *positives.classes)
    if split == "test":
        return ClassificationData(inputs, true_labels.copy(), true_labels, class_names)

    rng = np.random.default_rng([int(seed), _STREAM[split]])
    labelled_pos = rng.permutation(len(pos_x))[: _count(labelled_fraction, len(pos_x))]
    if pn:
        labelled_neg = rng.permutation(len(neg_x))[: _count(labelled_fraction, len(neg_x))]
        keep = np.sort(np.concatenate([labelled_pos, len(pos_x) + labelled_neg]))
        return ClassificationData(inputs[keep], true_labels[keep], true_labels[keep], class_names)
    labels = np.zeros_like(true_labels)
    labels[labelled_pos] = true_labels[labelled_pos]
    return ClassificationData(inputs, labels, true_labels, class_names)


def _check_batch(path: Path, num_labels: int) -> None:
    entry = _unpickle(path)
    label_key = "labels" if "labels" in entry else "fine_labels"
    data, labels = entry.get("data"), entry.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or (
        data.shape[1] != 3 * 32 * 32
    ):
        raise ValueError(
            f"CIFAR batch {path} must hold 'data' as an (n, 3072) uint8 array; {EXPECTED_LAYOUT}"
        )
    labels = np.asarray(labels if labels is not None else [])
    if labels.shape != (len(data),) or labels.dtype.kind not in "ui" or not (
        (labels >= 0) & (labels < num_labels)
    ).all():
        raise ValueError(
            f"CIFAR batch {path} must hold {len(data)} integer 'labels' or 'fine_labels' in "
            f"0..{num_labels - 1}; {EXPECTED_LAYOUT}"
        )


# The only globals a CIFAR batch references: numpy's array reconstruction (written by Python 2 numpy,
# or by a newer one) and the codec Python 3 pickles use for bytes. Anything else in a pickle (os.system,
# builtins.eval...) would run code on load, so it is refused before torchvision unpickles the file.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers, strings, numbers and numpy arrays."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays, "
                                         "lists and strings")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """Unpickle a CIFAR file as torchvision does (latin1: the files are Python 2 pickles), but refuse any
    object other than containers, strings, numbers and numpy arrays, so a planted file cannot run code."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file {path} is missing; {EXPECTED_LAYOUT}")
    try:
        with open(path, "rb") as file:
            entry = _CifarUnpickler(file, encoding="latin1").load()
    except _UNPICKLE_ERRORS as err:
        raise ValueError(f"CIFAR file {path} is corrupt ({err!r}); {EXPECTED_LAYOUT}") from err
    if not isinstance(entry, dict):
        raise ValueError(f"CIFAR file {path} must hold a dict, got {type(entry).__name__}")
    return entry


def _select(
    dataset: CIFAR10, split: str, val_fraction: float, max_per_source: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 3, 32, 32)`` uint8 images and ``(n,)`` int64 source labels of ``dataset`` for ``split``."""
    images = dataset.data[:max_per_source].transpose(0, 3, 1, 2)
    targets = np.asarray(dataset.targets[:max_per_source], dtype=np.int64)
    if split != "test":
        in_val = np.zeros(len(images), dtype=bool)
        order = np.random.default_rng(_TRAIN_VAL_SEED).permutation(len(images))
        in_val[order[: _count(val_fraction, len(images))]] = True
        keep = in_val if split == "val" else ~in_val
        images, targets = images[keep], targets[keep]
    return np.ascontiguousarray(images), targets


def _count(fraction: float, total: int) -> int:
    """``round(fraction * total)`` with halves rounded up, the exact size of a drawn share."""
    return int(np.floor(fraction * total + 0.5))


def _check_fraction(name: str, value: float, *, upper_inclusive: bool) -> None:
    inside = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and (
        0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    )
    if not inside:
        bracket = "]" if upper_inclusive else ")"
        raise ValueError(f"{name} must be a number in [0, 1{bracket}, got {value!r}")
