"""VOC2011 + SBD loader, run on miniature copies in the real on-disk formats (tests/helpers/fixtures_data.py)."""

from __future__ import annotations

import hashlib
import re
import shutil

import numpy as np
import pytest
from helpers.fixtures_data import class_rgb, make_scene, write_mini_sbd, write_mini_voc, write_palette_png
from PIL import Image
from scipy.io import savemat
from torchvision.datasets import SBDataset, VOCSegmentation

from trainables.data.base import task_view
from trainables.data.voc import load_voc_segmentation
from trainables.labels import VOC_CLASSES

# Each single-object image has its own class, so a loaded image is identified by its class.
VOC_TRAIN = {"2008_000001": [1], "2008_000002": [2, 3], "2008_000003": [7], "2008_000004": [12]}
VOC_VAL = {"2009_000001": [5], "2009_000002": [6, 8], "2009_000003": [15]}
SBD_TRAIN = {"2010_000001": [9], "2009_000001": [4], "2008_000001": [20], "2010_000004": [10]}
SBD_VAL = {"2010_000002": [16], "2010_000003": [17, 18]}
POOL_CLASSES = {1, 7, 12, 9, 10, 16}  # no 4 (a VOC val id) and no 20 (duplicate id, VOC preferred)
POOL_IDS = {"2008_000001": 1, "2008_000003": 7, "2008_000004": 12, "2010_000001": 9, "2010_000004": 10,
            "2010_000002": 16}
TEST_CLASSES = {5, 15}


@pytest.fixture
def root(tmp_path):
    data = tmp_path / "data"
    write_mini_voc(data, VOC_TRAIN, VOC_VAL)
    write_mini_sbd(data, SBD_TRAIN, SBD_VAL)
    return data


def load(root, split, **kwargs):
    kwargs.setdefault("cache_dir", root.parent / "cache")
    return load_voc_segmentation(root, split, **kwargs)


def object_classes(data) -> list[int]:
    """The one object class of each image (labels without 0 and 255)."""
    found = [np.setdiff1d(np.unique(label), (0, 255)) for label in data.labels]
    assert all(len(f) == 1 for f in found)
    return [int(f[0]) for f in found]


def test_fixture_is_readable_by_torchvision(root):
    voc = VOCSegmentation(str(root), year="2011", image_set="val")
    assert len(voc) == len(VOC_VAL)
    assert set(np.unique(np.asarray(voc[1][1]))) == {0, 6, 8, 255}
    sbd = SBDataset(str(root / "SBD"), image_set="val", mode="segmentation")
    assert set(np.unique(np.asarray(sbd[1][1]))) == {0, 17, 18}


def test_splits_keep_single_objects_and_never_train_on_voc_val(root):
    train, val, test = (load(root, s, val_fraction=0.0) for s in ("train", "val", "test"))
    assert sorted(object_classes(train)) == sorted(POOL_CLASSES)
    assert len(val) == 0
    assert sorted(object_classes(test)) == sorted(TEST_CLASSES)
    assert train.class_names == ("background", *VOC_CLASSES) and train.num_classes == 21


def test_val_split_is_a_stable_hash_partition_of_the_pool(root):
    def expected_val(fraction):
        digest = {i: int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "big") for i in POOL_IDS}
        return {POOL_IDS[i] for i in POOL_IDS if digest[i] / 2**64 < fraction}

    vals = []
    for fraction in (0.0, 0.3, 0.6, 0.9):
        train, val = load(root, "train", val_fraction=fraction), load(root, "val", val_fraction=fraction)
        assert set(object_classes(val)) == expected_val(fraction)
        assert set(object_classes(train)) == POOL_CLASSES - expected_val(fraction)
        vals.append(expected_val(fraction))
    assert vals[0] == set() and vals[-1] and len(set(map(frozenset, vals))) > 2  # the test has teeth


def test_subsampling_picks_nearest_pixels_and_pads_with_ignore(root):
    # 40x48 by 4 -> 10x12, centre-padded to 16x16: rows 3..12, columns 2..13.
    test = load(root, "test", subsample=4, size=16)
    source = make_scene("2009_000001", [5], 40, 48, boundary=2)
    i = object_classes(test).index(5)
    expected = source.classes[2::4, 2::4]  # PIL's nearest: the pixel under each output centre
    np.testing.assert_array_equal(test.labels[i, 3:13, 2:14], expected)
    pad = np.ones((16, 16), bool)
    pad[3:13, 2:14] = False
    assert (test.labels[i][pad] == 255).all() and (test.instances[i][pad] == 0).all()
    assert (test.images[i][:, pad] == 0).all()
    assert set(np.unique(test.labels)) <= {0, 5, 15, 255}  # only values of the source masks
    r, c = np.argwhere(expected == 5).mean(axis=0).round().astype(int)
    np.testing.assert_allclose(test.images[i, :, 3 + r, 2 + c], class_rgb(5), atol=12)


def test_centre_crop_and_shapes(root):
    data = load(root, "train", subsample=2, size=8, val_fraction=0.0)
    # 40x48 by 2 -> 20x24, cropped to rows 6..13 and columns 8..15 of the subsampled map.
    assert data.images.shape == (len(POOL_CLASSES), 3, 8, 8) and data.images.dtype == np.uint8
    assert data.labels.shape == data.instances.shape == (len(POOL_CLASSES), 8, 8)
    source = make_scene("2008_000003", [7], 40, 48, boundary=2)
    i = object_classes(data).index(7)
    np.testing.assert_array_equal(data.labels[i], source.classes[1::2, 1::2][6:14, 8:16])


def test_instance_maps_mark_the_object_as_one_without_boundaries(root):
    data = load(root, "train", val_fraction=0.0, size=8)  # a crop: every 255 here is a VOC boundary
    assert data.instances.dtype == np.uint16
    is_object = (data.labels > 0) & (data.labels < 255)
    np.testing.assert_array_equal(data.instances, is_object.astype(np.uint16))
    assert (data.labels == 255).any()


def test_folds_come_from_task_view(root):
    data = load(root, "train", val_fraction=0.0, size=16)
    finetune = task_view(data, 1, "finetune", data.class_names)  # fold 1 fine-tunes on 1..5
    assert object_classes(finetune) == [1]
    assert finetune.class_names == ("background", *VOC_CLASSES[:5])
    pretrain = task_view(data, 1, "pretrain", data.class_names)  # 6..20 become 1..15
    assert sorted(object_classes(pretrain)) == sorted(c - 5 for c in POOL_CLASSES - {1})


def test_sbd_flag_and_autodetect(root):
    voc_only = {1, 7, 12}
    assert set(object_classes(load(root, "train", use_sbd=False, val_fraction=0.0))) == voc_only
    shutil.rmtree(root / "SBD")
    assert set(object_classes(load(root, "train", use_sbd=None, val_fraction=0.0))) == voc_only
    with pytest.raises(FileNotFoundError, match=r"SBD is incomplete: .*SBD is missing.*use_sbd=False"):
        load(root, "train")
    assert set(object_classes(load(root, "test"))) == TEST_CLASSES  # test never needs SBD


def test_cache_is_reused_and_rebuilt_when_corrupt(root, monkeypatch):
    monkeypatch.setenv("NOISY_TRANSFER_CACHE", str(root.parent / "env-cache"))
    first = load_voc_segmentation(root, "test", size=16)
    (cache_file,) = (root.parent / "env-cache").iterdir()
    images = root / "TrainVal/VOCdevkit/VOC2011/JPEGImages"
    shutil.rmtree(images)
    images.mkdir()
    cached = load_voc_segmentation(root, "test", size=16)  # images gone: only the cache can answer
    np.testing.assert_array_equal(cached.images, first.images)
    np.testing.assert_array_equal(cached.labels, first.labels)

    write_mini_voc(root, VOC_TRAIN, VOC_VAL)
    cache_file.write_bytes(b"not a zip file")
    with pytest.warns(RuntimeWarning, match=f"rebuilding corrupt cache file {re.escape(str(cache_file))}"):
        rebuilt = load_voc_segmentation(root, "test", size=16)
    np.testing.assert_array_equal(rebuilt.instances, first.instances)
    assert [p.name for p in cache_file.parent.iterdir()] == [cache_file.name]  # no temporary left
    with np.load(cache_file) as npz:
        np.testing.assert_array_equal(npz["images"], first.images)


def test_cache_key_depends_on_parameters(root):
    load(root, "test", size=16)
    load(root, "test", size=8)
    assert len(list((root.parent / "cache").glob("*.npz"))) == 2


def test_missing_root_names_it_and_shows_the_layout(tmp_path):
    missing = tmp_path / "nowhere"
    message = rf"{re.escape(str(missing))} does not exist.*expected layout"
    with pytest.raises(FileNotFoundError, match=message):
        load_voc_segmentation(missing, "train", cache_dir=tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        load_voc_segmentation(tmp_path / "file", "train", cache_dir=tmp_path)


@pytest.mark.parametrize("part", ["SegmentationObject", "ImageSets/Segmentation/val.txt", ""])
def test_missing_voc_part_is_named(root, part):
    path = root / "TrainVal/VOCdevkit/VOC2011" / part
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    message = rf"(?s){re.escape(str(path))} is missing.*ROOT/TrainVal/VOCdevkit/VOC2011/"
    with pytest.raises(FileNotFoundError, match=message):
        load(root, "test")


def test_corrupt_png_is_named(root):
    path = root / "TrainVal/VOCdevkit/VOC2011/SegmentationClass/2009_000003.png"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=f"cannot decode mask {re.escape(str(path))}"):
        load(root, "test")


def test_corrupt_jpeg_is_named(root):
    path = root / "TrainVal/VOCdevkit/VOC2011/JPEGImages/2009_000001.jpg"
    path.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ValueError, match=f"cannot decode image {re.escape(str(path))}"):
        load(root, "test")


def test_rgb_mask_is_rejected_with_its_path(root):
    path = root / "TrainVal/VOCdevkit/VOC2011/SegmentationObject/2009_000001.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(ValueError, match=f"cannot decode mask {re.escape(str(path))}.*palette"):
        load(root, "test")


def test_out_of_range_class_is_named(root):
    path = root / "TrainVal/VOCdevkit/VOC2011/SegmentationClass/2009_000001.png"
    mask = np.full((40, 48), 30, np.uint8)
    write_palette_png(path, mask)
    message = rf"class map {re.escape(str(path))} holds values \[30\]; allowed are 0..20"
    with pytest.raises(ValueError, match=message):
        load(root, "test")


def test_corrupt_mat_is_named(root):
    path = root / "SBD/inst/2010_000001.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(ValueError, match=f"cannot read GTinst.Segmentation from {re.escape(str(path))}"):
        load(root, "train")


def test_mat_without_the_struct_is_named(root):
    path = root / "SBD/cls/2010_000002.mat"
    savemat(path, {"Something": np.zeros((2, 2))})
    message = f"cannot read GTcls.Segmentation from {re.escape(str(path))}.*KeyError"
    with pytest.raises(ValueError, match=message):
        load(root, "train")


def test_listed_but_missing_file_is_named(root):
    path = root / "SBD/img/2010_000004.jpg"
    path.unlink()
    with pytest.raises(FileNotFoundError, match=f"image {re.escape(str(path))} is listed but missing"):
        load(root, "train")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "trainval"}, r"split must be one of \('train', 'val', 'test'\), got 'trainval'"),
        ({"subsample": 0}, "subsample must be an integer >= 1, got 0"),
        ({"size": 2.5}, "size must be an integer >= 1, got 2.5"),
        ({"val_fraction": 1.0}, r"val_fraction must be a number in \[0, 1\), got 1.0"),
        ({"use_sbd": "yes"}, "use_sbd must be True, False or None"),
        ({"use_sbd": 0}, "use_sbd must be True, False or None"),
    ],
)
def test_bad_arguments_are_named(root, kwargs, message):
    kwargs = {"split": "train", **kwargs}
    with pytest.raises(ValueError, match=message):
        load(root, **kwargs)
