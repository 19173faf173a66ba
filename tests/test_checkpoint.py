"""The checkpoint schema: the dict saved is the dict loaded, and a malformed one is refused by name."""

from __future__ import annotations

import re

import pytest
import torch

from trainables.checkpoint import REQUIRED, Checkpoint, training_state
from trainables.runtime import load_state, save_state


def _model_and_optimizer():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()  # momentum buffers in the optimizer's state
    return model, optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)


def test_to_dict_holds_exactly_the_fields_that_are_set_and_round_trips_through_a_file(tmp_path):
    model, optimizer, scheduler = _model_and_optimizer()
    checkpoint = Checkpoint({"seed": 1}, "finetune", 2, cache_hit=True, evals=[{"finetune/test_mean_iu": 0.5}],
                            pretrain_samples={}, **training_state(model, optimizer, scheduler))
    state = checkpoint.to_dict()
    assert set(state) == {"config", "phase", "epoch", "model", "optimizer", "scheduler", "rng", "cache_hit",
                          "evals", "pretrain_samples"}
    loaded = Checkpoint.from_dict(load_state(save_state(state, tmp_path).parent))
    assert loaded.to_dict().keys() == state.keys()
    assert (loaded.config, loaded.phase, loaded.epoch, loaded.cache_hit, loaded.evals, loaded.pretrain_samples) == (
        {"seed": 1}, "finetune", 2, True, [{"finetune/test_mean_iu": 0.5}], {})
    assert all(torch.equal(loaded.model[k], v) for k, v in state["model"].items())
    assert torch.equal(loaded.rng, state["rng"])
    assert loaded.kind == "finetune" and loaded.features is None and loaded.confusion is None


def test_restore_loads_model_optimizer_schedule_and_rng():
    model, optimizer, scheduler = _model_and_optimizer()
    torch.manual_seed(7)
    saved = Checkpoint({}, "finetune", 1, **training_state(model, optimizer, scheduler, snapshot=True))
    expected_draw = torch.rand(3)
    model2, optimizer2, scheduler2 = _model_and_optimizer()
    with torch.no_grad():
        model2.weight.add_(1.0)
    saved.restore(model2, optimizer2, scheduler2)
    assert torch.equal(model2.weight, model.weight)
    assert torch.equal(optimizer2.state_dict()["state"][0]["momentum_buffer"],
                       optimizer.state_dict()["state"][0]["momentum_buffer"])
    assert scheduler2.state_dict() == scheduler.state_dict()
    assert torch.equal(torch.rand(3), expected_draw)  # torch's generator continues the saved stream


def test_snapshot_copies_while_live_state_follows_the_model():
    model, optimizer, _ = _model_and_optimizer()
    live = training_state(model, optimizer)
    snapshot = training_state(model, optimizer, snapshot=True)
    assert live["scheduler"] is None
    with torch.no_grad():
        model.weight.add_(1.0)
    assert torch.equal(live["model"]["weight"], model.weight)
    assert not torch.equal(snapshot["model"]["weight"], model.weight)


@pytest.mark.parametrize(("state", "message"), [
    ({"config": {}, "phase": "finetune", "epoch": 1, "modle": {}}, r"unknown keys \['modle'\]"),
    ({"phase": "train", "epoch": 1}, r"not a noisy-transfer checkpoint"),
    ({"config": {}, "phase": "warmup", "epoch": 1}, r"checkpoint phase must be one of .* got 'warmup'"),
    ({"config": {}, "phase": "train", "epoch": 1, "model": {}, "optimizer": {}},
     r"'train' checkpoint lacks \['rng', 'history'\]"),
    ({"config": {}, "phase": "pretrain", "epoch": 2, "features": {}, "history": []},
     r"'pretrain finished' checkpoint lacks \['samples', 'cache_hit'\]"),
])
def test_from_dict_refuses_a_malformed_state_naming_the_keys(state, message):
    with pytest.raises(ValueError, match=message):
        Checkpoint.from_dict(state)


def test_every_kind_requires_the_config_phase_and_epoch_fields_only_through_the_schema():
    # Each kind's required keys are fields of the schema: a state with them (and nothing else) loads.
    fields = set(Checkpoint.__dataclass_fields__)
    for kind, keys in REQUIRED.items():
        assert set(keys) <= fields, kind
        phase = kind.split()[0]
        state = {"config": {}, "phase": phase, "epoch": 1, **{key: 0 for key in keys}}
        if kind == "pretrain finished":
            state["features"] = {}
        assert Checkpoint.from_dict(state).kind == kind


def test_a_truncated_checkpoint_file_is_an_error_naming_it(tmp_path):
    path = save_state(Checkpoint({}, "train", 1, model={}, optimizer={}, rng=torch.get_rng_state(),
                                 history=[]).to_dict(), tmp_path)
    path.write_bytes(path.read_bytes()[:64])
    with pytest.raises(ValueError, match=re.escape(f"checkpoint file {path} is corrupt")):
        load_state(tmp_path)
