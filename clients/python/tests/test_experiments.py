# SPDX-License-Identifier: MIT
"""The experiments' driver (clients/python/experiments, `make reproduce`)
end to end on a tiny generated data set, a few iterations per method, so
that the reproduction code cannot rot unnoticed; and its helpers."""

import csv
import gzip
import importlib.util
import json
import math
import os
import struct

import pytest
import torch

from conftest import curvd_binary

from experiments import autoencoder, cli, data, runner

ITERATIONS = 3
AE_KEYS = ["sgd_lr0.01_mu0.99", "adam_lr0.001", "kfac_blockdiag", "kfac_tridiag", "hf"]
CNN_KEYS = ["adagrad_diag_lr0.1", "adagrad_full_lr0.1", "adagrad_bma_lr0.1", "mbag_lr0.1",
            "adam_lr0.1", "kfac", "kfac_decay", "kfac_simple"]
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("results"))
    argv = ["--curvd", curvd_binary(), "--out", out, "--data", "generated",
            "--generated-side", "16", "--ae-dims", "256,16,8,4", "--ae-train-size", "200",
            "--ae-eval-size", "50", "--budget", "60", "--ae-iterations", str(ITERATIONS),
            "--sgd-lrs", "0.01", "--sgd-momenta", "0.99", "--adam-lrs", "0.001",
            "--sgd-batch", "40", "--kfac-m1", "50",
            "--hf-batch", "64", "--hf-cg-max", "10", "--iterations", str(ITERATIONS),
            "--lrs", "0.1", "--cnn-batch", "32", "--cnn-eval-size", "64", "--threads", "1",
            "--quiet"] + ([] if HAVE_MATPLOTLIB else ["--no-plots"])
    assert cli.main(argv) == 0
    return out, argv


@pytest.mark.parametrize("experiment,keys,metrics", [
    ("autoencoder", AE_KEYS, ["recon_error", "avg_recon_error", "error", "train_loss"]),
    ("cnn", CNN_KEYS, ["train_loss", "test_accuracy"])])
def test_every_run_writes_a_sane_csv(results, experiment, keys, metrics):
    out, _ = results
    for key in keys:
        rows = read_csv(os.path.join(out, experiment, f"{key}.csv"))
        assert [int(r["iteration"]) for r in rows] == list(range(ITERATIONS + 1)), key
        times = [float(r["time_s"]) for r in rows]
        assert times[0] == 0 and all(b >= a for a, b in zip(times, times[1:])), key
        examples = [int(r["examples"]) for r in rows]
        assert examples[0] == 0 and all(b > a for a, b in zip(examples, examples[1:])), key
        for r in rows:
            for m in metrics:
                assert math.isfinite(float(r[m])), (key, m, r)
        for r in rows[1:]:
            assert math.isfinite(float(r["batch_loss"])), key
        if experiment == "cnn":
            assert all(0 <= float(r["test_accuracy"]) <= 1 for r in rows)
        else:
            assert all(float(r["error"]) == min(float(r["recon_error"]),
                                                float(r["avg_recon_error"])) for r in rows)


def test_second_order_runs_record_their_reports(results):
    out, _ = results
    hf = read_csv(os.path.join(out, "autoencoder", "hf.csv"))
    assert all(1 <= float(r["cg_iterations"]) <= 10 for r in hf[1:])
    kfac = read_csv(os.path.join(out, "autoencoder", "kfac_tridiag.csv"))
    assert all(float(r["lambda"]) > 0 for r in kfac[1:])


def test_curvd_runs_keep_every_step_from_the_history(results):
    out, _ = results
    kfac = read_csv(os.path.join(out, "autoencoder", "kfac_blockdiag_steps.csv"))
    assert [int(r["step"]) for r in kfac] == list(range(1, ITERATIONS + 1))
    assert all(float(r["lambda"]) > 0 and float(r["step_ms"]) >= 0 for r in kfac)
    hf = read_csv(os.path.join(out, "autoencoder", "hf_steps.csv"))
    assert all(int(r["callbacks"]) >= 1 for r in hf)  # its CG asked for products
    cnn_kfac = read_csv(os.path.join(out, "cnn", "kfac_steps.csv"))
    assert len(cnn_kfac) == ITERATIONS
    assert not os.path.exists(os.path.join(out, "autoencoder", "adam_lr0.001_steps.csv"))
    if HAVE_MATPLOTLIB:
        for name in ("autoencoder_damping.png", "cnn_damping.png"):
            assert os.path.getsize(os.path.join(out, name)) > 0


def test_summaries_list_every_run(results):
    out, _ = results
    for experiment, keys in (("autoencoder", AE_KEYS), ("cnn", CNN_KEYS)):
        with open(os.path.join(out, experiment, "summary.json"), encoding="utf-8") as f:
            s = json.load(f)
        assert [t["key"] for t in s["runs"]] == keys
        for t in s["runs"]:
            assert t["status"] == "ok" and t["iterations"] == ITERATIONS, t
            assert t["seconds"] > 0
            if t["key"].startswith("adam"):
                assert t["daemon_seconds"] is None and t["state_bytes"] is None
            else:  # a curvd session: its requests are in the daemon's log
                assert 0 < t["daemon_seconds"] < 60 and t["state_bytes"] > 0, t
        assert set(s["best"].values()) <= set(keys)
    with open(os.path.join(out, "autoencoder", "summary.json"), encoding="utf-8") as f:
        s = json.load(f)
    assert [a["key"] for a in s["anchors"]] == ["kfac_blockdiag", "kfac_tridiag", "hf"]
    assert s["parameters"] == 2 * (256 * 16 + 16 * 8 + 8 * 4) + 16 + 8 + 4 + 8 + 16 + 256


def test_the_readme_reports_command_machine_tables_and_findings(results):
    out, argv = results
    with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert "--ae-dims 256,16,8,4" in text and f"{os.cpu_count()} cores" in text
    assert "Subsampling" in text and "200 training images" in text
    assert "(**subsampled** from the BMA paper's" in text
    for label in ("SGD Nesterov lr=0.01 μ=0.99", "Adam lr=0.001", "K-FAC block-diagonal",
                  "K-FAC block-tridiagonal", "HF", "AdaGrad-diag", "AdaGrad-full",
                  "AdaGrad-BMA", "MBAG", "K-FAC (adaptive)"):
        assert f"| {label} |" in text or f"| **{label}** |" in text, label
    assert "## Findings" in text
    assert "TensorFlow's K-FAC" in text or "did **not** reach" in text
    if HAVE_MATPLOTLIB:
        for png in ("autoencoder.png", "cnn.png", "cnn_grid.png"):
            with open(os.path.join(out, png), "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"
            assert f"]({png})" in text


# ---- helpers and their errors ------------------------------------------

def test_kfac_batch_schedule_follows_the_thesis():
    """m_i = min(m1 exp((i - 1)/b), |S|) with m_500 = |S| (thesis §6.13)."""
    m = autoencoder.kfac_batches(1000, 60000, 500)
    b = 499 / math.log(60)
    assert [m(i) for i in (1, 100, 400)] == [int(1000 * math.exp((i - 1) / b))
                                            for i in (1, 100, 400)]
    assert m(1) == 1000 and m(500) in (59999, 60000) and m(501) == m(5000) == 60000
    assert autoencoder.kfac_batches(1000, 300, 500)(7) == 300


def test_daemon_seconds_sums_the_sessions_requests():
    log = ["curvd: a POST /v1/sessions/abc/steps 202 12.500ms in=1 out=2\n",
           "curvd: b POST /v1/sessions/abc/steps/1/callbacks/1 200 7.5ms in=1 out=2\n",
           "curvd: c POST /v1/sessions/xyz/steps 200 100ms in=1 out=2\n",
           "curvd: d GET /v1/sessions/abc/state 200 50ms in=0 out=9\n",
           "curvd: e DELETE /v1/sessions/abc 204 1ms in=0 out=0\n"]
    assert runner.daemon_seconds(log, "abc") == pytest.approx(0.02)
    assert runner.daemon_seconds(log, None) is None


def write_idx(path, header, body):
    with gzip.open(path, "wb") as f:
        f.write(header + body)


def test_idx_files_are_read_and_bad_ones_refused(tmp_path):
    good = tmp_path / "good.gz"
    write_idx(good, struct.pack(">HBBII", 0, 8, 2, 2, 3), bytes(range(6)))
    assert torch.equal(data._read_idx(str(good)), torch.arange(6, dtype=torch.uint8).reshape(2, 3))
    bad_type = tmp_path / "float.gz"
    write_idx(bad_type, struct.pack(">HBBI", 0, 0x0D, 1, 1), b"\0\0\0\0")
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        data._read_idx(str(bad_type))
    short = tmp_path / "short.gz"
    write_idx(short, struct.pack(">HBBII", 0, 8, 2, 2, 3), bytes(5))
    with pytest.raises(ValueError, match="5 data bytes, the header says 6"):
        data._read_idx(str(short))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        data.fashion_mnist(str(tmp_path))


def test_subsample_is_fixed_and_bounded():
    d = data.generated(n_train=50, n_test=20, side=16)
    a, b = d.subsample(10, 0, seed=3), d.subsample(10, 0, seed=3)
    assert torch.equal(a.train_x, b.train_x) and a.train_x.shape[0] == 10
    assert a.test_x.shape[0] == 20 and d.subsample(99, 5).train_x.shape[0] == 50


def test_the_driver_refuses_bad_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.parse(["--experiments", "autoencoder,mnist"])
    assert "unknown experiment 'mnist'" in capsys.readouterr().err
    assert cli.main(["--curvd", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "no curvd at" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--ae-dims starts with 784 inputs but the images "
                                         "have 256 pixels"):
        cli.main(["--curvd", curvd_binary(), "--out", str(tmp_path), "--data", "generated",
                  "--generated-side", "16", "--experiments", "autoencoder", "--no-plots",
                  "--quiet"])


def test_a_run_that_ends_above_its_start_is_reported_diverged():
    def run(key, family, first, low, at, final, lam):
        return {"key": key, "label": key, "family": family, "status": "ok",
                "iterations": 1500, "seconds": 10.0, "final_train_loss": final,
                "final_test_accuracy": 0.5, "first_train_loss": first,
                "lowest_train_loss": low, "lowest_at": at, "lambda_lowest": lam}
    s = {"runs": [run("adam", "Adam", 2.3, 0.6, 1500, 0.6, None),
                  run("kfac", "K-FAC", 2.32, 0.85, 256, 6.985e5, 1e-8)],
         "best": {"Adam": "adam", "K-FAC": "kfac"}, "settings": {"iterations": 1500}}
    from experiments import report
    rose = [x for x in report._cnn_findings(s) if "diverged" in x]
    assert rose == ["K-FAC diverged: training loss 2.32 at the start, 0.85 at its lowest "
                    "(iteration 256), 6.985e+05 at the end; its damping λ fell as low as "
                    "1e-08, where the step's re-scaling by the exact Fisher is barely damped."]
