"""The fine-tuning validation split (issue: the search answers the right question).

Every data source gives a trial three disjoint fine-tuning splits: training, validation (what
``objective`` averages) and test (what the tables report). Validation and training are drawn per seed
from the source's training pool; the test split is the source's own. Images are identified by a hash
of their pixels, so "disjoint" means no image appears in two splits.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image
from helpers.fixtures_data import write_mini_cifar, write_mini_sbd, write_mini_voc

from trainables.config import PretrainFinetuneConfig, PUClassificationConfig
from trainables.data.sources import load_task_data
from trainables.pu_classification import _load_splits


def fingerprints(images: np.ndarray) -> list[str]:
    """One hash per image of ``(N, ...)`` pixels."""
    return [hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images]


def splits_of(data) -> dict[str, list[str]]:
    return {name: fingerprints(getattr(data, f"finetune_{name}").inputs.numpy())
            for name in ("train", "val", "test")}


def assert_disjoint(splits: dict[str, list[str]]) -> None:
    for name, prints in splits.items():
        assert prints, f"{name} is empty"
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not set(splits[a]) & set(splits[b]), f"{a} and {b} share images"


# --- synthetic segmentation ------------------------------------------------------------------------

def synthetic_cfg(data_cache, seed: int) -> PretrainFinetuneConfig:
    # 8 training images per class: 2 to validation, 3 to training, 3 to neither.
    return PretrainFinetuneConfig(image_size=32, images_per_class=8, finetune_train_per_class=3,
                                  finetune_val_per_class=2, init="random", seed=seed, data_cache=str(data_cache))


def test_synthetic_splits_are_disjoint_sized_and_fixed_by_the_seed(data_cache):
    first = load_task_data(synthetic_cfg(data_cache, seed=0))
    splits = splits_of(first)
    assert_disjoint(splits)
    assert len(splits["val"]) == 2 * 5 and len(splits["train"]) == 3 * 5  # per class x 5 fine-tuning classes
    assert splits_of(load_task_data(synthetic_cfg(data_cache, seed=0))) == splits
    other = splits_of(load_task_data(synthetic_cfg(data_cache, seed=1)))
    assert other["val"] != splits["val"]  # drawn per seed
    assert other["test"] == splits["test"]  # the source's test split, whatever the seed
    # validation holds every fine-tuning class, clean labels
    assert set(np.unique(first.finetune_val.labels)) - {0, 255} == {1, 2, 3, 4, 5}
    np.testing.assert_array_equal(first.finetune_val.labels, first.finetune_val.clean_labels)


def test_a_validation_draw_too_large_for_a_class_names_the_fields(data_cache):
    cfg = synthetic_cfg(data_cache, seed=0)
    with pytest.raises(ValueError, match=r"finetune_val_per_class=7 \+ finetune_train_per_class=3 exceeds"):
        PretrainFinetuneConfig(**{**cfg.to_dict(), "finetune_val_per_class": 7})


# --- VOC (miniature copy in the real on-disk format) -----------------------------------------------

# Fold 1 fine-tunes on classes 1..5: four VOC and two SBD training images each, one VOC val image each.
VOC_TRAIN = {f"2008_{c:02d}{i:04d}": [c] for c in range(1, 6) for i in range(4)}
SBD_TRAIN = {f"2010_{c:02d}{i:04d}": [c] for c in range(1, 6) for i in range(2)}
VOC_VAL = {f"2009_{c:02d}0000": [c] for c in range(1, 6)}


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    written = {**write_mini_voc(root, VOC_TRAIN, VOC_VAL), **write_mini_sbd(root, SBD_TRAIN, {})}
    # The miniature scenes of one class are identical; a grey corner block unique to each image id
    # tells them apart (the labels come from the masks, so they are unchanged).
    for number, (image_id, scene) in enumerate(sorted(written.items())):
        image = scene.image.copy()
        image[:8, :8] = 4 * number
        path = (root / "SBD" / "img" if image_id in SBD_TRAIN else
                root / "TrainVal" / "VOCdevkit" / "VOC2011" / "JPEGImages") / f"{image_id}.jpg"
        Image.fromarray(image).save(path, quality=95)
    return root


def voc_cfg(root, cache, seed: int) -> PretrainFinetuneConfig:
    return PretrainFinetuneConfig(data=f"voc:{root}", model="small_fcn", init="random", seed=seed,
                                  finetune_val_per_class=1, data_cache=str(cache))


def test_voc_splits_are_disjoint_and_validation_comes_from_the_training_pool(voc_root, tmp_path):
    data = load_task_data(voc_cfg(voc_root, tmp_path, seed=0))
    splits = splits_of(data)
    assert_disjoint(splits)
    assert len(splits["val"]) == 5  # one per fine-tuning class
    assert len(splits["test"]) == len(VOC_VAL)  # VOC2011 val stays the test set, untouched
    # finetune_train_per_class 0 (VOC's default): every other training-pool image trains
    assert splits_of(load_task_data(voc_cfg(voc_root, tmp_path, seed=0))) == splits
    draws = {tuple(sorted(splits_of(load_task_data(voc_cfg(voc_root, tmp_path, seed=s)))["val"])) for s in range(6)}
    assert len(draws) > 1  # per seed


# --- PU classification: CIFAR's held-out tenth, synthetic and moons validation draws --------------

def pu_prints(cfg: PUClassificationConfig) -> dict[str, list[str]]:
    train, val, test = _load_splits(cfg)
    np.testing.assert_array_equal(val.labels, val.true_labels)  # validation is scored with true labels
    return {"train": fingerprints(train.inputs), "val": fingerprints(val.inputs), "test": fingerprints(test.inputs)}


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_mini_cifar(root, per_batch=20, n_train100=100)
    return root


@pytest.mark.parametrize("kind", ["cifar", "synthetic", "moons"])
def test_pu_sources_have_disjoint_validation_splits_fixed_by_the_seed(kind, cifar_root, data_cache):
    values = {"cifar": {"data": f"cifar:{cifar_root}"},
              "synthetic": {"data": "synthetic", "images_per_class": 4, "data_cache": str(data_cache)},
              "moons": {"data": "moons", "points_per_class": 40}}[kind]
    cfg = PUClassificationConfig(**values, labelled_fraction=0.5)
    prints = pu_prints(cfg)
    assert_disjoint(prints)
    assert pu_prints(cfg) == prints
