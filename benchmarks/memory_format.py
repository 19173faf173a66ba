"""Does channels_last make a default-study trial cheaper on the CPU, without changing what it measures?

Runs the default study's trial (``quick``'s config for ``--condition``, seed 0 and 1) through
``trainables.pretrain_finetune.run`` as a study runs it on 2 cores: two trials side by side, one thread
each, in fresh processes. Each round runs both layouts, one after the other (the order alternates
between rounds, so a drift of the machine's load hits both sides alike):

- ``nchw``: the model in PyTorch's default contiguous layout (what CPU trials ran before 2026-12-07);
- ``channels_last``: the model converted with ``model.to(memory_format=torch.channels_last)``, what
  ``trainables.runtime.place_model`` does now on every device.

Either way the augmented training batches arrive NHWC (``trainables.data.loading._flip_crop`` gathers
them so) and a convolution follows its input's layout, so the training passes run NHWC on both sides;
the unaugmented evaluation batches are NCHW and run in the weights' layout.

Prints each round's wall time per side (the slower of its two trials), the median pre-training and
fine-tuning epoch of each side, how far the two sides' reported metrics are apart (float noise, or a
different result?), and last ``ratio channels_last/nchw`` (median wall over the rounds)::

    python benchmarks/memory_format.py [--condition CompleteLabels] [--rounds 3] [--epochs-pretrain N]
        [--epochs-finetune N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line  # noqa: E402

LAYOUTS = ("nchw", "channels_last")
COMPARED = ("objective", "finetune/test_mean_iu", "pretrain/test_mean_iu")


def child(args: argparse.Namespace) -> None:
    """One trial in this process: print its wall time, per-phase epoch times and last metrics as JSON."""
    import torch

    import trainables.runtime as runtime
    from search_spaces import PRESETS
    from trainables import pretrain_finetune
    from trainables.config import PretrainFinetuneConfig

    layout = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    runtime.model_memory_format = lambda device: layout  # place_model reads it here
    torch.set_num_threads(1)
    configs = PRESETS["quick"].trial_configs("synthetic", overrides={"data_cache": args.cache})
    config = next(c for c in configs if c["condition"] == args.condition and c["seed"] == args.seed)
    sizes = {key: getattr(args, key) for key in ("epochs_pretrain", "epochs_finetune") if getattr(args, key)}
    cfg = PretrainFinetuneConfig.from_dict({**config, **sizes})
    epochs: dict[str, list[float]] = {"pretrain": [], "finetune": []}
    last: dict[str, float] = {}
    clock = [time.perf_counter()]

    def report(metrics, state):
        now = time.perf_counter()
        epochs[metrics["phase"]].append(now - clock[0])
        clock[0] = now
        last.update({k: float(v) for k, v in metrics.items() if k in COMPARED})

    start = time.perf_counter()
    pretrain_finetune.run(cfg, report)
    print(json.dumps({"wall": time.perf_counter() - start, "epochs": epochs, "last": last}))


def side(args: argparse.Namespace, layout: str) -> dict:
    """Two trials of ``layout`` side by side (seeds 0 and 1); the side's wall is the slower one's."""
    command = [sys.executable, __file__, "--child", "--layout", layout, "--condition", args.condition,
               "--cache", args.cache]
    command += [f"--{key.replace('_', '-')}={getattr(args, key)}" for key in ("epochs_pretrain", "epochs_finetune")
                if getattr(args, key)]
    runs = [subprocess.Popen([*command, "--seed", str(seed)], stdout=subprocess.PIPE, text=True) for seed in (0, 1)]
    results = []
    for run in runs:
        out, _ = run.communicate()
        if run.returncode != 0:
            raise SystemExit(f"a {layout} trial failed with exit code {run.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {"wall": max(r["wall"] for r in results), "runs": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--condition", default="CompleteLabels", help="a condition of the quick preset")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs-pretrain", type=int, default=0, help="default: the preset's")
    parser.add_argument("--epochs-finetune", type=int, default=0, help="default: the preset's")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--layout", choices=LAYOUTS, default="nchw", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="nt-bench-layout-") as cache:
        args.cache = cache
        # generate the data once, untimed, so every timed trial reads the same cached files
        subprocess.run([sys.executable, __file__, "--child", "--condition", "RandomWeights", "--cache", cache,
                        "--epochs-finetune=1"], check=True, stdout=subprocess.DEVNULL)
        walls: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
        sides: dict[str, list[dict]] = {layout: [] for layout in LAYOUTS}
        for round_ in range(args.rounds):
            order = LAYOUTS if round_ % 2 == 0 else LAYOUTS[::-1]
            for layout in order:
                result = side(args, layout)
                walls[layout].append(result["wall"])
                sides[layout].append(result)
            print(f"round {round_ + 1}: " + ", ".join(f"{layout} {walls[layout][-1]:.1f} s" for layout in LAYOUTS)
                  + f"  ({machine_line()})", flush=True)
    for layout in LAYOUTS:
        runs = [run for result in sides[layout] for run in result["runs"]]
        phases = {phase: statistics.median(t for run in runs for t in run["epochs"][phase][1:] or [float("nan")])
                  for phase in ("pretrain", "finetune")}
        print(f"{layout:>13}: wall median {statistics.median(walls[layout]):.1f} s; epoch medians pre-training "
              f"{phases['pretrain']:.2f} s, fine-tuning {phases['finetune']:.2f} s")
    gaps = {key: max(abs(a["last"][key] - b["last"][key])
                     for x, y in zip(sides["nchw"], sides["channels_last"]) for a, b in zip(x["runs"], y["runs"])
                     if key in a["last"] and key in b["last"])
            for key in COMPARED if any(key in run["last"] for run in sides["nchw"][0]["runs"])}
    print("largest difference of the last reported metrics, channels_last - nchw: "
          + ", ".join(f"{key} {gap:.2e}" for key, gap in gaps.items()))
    ratio = statistics.median(walls["channels_last"]) / statistics.median(walls["nchw"])
    print(f"ratio channels_last/nchw {ratio:.3f} (median wall of {args.rounds} rounds; below 1: channels_last is faster)")


if __name__ == "__main__":
    main()
