"""The commands that write the docs' numbers, end to end on a fake two-model zoo (the zoo's
own builder and manifest, two tiny models on a tiny Fashion-MNIST), then `bench table2`,
`bench detect` (whole and in two shards), `bench merge` and `zoo report`. The commands run
through the command line, so the tests hold whatever the internals become."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import struct
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

BACKDOORED, CLEAN = "fmnist-badnets", "fmnist-clean-s0"  # recipes of the real zoo
MODELS = (BACKDOORED, CLEAN)
TARGET = 3
TABLE2_METHODS = ("smoothinv", "plainadv", "nc", "topoprior", "pixelinv")  # the paper's Table 2, the default
CSV_COLUMNS = ["model", "attack", "method", "asr", "images", "seconds_per_image", "asr_per_image", "denoiser"]
DETECT_ROW_KEYS = {"model", "backdoored", "true_target", "verdict", "flagged", "score", "correct", "target_found",
                   "seconds"}
SUMMARY_KEYS = {"method", "models", "verdict_accuracy", "auroc", "target_identification", "seconds_per_model"}
TIMING = {"seconds", "seconds_per_model"}  # the only numbers allowed to differ between two runs


def cli(*args: object) -> tuple[int, str, str]:
    """`smoothinv ARGS` in-process; (exit status, stdout, stderr). Module fixtures cannot use
    conftest.run_cli (it needs the function-scoped monkeypatch/capsys)."""
    from smoothinv.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
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


def ok(result: tuple[int, str, str]) -> tuple[str, str]:
    code, out, err = result
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in err, err
    return out, err


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def tiny_fashion(root: Path) -> None:
    """fashion-mnist/ with 300 train / 60 test 28x28 images. Class c = 5a + b is drawn as a
    horizontal bar at one of 2 heights (a) and a vertical bar at one of 5 columns (b), spaced
    wider than the zoo's ±2 px training shifts, so a small CNN learns it in seconds."""
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 300), ("t10k", 60)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(labels):
            a, b = divmod(int(c), 5)
            images[i, 5 + 14 * a : 8 + 14 * a, 3:25] = 250
            images[i, 3:25, 2 + 5 * b : 4 + 5 * b] = 250
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


def zoo_option(*command: str, zoo: Path) -> list[str]:
    """--zoo-dir ZOO for commands that have the option (the bench commands may gain it)."""
    _, out, err = cli(*command, "--help")
    return ["--zoo-dir", str(zoo)] if "--zoo-dir" in out + err else []


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """(zoo dir, data root, manifest records by name), the zoo also being the default one for
    this module (the bench commands read the package's zoo)."""
    from smoothinv.zoo import manifest

    from smoothinv.zoo import Recipe
    from smoothinv.zoo.build import build

    base = tmp_path_factory.mktemp("bench")
    data, zoo_dir = base / "data", base / "zoo"
    tiny_fashion(data)
    # The zoo's own builder and manifest, with a recipe shrunk to the tiny data (the real
    # recipes' 12 epochs at batch 256 would take ~15 s here and learn nothing).
    for name, attack in ((BACKDOORED, {"attack": "badnets", "target": TARGET}), (CLEAN, None)):
        build(Recipe(name, "fashion-mnist", "small_cnn", attack, epochs=3, batch_size=20, lr=0.05, poison_rate=0.2),
              data_root=data, directory=zoo_dir, log=lambda line: None)
    records = {m["name"]: m for m in json.loads((zoo_dir / "manifest.json").read_text())["models"]}
    assert set(records) == set(MODELS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(manifest, "STORE", zoo_dir)
        yield zoo_dir, data, records


def test_fake_zoo_has_a_backdoored_and_a_clean_model(zoo):
    zoo_dir, _, records = zoo
    bad, clean = records[BACKDOORED], records[CLEAN]
    assert bad["attack"] == {"attack": "badnets", "target": TARGET, "source_classes": None, "seed": 0}
    assert bad["target"] == TARGET and bad["mode"] == "poison"
    assert clean["attack"] is None and clean["target"] is None
    for r in (bad, clean):
        assert (zoo_dir / r["weights"]).is_file() and re.fullmatch(r"[0-9a-f]{64}", r["sha256"])
        assert r["clean_accuracy"] >= 0.8  # real models, so the benchmarks below measure something
    assert bad["true_trigger_asr"] >= 0.8  # the backdoor is planted
    out, _ = ok(cli("zoo", "list", "--zoo-dir", zoo_dir))
    assert BACKDOORED in out and CLEAN in out


# --------------------------------------------------------------------------- bench table2


@pytest.fixture(scope="module")
def table2(zoo):
    zoo_dir, data, _ = zoo
    out_csv = zoo_dir.parent / "table2.csv"
    out, err = ok(cli("bench", "table2", "--images", "1", "--steps", "2", "--noise-samples", "1",
                      "--data-root", data, "--out", out_csv, *zoo_option("bench", "table2", zoo=zoo_dir)))
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    header = out_csv.read_text().splitlines()[0].split(",")
    return header, rows, out, err


def test_table2_csv_has_one_row_per_backdoored_model_and_method(zoo, table2):
    _, _, records = zoo
    header, rows, _, _ = table2
    assert header == CSV_COLUMNS
    # the clean model has no backdoor to recover: it is left out
    assert [(r["model"], r["method"]) for r in rows] == [(BACKDOORED, m) for m in TABLE2_METHODS]
    for r in rows:
        assert r["attack"] == records[BACKDOORED]["attack"]["attack"]
        assert int(r["images"]) == 1
        asr = float(r["asr"])
        per_image = [float(a) for a in r["asr_per_image"].split()]
        assert len(per_image) == 1 and 0.0 <= asr <= 1.0
        assert asr == pytest.approx(sum(per_image) / len(per_image), abs=1e-4)
        assert 0.0 <= float(r["seconds_per_image"]) < 600


def test_table2_markdown_matches_the_csv(table2):
    _, rows, out, _ = table2
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("|")]
    assert lines[0] == "| model | " + " | ".join(TABLE2_METHODS) + " |"
    assert re.fullmatch(r"\|---\|(---\|)+", lines[1])
    body = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}
    assert list(body) == [BACKDOORED]
    assert body[BACKDOORED] == [f"{float(r['asr']):.1%}" for r in rows]


def test_table2_default_methods_are_the_ones_its_help_names():
    out, _ = ok(cli("bench", "table2", "--help"))
    assert f"[default: {' '.join(TABLE2_METHODS)}]" in " ".join(out.split())


def test_table2_refuses_an_unknown_method(zoo):
    zoo_dir, data, _ = zoo
    code, _, err = cli("bench", "table2", "--method", "no-such-method", "--data-root", data)
    assert code == 2 and "no-such-method" in err and "Traceback" not in err


# --------------------------------------------------------------------------- bench detect / merge


DETECT = ("--steps", "2", "--noise-samples", "1", "--sigma", "0.5", "--clean-images", "10")


@pytest.fixture(scope="module")
def detect(zoo):
    """The whole run, one shard per model, and the merge of the shards: {name: (report, stdout)}."""
    zoo_dir, data, _ = zoo
    extra = zoo_option("bench", "detect", zoo=zoo_dir)
    reports = {}
    for name, models in (("all", ()), ("a", (BACKDOORED,)), ("b", (CLEAN,))):
        path = zoo_dir.parent / f"detect-{name}.json"
        selection = [a for m in models for a in ("--model", m)]
        if name == "a":
            selection += ["--pictures", zoo_dir.parent / "pictures-a"]
        out, _ = ok(cli("bench", "detect", *DETECT, *selection, "--data-root", data, "--out", path, *extra))
        reports[name] = (json.loads(path.read_text()), out)
    merged = zoo_dir.parent / "detect-merged.json"
    out, _ = ok(cli("bench", "merge", zoo_dir.parent / "detect-b.json", zoo_dir.parent / "detect-a.json",
                    "--out", merged))
    reports["merged"] = (json.loads(merged.read_text()), out)
    return reports


def test_detect_report_rows_and_summary(zoo, detect):
    _, _, records = zoo
    report, out = detect["all"]
    assert set(report) >= {"settings", "summary", "rows"}
    assert report["settings"]["method"] == "smoothinv" and report["settings"]["steps"] == 2
    assert report["settings"]["noise_samples"] == 1 and report["settings"]["clean_images"] == 10
    rows = {r["model"]: r for r in report["rows"]}
    assert sorted(rows) == sorted(MODELS) and len(report["rows"]) == 2
    for name, r in rows.items():
        assert DETECT_ROW_KEYS <= r.keys()
        record = records[name]
        assert r["backdoored"] == (record["attack"] is not None)
        assert r["true_target"] == record["target"]
        assert r["verdict"] == ("backdoored" if r["flagged"] else "clean")
        assert r["correct"] == (bool(r["flagged"]) == r["backdoored"])
        assert r["target_found"] == ((record["target"] in r["flagged"]) if r["backdoored"] else None)
        assert all(isinstance(c, int) and 0 <= c < 10 for c in r["flagged"])
        assert math.isfinite(r["score"]) and r["seconds"] >= 0
        classes = r.get("classes")
        if classes is not None:  # per-class evidence, keys are class labels (strings after JSON)
            # every class but the scan image's predicted one (a class is not synthesised from its own image)
            labels = sorted(int(c) for c in classes)
            assert set(labels) <= set(range(10)) and len(labels) >= 9
            for c in classes.values():
                assert all(0.0 <= a <= 1.0 for a in c["asr_by_eps"])
            assert r["score"] == pytest.approx(max(c["score"] for c in classes.values()), abs=1e-3)
    summary = report["summary"]
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["models"] == 2 and summary["method"] == "smoothinv"
    assert summary["verdict_accuracy"] == sum(r["correct"] for r in rows.values()) / 2
    bad, clean = rows[BACKDOORED], rows[CLEAN]
    assert summary["auroc"] == (1.0 if bad["score"] > clean["score"] else 0.5 if bad["score"] == clean["score"] else 0.0)
    assert summary["target_identification"] == float(bad["target_found"])
    # stdout: the markdown table, one line per model, then the summary as JSON
    lines = out.strip().splitlines()
    assert lines[0].startswith("| model | truth | verdict |")
    assert sum(line.startswith(f"| {m} |") for line in lines for m in MODELS) == 2
    assert json.loads(lines[-1]) == summary


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def test_detect_shards_scan_each_model_as_the_whole_run_does(detect):
    whole = {r["model"]: r for r in detect["all"][0]["rows"]}
    for shard, model in (("a", BACKDOORED), ("b", CLEAN)):
        report = detect[shard][0]
        assert [r["model"] for r in report["rows"]] == [model]
        assert report["summary"]["models"] == 1
        assert _without_timing(report["rows"][0]) == _without_timing(whole[model])


def test_detect_pictures_show_the_true_target_and_every_flagged_class(zoo, detect):
    zoo_dir, data, records = zoo
    row = detect["a"][0]["rows"][0]
    folder = zoo_dir.parent / "pictures-a" / BACKDOORED
    expected = sorted(set(row["flagged"]) | {records[BACKDOORED]["target"]})
    assert sorted(int(p.name.removeprefix("class-")) for p in folder.iterdir()) == expected
    assert all((folder / f"class-{c}" / "overview.png").is_file() for c in expected)
    code, _, err = cli("bench", "detect", *DETECT, "--model", BACKDOORED, "--data-root", data,
                       "--pictures", zoo_dir.parent / "pictures-a")
    assert code == 2 and "not an empty folder" in err


def test_merge_of_two_shards_equals_the_whole_run(detect):
    whole, _ = detect["all"]
    merged, out = detect["merged"]
    assert merged["settings"] == whole["settings"]
    assert [r["model"] for r in merged["rows"]] == sorted(MODELS)
    assert _without_timing(merged) == _without_timing(whole)
    shard_seconds = [detect[s][0]["rows"][0]["seconds"] for s in ("a", "b")]
    assert merged["summary"]["seconds_per_model"] == pytest.approx(sum(shard_seconds) / 2, abs=0.06)
    assert json.loads(out.strip().splitlines()[-1]) == merged["summary"]


def test_merge_refuses_overlapping_shards(zoo, detect):
    zoo_dir, _, _ = zoo
    shard = zoo_dir.parent / "detect-a.json"
    code, _, err = cli("bench", "merge", shard, shard, "--out", zoo_dir.parent / "twice.json")
    assert code == 2 and BACKDOORED in err and not (zoo_dir.parent / "twice.json").exists()


# --------------------------------------------------------------------------- zoo report


@pytest.fixture(scope="module")
def report(zoo):
    zoo_dir, data, _ = zoo
    path = zoo_dir.parent / "docs" / "zoo.md"
    out, _ = ok(cli("zoo", "report", "--out", path, "--data-root", data, "--zoo-dir", zoo_dir, "--images", "20",
                    "--noise-samples", "1"))
    return path.read_text(), out


def _table(text: str, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table after `heading`."""
    section = text.split(heading, 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows


def _percent(cell: str) -> float | None:
    if cell == "–":
        return None
    assert re.fullmatch(r"\d+(\.\d)?%", cell), cell
    value = float(cell[:-1])
    assert 0.0 <= value <= 100.0
    return value


def test_zoo_report_lists_both_models_with_their_manifest_numbers(zoo, report):
    _, _, records = zoo
    text, out = report
    assert "wrote" in out and "2 models" in out
    table = _table(text, "## Models")
    header, rows = table[0], {r[0]: dict(zip(table[0], r)) for r in table[2:]}
    assert header[:5] == ["model", "data", "arch", "recipe", "attack"] and "sha256" in header
    assert sorted(rows) == sorted(MODELS)
    for name, row in rows.items():
        record = records[name]
        assert row["data"] == "fashion-mnist" and row["arch"] == record["arch"]
        assert row["recipe"] == "3 ep, lr 0.05, aug, wd 0.0005"
        assert row["sha256"] == f"`{record['sha256'][:12]}`"
        assert _percent(row["clean acc"]) == pytest.approx(100 * record["clean_accuracy"], abs=0.051)
    assert rows[BACKDOORED]["attack"] == "badnets" and rows[BACKDOORED]["target"] == str(records[BACKDOORED]["target"])
    assert _percent(rows[BACKDOORED]["true-trigger ASR"]) == pytest.approx(
        100 * records[BACKDOORED]["true_trigger_asr"], abs=0.051)
    assert rows[CLEAN]["attack"] == "clean" and rows[CLEAN]["target"] == "–"
    assert rows[CLEAN]["true-trigger ASR"] == "–"
    # recipes not in this zoo are listed as not built; ours are not
    missing = re.search(r"Not built yet: (.*)\. ", text).group(1).split(", ")
    assert BACKDOORED not in missing and CLEAN not in missing and "cifar10-badnets" in missing


def test_zoo_report_sanity_table_has_every_model_and_sigma(report):
    text, _ = report
    assert "N = 1 noise samples" in text and "first 20 test images" in text
    table = _table(text, "## Sanity table")
    sigmas = table[0][1:]
    assert table[0][0] == "model" and sigmas[0] == "σ=0" and len(sigmas) >= 2
    rows = {r[0]: r[1:] for r in table[2:]}
    assert sorted(rows) == sorted(MODELS)
    for name, cells in rows.items():
        assert len(cells) == len(sigmas)
        for cell in cells:
            accuracy, asr = (c.strip() for c in cell.split("/"))
            assert _percent(accuracy) is not None
            assert (_percent(asr) is None) == (name == CLEAN)


def test_detect_with_mmbd_scores_every_model_by_its_p_value(zoo):
    """MM-BD is data-free: one row per model with a p-value and one statistic per class; the scan's
    flags do not apply to it. (Its reference settings take minutes here: the report is checked
    with fewer starts and steps through the same benchmark function the command calls.)"""
    from smoothinv.bench.detect import detect_benchmark
    from smoothinv.detection.detectors import MaxMarginDetector
    from smoothinv.detection.max_margin import MaxMarginSettings

    zoo_dir, data, records = zoo
    report = detect_benchmark(MaxMarginDetector(MaxMarginSettings(images=4, steps=10)), data_root=data, clean_images=10,
                              log=lambda line: None)
    assert report["settings"]["method"] == "mmbd" and report["settings"]["images"] == 4
    assert report["settings"]["steps"] == 10 and report["summary"]["method"] == "mmbd"
    assert sorted(r["model"] for r in report["rows"]) == sorted(MODELS)
    for row in report["rows"]:
        assert 0.0 <= row["p_value"] <= 1.0
        assert row["score"] == pytest.approx(-math.log10(max(row["p_value"], 1e-300)), abs=1e-3)
        assert sorted(int(c) for c in row["classes"]) == list(range(10))
        assert row["verdict"] == ("backdoored" if row["p_value"] <= 0.05 else "clean")
        assert len(row["flagged"]) <= 1
    code, _, err = cli("bench", "detect", "--method", "mmbd", "--steps", "5", "--data-root", data)
    assert code == 2 and "--steps does not apply to --method mmbd" in err
