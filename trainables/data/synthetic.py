"""The embedded synthetic segmentation benchmark: the default data set, generated, so a whole study runs
on a laptop with nothing to download.

It stands in for the thesis's single-object VOC2011+SBD set (section 5.1): 20 object classes, each drawn
as one object per image (more as an option) at a random position, scale and rotation on a cluttered
background (colour gradients, smooth noise, flat blobs that are background; with ``clutter="textured"``
also textured fragments), with a 255 ignore band on object borders like VOC's.

Why pre-training transfers here, as it does on VOC: every class is one of 5 shape families x 4 texture
families, arranged as a Latin square (``_class_shape``/``_class_texture``), with its own colour
statistics (saturation and dark/bright contrast) but a random hue, so colour alone does not name a class.
Each fold's 5 fine-tuning classes reuse the shapes and textures the other 15 classes teach, so filters
learned in pre-training ("a textured object with a sharp outline, unlike the flat clutter", "stripes",
"a star") are useful on the held-out classes, while telling those 5 classes apart still has to be learnt
when fine-tuning.

Each image is drawn from ``SeedSequence([seed, split_id, index])``, so a split is the same whatever order or
process generates it. A generated split is cached as a compressed ``.npz`` keyed by a hash of the
generation parameters.
"""

from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from trainables.data.base import IGNORE_INDEX, NUM_SOURCE_CLASSES, ClassificationData, SegmentationData

SHAPES = ("disk", "box", "tri", "star", "cross")
TEXTURES = ("stripes", "checks", "dots", "rings")
SPLITS = ("train", "val", "test")
# What fills the background besides the gradient: "flat" blobs (generator v2, this dataclass's default)
# or, in addition, "textured" fragments that share the objects' textures and colour statistics (what
# the default study, search_spaces/quick.py, runs on). With flat clutter texture alone marks an object:
# a per-pixel logistic regression on colour, local contrast and gradient finds the objects at
# foreground/background mean IU 0.98 (0.56 with the fragments; trainables.data.cues,
# tests/test_synthetic_cues.py), so a binarized pre-training on flat clutter learns no shape. The other
# segmentation presets keep "flat" until they are re-measured on the fragments (README).
CLUTTER = ("flat", "textured")
CACHE_ENV = "NOISY_TRANSFER_CACHE"
# Bump when the drawing code changes, so stale caches are never read as the new benchmark.
GENERATOR_VERSION = 2
# What a study runs on this benchmark, measured with benchmarks/transfer_sanity.py. The one home of
# these numbers: trainables.config takes its segmentation defaults from them, so a config built with no
# arguments is what the synthetic presets run.
RECOMMENDED_EPOCHS = {"pretrain": 15, "finetune": 20}
# "adam" is AdamW (decoupled weight decay), cosine-annealed over each phase's epochs.
RECOMMENDED_OPTIM = {"optimizer": "adam", "lr": 3e-3, "weight_decay": 1e-4, "batch_size": 32}
RECOMMENDED_FINETUNE_PER_CLASS = 10

_SUBSAMPLES = 4  # per axis: coverage of a pixel by an object is measured on a 4x4 grid of points
_SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
_FRAGMENT_STREAM = 1  # the textured fragments' random stream: SeedSequence([seed, split_id, index, 1])
_NUM_POSITIVES = 10  # classification view: source classes 1..10 are positives, 11..20 negatives
# The classification view's framing, like CIFAR's: 32x32 images whose object fills most of the frame
# (radius 35-50% of the side) with at most one background blob. With the segmentation benchmark's framing
# (radius 20-36%, 3 blobs) a 32x32 object shows 1-2 texture periods, and the 8-layer CNN had not learnt
# the 11 classes after 80,000 image-steps at 60 images per class (benchmarks/pu_sanity.py, 2026-11-30).
PU_VIEW = {"image_size": 32, "object_scale": (0.35, 0.5), "max_distractors": 1}


def _class_shape(index: int) -> int:
    """Shape family of class ``index + 1``; the 5 classes of every fold have the 5 different shapes."""
    return index % len(SHAPES)


def _class_texture(index: int) -> int:
    """Texture family of class ``index + 1``: a Latin square over folds, so the (shape, texture) pairs of
    the 20 classes are distinct and every fold's pre-training classes show every shape and texture."""
    return (index % len(SHAPES) + index // len(SHAPES)) % len(TEXTURES)


def _class_colour_statistics(index: int) -> tuple[float, float]:
    """Mean saturation and mean dark/bright ratio of class ``index + 1``'s two texture colours, spread
    over the classes by coprime strides so that neither follows the shape or texture family."""
    return 0.55 + 0.3 * (index * 7 % 20) / 19, 0.22 + 0.2 * (index * 11 % 20) / 19


SYNTHETIC_CLASSES = tuple(
    f"{TEXTURES[_class_texture(i)]}_{SHAPES[_class_shape(i)]}" for i in range(NUM_SOURCE_CLASSES)
)


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SyntheticConfig:
    """Generation parameters of the synthetic benchmark; every field enters the cache key.

    image_size: side of the square images in pixels.
    images_per_class / val_per_class / test_per_class: images per class in each split (the train split
        serves pre-training and, subsampled with ``subsample_per_class``, fine-tuning).
    objects_per_image: objects drawn per image; 1 (single-object, as in the thesis) by default. Later
        objects occlude earlier ones, in the label and the instance maps alike.
    object_scale: (min, max) object radius as a fraction of ``image_size``.
    max_distractors: at most this many background blobs per image (at least one when > 0).
    border_width: width class of the 255 ignore band: 0 none; 1 the pixels an object outline crosses
        (about 1-2 px, like VOC's band after the thesis's 4x subsampling); w > 1 that band dilated by w - 1.
    seed: root of every image's random stream.
    """

    image_size: int = 64
    images_per_class: int = 60
    val_per_class: int = 10
    test_per_class: int = 30
    objects_per_image: int = 1
    object_scale: tuple[float, float] = (0.2, 0.36)
    max_distractors: int = 3
    border_width: int = 1
    clutter: str = "flat"
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("image_size", self.image_size, 16, 1024)
        for name in ("images_per_class", "val_per_class", "test_per_class"):
            _check_int(name, getattr(self, name), 1, 100_000)
        _check_int("objects_per_image", self.objects_per_image, 1, 8)
        _check_int("max_distractors", self.max_distractors, 0, 16)
        _check_int("border_width", self.border_width, 0, 4)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        if self.clutter not in CLUTTER:
            raise ValueError(f"clutter must be one of {CLUTTER}, got {self.clutter!r}")
        scale = self.object_scale
        if (
            not isinstance(scale, tuple)
            or len(scale) != 2
            or not all(isinstance(s, Real) and not isinstance(s, bool) for s in scale)
            or not 0.05 <= scale[0] <= scale[1] <= 0.5
        ):
            raise ValueError(
                f"object_scale must be a tuple (min, max) with 0.05 <= min <= max <= 0.5, got {scale!r}"
            )

    def per_class(self, split: str) -> int:
        """Images per class in ``split``."""
        return {"train": self.images_per_class, "val": self.val_per_class, "test": self.test_per_class}[
            _check_split(split)
        ]


# What a trial config's size fields hold on this benchmark when left at 0 ("the data source's default"):
# trainables.config fills them in when a config is built, so trainables read concrete sizes only.
STUDY_SIZES = {
    "segmentation": {"image_size": SyntheticConfig.image_size,
                     "images_per_class": SyntheticConfig.images_per_class,
                     "finetune_train_per_class": RECOMMENDED_FINETUNE_PER_CLASS},
    "classification": {"images_per_class": SyntheticConfig.images_per_class},  # at 32 px, see pu_classification
}


def study_split_config(image_size: int, images_per_class: int, clutter: str = "flat") -> SyntheticConfig:
    """The benchmark a trial config with these sizes and clutter draws: validation and test splits keep
    their default sizes but never exceed the training split's (smoke-size configs stay small throughout)."""
    return SyntheticConfig(image_size=image_size, images_per_class=images_per_class, clutter=clutter,
                           val_per_class=min(SyntheticConfig.val_per_class, images_per_class),
                           test_per_class=min(SyntheticConfig.test_per_class, images_per_class))


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


# ---------------------------------------------------------------------------------------------- drawing


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """``(size, size, 3)`` noise in [-1, 1], bilinear between a random ``(cells + 1)^2`` lattice."""
    lattice = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1, 3))
    position = (np.arange(size) + 0.5) / size * cells
    low = np.minimum(position.astype(int), cells - 1)
    frac = position - low
    weights = np.zeros((size, cells + 1))
    weights[np.arange(size), low] = 1.0 - frac
    weights[np.arange(size), low + 1] = frac
    return np.einsum("yi,ijc,xj->yxc", weights, lattice, weights)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size, 3)`` float RGB in [0, 1]: a two-colour gradient plus low-frequency noise."""
    colours = rng.uniform(0.1, 0.9, size=(2, 3))
    angle = rng.uniform(0.0, 2.0 * np.pi)
    coords = (np.arange(size) + 0.5) / size - 0.5
    ramp = np.cos(angle) * coords[None, :] + np.sin(angle) * coords[:, None] + 0.5
    image = colours[0] + (colours[1] - colours[0]) * np.clip(ramp, 0.0, 1.0)[..., None]
    return image + rng.uniform(0.05, 0.15) * _smooth_noise(rng, size, int(rng.integers(2, 6)))


def _blob(rng: np.random.Generator, size: int, radius: tuple[float, float], strength: tuple[float, float],
          harmonics: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An irregular outline at a random centre: a circle of radius drawn from ``radius`` (fractions of
    ``size``) bent by the 2nd, 3rd, ... harmonics (``harmonics`` of them, amplitudes drawn from
    ``strength``). Returns ``(dx, dy, depth)``, ``(S, S)`` arrays in px: each pixel centre's offset from
    the blob's centre and how far inside the outline it lies (negative outside)."""
    centre = np.arange(size) + 0.5
    cx, cy = rng.uniform(0.0, size, size=2)
    scale = rng.uniform(*radius) * size
    amplitudes = rng.uniform(*strength, size=harmonics)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=harmonics)
    dx, dy = centre[None, :] - cx, centre[:, None] - cy
    theta = np.arctan2(dy, dx)
    bend = 1.0  # summed left to right, as generator v2 did: its images stay the same to the bit
    for order, (amplitude, phase) in enumerate(zip(amplitudes, phases), start=2):
        bend = bend + amplitude * np.cos(order * theta + phase)
    return dx, dy, scale * bend - np.hypot(dx, dy)


def _add_distractors(rng: np.random.Generator, image: np.ndarray, max_count: int) -> None:
    """Paint flat-coloured irregular blobs (background, never labelled) into ``image`` in place.

    Their edges range from soft to as sharp as an object's, so an outline alone does not make an object:
    the texture does.
    """
    if max_count == 0:
        return
    for _ in range(int(rng.integers(1, max_count + 1))):
        _, _, depth = _blob(rng, image.shape[0], (0.08, 0.25), (0.0, 0.25), harmonics=2)
        softness = rng.uniform(0.3, 3.0)  # px
        alpha = np.clip(depth / softness + 0.5, 0.0, 1.0) * rng.uniform(0.6, 1.0)
        image += alpha[..., None] * (rng.uniform(0.05, 0.95, size=3) - image)


def _add_textured_fragments(rng: np.random.Generator, image: np.ndarray, max_count: int) -> None:
    """Paint 1..``max_count`` textured fragments (background, never labelled) into ``image`` in place.

    Each is an irregular outline (strong 2nd-4th harmonics, so no class's shape) as large as an object,
    filled with one of the classes' textures in one class's colour statistics and edged as sharply as an
    object: colour, contrast and edges no longer tell an object from the background, its shape does.
    """
    if max_count == 0:
        return
    for _ in range(int(rng.integers(1, max_count + 1))):
        dx, dy, depth = _blob(rng, image.shape[0], (0.15, 0.32), (0.15, 0.35), harmonics=3)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        alpha = np.clip(depth + 0.5, 0.0, 1.0)  # a 1 px ramp, an object's edge
        cos, sin = np.cos(angle), np.sin(angle)
        pattern = _texture(rng, int(rng.integers(len(TEXTURES))), cos * dx + sin * dy, cos * dy - sin * dx)
        bright, dark = _object_colours(rng, int(rng.integers(NUM_SOURCE_CLASSES)))
        image += alpha[..., None] * (dark + (bright - dark) * pattern[..., None] - image)


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether object-frame points ``(u, v)`` (radius 1) lie inside shape family ``shape``."""
    name = SHAPES[shape]
    if name == "disk":
        return u * u + v * v <= 1.0
    if name == "box":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if name == "tri":
        return (v >= -0.6) & (np.sqrt(3.0) * np.abs(u) + v <= 1.2)
    if name == "star":
        return np.hypot(u, v) <= 0.6 + 0.4 * np.cos(5.0 * np.arctan2(v, u))
    arm = 0.33  # cross
    return ((np.abs(u) <= arm) & (np.abs(v) <= 1.0)) | ((np.abs(u) <= 1.0) & (np.abs(v) <= arm))


def _texture(rng: np.random.Generator, texture: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Texture pattern in [0, 1] at object-frame pixel coordinates ``(x, y)`` (in px, so it rotates
    with the object); period 3.5-6 px, a scale a 3x3 filter stack can see at 64x64."""
    period = rng.uniform(3.5, 6.0)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=2)
    wx, wy = 2.0 * np.pi * x / period + phase[0], 2.0 * np.pi * y / period + phase[1]
    name = TEXTURES[texture]
    if name == "stripes":
        return 0.5 + 0.5 * np.sin(wx)
    if name == "checks":
        return (np.sin(wx) * np.sin(wy) > 0.0).astype(float)
    if name == "dots":
        fx = np.mod(x / period + phase[0], 1.0) - 0.5
        fy = np.mod(y / period + phase[1], 1.0) - 0.5
        return (fx * fx + fy * fy < 0.09).astype(float)
    return 0.5 + 0.5 * np.sin(2.0 * np.pi * np.hypot(x, y) / period + phase[0])  # rings


def _object_colours(rng: np.random.Generator, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The bright and the dark RGB colour of one object of class ``index + 1``: any hue, the class's
    saturation and contrast, jittered per object."""
    saturation, ratio = _class_colour_statistics(index)
    bright = colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), saturation + rng.uniform(-0.08, 0.08), rng.uniform(0.65, 0.95))
    return np.array(bright), np.array(bright) * (ratio + rng.uniform(-0.05, 0.05))


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` dilated ``steps`` times by a 3x3 square."""
    for _ in range(steps):
        padded = np.pad(mask, 1)
        h, w = mask.shape
        mask = np.zeros_like(mask)
        for dy in range(3):
            for dx in range(3):
                mask |= padded[dy : dy + h, dx : dx + w]
    return mask


def _touching(owner: np.ndarray) -> np.ndarray:
    """Pixels of ``owner`` (-1 = band) that are 4-adjacent to a pixel of another owner, band aside.

    An outline running exactly along pixel edges crosses no pixel, so the coverage band misses it; banding
    these pixels too guarantees, as in VOC, that no labelled pixel touches a differently labelled one.
    """
    touching = np.zeros(owner.shape, dtype=bool)
    for a, b, ta, tb in (
        (owner[:, :-1], owner[:, 1:], touching[:, :-1], touching[:, 1:]),
        (owner[:-1], owner[1:], touching[:-1], touching[1:]),
    ):
        contact = (a != b) & (a >= 0) & (b >= 0)
        ta |= contact
        tb |= contact
    return touching


def _draw_image(
    config: SyntheticConfig, split_id: int, index: int, first_class: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: ``(3, S, S)`` uint8 RGB, ``(S, S)`` uint8 labels and ``(S, S)`` uint16 instances.

    ``first_class`` (1..20) is the class of the first object; further objects get random classes.
    """
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, split_id, index]))
    size = config.image_size
    image = _background(rng, size)
    _add_distractors(rng, image, config.max_distractors)
    if config.clutter == "textured":
        # Their own stream: the objects, labels and noise of an image are the same with either clutter.
        fragments = np.random.default_rng(np.random.SeedSequence([config.seed, split_id, index, _FRAGMENT_STREAM]))
        _add_textured_fragments(fragments, image, config.max_distractors)

    centres = np.arange(size) + 0.5
    offsets = (np.arange(_SUBSAMPLES) + 0.5) / _SUBSAMPLES - 0.5
    sub_x = (centres[:, None] + offsets[None, :]).reshape(-1)  # (S * 4,) sample positions along x
    owner = np.zeros((size, size), dtype=np.int64)  # index of the object a pixel is mostly covered by
    border = np.zeros((size, size), dtype=bool)  # pixels an outline passes through (mixed coverage)
    classes = [0]
    for k in range(1, config.objects_per_image + 1):
        cls = first_class if k == 1 else int(rng.integers(1, NUM_SOURCE_CLASSES + 1))
        classes.append(cls)
        radius = rng.uniform(*config.object_scale) * size
        # Single-object images keep the object mostly in frame, as VOC's single-object photos do.
        margin = 0.8 * radius if config.objects_per_image == 1 else 0.0
        cx, cy = rng.uniform(margin, size - margin, size=2)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        aspect = rng.uniform(0.7, 1.0)
        cos, sin = np.cos(angle), np.sin(angle)

        dx = sub_x[None, :] - cx
        dy = sub_x[:, None] - cy
        hit = _inside(
            _class_shape(cls - 1), (cos * dx + sin * dy) / radius, (cos * dy - sin * dx) / (radius * aspect)
        )
        coverage = hit.reshape(size, _SUBSAMPLES, size, _SUBSAMPLES).mean(axis=(1, 3))

        px, py = centres[None, :] - cx, centres[:, None] - cy
        pattern = _texture(rng, _class_texture(cls - 1), cos * px + sin * py, cos * py - sin * px)
        bright, dark = _object_colours(rng, cls - 1)
        colour = dark + (bright - dark) * pattern[..., None]
        image += coverage[..., None] * (colour - image)

        # The earlier outline under a fully covering later object is hidden; a new partial edge is not.
        border = (border & (coverage < 1.0)) | ((coverage > 0.0) & (coverage < 1.0))
        owner[coverage >= 0.5] = k

    image += rng.normal(0.0, 0.03, size=image.shape)
    image_u8 = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(2, 0, 1)

    if config.border_width > 0:
        owner[_dilate(border, config.border_width - 1)] = -1
        owner[_touching(owner)] = -1
    visible = np.unique(owner[owner > 0])
    renumber = np.zeros(config.objects_per_image + 2, dtype=np.int64)  # owner -1 reads the last entry
    renumber[visible] = np.arange(1, len(visible) + 1)
    instances = renumber[owner].astype(np.uint16)
    class_of = np.append(np.asarray(classes), IGNORE_INDEX)  # owner -1 -> 255
    labels = class_of[owner].astype(np.uint8)
    return image_u8, labels, instances


def _generate(split: str, config: SyntheticConfig) -> SegmentationData:
    """Draw every image of ``split``: ``per_class`` images of class 1, then class 2, ... class 20."""
    per_class = config.per_class(split)
    count = per_class * NUM_SOURCE_CLASSES
    size = config.image_size
    images = np.empty((count, 3, size, size), dtype=np.uint8)
    labels = np.empty((count, size, size), dtype=np.uint8)
    instances = np.empty((count, size, size), dtype=np.uint16)
    for index in range(count):
        images[index], labels[index], instances[index] = _draw_image(
            config, _SPLIT_IDS[split], index, index // per_class + 1
        )
    return SegmentationData(images, labels, instances, ("background",) + SYNTHETIC_CLASSES)


# ------------------------------------------------------------------------------------------------ cache


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "noisy-transfer")


def cache_path(split: str, config: SyntheticConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``split`` of ``config`` is cached: ``synthetic-<split>-<hash of the parameters>.npz``."""
    key = json.dumps(
        {"version": GENERATOR_VERSION, "split": _check_split(split), **dataclasses.asdict(config)}, sort_keys=True
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return _cache_dir(cache_dir) / f"synthetic-{split}-{digest}.npz"


def _read_cache(path: Path, split: str, config: SyntheticConfig) -> SegmentationData:
    """The cached split at ``path``; raises (any exception) when the file is unreadable or malformed."""
    count = config.per_class(split) * NUM_SOURCE_CLASSES
    size = config.image_size
    expected = {
        "images": ((count, 3, size, size), np.uint8),
        "labels": ((count, size, size), np.uint8),
        "instances": ((count, size, size), np.uint16),
    }
    with np.load(path) as archive:
        if sorted(archive.files) != sorted(expected):
            raise ValueError(f"keys {sorted(archive.files)}, expected {sorted(expected)}")
        arrays = {name: archive[name] for name in expected}
    for name, (shape, dtype) in expected.items():
        if arrays[name].shape != shape or arrays[name].dtype != dtype:
            raise ValueError(f"{name} is {arrays[name].dtype}{arrays[name].shape}, expected {dtype.__name__}{shape}")
    return SegmentationData(**arrays, class_names=("background",) + SYNTHETIC_CLASSES)


def _write_cache(path: Path, data: SegmentationData) -> None:
    """Write atomically: concurrent trials may build the same split, and a reader must never see half a
    file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez_compressed(stream, images=data.images, labels=data.labels, instances=data.instances)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def load_synthetic_segmentation(
    split: str, config: SyntheticConfig = SyntheticConfig(), cache_dir: str | os.PathLike | None = None
) -> SegmentationData:
    """One split of the synthetic benchmark in the source label space (0 background, 1..20, 255 ignore).

    Images are ``(N, 3, S, S)`` uint8 with ``N = 20 * config.per_class(split)``, ordered by the class of
    their first object. Read from the cache (``cache_dir``, else ``$NOISY_TRANSFER_CACHE``, else
    ``~/.cache/noisy-transfer``) when present; generated and cached otherwise. A corrupt cache file is
    reported with a warning and rebuilt. Fold views: ``trainables.data.base.task_view(data, fold, task,
    ("background",) + SYNTHETIC_CLASSES)``.
    """
    path = cache_path(split, config, cache_dir)
    if path.exists():
        try:
            return _read_cache(path, split, config)
        except Exception as error:  # any unreadable file is rebuilt, whatever numpy or zipfile raised
            warnings.warn(f"corrupt synthetic cache file {path} ({error}); rebuilding it", stacklevel=2)
    data = _generate(split, config)
    _write_cache(path, data)
    return data


def load_synthetic_classification(
    split: str,
    labelled_fraction: float,
    seed: int,
    config: SyntheticConfig = SyntheticConfig(**PU_VIEW),
    cache_dir: str | os.PathLike | None = None,
    pn: bool = False,
) -> ClassificationData:
    """The positive-unlabelled (PU) view of the benchmark for thesis Table 2 / Figure 5 without CIFAR.

    Inputs are the ``(N, 3, S, S)`` uint8 single-object images (framed as ``PU_VIEW`` by default); source classes 1..10 are the positive
    classes (labels 1..10) and 11..20 the negative pool (label 0). On the train split,
    ``round(labelled_fraction * #positives)`` positives drawn with ``seed`` keep their label and the other
    positives are labelled 0 (``true_labels`` keep the truth). With ``pn=True`` (the thesis's "P+N"
    baselines) that fraction of the positives and, separately, of the negatives is kept with true labels
    and the rest is dropped. The val and test splits always carry true labels.
    """
    _check_split(split)
    if isinstance(labelled_fraction, bool) or not isinstance(labelled_fraction, Real) or not (
        0.0 <= labelled_fraction <= 1.0
    ):
        raise ValueError(f"labelled_fraction must be a number in [0, 1], got {labelled_fraction!r}")
    _check_int("seed", seed, 0, 2**63 - 1)
    if config.objects_per_image != 1:
        raise ValueError(
            f"config.objects_per_image must be 1 for the classification view, got {config.objects_per_image}"
        )
    data = load_synthetic_segmentation(split, config, cache_dir)
    true_labels = np.repeat(np.arange(1, NUM_SOURCE_CLASSES + 1), config.per_class(split))
    true_labels = np.where(true_labels <= _NUM_POSITIVES, true_labels, 0).astype(np.int64)
    names = ("negative",) + SYNTHETIC_CLASSES[:_NUM_POSITIVES]
    if split != "train":
        return ClassificationData(data.images, true_labels.copy(), true_labels, names)

    rng = np.random.default_rng(np.random.SeedSequence(seed))
    positives = np.flatnonzero(true_labels > 0)
    kept_positives = rng.choice(positives, round(labelled_fraction * len(positives)), replace=False)
    if not pn:
        labels = np.zeros_like(true_labels)
        labels[kept_positives] = true_labels[kept_positives]
        return ClassificationData(data.images, labels, true_labels, names)
    negatives = np.flatnonzero(true_labels == 0)
    kept_negatives = rng.choice(negatives, round(labelled_fraction * len(negatives)), replace=False)
    kept = np.sort(np.concatenate([kept_positives, kept_negatives]))
    return ClassificationData(data.images[kept], true_labels[kept].copy(), true_labels[kept], names)
