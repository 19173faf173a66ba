"""Figure 6 on a real smoke study: the trials' artifacts carry their sample predictions as arrays, and
the report draws the same test images side by side for each condition."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from analysis import plots, report
from analysis.load import load_study
from study.run import main
from study.spec import parse_spec

pytestmark = pytest.mark.slow


def test_figure6_from_a_real_table3_smoke_study(tmp_path, ray_local):
    argv = ["--smoke", "--preset", "table3", "--output", str(tmp_path / "results")]
    assert main(argv) == 0
    study = load_study(parse_spec(argv).study_dir)
    assert "figure6" in report.available(study)
    assert (study.trials["pretrain_categories"] == 1.0).all()  # recorded by the export: binarized labels
    chosen = plots.figure6_trials(study)
    # table3's smoke grid: the two 50%-unsegmented losses, fold 1, seed 0
    assert list(chosen["condition"]) == ["50%Unseg./SigmoidalNeg.", "50%Unseg./CrossEntropy"]
    arrays = [dict(np.load(path)) for path in chosen["path"]]
    assert all(a["prediction"].shape == a["clean"].shape == a["images"][:, 0].shape for a in arrays)
    np.testing.assert_array_equal(arrays[0]["images"], arrays[1]["images"])  # the same test images

    folder = report.write_report(study).parent
    with Image.open(folder / "figures" / "figure6.png") as image:
        assert image.size == (200 * 4, 200 * len(arrays[0]["images"]))  # 4 columns, one row per image
    fig = plots.figure6(study)
    axes = np.asarray(fig.axes).reshape(-1, 4)
    for col, sample in enumerate(arrays, start=2):
        for row in range(len(axes)):
            np.testing.assert_array_equal(axes[row, col].images[0].get_array(),
                                          plots.label_colours(sample["prediction"][row]))
    assert "Figure 6" in (folder / "report.md").read_text()
