"""Where the time goes (issue 27, item 1): per-row and per-cell stage times, and the report's section."""

import pandas as pd
import pytest

from trilemma.cli import main
from trilemma.report_time import time_section


def test_the_section_counts_a_cells_setup_and_training_once_and_every_rows_draw_and_metrics():
    rows = []
    for seed in (0, 1):
        for sampler in ("a", "b"):
            rows.append({"model": "m", "sampler": sampler, "seed": seed, "seconds_setup": 2.0, "train_seconds": 100.0,
                         "seconds_draw": 10.0, "seconds_metric_fidelity": 3.0, "seconds_metric_speed": 5.0})
    rows.append({"model": "n", "sampler": "a", "seed": 0, "seconds_setup": 1.0, "train_seconds": 50.0,
                 "seconds_draw": 1.0, "seconds_metric_fidelity": 3.0, "seconds_metric_speed": float("nan")})
    section = time_section(pd.DataFrame(rows))
    table = section.table.set_index("model")
    assert table.loc["m", "set-up"] == "4" and table.loc["m", "training"] == "200"  # two cells, not four rows
    assert table.loc["m", "drawing samples"] == "40" and table.loc["m", "metrics"] == "32"
    assert table.loc["m", "total"] == "276" and table.loc["n", "total"] == "55"
    notes = " ".join(section.notes)
    assert "speed 20 s" in notes and notes.index("speed") < notes.index("fidelity 15 s")  # most expensive first
    assert "training 4.2 min (76%)" in notes


def test_a_run_before_these_columns_has_no_section():
    assert time_section(pd.DataFrame([{"model": "m", "sampler": "a", "seed": 0, "train_seconds": 3.0}])) is None


def test_a_run_records_every_stage_and_the_report_shows_them(fake_registries, tmp_path):
    assert main(["run", "tiny", "--preset", "smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    row = pd.read_csv(tmp_path / "results.csv").iloc[0]
    for column in ("seconds_setup", "seconds_draw", "seconds_metric_fidelity", "seconds_metric_fidelity_autoencoder",
                   "seconds_metric_speed", "seconds_metric_coverage"):
        assert row[column] > 0, column
    assert row["seconds_metric_speed"] > row["seconds_draw"] / 100  # timing at several batch sizes costs something
    report = (tmp_path / "report.md").read_text()
    assert "## Where the time goes" in report and "drawing samples" in report


@pytest.mark.parametrize("column", ["seconds_draw", "seconds_metric_x"])
def test_a_metric_cannot_declare_a_time_column(column):
    from trilemma.columns import Column
    from trilemma.metrics import Metric
    from trilemma.plugins import _column_clash

    class Sneaky(Metric):
        name = "sneaky"
        columns = (Column(column),)

    clash = _column_clash(Sneaky(), [])
    assert clash is not None and "belongs to the harness" in clash[1]
