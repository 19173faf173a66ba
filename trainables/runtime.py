"""The thin layer between the training code and Ray Tune: reporting, checkpoints, devices, threads.

The training functions take a ``report(metrics, checkpoint_state)`` callable instead of calling Ray, so
they run the same inside a Tune trial, in a test, or in a plain Python loop. A checkpoint state is a
dict of tensors and plain values, saved with ``torch.save`` and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

Reporter = Callable[[dict[str, Any], Optional[dict[str, Any]]], None]
STATE_FILE = "state.pt"


def save_state(state: dict[str, Any], directory: str | os.PathLike) -> Path:
    """Write a checkpoint state into ``directory`` atomically (temp file, then rename)."""
    path = Path(directory) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_state(directory: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint state; a truncated or foreign file is a ValueError naming its path."""
    path = Path(directory) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises several types for corrupt zip/pickle data
        raise ValueError(f"checkpoint file {path} is corrupt or not a noisy-transfer checkpoint: {error}") from error


def tune_reporter(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """Report to Ray Tune, attaching ``state`` as a checkpoint when given."""
    import ray
    from ray import tune

    # which node ran each epoch: a retried trial's reports show where it resumed
    metrics = {**metrics, "node_id": ray.get_runtime_context().get_node_id()}
    if state is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="nt-ckpt-") as directory:
        save_state(state, directory)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def checkpoint_state_from_tune() -> dict[str, Any] | None:
    """The state of the trial's latest checkpoint when Ray restored the trial, else None."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return load_state(directory)


def trial_cpus(default: int = 1) -> int:
    """CPUs Ray reserved for this trial (``default`` outside a Tune trial)."""
    try:
        from ray import tune

        resources = tune.get_context().get_trial_resources()
        return max(1, int(resources.required_resources.get("CPU", default)))
    except Exception:  # outside a Tune session there is no context
        return default


def current_trial_id() -> str | None:
    """The Ray Tune trial id of the calling trial, None outside a trial (never imports Ray itself)."""
    tune = sys.modules.get("ray.tune")
    if tune is None:  # a trial always has Ray Tune imported; a plain run need not pay for the import
        return None
    try:
        return tune.get_context().get_trial_id() or None
    except Exception:  # outside a Tune session there is no context
        return None


def select_device() -> torch.device:
    """CUDA when Ray gave this trial a GPU (or, outside Ray, when one is visible), else CPU.

    A node whose GPUs are logical only (declared in a Ray node type, or a simulated cluster) has no CUDA
    device: a trial Ray gave such a GPU trains on the CPU and says so once per worker process.
    """
    gpu_ids = _ray_gpu_ids()
    if not torch.cuda.is_available():
        if gpu_ids:
            _say_logical_gpus_only(tuple(str(i) for i in gpu_ids))
        return torch.device("cpu")
    if gpu_ids is not None and not gpu_ids:
        return torch.device("cpu")  # a CPU trial on a GPU node leaves the GPUs to GPU trials
    return torch.device("cuda")


def _ray_gpu_ids() -> list | None:
    """The GPU ids Ray gave the calling worker; None outside Ray."""
    try:
        import ray

        return list(ray.get_gpu_ids()) if ray.is_initialized() else None
    except Exception:
        return None


@functools.cache  # once per worker process and GPU assignment
def _say_logical_gpus_only(gpu_ids: tuple[str, ...]) -> None:
    print(f"[noisy-transfer] Ray gave this trial GPU {', '.join(gpu_ids)}, but this node has no CUDA device "
          "(its GPUs are logical only): training on the CPU", file=sys.stderr, flush=True)


# --- the CUDA fast path, decided here once so it can be tested on a machine without a GPU -----------


def autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """bfloat16 autocast on CUDA (tensor cores; float32's range, so no loss scaling), None (float32) elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else None


def model_memory_format(device: str | torch.device) -> torch.memory_format:
    """channels_last on CUDA, where cuDNN's NHWC convolutions are the fast ones under bf16; the default
    contiguous layout elsewhere (oneDNN on CPU gains nothing from it for these small models)."""
    return torch.channels_last if torch.device(device).type == "cuda" else torch.contiguous_format


def place_model(model: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """``model`` on ``device``, in :func:`model_memory_format` for ``device`` (4-D weights only)."""
    model = model.to(torch.device(device))
    layout = model_memory_format(device)
    if layout is not torch.contiguous_format:
        model = model.to(memory_format=layout)
    return model


def stream_seed(seed: int, stream: str) -> int:
    """A seed for one named random stream of a trial (batch order, init), independent of the others."""
    words = [seed, *stream.encode()]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def set_threads(num_threads: int | None) -> None:
    """Match torch's intra-op threads to the trial's CPUs, so concurrent trials don't oversubscribe."""
    torch.set_num_threads(max(1, num_threads or trial_cpus()))
