"""The CUDA fast path, exercised on a machine without a GPU.

The decisions are tested as they are (bf16 autocast, channels_last, pinned memory and non-blocking
copies, the device a Ray trial uses, fractional GPUs per trial); where a real GPU would be needed,
copies to ``cuda`` are redirected to the CPU and recorded, so the trainable's own CUDA branch runs end
to end and its choices can be checked.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import engine
from trainables import pretrain_finetune as pf
from trainables import runtime
from trainables.data.base import SegmentationData
from trainables.data.loading import SegmentationDataset, copy_flags, make_loader
from trainables.models import small_fcn

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
REPO_ROOT = Path(__file__).resolve().parent.parent


def _is_cuda(value) -> bool:
    return isinstance(value, (str, torch.device)) and torch.device(value).type == "cuda"


class FakeCuda:
    """Redirects every tensor or module move to ``cuda`` onto the CPU and records how it was asked for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.copies: list[dict] = []  # one per tensor moved to cuda: was it pinned, was it non-blocking
        self.pinned = 0
        self.modules_moved = 0
        real_tensor_to, real_module_to = torch.Tensor.to, torch.nn.Module.to
        fake = self

        def pin_memory(self, *args, **kwargs):
            pinned = self.clone()
            pinned._fake_pinned = True  # an attribute, not an id: ids of freed tensors are reused
            fake.pinned += 1
            return pinned

        def tensor_to(self, *args, **kwargs):
            if any(_is_cuda(a) for a in args) or _is_cuda(kwargs.get("device")):
                fake.copies.append({"pinned": getattr(self, "_fake_pinned", False),
                                    "non_blocking": bool(kwargs.get("non_blocking", False))})
                args = tuple(CPU if _is_cuda(a) else a for a in args)
                if _is_cuda(kwargs.get("device")):
                    kwargs["device"] = CPU
            return real_tensor_to(self, *args, **kwargs)

        def module_to(self, *args, **kwargs):
            if any(_is_cuda(a) for a in args) or _is_cuda(kwargs.get("device")):
                fake.modules_moved += 1
                args = tuple(CPU if _is_cuda(a) else a for a in args)
                if _is_cuda(kwargs.get("device")):
                    kwargs["device"] = CPU
            return real_module_to(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
        monkeypatch.setattr(torch.Tensor, "to", tensor_to)
        monkeypatch.setattr(torch.nn.Module, "to", module_to)


def _tiny_segmentation(n: int = 6, size: int = 16, classes: int = 3) -> SegmentationDataset:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, (n, size, size)).astype(np.uint8)
    images = rng.integers(0, 256, (n, 3, size, size)).astype(np.uint8)
    instances = (labels > 0).astype(np.int32)
    return SegmentationDataset(SegmentationData(images, labels, instances, tuple(f"c{i}" for i in range(classes))))


# --- the decisions --------------------------------------------------------------------------------


def test_autocast_is_bfloat16_on_cuda_and_off_on_cpu():
    # The trainables train with runtime.autocast_dtype (engine._autocast is the context it opens).
    assert runtime.autocast_dtype(CUDA) is torch.bfloat16
    assert runtime.autocast_dtype(torch.device("cuda", 1)) is torch.bfloat16
    assert runtime.autocast_dtype(CPU) is None
    assert runtime.autocast_dtype("cuda:0") is torch.bfloat16 and runtime.autocast_dtype("cpu") is None


def test_channels_last_on_every_device():
    assert runtime.model_memory_format(CUDA) is torch.channels_last
    assert runtime.model_memory_format(CPU) is torch.channels_last


def test_augmented_batches_are_nhwc_so_training_and_evaluation_run_in_one_layout():
    """Why the CPU path is channels_last too: the augmentation's gather leaves its batches NHWC in
    memory, a convolution follows its input's layout, and with NCHW weights the unaugmented evaluation
    batches ran in the other layout. With place_model's weights, both kinds of batch give NHWC features."""
    dataset = _tiny_segmentation()
    train_batch = next(iter(make_loader(dataset, 4, shuffle=True, augment=True, seed=3)))[0]
    eval_batch = next(iter(make_loader(dataset, 4, shuffle=False, augment=False, seed=0)))[0]
    assert train_batch.is_contiguous(memory_format=torch.channels_last) and not train_batch.is_contiguous()
    assert eval_batch.is_contiguous()
    model = runtime.place_model(small_fcn(3, width=8), CPU)
    with torch.no_grad():
        for batch in (train_batch, eval_batch):
            features = model.features.enc1(batch)
            assert features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous()


def test_batches_are_pinned_and_copied_without_blocking_only_on_cuda():
    assert copy_flags(CUDA) == (True, True)
    assert copy_flags("cuda:0") == (True, True)
    assert copy_flags(CPU) == (False, False)


@pytest.mark.parametrize("augment", [False, True])
def test_the_loader_stages_every_cuda_batch_in_pinned_memory_and_copies_it_asynchronously(monkeypatch, augment):
    dataset = _tiny_segmentation()
    reference = [(x.clone(), y.clone()) for x, y in make_loader(dataset, 4, shuffle=True, augment=augment, seed=3)]
    fake = FakeCuda(monkeypatch)
    loader = make_loader(dataset, 4, shuffle=True, augment=augment, seed=3, device="cuda")
    batches = list(loader)

    image_and_label_copies = fake.copies if not augment else [c for c in fake.copies if c["pinned"]]
    assert len(image_and_label_copies) == 2 * len(batches), "inputs and labels of every batch go to the GPU"
    assert all(c["pinned"] and c["non_blocking"] for c in image_and_label_copies), fake.copies
    # The batches are the CPU loader's batches: the CUDA branch changes where they live, not what they are.
    assert len(batches) == len(reference)
    for (x, y), (rx, ry) in zip(batches, reference):
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_the_cpu_loader_never_pins_or_copies(monkeypatch):
    fake = FakeCuda(monkeypatch)
    list(make_loader(_tiny_segmentation(), 4, shuffle=True, augment=True, seed=3, device="cpu"))
    assert fake.copies == [] and fake.pinned == 0


def test_place_model_puts_convolutions_in_channels_last_on_cpu_and_cuda(monkeypatch):
    cpu_model = runtime.place_model(small_fcn(3, width=8), CPU)
    conv_weights = [p for p in cpu_model.parameters() if p.dim() == 4]
    assert conv_weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
    assert any(not p.is_contiguous() for p in conv_weights), "channels_last differs from NCHW for k>1 convs"
    assert all(p.is_contiguous() for p in cpu_model.parameters() if p.dim() != 4)  # only 4-D weights change

    fake = FakeCuda(monkeypatch)
    gpu_model = runtime.place_model(small_fcn(3, width=8), CUDA)
    assert fake.modules_moved == 1
    conv_weights = [p for p in gpu_model.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
    assert any(not p.is_contiguous() for p in conv_weights), "channels_last differs from NCHW for k>1 convs"


def test_channels_last_does_not_change_what_the_model_computes():
    model = small_fcn(3, width=8, generator=torch.Generator().manual_seed(0)).eval()
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(inputs)
        model = model.to(memory_format=torch.channels_last)
        got = model(inputs.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_bfloat16_autocast_runs_the_model_in_bf16_and_the_loss_in_float32():
    """The engine's autocast is device-generic: on CPU it runs the same code the CUDA path runs."""
    dataset = _tiny_segmentation()
    model = small_fcn(3, width=8, generator=torch.Generator().manual_seed(0))
    seen: dict[str, list] = {"model": [], "loss": []}
    model.register_forward_hook(lambda module, inputs, output: seen["model"].append(output.dtype))
    ce = torch.nn.CrossEntropyLoss(ignore_index=255)

    def loss_fn(logits, labels):
        seen["loss"].append(logits.dtype)
        return ce(logits, labels)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    stats = engine.train_one_epoch(model, make_loader(dataset, 3, shuffle=False, augment=False, seed=0), loss_fn,
                                   optimizer, device="cpu", autocast_dtype=torch.bfloat16)
    assert seen["model"] == [torch.bfloat16] * 2, "the forward pass ran under bf16 autocast"
    assert seen["loss"] == [torch.float32] * 2, "the loss sees float32 logits"
    assert math.isfinite(stats["train_loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters()), "master weights stay float32"
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "the step trained"


# --- which device a trial uses -------------------------------------------------------------------


class FakeRay:
    def __init__(self, initialized: bool, gpu_ids: list) -> None:
        self._initialized, self._gpu_ids = initialized, gpu_ids

    def is_initialized(self) -> bool:
        return self._initialized

    def get_gpu_ids(self) -> list:
        return self._gpu_ids


@pytest.mark.parametrize(("cuda", "ray", "expected"), [
    (False, FakeRay(True, [0]), "cpu"),      # no CUDA runtime: CPU whatever Ray says
    (True, FakeRay(True, []), "cpu"),        # a CPU trial on a GPU node must leave the GPUs to GPU trials
    (True, FakeRay(True, [0]), "cuda"),      # Ray gave this trial (a share of) a GPU
    (True, FakeRay(True, ["1"]), "cuda"),    # Ray sets CUDA_VISIBLE_DEVICES: the trial's GPU is cuda:0
    (True, FakeRay(False, []), "cuda"),      # outside Ray: a visible GPU is used
])
def test_select_device_honours_the_gpus_ray_gave_the_trial(monkeypatch, cuda, ray, expected):
    import ray as real_ray

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(real_ray, "is_initialized", ray.is_initialized)
    monkeypatch.setattr(real_ray, "get_gpu_ids", ray.get_gpu_ids)
    assert runtime.select_device() == torch.device(expected)


def test_threads_follow_the_trials_cpus(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(runtime, "trial_cpus", lambda default=1: 3)
        runtime.set_threads(0)  # 0: the trial's CPUs
        assert torch.get_num_threads() == 3
        runtime.set_threads(2)  # an explicit num_threads wins
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --- the trainable's CUDA branch, end to end on the CPU -------------------------------------------


def test_a_trial_on_cuda_uses_bf16_channels_last_and_pinned_non_blocking_batches(monkeypatch, tiny_cfg):
    cfg = tiny_cfg(epochs_pretrain=2, epochs_finetune=2)
    epochs: list[dict] = []
    real_train = pf.train_one_epoch

    def recording(model, loader, loss_fn, optimizer, *, device, autocast_dtype=None):
        convs = [p for p in model.parameters() if p.dim() == 4]
        epochs.append({"device": torch.device(device), "autocast": autocast_dtype, "loader": loader.device,
                       "channels_last": all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)})
        # autocast(device_type="cuda") needs a GPU; the bf16 numerics are tested on CPU above.
        return real_train(model, loader, loss_fn, optimizer, device="cpu", autocast_dtype=None)

    monkeypatch.setattr(pf, "train_one_epoch", recording)
    fake = FakeCuda(monkeypatch)
    reports: list[dict] = []
    last = pf.run(cfg, lambda metrics, state: reports.append(metrics), device="cuda")

    assert len(epochs) == 4
    assert all(e == {"device": CUDA, "autocast": torch.bfloat16, "loader": CUDA, "channels_last": True}
               for e in epochs), epochs
    assert fake.modules_moved >= 2, "both phases' models were moved to the GPU"
    batch_copies = [c for c in fake.copies if c["pinned"]]
    assert batch_copies and all(c["non_blocking"] for c in batch_copies)
    assert len(reports) == 4 and math.isfinite(last["objective"])


def test_the_cpu_branch_stays_float32_in_channels_last(monkeypatch, tiny_cfg):
    seen: list[tuple] = []
    real_train = pf.train_one_epoch

    def recording(model, loader, loss_fn, optimizer, *, device, autocast_dtype=None):
        convs = [p for p in model.parameters() if p.dim() == 4]
        seen.append((autocast_dtype, all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)))
        return real_train(model, loader, loss_fn, optimizer, device=device, autocast_dtype=autocast_dtype)

    monkeypatch.setattr(pf, "train_one_epoch", recording)
    pf.run(tiny_cfg(), lambda metrics, state: None, device="cpu")
    assert seen == [(None, True), (None, True)]


# --- fractional GPUs per trial ------------------------------------------------------------------


def test_fractional_gpus_per_trial_are_accepted(tmp_path):
    from study.spec import parse_spec

    spec = parse_spec(["--smoke", "--output", str(tmp_path), "--gpus-per-trial", "0.25"])
    assert spec.gpus_per_trial == 0.25


@pytest.mark.slow
def test_fractional_gpus_reach_ray_so_several_trials_share_one_gpu(tmp_path):
    """A study with --gpus-per-trial 0.5 on a Ray that has one (logical) GPU: every trial asks Ray for half
    a GPU, and the trials still run (select_device finds no CUDA runtime here and trains on the CPU)."""
    output = tmp_path / "results"
    script = textwrap.dedent(f"""
        import sys, ray
        # A logical GPU: Ray schedules it and sets CUDA_VISIBLE_DEVICES, no GPU is needed.
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
        from study.run import main
        code = main(["--smoke", "--preset", "quick", "--output", {str(output)!r}, "--name", "gpu",
                     "--gpus-per-trial", "0.5", "--cpus-per-trial", "1"])
        from ray.tune import ExperimentAnalysis
        trials = ExperimentAnalysis({str(output / "ray" / "gpu")!r}).trials
        print("RESOURCES", __import__("json").dumps([t.placement_group_factory.required_resources for t in trials]))
        ray.shutdown()
        sys.exit(code)
    """)
    env = {**os.environ, "RAY_ADDRESS": "local",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESOURCES "))
    resources = json.loads(line.removeprefix("RESOURCES "))
    assert len(resources) == 2 and all(r == {"CPU": 1.0, "GPU": 0.5} for r in resources), resources
    import pandas as pd

    trials = pd.read_parquet(output / "gpu" / "trials.parquet")
    assert (trials["status"] == "TERMINATED").all(), trials[["trial_id", "status", "error"]]
