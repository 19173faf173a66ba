"""``study/run.py --print-configs``: every preset prints what its trials receive, starts no Ray, writes
nothing, and refuses bad input exactly as a run does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from search_spaces import PRESETS
from search_spaces.base import Preset
from study.run import main
from study.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
SEARCHED = {"noise_unsegment", "noise_misclassify", "label_transform", "loss", "q", "beta", "gamma", "prior",
            "warmup_epochs", "lr_pretrain"}


def _printed(argv: list[str], capsys) -> str:
    import ray

    was_running = ray.is_initialized()
    output = Path(argv[argv.index("--output") + 1])
    assert main([*argv, "--print-configs"]) == 0
    assert ray.is_initialized() == was_running, "--print-configs started Ray"
    assert not output.exists(), "--print-configs wrote something"
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


def _parse(text: str) -> tuple[list[dict[str, str]], dict[str, str]]:
    """(one dict per table row, the shared key -> value lines) of the printed text."""
    blocks = text.strip().split("\n\n")
    rows = [re.split(r"\s{2,}", line.strip()) for line in blocks[-2].splitlines()]
    shared_lines = blocks[-1].splitlines()
    assert shared_lines[0] == "same for every trial:"
    shared = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in shared_lines[1:])
    header = rows[0]
    assert all(len(row) == len(header) for row in rows), rows
    return [dict(zip(header, row)) for row in rows[1:]], shared


def _shown(value: object) -> str:
    return '""' if value == "" else str(value)


def _received(argv: list[str]) -> list[dict]:
    """The configs Ray Tune creates trials from: the driver's param space, resolved by Ray's own
    variant generator (no Ray instance needed), or a search preset's constant config."""
    from ray.tune.search.variant_generator import generate_variants

    from study.driver import grid_param_space

    spec = parse_spec(argv)
    configs = spec.trial_configs()
    if spec.preset_obj.is_search:
        return configs[:1]
    return [variant["config"] for _, variant in generate_variants({"config": grid_param_space(configs)})]


@pytest.mark.parametrize("smoke", [True, False], ids=["smoke", "full"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_prints_what_its_trials_receive_without_ray(preset, smoke, tmp_path, capsys):
    argv = ["--preset", preset, "--output", str(tmp_path / "out"), *(["--smoke"] if smoke else [])]
    rows, shared = _parse(_printed(argv, capsys))
    received = _received(argv)
    assert len(rows) == len(received)
    for row, config in zip(rows, received):
        assert set(row).isdisjoint(shared) and set(row) | set(shared) <= set(config)
        shown = {**shared, **row}
        # every key is shown once with the value the trial receives, but what Optuna draws per trial
        assert {key: _shown(value) for key, value in config.items() if key in shown} == shown
        assert set(config) - set(shown) == (SEARCHED if PRESETS[preset].is_search else set())
    varying = [key for key in rows[0] if key not in ("condition", "fold", "seed")]
    for key in varying:  # a column is there because its value differs between trials
        assert len({row[key] for row in rows}) > 1, key


def test_the_search_preset_names_the_keys_optuna_draws(tmp_path, capsys):
    text = _printed(["--preset", "search", "--smoke", "--output", str(tmp_path / "out")], capsys)
    assert text.splitlines()[0] == ("search (smoke) on synthetic: 4 trials drawn by Optuna (tpe), each this "
                                    "config with the searched keys drawn per trial")
    assert ("searched per trial: noise_unsegment, noise_misclassify, label_transform, loss, q, beta, gamma, "
            "prior, warmup_epochs, lr_pretrain") in text.splitlines()
    _, shared = _parse(text)
    # drawn, so not shown as shared
    assert "lr_pretrain" not in shared and "loss" not in shared and "label_transform" not in shared
    assert shared["class_weighting"] == "True"


def test_what_learning_rate_table1_runs_is_one_command(tmp_path, capsys):
    voc = tmp_path / "voc"
    voc.mkdir()
    text = _printed(["--preset", "table1", "--output", str(tmp_path / "out")], capsys)
    assert text.splitlines()[0] == "table1 on synthetic: 108 trials (9 conditions x 4 folds x 3 seeds)"
    _, shared = _parse(text)
    assert (shared["lr_pretrain"], shared["epochs_pretrain"], shared["epochs_finetune"]) == ("0.003", "15", "20")
    assert (shared["image_size"], shared["images_per_class"], shared["finetune_train_per_class"]) == ("64", "60", "10")
    _, shared = _parse(_printed(["--preset", "table1", "--data", f"voc:{voc}", "--output", str(tmp_path / "out")],
                                capsys))
    assert (shared["lr_pretrain"], shared["optimizer"], shared["model"]) == ("0.001", "sgd", "fcn_alexnet")
    # VOC: the thesis's 20:1 images seen (search_spaces/base.py), and no cap on fine-tuning images
    assert (shared["epochs_pretrain"], shared["epochs_finetune"], shared["finetune_train_per_class"]) == (
        "100", "15", "0")


def test_imagenet_weights_add_the_imagenet_row(tmp_path, capsys):
    weights = tmp_path / "alexnet.pt"
    weights.write_bytes(b"")
    argv = ["--preset", "table1", "--folds", "2", "--seeds", "1", "--imagenet-weights", str(weights),
            "--output", str(tmp_path / "out")]
    rows, _ = _parse(_printed(argv, capsys))
    imagenet = [row for row in rows if row["condition"] == "ImageNetModel"]
    assert len(rows) == 10 and len(imagenet) == 1
    assert (imagenet[0]["init"], imagenet[0]["model"], imagenet[0]["imagenet_weights"]) == (
        "imagenet", "fcn_alexnet", str(weights))
    assert {row["fold"] for row in rows} == {"2"}


def test_printing_every_preset_never_imports_ray(tmp_path):
    script = (
        "import sys\nfrom study.run import main\nfrom search_spaces import PRESETS\n"
        f"codes = [main(['--preset', p, '--output', {str(tmp_path / 'out')!r}, *s, '--print-configs'])\n"
        "         for p in PRESETS for s in ([], ['--smoke'])]\n"
        "assert codes == [0] * len(codes), codes\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "out").exists()


BROKEN = Preset(name="broken", description="one bad value", trainable="pretrain_finetune",
                conditions={"Only": {}}, base={"lr_pretrain": -1.0}, folds=(1,), seeds=1)


@pytest.mark.parametrize(("argv", "message"), [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--preset", "broken"], "PretrainFinetuneConfig: lr_pretrain must be a float in [1e-07, 10.0], got -1.0"),
    (["--data", "voc"], "needs a local root"),
    (["--folds", "5"], "--folds"),
    (["--seeds", "0"], "--seeds must be a positive integer"),
    (["--preset", "table2", "--data", "voc:/tmp"], "runs on synthetic or cifar"),
])
def test_bad_input_gives_the_same_one_line_error_and_exit_2_as_a_run(argv, message, tmp_path, capsys,
                                                                      monkeypatch):
    import ray

    monkeypatch.setitem(PRESETS, "broken", BROKEN)
    was_running = ray.is_initialized()
    argv = [*argv, "--output", str(tmp_path / "out")]
    errors = []
    for extra in ([], ["--print-configs"]):
        assert main([*argv, *extra]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        errors.append(captured.err.strip())
    assert errors[0] == errors[1], "--print-configs refuses exactly as a run does"
    assert len(errors[0].splitlines()) == 1 and errors[0].startswith("error: ") and message in errors[0]
    assert not (tmp_path / "out").exists() and ray.is_initialized() == was_running
