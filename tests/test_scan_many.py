"""`smoothinv scan-many` (issue 18): a population of tiny models through the local process pool and
through Ray, resumption after a killed driver, error rows for bad models, the output folder's
guards, the trojan probability and the TrojAI-style entry point."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PLANTED_TARGET, error_line, run_cli
from smoothinv.errors import SmoothInvError
from smoothinv.population import Parallelism, TrojanCalibration, read_population, usable_cores
from smoothinv.population.calibration import CALIBRATION_FILE, fit_logistic, leave_one_out
from smoothinv.population.ray_backend import ray_available
from smoothinv.population.spec import SpecDefaults

FAST = ["--steps", "4", "--noise-samples", "1", "--eps", "1,2", "--sigma", "0.5", "--classes", f"1,2,{PLANTED_TARGET}",
        "--fallback-sigma", "none", "--clean-limit", "60"]
"""A scan of three classes in a fraction of a second: the machinery is under test, not the scan."""
VOLATILE = {"seconds", "finished_unix", "threads"}
"""Row fields that may differ between two runs of the same population."""


@pytest.fixture(scope="module")
def population(planted, planted_clean_twin, tmp_path_factory):
    """A folder with three tiny models (two formats), a clean set, an image, a CSV listing them with
    per-model options, and a corrupt fourth model file beside them (not in the CSV)."""
    from smoothinv.data import save_image
    from smoothinv.models import save_model

    root = tmp_path_factory.mktemp("population")
    models = root / "models"
    models.mkdir()
    model, _, x, y = planted
    twin = planted_clean_twin[0]
    for name, net in (("backdoored", model), ("clean", twin)):
        save_model(models / f"{name}.safetensors", net, arch="small_cnn", num_classes=10, input_size=(20, 20), channels=1)
    torch.save(model.state_dict(), models / "state.pt")  # a state_dict: needs the arch from the listing
    np.savez(root / "clean.npz", x=np.round(x[:100].permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8),
             y=y[:100].numpy())
    save_image(x[y == 4][0], root / "img.png")
    with open(root / "models.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "name", "arch", "clean", "images", "backdoored", "target"])
        writer.writerow(["models/backdoored.safetensors", "", "", "clean.npz", "img.png", "true", PLANTED_TARGET])
        writer.writerow(["models/clean.safetensors", "", "", "clean.npz", "", "false", ""])
        writer.writerow(["models/state.pt", "from-state", "small_cnn", "clean.npz", "img.png", "true", PLANTED_TARGET])
    (root / "broken").mkdir()
    for name in ("backdoored.safetensors", "clean.safetensors"):
        (root / "broken" / name).write_bytes((models / name).read_bytes())
    (root / "broken" / "corrupt.safetensors").write_bytes(b"\x00" * 40 + b"not a model at all")
    return root


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def stable_rows(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in summary(out)["rows"]]


def scan_many(monkeypatch, capsys, spec: Path, out: Path, *args: object) -> tuple[int, str, str]:
    return run_cli(monkeypatch, capsys, "scan-many", spec, "--out", out, *FAST, *args)


@pytest.fixture(scope="module")
def local_run(population, tmp_path_factory):
    """The CSV population through the local process pool, 2 workers x 1 thread: (out, stdout, stderr)."""
    out = tmp_path_factory.mktemp("local") / "scan"
    with pytest.MonkeyPatch.context() as mp:
        code, stdout, stderr = _cli(mp, "scan-many", population / "models.csv", "--out", out, *FAST, "--backend",
                                    "local", "--workers", "2", "--threads", "1")
    assert code == 0, stderr
    return out, stdout, stderr


def _cli(mp: pytest.MonkeyPatch, *args: object) -> tuple[int, str, str]:
    """`smoothinv ARGS` in-process for module fixtures (conftest.run_cli needs function-scoped fixtures)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from smoothinv.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    mp.setattr(sys, "argv", ["smoothinv", *(str(a) for a in args)])
    mp.delenv("SMOOTHINV_DEBUG", raising=False)
    mp.setenv("COLUMNS", "200")
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = 0 if e.code is None else int(e.code)
    return code, out.getvalue(), err.getvalue()


# --------------------------------------------------------------------------- the population, end to end


def test_local_pool_scans_every_model_and_writes_the_summary(local_run):
    out, stdout, stderr = local_run
    assert "on local: 2 workers x 1 thread" in stderr
    document = summary(out)
    rows = {r["model"]: r for r in document["rows"]}
    assert list(rows) == ["backdoored", "clean", "from-state"]  # listing order
    for name, r in rows.items():
        assert r["status"] == "done" and r["error"] is None and r["verdict"] in ("backdoored", "clean")
        assert 0.0 <= r["trojan_probability"] <= 1.0 and r["threads"] == 1
        assert r["trojan_probability"] == TrojanCalibration.shipped().probability(r["score"])
        assert (out / "models" / name / "report.html").is_file() and (out / "models" / name / "scan.json").is_file()
    assert rows["backdoored"]["truth"] == f"target {PLANTED_TARGET}" and rows["clean"]["truth"] == "clean"
    # the same weights, read from a safetensors file and from a state_dict with the listing's arch
    assert rows["from-state"]["score"] == rows["backdoored"]["score"]
    assert document["counts"] == {"models": 3, "done": 3, "errors": 0,
                                  "backdoored": sum(r["verdict"] == "backdoored" for r in rows.values()),
                                  "clean": sum(r["verdict"] == "clean" for r in rows.values())}
    assert document["metrics"]["models"] == 3 and document["run"]["workers"] == 2
    with open(out / "summary.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["model", "verdict", "targets", "score", "trojan_probability", "seconds", "error"]
    assert [row[0] for row in table[1:]] == ["backdoored", "clean", "from-state"]
    index = (out / "index.html").read_text()
    assert all(f'href="models/{name}/report.html"' in index for name in rows) and "sortBy" in index
    assert "http" not in index  # no network
    assert "3 models:" in stdout


def test_a_rerun_skips_what_is_done_and_redoes_a_model_whose_file_changed(local_run, population, tmp_path,
                                                                          monkeypatch, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(local_run[0], out)
    before = stable_rows(out)
    code, _, err = scan_many(monkeypatch, capsys, population / "models.csv", out, "--backend", "inline")
    assert code == 0, err
    assert "3 done earlier with the same settings (skipped); 0 to run" in err
    assert stable_rows(out) == before
    code, _, err = scan_many(monkeypatch, capsys, population / "models.csv", out, "--backend", "inline",
                             "--steps", "5")
    assert code == 0 and "3 to run" in err, err  # other settings: every model again
    cores = usable_cores()
    assert f"on inline: 1 worker x {cores} thread{'s' if cores > 1 else ''}" in err  # one at a time, every core


@pytest.mark.slow  # 16 s; .ci/run runs the slow tests too
@pytest.mark.skipif(not ray_available(), reason='Ray is not installed (pip install "smoothinv[ray]"; .ci/run installs it)')
def test_ray_scans_the_population_as_the_local_pool_does(local_run, population, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ray"
    code, _, err = scan_many(monkeypatch, capsys, population / "models.csv", out, "--backend", "ray", "--workers", "2",
                             "--threads", "1")
    assert code == 0, err
    assert "on ray: 2 workers x 1 thread" in err
    local = {r["model"]: r for r in stable_rows(local_run[0])}
    for r in stable_rows(out):
        assert {k: v for k, v in r.items() if k != "key"} == {k: v for k, v in local[r["model"]].items() if k != "key"}
    assert summary(out)["run"]["backend"] == "ray"


def test_without_ray_the_ray_backend_is_a_one_line_error(population, tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    code, _, err = scan_many(monkeypatch, capsys, population / "models.csv", tmp_path / "out", "--backend", "ray")
    assert code == 2 and "Ray is not installed" in error_line(err, alone=False) and "--backend local" in err


# --------------------------------------------------------------------------- crashes, errors, time limits


def test_a_killed_driver_loses_only_the_models_in_flight_and_the_rerun_gives_the_same_summary(
        local_run, population, tmp_path, monkeypatch, capsys):
    """kill -9 of the driver once the first model is stored; the rerun does the rest, and the summary
    equals the uninterrupted run's (times aside)."""
    out = tmp_path / "killed"
    args = ["scan-many", str(population / "models.csv"), "--out", str(out), *FAST, "--backend", "local",
            "--workers", "1", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "smoothinv", *args], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    first = out / "models" / "backdoored" / "row.json"
    deadline = time.monotonic() + 120
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    done = [p.parent.name for p in (out / "models").glob("*/row.json")]
    assert "backdoored" in done and len(done) < 3, done
    time.sleep(1.5)  # an orphaned worker notices its driver is gone within a second and exits
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert f"{len(done)} done earlier with the same settings (skipped); {3 - len(done)} to run" in err
    assert stable_rows(out) == stable_rows(local_run[0])
    assert not list((out / "models").glob(".*partial*"))


def test_a_corrupt_model_gets_an_error_row_and_the_others_finish(population, tmp_path, monkeypatch, capsys):
    out = tmp_path / "broken"
    spec = population / "broken"
    code, stdout, err = scan_many(monkeypatch, capsys, spec, out, "--clean", population / "clean.npz", "--backend",
                                  "local")
    assert code == 0, err
    rows = {r["model"]: r for r in summary(out)["rows"]}
    assert sorted(rows) == ["backdoored", "clean", "corrupt"]
    bad = rows["corrupt"]
    assert bad["status"] == "error" and bad["verdict"] == "error" and bad["score"] is None
    assert bad["trojan_probability"] is None and "\n" not in bad["error"] and bad["error"]
    assert "Traceback" not in err and "corrupt: error:" in err
    assert all(rows[n]["status"] == "done" for n in ("backdoored", "clean"))
    assert not (out / "models" / "corrupt" / "report.html").exists()
    assert "1 error" in stdout and (spec / "corrupt.safetensors").is_file()  # the input is never touched
    # a rerun keeps the error; --retry-failed tries it again
    code, _, err = scan_many(monkeypatch, capsys, spec, out, "--clean", population / "clean.npz", "--backend", "inline")
    assert code == 0 and "1 failed earlier (kept; --retry-failed tries them again)" in err, err
    code, _, err = scan_many(monkeypatch, capsys, spec, out, "--clean", population / "clean.npz", "--backend", "inline",
                             "--retry-failed")
    assert code == 0 and "; 1 to run" in err, err


class _LoopsOnLargeBatches(torch.nn.Module):
    """Answers the 2-image probe, then never returns (a loop inside one native call)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 2:
            i = 0
            while i >= 0:
                i = (i + 1) % 1000
        return x.flatten(1)[:, :10] * 1.0


def test_a_model_that_hangs_is_stopped_at_its_time_limit_and_the_others_finish(population, tmp_path, monkeypatch,
                                                                                capsys):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_LoopsOnLargeBatches().eval()).save(str(tmp_path / "loops.pt"))
    spec = tmp_path / "models.csv"
    spec.write_text(f"model,input_size,channels\n{tmp_path / 'loops.pt'},20,1\n"
                    f"{population / 'models' / 'clean.safetensors'},,\n")
    started = time.monotonic()
    code, _, err = scan_many(monkeypatch, capsys, spec, tmp_path / "out", "--clean", population / "clean.npz",
                             "--backend", "local", "--workers", "2", "--model-timeout", "4", "--trust-code")
    assert code == 0, err
    rows = {r["model"]: r for r in summary(tmp_path / "out")["rows"]}
    assert rows["loops"]["status"] == "error" and "did not finish within 4 s (--model-timeout)" in rows["loops"]["error"]
    assert rows["clean"]["status"] == "done" and time.monotonic() - started < 60


def test_nan_outputs_give_an_error_row(population, tmp_path, monkeypatch, capsys):
    from smoothinv.models import create_model, save_model

    spec = tmp_path / "nan"
    spec.mkdir()
    model = create_model("small_cnn", 10, channels=1).eval()
    with torch.no_grad():
        list(model.parameters())[-1].fill_(float("nan"))
    save_model(spec / "nan.safetensors", model, arch="small_cnn", num_classes=10, input_size=(20, 20), channels=1)
    code, _, err = scan_many(monkeypatch, capsys, spec, tmp_path / "out", "--clean", population / "clean.npz",
                             "--backend", "inline")
    assert code == 0, err
    row = summary(tmp_path / "out")["rows"][0]
    assert row["status"] == "error" and "NaN" in row["error"], row["error"]


# --------------------------------------------------------------------------- the output folder and the listing


def test_the_output_folder_is_guarded(population, tmp_path, monkeypatch, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = scan_many(monkeypatch, capsys, population / "models.csv", mine, "--backend", "inline")
    assert code == 2 and "not the output of an earlier population scan" in error_line(err, alone=False)
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    code, _, err = scan_many(monkeypatch, capsys, population / "broken", population / "broken" / "out", "--clean",
                             population / "clean.npz", "--backend", "inline")
    assert code == 2 and "input" in error_line(err, alone=False)


@pytest.mark.parametrize("text, message", [
    ("model,colour\nm.pt,red\n", "unknown column(s) 'colour'"),
    ("name\nx\n", "the column 'model' (the model file) is required"),
    ("model,name,clean\na.pt,same,c.npz\nb.pt,same,c.npz\n", "appear more than once"),
    ("model,num_classes\na.pt,1.5\n", "num_classes must be a whole number"),
    ("model,name,clean\na.pt,../up,c.npz\n", "model name '../up'"),
    ("model,mean\na.pt,\"0.1,nan\"\n", "mean must be 1 to 3 finite numbers"),
    ("model\na.pt\n", "no clean set is given"),
])
def test_a_bad_listing_is_one_error_that_says_where(tmp_path, text, message):
    spec = tmp_path / "models.csv"
    spec.write_text(text)
    with pytest.raises(SmoothInvError) as caught:
        read_population(spec)
    assert message in str(caught.value) and str(spec) in str(caught.value)


def test_a_json_listing_and_the_zoo_folder_are_populations(tmp_path):
    from smoothinv.population.inputs import DatasetInputs, FileInputs
    from smoothinv.zoo import list_zoo, zoo_dir

    spec = tmp_path / "models.json"
    spec.write_text(json.dumps({"models": [{"model": "a.onnx", "clean": "c.npz", "input_size": [32, 32],
                                            "mean": [0.5, 0.5, 0.5], "backdoored": False}]}))
    [entry] = read_population(spec)
    assert entry.name == "a" and entry.path == tmp_path / "a.onnx" and entry.hints.input_size == (32, 32)
    assert isinstance(entry.inputs, FileInputs) and entry.inputs.clean == tmp_path / "c.npz"
    assert entry.truth is not None and not entry.truth.backdoored
    records = list_zoo()
    if not records:
        pytest.skip("no zoo model is built")
    entries = read_population(zoo_dir(), SpecDefaults(data_root=tmp_path))
    assert [e.name for e in entries] == [r["name"] for r in records]
    first = entries[0]
    assert isinstance(first.inputs, DatasetInputs) and first.inputs.data_root == tmp_path
    assert first.truth is not None and first.truth.backdoored == (records[0]["attack"] is not None)


def test_parallelism_fills_the_cores_and_never_starts_more_workers_than_models():
    assert Parallelism.choose(cores=2, tasks=3) == Parallelism(2, 1)
    assert Parallelism.choose(cores=2, tasks=1) == Parallelism(1, 2)
    assert Parallelism.choose(cores=2, tasks=5, threads=2) == Parallelism(1, 2)
    assert Parallelism.choose(cores=8, tasks=5, workers=2) == Parallelism(2, 4)
    assert Parallelism.choose(cores=16, tasks=9, gpus=2) == Parallelism(2, 8)
    assert Parallelism.choose(cores=2, tasks=4, workers=2, threads=2).oversubscribes(2)


# --------------------------------------------------------------------------- the trojan probability


def test_the_shipped_calibration_is_a_probability_that_grows_with_the_score():
    calibration = TrojanCalibration.shipped()
    values = [calibration.probability(s) for s in (0.0, 1.0, 2.5, 3.0, 5.0, 20.0, 1e6)]
    assert all(0.0 <= p <= 1.0 for p in values) and values == sorted(values)
    assert values[0] < 0.05 and values[-2] > 0.99 and calibration.probability(None) is None
    data = json.loads(CALIBRATION_FILE.read_text())
    assert len(data["data"]) == 37 and {"leave_one_out", "in_sample"} <= set(data["fit"])
    assert 0.0 < data["fit"]["leave_one_out"]["cross_entropy"] < data["fit"]["constant_prior_cross_entropy"]


def test_the_logistic_fit_is_the_maximum_likelihood_fit_and_leave_one_out_is_out_of_sample():
    import random

    from sklearn.linear_model import LogisticRegression

    rng = random.Random(0)
    x = [rng.uniform(-3, 3) for _ in range(300)]
    y = [rng.random() < 1 / (1 + np.exp(-(0.5 + 2.0 * v))) for v in x]
    a, b = fit_logistic(x, y, ridge=0.0)
    reference = LogisticRegression(C=1e10, tol=1e-10, max_iter=1000).fit(np.array(x)[:, None], y)
    assert a == pytest.approx(float(reference.intercept_[0]), abs=1e-4)
    assert b == pytest.approx(float(reference.coef_[0, 0]), abs=1e-4)
    small_x, small_y = x[:30], y[:30]
    loo = leave_one_out(small_x, small_y)
    fa, fb = fit_logistic(small_x, small_y)
    inside = [1 / (1 + np.exp(-(fa + fb * v))) for v in small_x]
    assert len(loo) == 30 and all(0 < p < 1 for p in loo) and loo != pytest.approx(inside)
    with pytest.raises(SmoothInvError):
        fit_logistic([1.0, 2.0], [True, True])


def test_trojai_entry_point_writes_a_probability(population, planted, tmp_path, monkeypatch, capsys):
    from smoothinv.data import save_image

    _, _, x, y = planted
    examples = tmp_path / "examples"
    examples.mkdir()
    for c in range(10):
        for i, image in enumerate(x[y == c][:4]):
            save_image(image, examples / f"class_{c}_example_{i}.png")
    result = tmp_path / "result.txt"
    code, stdout, err = run_cli(monkeypatch, capsys, "trojai", "--model_filepath",
                                population / "models" / "backdoored.safetensors", "--examples_dirpath", examples,
                                "--result_filepath", result, "--scratch_dirpath", tmp_path,
                                "--round_training_dataset_dirpath", tmp_path, *FAST)
    assert code == 0, err
    probability = float(result.read_text())
    assert 0.0 <= probability <= 1.0 and "trojan probability" in stdout
    assert "ignored: --round_training_dataset_dirpath" in err
    code, _, err = run_cli(monkeypatch, capsys, "trojai", "--model_filepath", examples / "class_0_example_0.png",
                           "--examples_dirpath", examples, "--result_filepath", tmp_path / "r2.txt", *FAST)
    assert code == 2 and not (tmp_path / "r2.txt").exists()
    error_line(err, alone=False)
