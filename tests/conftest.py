"""Shared fixtures: a tiny pretrain-then-finetune config whose synthetic data is generated once per
session, and a local Ray instance for the tests that go through Ray Tune."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from search_spaces.base import smoke_config
from trainables.config import PretrainFinetuneConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
_SESSION_CACHE: dict[str, str | None] = {}  # the folder made for the session, and the variable's value before


def pytest_configure(config: pytest.Config) -> None:
    """``$NOISY_TRANSFER_CACHE``: one cache folder for the session, set before collection so the
    environments that test modules copy for their driver subprocesses hold it too. MLflow's empty store is
    then migrated once for the suite (study.sqlite_store), not once per study, and nothing is cached in the
    home folder."""
    from trainables.data.synthetic import CACHE_ENV

    _SESSION_CACHE.update(folder=tempfile.mkdtemp(prefix="nt-test-cache-"), before=os.environ.get(CACHE_ENV))
    os.environ[CACHE_ENV] = _SESSION_CACHE["folder"]


def pytest_unconfigure(config: pytest.Config) -> None:
    from trainables.data.synthetic import CACHE_ENV

    if _SESSION_CACHE.get("folder"):
        shutil.rmtree(_SESSION_CACHE["folder"], ignore_errors=True)
        if _SESSION_CACHE["before"] is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = _SESSION_CACHE["before"]


# The config of a segmentation preset's --smoke trial (search_spaces.base's smoke size on synthetic data,
# 32x32 images, 3 per class and split): a whole trial takes about a second per epoch on one core.
TINY = smoke_config("pretrain_finetune")


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic-data cache folder for the session, so each tiny split is drawn once."""
    return tmp_path_factory.mktemp("data-cache")


@pytest.fixture(scope="session")
def tiny_cfg(data_cache: Path) -> Callable[..., PretrainFinetuneConfig]:
    """``tiny_cfg(**overrides)``: a valid tiny PretrainFinetuneConfig (``TINY`` plus the session's
    data cache), with ``overrides`` applied."""

    def make(**overrides) -> PretrainFinetuneConfig:
        return PretrainFinetuneConfig(**{**TINY, "data_cache": str(data_cache), **overrides})

    return make


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray with 2 CPUs for the session, shut down even when a test fails.

    Workers get the repository on PYTHONPATH: the package need not be installed for them to import
    ``trainables``.
    """
    import ray

    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    # Up to 3 starts: on a loaded machine Ray's raylet can miss its fixed registration deadline, and this
    # session fixture failing once would fail every test that uses it.
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
            break
        except Exception:  # noqa: BLE001 (Ray raises several types for a failed start)
            ray.shutdown()
            if attempt == 2:
                raise
    try:
        yield
    finally:
        ray.shutdown()
