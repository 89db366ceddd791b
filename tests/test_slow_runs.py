"""Real training runs on MNIST: minutes on a 2-core CPU (``tox -e slow``)."""

import pandas as pd
import pytest
from helpers import cli_env, trilemma_cli


@pytest.mark.slow
def test_vae_trained_on_64k_images_covers_every_class(tmp_path):
    out = tmp_path / "run"
    ran = trilemma_cli("run", "vae", "--preset", "quick", "--images", "64000", "--out", str(out), "--no-progress",
                       env=cli_env(allow="vae"), timeout=900, process=True)
    assert ran.returncode == 0, ran.stderr + ran.stdout
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row["modes_covered"] == 10 and row["fid"] < 100
    assert (out / "report.html").exists() and (out / "plots" / "fid_vs_nfe.png").exists()
