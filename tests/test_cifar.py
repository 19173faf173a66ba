"""CIFAR P/U loader, run on miniature CIFAR-10/100 copies in the real pickle format."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
from helpers.fixtures_data import CIFAR10_NAMES, write_mini_cifar

from trainables.data.cifar import load_cifar_pu

PER_BATCH, N_TRAIN100 = 6, 40  # 30 CIFAR-10 and 40 CIFAR-100 training images


@pytest.fixture
def mini(tmp_path):
    return tmp_path, write_mini_cifar(tmp_path, per_batch=PER_BATCH, n_train100=N_TRAIN100)


def rows(images: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in images}


def test_fixture_uses_the_real_pickle_keys(mini):
    root, _ = mini
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as file:
        entry = pickle.load(file, encoding="bytes")  # the CIFAR website's recipe
    assert {b"data", b"labels", b"batch_label", b"filenames"} == set(entry)
    assert entry[b"data"].shape == (PER_BATCH, 3072)


def test_test_split_is_the_official_test_sets_with_true_labels(mini):
    root, written = mini
    data = load_cifar_pu(root, "test", 0.5, seed=0)
    expected_inputs = np.concatenate([written.test10_images, written.test100_images])
    np.testing.assert_array_equal(data.inputs, expected_inputs)
    expected = np.concatenate([written.test10_labels + 1, np.zeros(len(written.test100_images))])
    np.testing.assert_array_equal(data.true_labels, expected)
    np.testing.assert_array_equal(data.labels, data.true_labels)
    assert data.inputs.dtype == np.uint8 and data.labels.dtype == np.int64
    assert data.class_names == ("negative", *CIFAR10_NAMES) and data.num_classes == 11


def test_train_and_val_partition_the_official_training_sets(mini):
    root, written = mini
    train = load_cifar_pu(root, "train", 1.0, seed=0, val_fraction=0.2)
    val = load_cifar_pu(root, "val", 1.0, seed=7, val_fraction=0.2)
    assert len(val) == 6 + 8 and len(train) == 24 + 32  # round(0.2 * 30) and round(0.2 * 40) in val
    assert not rows(train.inputs) & rows(val.inputs)
    all_train = np.concatenate([written.train10_images, written.train100_images])
    assert rows(train.inputs) | rows(val.inputs) == rows(all_train)
    truth = {img.tobytes(): label for img, label in zip(written.train10_images, written.train10_labels + 1)}
    for image, label in zip(train.inputs, train.true_labels):
        assert label == truth.get(image.tobytes(), 0)
    other_seed = load_cifar_pu(root, "train", 0.5, seed=3, val_fraction=0.2)
    np.testing.assert_array_equal(other_seed.inputs, train.inputs)  # the split ignores the seed


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 1.0])
def test_labelled_fraction_keeps_an_exact_count_of_positives(mini, fraction):
    root, _ = mini
    data = load_cifar_pu(root, "train", fraction, seed=1, val_fraction=0.0)
    positive = data.true_labels > 0
    assert positive.sum() == 30
    labelled = data.labels > 0
    assert labelled.sum() == int(np.floor(fraction * 30 + 0.5))
    assert not (labelled & ~positive).any()  # negatives are never labelled positive
    np.testing.assert_array_equal(data.labels[labelled], data.true_labels[labelled])


def test_unlabelled_draw_follows_the_seed(mini):
    root, _ = mini
    draw = [load_cifar_pu(root, "train", 0.5, seed=s, val_fraction=0.0).labels for s in (1, 1, 2)]
    np.testing.assert_array_equal(draw[0], draw[1])
    assert not np.array_equal(draw[0], draw[2])


def test_pn_mode_keeps_a_share_of_both_classes_with_true_labels(mini):
    root, written = mini
    data = load_cifar_pu(root, "train", 0.5, seed=4, pn=True, val_fraction=0.0)
    np.testing.assert_array_equal(data.labels, data.true_labels)
    assert (data.true_labels > 0).sum() == 15 and (data.true_labels == 0).sum() == 20
    assert rows(data.inputs[data.true_labels > 0]) <= rows(written.train10_images)
    assert rows(data.inputs[data.true_labels == 0]) <= rows(written.train100_images)


def test_max_per_source_takes_the_first_images(mini):
    root, written = mini
    data = load_cifar_pu(root, "test", 1.0, seed=0, max_per_source=4)
    first = np.concatenate([written.test10_images[:4], written.test100_images[:4]])
    np.testing.assert_array_equal(data.inputs, first)
    train = load_cifar_pu(root, "train", 1.0, seed=0, val_fraction=0.0, max_per_source=5)
    first = np.concatenate([written.train10_images[:5], written.train100_images[:5]])
    assert rows(train.inputs) == rows(first)


def test_missing_root_and_folder_are_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=rf"CIFAR root {re.escape(str(missing))} is not a directory"):
        load_cifar_pu(missing, "train", 0.5, seed=0)
    with pytest.raises(FileNotFoundError, match=r"(?s)cifar-10-batches-py is missing.*cifar-100-python"):
        load_cifar_pu(tmp_path, "train", 0.5, seed=0)


def test_missing_batch_is_named(mini):
    root, _ = mini
    path = root / "cifar-10-batches-py" / "data_batch_3"
    path.unlink()
    with pytest.raises(FileNotFoundError, match=rf"(?s)CIFAR file {re.escape(str(path))} is missing.*layout"):
        load_cifar_pu(root, "train", 0.5, seed=0)
    load_cifar_pu(root, "test", 0.5, seed=0)  # the test split does not read training batches


def test_corrupt_batch_is_named(mini):
    root, _ = mini
    path = root / "cifar-100-python" / "test"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"CIFAR file {re.escape(str(path))} is corrupt"):
        load_cifar_pu(root, "test", 0.5, seed=0)


def test_malformed_batch_and_meta_are_named(mini):
    root, _ = mini
    path = root / "cifar-10-batches-py" / "test_batch"
    with open(path, "wb") as file:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, file)
    message = rf"CIFAR batch {re.escape(str(path))} must hold 'data' as an \(n, 3072\) uint8 array"
    with pytest.raises(ValueError, match=message):
        load_cifar_pu(root, "test", 0.5, seed=0)
    with open(path, "wb") as file:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, file)
    with pytest.raises(ValueError, match=rf"CIFAR batch {re.escape(str(path))} must hold 2 integer 'labels'"):
        load_cifar_pu(root, "test", 0.5, seed=0)
    with open(path, "wb") as file:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 9]}, file)
    meta = root / "cifar-10-batches-py" / "batches.meta"
    with open(meta, "wb") as file:
        pickle.dump({"label_names": ["a", "b"]}, file)
    with pytest.raises(ValueError, match=rf"CIFAR meta file {re.escape(str(meta))} must hold 10 names"):
        load_cifar_pu(root, "test", 0.5, seed=0)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (("dev", 0.5, 0), {}, ValueError, r"split must be one of \('train', 'val', 'test'\), got 'dev'"),
        (("train", 1.5, 0), {}, ValueError, r"labelled_fraction must be a number in \[0, 1\], got 1.5"),
        (("train", 0.5, -1), {}, ValueError, "seed must be an integer >= 0, got -1"),
        (("train", 0.5, 0), {"val_fraction": 1.0}, ValueError, r"val_fraction must be a number in \[0, 1\)"),
        (("train", 0.5, 0), {"pn": 1}, TypeError, "pn must be a bool, got 1"),
        (("train", 0.5, 0), {"max_per_source": 0}, ValueError, "max_per_source must be None or an int"),
    ],
)
def test_bad_arguments_are_named(mini, args, kwargs, error, message):
    root, _ = mini
    with pytest.raises(error, match=message):
        load_cifar_pu(root, *args, **kwargs)
