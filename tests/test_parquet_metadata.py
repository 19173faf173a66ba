"""trials.parquet's timing and node columns, and the metadata every exported parquet file carries."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pyarrow.parquet as pq

from study.export import SCHEMA_VERSION, TRIAL_COLUMNS, trial_frames, write_parquet


def _trial(trial_id: str, last: dict) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status="TERMINATED", config={"condition": "C", "seed": 0},
                           last_result=last, error_file=None, get_error=lambda: None)


def test_start_end_wall_and_node_come_from_the_last_report_and_survive_the_parquet_round_trip(tmp_path):
    ran = _trial("a", {"timestamp": 1_700_000_100.0, "time_total_s": 40.0, "node_ip": "10.0.0.5",
                       "objective": 0.5})
    never = _trial("b", {})  # a trial that never reported (PENDING at an interrupt)
    trials, _ = trial_frames([ran, never], {}, study="s", preset="quick", run_ids={}, config_keys=["condition"])
    assert set(TRIAL_COLUMNS) <= set(trials.columns)
    path = write_parquet(trials, tmp_path / "trials.parquet",
                         {"schema_version": SCHEMA_VERSION, "preset": "quick", "git_commit": "abc123"})
    back = pd.read_parquet(path).set_index("trial_id")
    assert back.loc["a", "start_time"] == pd.Timestamp(1_700_000_060, unit="s", tz="UTC")
    assert back.loc["a", "end_time"] == pd.Timestamp(1_700_000_100, unit="s", tz="UTC")
    assert back.loc["a", "end_time"] - back.loc["a", "start_time"] == pd.Timedelta(seconds=back.loc["a", "wall_s"])
    assert back.loc["a", "node"] == "10.0.0.5"
    assert pd.isna(back.loc["b", "start_time"]) and pd.isna(back.loc["b", "wall_s"]) and back.loc["b", "node"] == ""
    metadata = pq.read_schema(path).metadata
    assert metadata[b"noisy_transfer.schema_version"] == SCHEMA_VERSION.encode()
    assert metadata[b"noisy_transfer.preset"] == b"quick" and metadata[b"noisy_transfer.git_commit"] == b"abc123"
    assert b"pandas" in metadata, "pandas' own metadata is kept, so dtypes read back as written"
