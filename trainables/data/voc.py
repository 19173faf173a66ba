"""PASCAL VOC2011 segmentation plus the SBD extra segmentations (thesis 5.1), read from a local root.

Nothing is downloaded. torchvision's ``VOCSegmentation`` and ``SBDataset`` (``download=False``) resolve
the split lists and file paths, so the layout under the user's ``root`` is torchvision's::

    ROOT/TrainVal/VOCdevkit/VOC2011/        (how VOCtrainval_25-May-2011.tar unpacks)
        JPEGImages/<id>.jpg
        SegmentationClass/<id>.png          palette PNG, 0 background, 1..20 classes, 255 boundary
        SegmentationObject/<id>.png         palette PNG, 1..M object ids, 255 boundary
        ImageSets/Segmentation/{train,val}.txt
    ROOT/SBD/                               (the benchmark_RELEASE/dataset folder of SBD; optional)
        img/<id>.jpg
        cls/<id>.mat                        GTcls.Segmentation, 0 background, 1..20 classes
        inst/<id>.mat                       GTinst.Segmentation, 0 none, 1..M object ids
        {train,val}.txt

Splits: ``"test"`` is VOC2011 val. ``"train"`` and ``"val"`` share one pool, VOC2011 train plus SBD
train+val, minus every VOC2011 val id (never train on test images), de-duplicated by image id with the
VOC masks preferred; a stable hash of the id sends a ``val_fraction`` of the pool to ``"val"``.
Only single-object images (exactly one object in the instance mask) are kept, as in the thesis.
Images are subsampled ``subsample`` times (Lanczos for pixels, nearest for masks so no new label value
appears), then centre-padded or centre-cropped to ``size x size`` so a split stacks into arrays; pad
pixels are 0 in the image, 255 (ignored) in the labels and 0 (no object) in the instances.

Decoded pools are cached as ``.npz`` files keyed by the root path and the decoding parameters; delete
the cache directory when the data on disk changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import loadmat
from scipy.io.matlab import MatReadError
from torchvision.datasets import SBDataset, VOCSegmentation

from trainables.data.base import IGNORE_INDEX, NUM_SOURCE_CLASSES, SegmentationData
from trainables.labels import VOC_CLASSES

VOC_DIR = Path("TrainVal", "VOCdevkit", "VOC2011")
SBD_DIR = Path("SBD")
CACHE_ENV = "NOISY_TRANSFER_CACHE"
SPLITS = ("train", "val", "test")
EXPECTED_LAYOUT = """expected layout (torchvision's, SBD optional):
  ROOT/TrainVal/VOCdevkit/VOC2011/{JPEGImages,SegmentationClass,SegmentationObject}/
  ROOT/TrainVal/VOCdevkit/VOC2011/ImageSets/Segmentation/{train,val}.txt
  ROOT/SBD/{img,cls,inst}/ and ROOT/SBD/{train,val}.txt  (SBD's benchmark_RELEASE/dataset folder)"""
_VOC_REQUIRED = (
    "JPEGImages",
    "SegmentationClass",
    "SegmentationObject",
    "ImageSets/Segmentation/train.txt",
    "ImageSets/Segmentation/val.txt",
)
_SBD_REQUIRED = ("img", "cls", "inst", "train.txt", "val.txt")
# Bump when the decoding changes so stale caches are not reused.
_CACHE_VERSION = 1


@dataclass(frozen=True)
class _Sample:
    """Where one image of the pool lives on disk; ``source`` is ``"voc"`` or ``"sbd"``."""

    image_id: str
    image_path: str
    class_path: str
    object_path: str
    source: str


def load_voc_segmentation(
    root: str | os.PathLike,
    split: str,
    *,
    subsample: int = 4,
    size: int = 128,
    use_sbd: bool | None = True,
    val_fraction: float = 0.1,
    cache_dir: str | os.PathLike | None = None,
) -> SegmentationData:
    """The single-object images of one split in the source label space (0 background, 1..20, 255).

    root: the folder holding ``TrainVal/VOCdevkit/VOC2011`` and, optionally, ``SBD`` (see the module
    docstring for the layout). split: ``"train"``, ``"val"`` or ``"test"`` (= VOC2011 val).
    subsample: integer downsampling factor of height and width. size: side in pixels of the square
    output. use_sbd: True requires SBD, False ignores it, None uses it when ``ROOT/SBD`` exists (SBD
    never enters ``"test"``). val_fraction: share of the train/val pool in ``"val"``, in [0, 1).
    cache_dir: where decoded pools are cached; defaults to ``$NOISY_TRANSFER_CACHE`` or
    ``~/.cache/noisy-transfer``.

    Returns images ``(N, 3, size, size)`` uint8, labels ``(N, size, size)`` uint8 and instances
    ``(N, size, size)`` uint16 with the single object as id 1. Raises FileNotFoundError naming the
    missing path for an incomplete root, ValueError naming the file for an undecodable one.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    for name, value in (("subsample", subsample), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not (
        0.0 <= val_fraction < 1.0
    ):
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if use_sbd is not None and not isinstance(use_sbd, bool):
        raise ValueError(f"use_sbd must be True, False or None (autodetect), got {use_sbd!r}")

    root = Path(root).expanduser().resolve()
    voc_root = _check_voc_root(root)
    pool = "test" if split == "test" else "trainval"
    with_sbd = pool == "trainval" and _wants_sbd(root, use_sbd)
    params = {"pool": pool, "sbd": with_sbd, "subsample": int(subsample), "size": int(size)}
    cache_path = _cache_path(root, params, cache_dir)
    arrays = _read_cache(cache_path)
    if arrays is None:
        samples = _list_samples(root, voc_root, pool, with_sbd)
        arrays = _decode_pool(samples, int(subsample), int(size))
        _write_cache(cache_path, arrays)

    if pool == "trainval":
        in_val = _hash_fraction(arrays["ids"]) < val_fraction
        keep = in_val if split == "val" else ~in_val
        arrays = {key: value[keep] for key, value in arrays.items()}
    return SegmentationData(
        images=arrays["images"],
        labels=arrays["labels"],
        instances=arrays["instances"],
        class_names=("background", *VOC_CLASSES),
    )


def _check_voc_root(root: Path) -> Path:
    if not root.exists():
        raise FileNotFoundError(f"VOC root {root} does not exist; {EXPECTED_LAYOUT}")
    if not root.is_dir():
        raise ValueError(f"VOC root {root} is not a directory; {EXPECTED_LAYOUT}")
    voc_root = root / VOC_DIR
    for relative in ("", *_VOC_REQUIRED):
        path = voc_root / relative
        if not path.exists():
            raise FileNotFoundError(f"VOC2011 is incomplete: {path} is missing; {EXPECTED_LAYOUT}")
    return voc_root


def _wants_sbd(root: Path, use_sbd: bool | None) -> bool:
    sbd_root = root / SBD_DIR
    if use_sbd is False or (use_sbd is None and not sbd_root.exists()):
        return False
    for relative in ("", *_SBD_REQUIRED):
        path = sbd_root / relative
        if not path.exists():
            raise FileNotFoundError(
                f"SBD is incomplete: {path} is missing (pass use_sbd=False to train on VOC2011 "
                f"alone); {EXPECTED_LAYOUT}"
            )
    return True


def _list_samples(root: Path, voc_root: Path, pool: str, with_sbd: bool) -> list[_Sample]:
    """The pool's images in list order, VOC first, with the id rules of the module docstring."""
    voc_val = _voc_samples(root, voc_root, "val")
    if pool == "test":
        return voc_val
    samples = _voc_samples(root, voc_root, "train")
    taken = {s.image_id for s in samples} | {s.image_id for s in voc_val}
    if with_sbd:
        for image_set in ("train", "val"):
            for sample in _sbd_samples(root / SBD_DIR, image_set):
                if sample.image_id not in taken:
                    taken.add(sample.image_id)
                    samples.append(sample)
    return samples


def _voc_samples(root: Path, voc_root: Path, image_set: str) -> list[_Sample]:
    dataset = VOCSegmentation(str(root), year="2011", image_set=image_set, download=False)
    object_dir = voc_root / "SegmentationObject"
    return [
        _Sample(Path(image).stem, image, mask, str(object_dir / (Path(image).stem + ".png")), "voc")
        for image, mask in zip(dataset.images, dataset.masks)
    ]


def _sbd_samples(sbd_root: Path, image_set: str) -> list[_Sample]:
    dataset = SBDataset(str(sbd_root), image_set=image_set, mode="segmentation", download=False)
    inst_dir = sbd_root / "inst"
    return [
        _Sample(Path(image).stem, image, mask, str(inst_dir / (Path(image).stem + ".mat")), "sbd")
        for image, mask in zip(dataset.images, dataset.masks)
    ]


def _decode_pool(samples: list[_Sample], subsample: int, size: int) -> dict[str, np.ndarray]:
    """Decode the single-object samples into stacked arrays (ids, images, labels, instances)."""
    ids, images, labels, instances = [], [], [], []
    for sample in samples:
        objects = _read_instances(sample)
        object_ids = np.setdiff1d(np.unique(objects), (0, IGNORE_INDEX))
        if len(object_ids) != 1:
            continue
        classes = _read_classes(sample)
        image = _read_image(sample.image_path)
        if classes.shape != objects.shape or classes.shape != (image.height, image.width):
            raise ValueError(
                f"image {sample.image_path} ({image.height}x{image.width}) and its masks "
                f"{sample.class_path} {classes.shape}, {sample.object_path} {objects.shape} differ in size"
            )
        image, classes, objects = _subsample(image, classes, objects == object_ids[0], subsample)
        ids.append(sample.image_id)
        images.append(_fit(image.transpose(2, 0, 1), size, 0))
        labels.append(_fit(classes, size, IGNORE_INDEX))
        instances.append(_fit(objects.astype(np.uint16), size, 0))
    return {
        "ids": np.array(ids, dtype=str),
        "images": np.stack(images) if images else np.zeros((0, 3, size, size), np.uint8),
        "labels": np.stack(labels) if labels else np.zeros((0, size, size), np.uint8),
        "instances": np.stack(instances) if instances else np.zeros((0, size, size), np.uint16),
    }


def _subsample(
    image: Image.Image, classes: np.ndarray, objects: np.ndarray, factor: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shrink by ``factor``: Lanczos for the ``(H, W, 3)`` pixels, nearest for the ``(H, W)`` masks."""
    height, width = classes.shape
    out_h, out_w = -(-height // factor), -(-width // factor)
    if factor > 1:
        image = image.resize((out_w, out_h), Image.Resampling.LANCZOS)
    # PIL's nearest convention (source pixel under each output pixel centre) keeps masks aligned with
    # the resized image, and picking pixels never invents a label value.
    rows = np.minimum(((np.arange(out_h) + 0.5) * height / out_h).astype(int), height - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * width / out_w).astype(int), width - 1)
    grid = np.ix_(rows, cols)
    return np.asarray(image, dtype=np.uint8), classes[grid], objects[grid]


def _fit(array: np.ndarray, size: int, fill: int) -> np.ndarray:
    """Centre-pad with ``fill`` or centre-crop the last two axes of ``array`` to ``size x size``."""
    out = np.full((*array.shape[:-2], size, size), fill, dtype=array.dtype)
    (src_r, dst_r), (src_c, dst_c) = (_span(n, size) for n in array.shape[-2:])
    out[..., dst_r, dst_c] = array[..., src_r, src_c]
    return out


def _span(length: int, size: int) -> tuple[slice, slice]:
    if length >= size:
        start = (length - size) // 2
        return slice(start, start + size), slice(0, size)
    start = (size - length) // 2
    return slice(0, length), slice(start, start + length)


def _read_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image {path} is listed but missing; {EXPECTED_LAYOUT}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode image {path}: {err}") from err


def _read_png_mask(path: str) -> np.ndarray:
    try:
        with Image.open(path) as mask:
            mask.load()
            if mask.mode not in ("P", "L"):
                raise ValueError(f"mode {mask.mode!r}, expected a palette ('P') or gray ('L') PNG")
            return np.array(mask, dtype=np.uint8)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"mask {path} is listed but missing; {EXPECTED_LAYOUT}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode mask {path}: {err}") from err


def _read_mat_segmentation(path: str, struct: str) -> np.ndarray:
    """``struct.Segmentation`` of an SBD .mat file, indexed the way torchvision's SBDataset does."""
    try:
        segmentation = np.asarray(loadmat(path)[struct][0]["Segmentation"][0])
    except FileNotFoundError as err:
        raise FileNotFoundError(f"SBD file {path} is listed but missing; {EXPECTED_LAYOUT}") from err
    except (MatReadError, OSError, ValueError, TypeError, KeyError, IndexError) as err:
        raise ValueError(f"cannot read {struct}.Segmentation from {path}: {err!r}") from err
    if segmentation.ndim != 2 or segmentation.dtype.kind not in "ui":
        raise ValueError(
            f"{struct}.Segmentation in {path} must be a 2-D integer map, got {segmentation.dtype} "
            f"of shape {segmentation.shape}"
        )
    return segmentation


def _read_classes(sample: _Sample) -> np.ndarray:
    if sample.source == "voc":
        classes = _read_png_mask(sample.class_path)
    else:
        classes = _read_mat_segmentation(sample.class_path, "GTcls")
    valid = ((classes >= 0) & (classes <= NUM_SOURCE_CLASSES)) | (classes == IGNORE_INDEX)
    if not valid.all():
        raise ValueError(
            f"class map {sample.class_path} holds values {np.unique(classes[~valid]).tolist()}; "
            f"allowed are 0..{NUM_SOURCE_CLASSES} and {IGNORE_INDEX}"
        )
    return classes.astype(np.uint8)


def _read_instances(sample: _Sample) -> np.ndarray:
    if sample.source == "voc":
        return _read_png_mask(sample.object_path)
    return _read_mat_segmentation(sample.object_path, "GTinst")


def _hash_fraction(ids: np.ndarray) -> np.ndarray:
    """A stable number in [0, 1) per image id (sha256, so it never changes between runs)."""
    return np.array(
        [int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "big") / 2**64 for i in ids.tolist()],
        dtype=np.float64,
    )


def _cache_path(root: Path, params: dict, cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "noisy-transfer"
    key = json.dumps({"root": str(root), "version": _CACHE_VERSION, **params}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return Path(cache_dir).expanduser() / f"voc2011-{params['pool']}-{digest}.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in ("ids", "images", "labels", "instances")}
        SegmentationData(arrays["images"], arrays["labels"], arrays["instances"], ())
        if arrays["ids"].shape != (len(arrays["images"]),):
            raise ValueError(f"{len(arrays['ids'])} ids for {len(arrays['images'])} images")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"rebuilding corrupt cache file {path}: {err!r}", RuntimeWarning, stacklevel=3)
        return None
    return arrays


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write via a temporary file and ``os.replace`` so readers never see a half-written cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            np.savez(file, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
