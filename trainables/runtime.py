"""The thin layer between the training code and Ray Tune: reporting, checkpoints, devices, threads.

The training functions take a ``report(metrics, checkpoint_state)`` callable instead of calling Ray, so
they run the same inside a Tune trial, in a test, or in a plain Python loop. A checkpoint state is a
dict of tensors and plain values, saved with ``torch.save`` and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from trainables.engine import Diverged

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


CHECKPOINT_SHARE = 0.05  # checkpoints may take at most this share of a trial's wall time
COPIES = 2  # a checkpoint is written once here and copied once by Ray into the study's storage
FINAL_KEY = "confusion"  # the last report's state carries it (the driver's MLflow artifacts): always saved
# A checkpoint whose write (with Ray's copy) costs less than this is always due: such a write is cheap in
# absolute terms, and "one checkpoint per epoch" then holds whatever the machine's load does to the
# measured cost (a tiny model's 3 ms write can take 50 ms on a loaded core).
ALWAYS_DUE_BELOW_S = 0.1


class CheckpointPacer:
    """Decides which reports carry their checkpoint, so writing them costs at most CHECKPOINT_SHARE of the
    time. Each checkpoint is due once the time since the previous one ended is at least that one's write
    time / CHECKPOINT_SHARE. Small models (ms per write) thus keep one per epoch; an FCN-AlexNet on a GPU
    (~460 MB, seconds per write, sub-second epochs) gets one every few epochs. The first and the final
    (``FINAL_KEY``) state are always written, and so is every state while writes cost less than
    ``ALWAYS_DUE_BELOW_S``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """Forget the previous trial (a reused worker starts a new trial with a checkpoint)."""
        self.last_end: float | None = None
        self.last_cost = 0.0

    def due(self, state: dict[str, Any]) -> bool:
        if self.last_end is None or FINAL_KEY in state or self.last_cost < ALWAYS_DUE_BELOW_S:
            return True
        return self.clock() - self.last_end >= self.last_cost / CHECKPOINT_SHARE

    def written(self, start: float) -> None:
        """Record a checkpoint whose write began at ``start``; Ray then copies the same bytes to the study's
        storage (COPIES in all), and the next checkpoint waits for both to fit the share."""
        self.last_end = self.clock()
        self.last_cost = COPIES * (self.last_end - start)


CHECKPOINT_PACER = CheckpointPacer()  # one per worker process; begin_trial resets it


def tune_reporter(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """Report to Ray Tune, attaching ``state`` as a checkpoint when given and due (:class:`CheckpointPacer`)."""
    import ray
    from ray import tune

    # which node ran each epoch: a retried trial's reports show where it resumed. Only inside a running
    # Ray: asking for the runtime context would otherwise start a Ray in the caller's process.
    if ray.is_initialized():
        metrics = {**metrics, "node_id": ray.get_runtime_context().get_node_id()}
    if state is None or not CHECKPOINT_PACER.due(state):
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="nt-ckpt-") as directory:
        # Only the write is timed: tune.report also waits for the Tune controller to take the result.
        start = CHECKPOINT_PACER.clock()
        save_state(state, directory)
        CHECKPOINT_PACER.written(start)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


REPORTS = "reports"  # the checkpoint key that holds every report of the trial up to that checkpoint


def carrying_reports(report: Reporter, state: dict[str, Any] | None) -> Reporter:
    """``report``, with every checkpoint state it passes on carrying the trial's reports so far (under
    :data:`REPORTS`: those of ``state``, the checkpoint the trial resumes from, then each one made since).

    Why: Ray keeps a trial's reports in a log that the driver writes and syncs to the study's storage on
    its own schedule, while a checkpoint is uploaded by the worker as soon as it is reported. A driver
    killed in between leaves a checkpoint that Ray resumes from and a log without the reports before it
    (seen with ``--storage s3://``); the export fills such a gap from the checkpoint
    (``study.export.fill_from_checkpoint``), so history.parquet still holds every epoch."""
    reports = [dict(entry) for entry in (state or {}).get(REPORTS, [])]

    def reporting(metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
        reports.append(dict(metrics))
        if checkpoint is not None:
            checkpoint = {**checkpoint, REPORTS: [dict(entry) for entry in reports]}
        report(metrics, checkpoint)

    return reporting


# The one report of a trial whose training diverged: DIVERGED = 1, DIVERGED_MESSAGE = the error's text,
# the objective NaN (Ray requires the study's metric in every report; Optuna records a NaN value as FAIL).
DIVERGED = "diverged"
DIVERGED_MESSAGE = "diverged_message"


@contextlib.contextmanager
def ending_on_divergence(report: Reporter, nan_keys: tuple[str, ...] = ("objective",)) -> Iterator[None]:
    """Run a trial's training; a :class:`~trainables.engine.Diverged` ends it with one final report
    ``{key: NaN for nan_keys, DIVERGED: 1, DIVERGED_MESSAGE: message}`` (no checkpoint) instead of raising.
    ``nan_keys``: the metrics Ray requires in every report (the searcher's and the scheduler's).

    Why: Ray Tune retries a trial that raises (``FailureConfig.max_failures``) and ``--resume`` reruns
    errored trials, but a divergence is deterministic, so every rerun would diverge again. A trial that
    returns is TERMINATED: never retried, never resumed. The driver turns it into a failed trial
    (``study.faults.diverged``).
    """
    try:
        yield
    except Diverged as error:
        report({**dict.fromkeys(nan_keys, math.nan), DIVERGED: 1, DIVERGED_MESSAGE: str(error)}, None)


# The one report of a trial whose config its trainable refused: CONFIG_ERROR = 1, CONFIG_ERROR_MESSAGE = why.
CONFIG_ERROR = "config_error"
CONFIG_ERROR_MESSAGE = "config_error_message"


def trial_config(config_cls: type, config: dict[str, Any], report: Reporter,
                 nan_keys: tuple[str, ...] = ("objective",)) -> Any | None:
    """``config_cls.from_dict(config)``, the trial's validated config; a config that validation refuses
    (a ``ValueError``) ends the trial instead: one final report ``{key: NaN for nan_keys, CONFIG_ERROR: 1,
    CONFIG_ERROR_MESSAGE: "invalid trial config: ..."}`` (no checkpoint), and None is returned.

    Why: the driver validates every config before Ray starts, so one that fails here slipped past it (a
    searcher's draw, a worker running other code); rerunning the same config fails the same way, so, as
    a divergence (:func:`ending_on_divergence`), it is a result that Ray never retries and ``--resume``
    never reruns (``study.faults.failure``)."""
    try:
        return config_cls.from_dict(config)
    except ValueError as error:
        report({**dict.fromkeys(nan_keys, math.nan), CONFIG_ERROR: 1,
                CONFIG_ERROR_MESSAGE: f"invalid trial config: {error}"}, None)
        return None


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
    """channels_last on every device. On CUDA cuDNN's NHWC convolutions are the fast ones under bf16. On
    the CPU the augmented training batches are NHWC already (``loading._flip_crop`` gathers them so), and
    a convolution follows its input's layout, so training ran NHWC anyway while the unaugmented evaluation
    batches ran NCHW: with the weights in channels_last every pass runs the one layout, and the
    evaluations of a default-study trial get faster (``benchmarks/memory_format.py``: fine-tuning epochs
    0.56 -> 0.42 s, reported metrics unchanged)."""
    return torch.channels_last


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


# --- a reused worker starts every trial as a fresh process would --------------------------------------


@dataclass(frozen=True)
class ProcessState:
    """The process-wide torch settings a trial may change and a later trial on the same worker would see
    (Ray Tune's ``reuse_actors`` runs trial after trial in one process). Autocast and grad mode are
    thread-local and every trial runs in a new thread, so they need no entry here."""

    rng_state: torch.Tensor  # the default CPU generator (nn.init without a generator, dropout)
    seed: int  # its seed, also the CUDA generators' seed after a restore
    default_dtype: torch.dtype
    deterministic: bool
    float32_matmul_precision: str
    mkldnn: bool
    cudnn_benchmark: bool
    cudnn_deterministic: bool
    cudnn_allow_tf32: bool
    cuda_matmul_allow_tf32: bool

    @classmethod
    def capture(cls) -> "ProcessState":
        """The current settings (the generator state is copied)."""
        return cls(torch.get_rng_state().clone(), torch.initial_seed(), torch.get_default_dtype(),
                   torch.are_deterministic_algorithms_enabled(), torch.get_float32_matmul_precision(),
                   torch.backends.mkldnn.enabled, torch.backends.cudnn.benchmark,
                   torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32,
                   torch.backends.cuda.matmul.allow_tf32)

    def restore(self) -> None:
        """Put every setting back; CUDA generators are reseeded with ``seed`` when CUDA is up."""
        torch.set_rng_state(self.rng_state)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.manual_seed_all(self.seed)
            torch.cuda.empty_cache()  # a previous trial's cached blocks would count against this trial
        torch.set_default_dtype(self.default_dtype)
        torch.use_deterministic_algorithms(self.deterministic)
        torch.set_float32_matmul_precision(self.float32_matmul_precision)
        torch.backends.mkldnn.enabled = self.mkldnn
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.backends.cudnn.allow_tf32 = self.cudnn_allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.cuda_matmul_allow_tf32


# Captured when the worker first imports this module, before any trial ran in it.
FRESH_PROCESS_STATE = ProcessState.capture()


def begin_trial(num_threads: int | None) -> None:
    """Start a trial on a worker that may have run other trials (``reuse_actors``): restore the settings
    of a fresh process (:data:`FRESH_PROCESS_STATE`), then set the trial's threads (:func:`set_threads`),
    so a trial's metrics do not depend on what ran before it in the same process."""
    FRESH_PROCESS_STATE.restore()
    CHECKPOINT_PACER.reset()
    set_threads(num_threads)
