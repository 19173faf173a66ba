"""Miniature copies of the real data sets, written in their real on-disk formats for tests.

No data set can be downloaded, so tests write a few tiny images in exactly the layout and file formats
the loaders read (and torchvision's own dataset classes accept):

- ``write_mini_voc``: VOC2011 JPEGs, palette PNG class and object masks with 255 boundaries, and the
  ImageSets split lists, under ``ROOT/TrainVal/VOCdevkit/VOC2011``.
- ``write_mini_sbd``: SBD JPEGs and ``GTcls`` / ``GTinst`` MATLAB structs written with
  ``scipy.io.savemat``, under ``ROOT/SBD``.
- ``write_mini_cifar``: CIFAR-10 / CIFAR-100 python batches as Python 2 pickles (byte-string keys
  ``b"data"``, ``b"labels"`` / ``b"fine_labels"``) plus their meta files.

Each object of a segmentation scene is a filled rectangle in its own column of the image, so an image
id with classes ``[c1, c2]`` holds two objects, ids 1 and 2, of classes c1 and c2.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse
from PIL import Image
from scipy.io import savemat

VOC_SUBDIR = Path("TrainVal", "VOCdevkit", "VOC2011")
CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
BACKGROUND_RGB = (40, 40, 40)


@dataclass(frozen=True)
class MiniImage:
    """One written scene. ``image`` ``(H, W, 3)`` uint8 before JPEG compression; ``classes`` and
    ``objects`` ``(H, W)`` uint8 exactly as stored (VOC: 255 on object boundaries)."""

    image_id: str
    image: np.ndarray
    classes: np.ndarray
    objects: np.ndarray


@dataclass(frozen=True)
class MiniCifar:
    """What ``write_mini_cifar`` wrote: images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 of
    the CIFAR-10 train/test sets (labels 0..9) and CIFAR-100 train/test sets (fine labels 0..99)."""

    train10_images: np.ndarray
    train10_labels: np.ndarray
    test10_images: np.ndarray
    test10_labels: np.ndarray
    train100_images: np.ndarray
    train100_labels: np.ndarray
    test100_images: np.ndarray
    test100_labels: np.ndarray


def class_rgb(class_id: int) -> tuple[int, int, int]:
    """The flat colour objects of ``class_id`` get in the miniature images (far from the background)."""
    return (80 + 8 * class_id, 255 - 9 * class_id, 60 + 3 * class_id)


def voc_palette() -> list[int]:
    """The 256-colour palette of the VOC PNG masks (the devkit's bit-interleaved colour map)."""
    index = np.arange(256)
    colours = np.zeros((256, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            colours[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return colours.ravel().tolist()


def make_scene(
    image_id: str, classes: Sequence[int], height: int, width: int, *, boundary: int
) -> MiniImage:
    """A scene whose k-th object (id k+1, class ``classes[k]``) is a rectangle in the k-th of
    ``len(classes)`` columns; ``boundary`` > 0 paints a ring that wide around it with 255 (VOC style)."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND_RGB
    class_map = np.zeros((height, width), dtype=np.uint8)
    object_map = np.zeros((height, width), dtype=np.uint8)
    column = width // max(len(classes), 1)
    top, bottom = height // 5, height - height // 5
    for k, class_id in enumerate(classes):
        left, right = k * column + column // 6, (k + 1) * column - column // 6
        image[top:bottom, left:right] = class_rgb(class_id)
        if boundary:
            class_map[top - boundary : bottom + boundary, left - boundary : right + boundary] = 255
            object_map[top - boundary : bottom + boundary, left - boundary : right + boundary] = 255
        class_map[top:bottom, left:right] = class_id
        object_map[top:bottom, left:right] = k + 1
    return MiniImage(image_id, image, class_map, object_map)


def write_palette_png(path: Path, mask: np.ndarray) -> None:
    """Save an ``(H, W)`` uint8 mask as a palette PNG, the format of VOC's SegmentationClass/Object."""
    png = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask).tobytes())
    png.putpalette(voc_palette())
    png.save(path)


def write_mini_voc(
    root: Path,
    train: Mapping[str, Sequence[int]],
    val: Mapping[str, Sequence[int]],
    *,
    height: int = 40,
    width: int = 48,
) -> dict[str, MiniImage]:
    """Write VOC2011 scenes (image id -> object classes) under ``root/TrainVal/VOCdevkit/VOC2011``."""
    voc = Path(root) / VOC_SUBDIR
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    written = {}
    for image_id, classes in {**train, **val}.items():
        scene = make_scene(image_id, classes, height, width, boundary=2)
        Image.fromarray(scene.image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        write_palette_png(voc / "SegmentationClass" / f"{image_id}.png", scene.classes)
        write_palette_png(voc / "SegmentationObject" / f"{image_id}.png", scene.objects)
        written[image_id] = scene
    lists = {"train": list(train), "val": list(val), "trainval": [*train, *val]}
    for name, ids in lists.items():
        (voc / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return written


def write_mini_sbd(
    root: Path,
    train: Mapping[str, Sequence[int]],
    val: Mapping[str, Sequence[int]],
    *,
    height: int = 40,
    width: int = 48,
) -> dict[str, MiniImage]:
    """Write SBD scenes under ``root/SBD``: ``img/*.jpg``, ``cls/*.mat`` (struct ``GTcls`` with
    Segmentation, Boundaries, CategoriesPresent) and ``inst/*.mat`` (struct ``GTinst`` with
    Segmentation, Boundaries, Categories), as in SBD's benchmark_RELEASE/dataset; no 255 boundaries."""
    sbd = Path(root) / "SBD"
    for folder in ("img", "cls", "inst"):
        (sbd / folder).mkdir(parents=True, exist_ok=True)
    written = {}
    for image_id, classes in {**train, **val}.items():
        scene = make_scene(image_id, classes, height, width, boundary=0)
        Image.fromarray(scene.image).save(sbd / "img" / f"{image_id}.jpg", quality=95)
        present = np.array(sorted(set(classes)), dtype=np.uint8).reshape(-1, 1)
        savemat(
            sbd / "cls" / f"{image_id}.mat",
            {"GTcls": {
                "Segmentation": scene.classes,
                "Boundaries": _boundary_cells(scene.classes, range(1, 21)),
                "CategoriesPresent": present,
            }},
        )
        savemat(
            sbd / "inst" / f"{image_id}.mat",
            {"GTinst": {
                "Segmentation": scene.objects,
                "Boundaries": _boundary_cells(scene.objects, range(1, len(classes) + 1)),
                "Categories": np.array(classes, dtype=np.uint8).reshape(-1, 1),
            }},
        )
        written[image_id] = scene
    (sbd / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (sbd / "val.txt").write_text("".join(f"{i}\n" for i in val))
    return written


def _boundary_cells(mask: np.ndarray, values: range) -> np.ndarray:
    """A MATLAB cell column of sparse boundary maps, one per value (SBD's ``Boundaries`` field)."""
    cells = np.empty((len(values), 1), dtype=object)
    for row, value in enumerate(values):
        region = mask == value
        inner = region.copy()
        inner[1:-1, 1:-1] &= region[:-2, 1:-1] & region[2:, 1:-1] & region[1:-1, :-2] & region[1:-1, 2:]
        cells[row, 0] = scipy.sparse.csc_matrix(region & ~inner)
    return cells


def write_mini_cifar(
    root: Path,
    *,
    per_batch: int = 6,
    n_test10: int = 10,
    n_train100: int = 40,
    n_test100: int = 12,
    seed: int = 0,
) -> MiniCifar:
    """Write ``root/cifar-10-batches-py`` (5 train batches of ``per_batch`` images, a test batch,
    batches.meta) and ``root/cifar-100-python`` (train, test, meta) with random images and labels."""
    rng = np.random.default_rng(seed)

    def images(n: int) -> np.ndarray:
        return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)

    written = MiniCifar(
        images(5 * per_batch), rng.integers(0, 10, 5 * per_batch),
        images(n_test10), rng.integers(0, 10, n_test10),
        images(n_train100), rng.integers(0, 100, n_train100),
        images(n_test100), rng.integers(0, 100, n_test100),
    )
    c10 = Path(root) / "cifar-10-batches-py"
    c10.mkdir(parents=True, exist_ok=True)
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        _dump_batch(c10 / f"data_batch_{b + 1}", f"training batch {b + 1} of 5",
                    written.train10_images[part], written.train10_labels[part], "labels")
    _dump_batch(c10 / "test_batch", "testing batch 1 of 1",
                written.test10_images, written.test10_labels, "labels")
    _dump_py2(c10 / "batches.meta", {
        "num_cases_per_batch": per_batch, "label_names": list(CIFAR10_NAMES), "num_vis": 3072,
    })
    c100 = Path(root) / "cifar-100-python"
    c100.mkdir(parents=True, exist_ok=True)
    _dump_batch(c100 / "train", "training batch 1 of 1",
                written.train100_images, written.train100_labels, "fine_labels")
    _dump_batch(c100 / "test", "testing batch 1 of 1",
                written.test100_images, written.test100_labels, "fine_labels")
    _dump_py2(c100 / "meta", {
        "fine_label_names": [f"fine_{i:02d}" for i in range(100)],
        "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)],
    })
    return written


def _dump_batch(path: Path, name: str, images: np.ndarray, labels: np.ndarray, key: str) -> None:
    entry = {
        "batch_label": name,
        key: [int(v) for v in labels],
        "data": images.reshape(len(images), -1),  # row = 1024 red, 1024 green, 1024 blue values
        "filenames": [f"mini_{i:05d}.png" for i in range(len(images))],
    }
    if key == "fine_labels":
        entry["coarse_labels"] = [int(v) // 5 for v in labels]
    _dump_py2(path, entry)


class _Py2Str(str):
    """A str that pickles as a Python 2 byte string, like every string in the official CIFAR files."""


class _Py2Pickler(pickle._Pickler):
    """The pure-Python pickler, taught to write Python 2 strings: loaded with ``encoding="bytes"``
    they come back as ``b"data"`` (the CIFAR website's recipe), with ``"latin1"`` as ``"data"``
    (torchvision's), exactly as with the official files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: _Py2Str) -> None:
        raw = obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[_Py2Str] = _save_py2_str


def _dump_py2(path: Path, entry: dict) -> None:
    def py2(value):
        if isinstance(value, str):
            return _Py2Str(value)
        if isinstance(value, list):
            return [py2(v) for v in value]
        return value

    with open(path, "wb") as file:
        _Py2Pickler(file, protocol=2).dump({_Py2Str(k): py2(v) for k, v in entry.items()})
