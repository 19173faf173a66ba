"""The validated command line: where a study keeps what its trials share."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.spec import StudyError, experiment_uri, parse_spec, pretrain_cache_location


@pytest.mark.parametrize(("storage", "expected"), [
    ("/mnt/efs/nt", "/mnt/efs/nt/quick/pretrain_cache"),
    ("/mnt/efs/nt/", "/mnt/efs/nt/quick/pretrain_cache"),
    ("file:///mnt/efs/nt", "/mnt/efs/nt/quick/pretrain_cache"),
    # object storage is no folder: each node caches on its own disk instead of a folder named "s3:"
    ("s3://bucket/nt", "/home/ray/results/.cache/pretrain/quick"),
    ("gs://bucket/nt", "/home/ray/results/.cache/pretrain/quick"),
])
def test_pretrain_cache_is_shared_on_a_filesystem_and_per_node_with_object_storage(storage, expected):
    assert pretrain_cache_location(storage, "quick", Path("/home/ray/results")) == expected


def test_trials_get_the_cache_of_their_storage(tmp_path):
    spec = parse_spec(["--output", str(tmp_path), "--storage", "s3://bucket/nt", "--smoke"])
    caches = {config["pretrain_cache"] for config in spec.trial_configs()}
    assert caches == {str(tmp_path / ".cache" / "pretrain" / "quick-smoke")}
    spec = parse_spec(["--output", str(tmp_path), "--smoke"])
    caches = {config["pretrain_cache"] for config in spec.trial_configs()}
    assert caches == {str(tmp_path / "ray" / "quick-smoke" / "pretrain_cache")}


@pytest.mark.parametrize(("storage", "expected"), [
    ("/mnt/efs/nt/", "/mnt/efs/nt/quick"),
    ("s3://bucket/nt", "s3://bucket/nt/quick"),
    # pyarrow reads S3 options from the query: the study's folder goes into the path, before it
    ("s3://bucket/nt/?endpoint_override=127.0.0.1:9000&scheme=http",
     "s3://bucket/nt/quick?endpoint_override=127.0.0.1:9000&scheme=http"),
])
def test_the_experiment_path_appends_the_study_to_the_storage_path(storage, expected):
    assert experiment_uri(storage, "quick") == expected


def test_credentials_in_the_storage_uri_are_refused_without_echoing_them(tmp_path):
    with pytest.raises(StudyError) as refused:
        parse_spec(["--output", str(tmp_path), "--storage", "s3://AKIDEXAMPLE:wJalrXUtnFEMI@bucket/nt", "--smoke"])
    message = str(refused.value)
    assert "wJalrXUtnFEMI" not in message and "AKIDEXAMPLE" not in message
    assert "s3://bucket/nt" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert not (tmp_path / "quick-smoke").exists()
