"""``python study/run.py --print-configs``: what every trial of a study receives, without starting Ray.

The configs shown are the ones the driver hands Ray Tune (:meth:`study.spec.StudySpec.trial_configs`,
resolved by the preset to a concrete value for every field): one row per trial with the keys that differ
between trials first, then the keys every trial shares, once. A search preset shows its constant config
and the keys Optuna draws per trial.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from study.spec import StudySpec

IDENTITY = ("condition", "fold", "seed")  # always columns: they name the trial


def format_value(value: Any) -> str:
    """A config value as the table prints it: ``str(value)``, and ``""`` for the empty string."""
    return '""' if value == "" else str(value)


def split_keys(configs: Sequence[Mapping[str, Any]], hidden: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(keys that name a trial or differ between trials, keys every trial shares), in config order,
    without the ``hidden`` ones."""
    keys = [key for key in configs[0] if key not in hidden]
    differ = [k for k in keys if k in IDENTITY or len({format_value(c[k]) for c in configs}) > 1]
    return differ, [k for k in keys if k not in differ]


def table(configs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    """``keys`` as aligned columns (two spaces apart at least): a header line, then one line per config."""
    rows = [list(keys)] + [[format_value(c[k]) for k in keys] for c in configs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(keys))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def shared(config: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """``key  value`` lines, keys aligned, for the keys every trial shares."""
    width = max((len(key) for key in keys), default=0)
    return [f"  {key.ljust(width)}  {format_value(config[key])}" for key in keys]


def trial_configs_text(spec: StudySpec) -> str:
    """The study's trial configs as text: a summary line, the per-trial table, the shared values."""
    from search_spaces import validate_search

    preset = spec.preset_obj
    configs = spec.trial_configs()
    title = f"{preset.name}{' (smoke)' if spec.smoke else ''} on {spec.data}"
    if preset.is_search:
        # The driver gives the searcher the first constant config; Optuna sets the searched keys.
        drawn = validate_search(preset, configs[0])
        searched = [key for key in configs[0] if key in drawn]  # in config order, as the table is
        differ, same = split_keys(configs[:1], hidden=searched)
        summary = (f"{title}: {spec.search_samples} trials drawn by Optuna ({spec.sampler}), each this config "
                   "with the searched keys drawn per trial")
        lines = [summary, "", f"searched per trial: {', '.join(searched)}", "", *table(configs[:1], differ)]
    else:
        differ, same = split_keys(configs)
        counts = {key: len({format_value(c[key]) for c in configs}) for key in IDENTITY if key in configs[0]}
        grid = " x ".join(f"{n} {key}{'s' if n > 1 else ''}" for key, n in counts.items())
        lines = [f"{title}: {len(configs)} trials ({grid})", "", *table(configs, differ)]
    return "\n".join([*lines, "", "same for every trial:", *shared(configs[0], same)])
