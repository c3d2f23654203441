"""The `smoothinv` command line: one-line errors, exit status 2, nothing left behind.

Contract: every user-fixable problem prints ONE line ``error: …`` on stderr, exits
with status 2, prints no traceback and leaves no output directory (nor a
``.NAME.partial-*`` temp dir) behind; an existing non-empty --out is never clobbered
without --overwrite. Successful runs write a complete, self-describing output folder.

Most tests call ``smoothinv.cli.main.main()`` in-process (fast); one test runs the
installed entry point in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import error_line, run_cli
from smoothinv.models import create_model, save_model

FAST = ["--steps", "3", "--noise-samples", "2", "--eps", "1", "--sigma", "0.25"]
OUTPUT_FILES = (
    "result.json",
    "overview.png",
    "synthesized.png",
    "perturbation.png",
    "zoom.png",
    "clean.png",
    "perturbation.npy",
)


# ----------------------------------------------------------------------------- fixtures




def _gray_png(path: Path, seed: int, size: tuple[int, int] = (28, 28)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=size, dtype=np.uint8), mode="L").save(path)
    return path


class _FlatOutput(nn.Module):
    """Returns one number per image: [B] instead of [B, num_classes]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1).mean(1)


class _NanOutput(nn.Module):
    """Returns [B, 10] logits that are all NaN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 10), float("nan"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny untrained 1-channel 28x28 10-class model in every format, images, clean sets."""
    root = tmp_path_factory.mktemp("cli_inputs")
    torch.manual_seed(0)
    model = create_model("small_cnn", 10).eval().requires_grad_(False)
    paths: dict[str, Path] = {}

    paths["safetensors"] = root / "model.safetensors"
    save_model(paths["safetensors"], model, arch="small_cnn", num_classes=10, input_size=(28, 28), channels=1)
    paths["state_dict"] = root / "model.pt"
    torch.save(model.state_dict(), paths["state_dict"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.* deprecation notices
        paths["torchscript"] = root / "model_ts.pt"
        torch.jit.trace(model, torch.rand(1, 1, 28, 28)).save(str(paths["torchscript"]))
        paths["flat_model"] = root / "flat_ts.pt"
        torch.jit.script(_FlatOutput()).save(str(paths["flat_model"]))
        paths["nan_model"] = root / "nan_ts.pt"
        torch.jit.script(_NanOutput()).save(str(paths["nan_model"]))

    rng = np.random.default_rng(1)
    garbage = bytearray(rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes())
    garbage[0] = 0x42  # neither a pickle PROTO byte nor a zip or safetensors header
    paths["corrupt_model"] = root / "corrupt.pt"
    paths["corrupt_model"].write_bytes(bytes(garbage))
    garbage[0] = 0x80  # looks like a legacy pickle, is not one
    paths["corrupt_pickle"] = root / "corrupt_pickle.pt"
    paths["corrupt_pickle"].write_bytes(bytes(garbage))

    paths["image"] = _gray_png(root / "image.png", seed=2)
    paths["corrupt_image"] = root / "corrupt.png"
    paths["corrupt_image"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)

    folder = root / "clean_folder"
    for label in range(10):
        (folder / str(label)).mkdir(parents=True)
        for k in range(1 + label % 2):
            _gray_png(folder / str(label) / f"{k}.png", seed=100 + 10 * label + k)
    paths["clean_folder"] = folder

    paths["empty_folder"] = root / "empty_clean"
    (paths["empty_folder"] / "0").mkdir(parents=True)
    (paths["empty_folder"] / "1").mkdir(parents=True)

    x = np.random.default_rng(3).integers(0, 256, size=(20, 28, 28, 1), dtype=np.uint8)
    y = np.arange(20) % 10
    paths["clean_npz"] = root / "clean.npz"
    np.savez(paths["clean_npz"], x=x, y=y)
    paths["bad_labels_npz"] = root / "bad_labels.npz"
    np.savez(paths["bad_labels_npz"], x=x, y=np.arange(20) % 12)  # labels 10, 11 exist
    paths["one_class_npz"] = root / "one_class.npz"
    np.savez(paths["one_class_npz"], x=x[:6], y=np.full(6, 3))

    bracketed = root / "weights[v2]"
    bracketed.mkdir()
    paths["bracketed_dir"] = bracketed
    return paths


# ----------------------------------------------------------------------------- helpers




def invert_args(files: dict[str, Path], out: Path, **overrides: object) -> list[str]:
    """`invert` arguments for a run that would succeed; override any option by name."""
    opts: dict[str, object] = {
        "--model": files["torchscript"],
        "--image": files["image"],
        "--target": "3",
        "--clean": files["clean_folder"],
        "--out": out,
        "--steps": "3",
        "--noise-samples": "2",
        "--eps": "1",
        "--sigma": "0.25",
    }
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            opts.pop(flag, None)
        else:
            opts[flag] = value
    args = ["invert"]
    for flag, value in opts.items():
        args.append(f"{flag}={value}")  # `=` so values such as -1 are never read as flags
    if str(opts.get("--model", "")).endswith("_ts.pt"):
        args.append("--trust-code")  # the TorchScript fixtures: TorchScript carries code
    return args




def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was left behind"
    leftovers = sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))
    assert not leftovers, f"temp dirs left behind: {leftovers}"


def assert_user_error(monkeypatch, capsys, args: list[str], out: Path, *mentions: str, alone: bool = True) -> str:
    code, stdout, stderr = run_cli(monkeypatch, capsys, *args)
    assert code == 2, f"exit {code}\nstdout: {stdout}\nstderr: {stderr}"
    message = error_line(stderr, alone=alone)
    for word in mentions:
        assert word in message, f"{word!r} not in {message!r}"
    assert_nothing_written(out)
    return message


def assert_complete_output(out: Path) -> dict:
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), f"{name} missing from {sorted(os.listdir(out))}"
    result = json.loads((out / "result.json").read_text())
    for name in result["files"].values():
        assert (out / name).is_file(), f"result.json names {name}, which is missing"
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers, f"temp dirs left behind: {leftovers}"
    return result


# ----------------------------------------------------------------------------- user errors


def test_missing_model(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    missing = tmp_path / "nope.safetensors"
    assert_user_error(monkeypatch, capsys, invert_args(files, out, model=missing), out, "nope.safetensors", "not found")


@pytest.mark.parametrize("which", ["corrupt_model", "corrupt_pickle"])
def test_corrupt_model(monkeypatch, capsys, files, tmp_path, which):
    out = tmp_path / "out"
    name = files[which].name
    assert_user_error(monkeypatch, capsys, invert_args(files, out, model=files[which]), out, name)


def test_state_dict_needs_arch(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    message = assert_user_error(monkeypatch, capsys, invert_args(files, out, model=files["state_dict"]), out, "--arch")
    assert "small_cnn" in message  # the hint names the matching architecture


def test_state_dict_with_arch_runs_far_enough_to_check_target(monkeypatch, capsys, files, tmp_path):
    """Sanity check of the fixtures: with --arch the same file loads (then --target 10 fails)."""
    out = tmp_path / "out"
    args = invert_args(files, out, model=files["state_dict"], arch="small_cnn", target="10")
    assert_user_error(monkeypatch, capsys, args, out, "10", "10 classes")


def test_unknown_arch(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    args = invert_args(files, out, model=files["state_dict"], arch="no_such_net")
    assert_user_error(monkeypatch, capsys, args, out, "no_such_net", "small_cnn")


def test_missing_image(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    missing = tmp_path / "nope.png"
    assert_user_error(monkeypatch, capsys, invert_args(files, out, image=missing), out, "nope.png", "does not exist")


def test_corrupt_image(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    assert_user_error(monkeypatch, capsys, invert_args(files, out, image=files["corrupt_image"]), out, "corrupt.png")


@pytest.mark.parametrize("model", ["state_dict", "safetensors"])
def test_wrong_channels_fails_the_probe(monkeypatch, capsys, files, tmp_path, model):
    out = tmp_path / "out"
    args = invert_args(files, out, model=files[model], arch="small_cnn", channels="3")
    assert_user_error(monkeypatch, capsys, args, out, "2x3x28x28", "--channels")


@pytest.mark.parametrize("target", ["10", "-1"])
def test_target_index_out_of_range(monkeypatch, capsys, files, tmp_path, target):
    out = tmp_path / "out"
    assert_user_error(monkeypatch, capsys, invert_args(files, out, target=target), out, target, "10 classes")


def test_target_name_not_a_class(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    message = assert_user_error(monkeypatch, capsys, invert_args(files, out, target="cat"), out, "'cat'", "--target")
    assert "0, 1, 2" in message  # lists the clean set's class names


def test_target_name_with_npz_without_class_names(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    args = invert_args(files, out, target="cat", clean=files["clean_npz"])
    assert_user_error(monkeypatch, capsys, args, out, "'cat'", "--target")


def test_empty_clean_folder(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    args = invert_args(files, out, clean=files["empty_folder"])
    assert_user_error(monkeypatch, capsys, args, out, "empty_clean", "no images")


def test_missing_clean_set(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    args = invert_args(files, out, clean=tmp_path / "nope.npz")
    assert_user_error(monkeypatch, capsys, args, out, "nope.npz", "does not exist")


def test_clean_npz_labels_beyond_model_classes(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    args = invert_args(files, out, clean=files["bad_labels_npz"])
    assert_user_error(monkeypatch, capsys, args, out, "bad_labels.npz", "0..11", "10 classes")


def test_clean_set_only_of_target_class(monkeypatch, capsys, files, tmp_path):
    """Caught only once the first run is scored, so progress output may precede the error."""
    out = tmp_path / "out"
    args = invert_args(files, out, clean=files["one_class_npz"], target="3")
    assert_user_error(monkeypatch, capsys, args, out, "target class 3", alone=False)


@pytest.mark.parametrize("model", ["flat_model", "nan_model"])
def test_model_returning_garbage(monkeypatch, capsys, files, tmp_path, model):
    out = tmp_path / "out"
    message = assert_user_error(monkeypatch, capsys, invert_args(files, out, model=files[model]), out, "model")
    assert ("shape" in message) if model == "flat_model" else ("NaN" in message)


def test_error_message_keeps_square_brackets(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    message = assert_user_error(monkeypatch, capsys, invert_args(files, out, model=files["flat_model"]), out)
    assert "[batch, num_classes]" in message


def test_error_message_keeps_bracketed_path(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    missing = files["bracketed_dir"] / "model.safetensors"
    assert_user_error(monkeypatch, capsys, invert_args(files, out, model=missing), out, str(missing))


@pytest.mark.parametrize("eps", ["a,b", "1,x", ",", "-1", "0", "1,-2"])
def test_bad_eps(monkeypatch, capsys, files, tmp_path, eps):
    out = tmp_path / "out"
    assert_user_error(monkeypatch, capsys, invert_args(files, out, eps=eps), out, "eps")


@pytest.mark.parametrize("sigma", ["x", "-0.5"])
def test_bad_sigma(monkeypatch, capsys, files, tmp_path, sigma):
    out = tmp_path / "out"
    assert_user_error(monkeypatch, capsys, invert_args(files, out, sigma=sigma), out, "sigma")


@pytest.mark.parametrize(("flag", "value"), [("eps", "nan"), ("eps", "inf"), ("sigma", "nan")])
def test_non_finite_eps_or_sigma(monkeypatch, capsys, files, tmp_path, flag, value):
    out = tmp_path / "out"
    args = invert_args(files, out, clean=files["clean_npz"], **{flag: value})
    assert_user_error(monkeypatch, capsys, args, out, flag, alone=False)


@pytest.mark.parametrize("value", ["0", "-4"])
def test_bad_max_batch(monkeypatch, capsys, files, tmp_path, value):
    out = tmp_path / "out"
    args = invert_args(files, out, clean=files["clean_npz"], max_batch=value)
    assert_user_error(monkeypatch, capsys, args, out, "--max-batch", alone=False)


@pytest.mark.parametrize(("flag", "value", "mentions"), [
    ("steps", "0", "steps"),
    ("noise_samples", "0", "--noise-samples"),
    ("clean_limit", "0", "limit"),
])
def test_bad_counts(monkeypatch, capsys, files, tmp_path, flag, value, mentions):
    out = tmp_path / "out"
    args = invert_args(files, out, clean=files["clean_npz"], **{flag: value})
    assert_user_error(monkeypatch, capsys, args, out, mentions, alone=False)


def test_existing_output_not_clobbered(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, _, stderr = run_cli(monkeypatch, capsys, *invert_args(files, out))
    assert code == 2
    message = error_line(stderr)
    assert "--overwrite" in message and str(out) in message
    assert sorted(os.listdir(out)) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_failed_overwrite_keeps_old_output(monkeypatch, capsys, files, tmp_path):
    """--overwrite replaces only on success: a failing run leaves the old folder as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, _, stderr = run_cli(monkeypatch, capsys, *invert_args(files, out, model=tmp_path / "nope.pt"), "--overwrite")
    assert code == 2
    error_line(stderr)
    assert sorted(os.listdir(out)) == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_output_path_is_a_file(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    out.write_text("not a folder")
    code, _, stderr = run_cli(monkeypatch, capsys, *invert_args(files, out), "--overwrite")
    assert code == 2
    assert "is a file" in error_line(stderr)
    assert out.read_text() == "not a folder"


def test_nested_output_parents_not_created_on_error(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "a" / "b" / "out"
    code, _, stderr = run_cli(monkeypatch, capsys, *invert_args(files, out, target="cat"))
    assert code == 2
    error_line(stderr)
    assert not (tmp_path / "a").exists()


def test_usage_error_exits_2_without_traceback(monkeypatch, capsys, files, tmp_path):
    """Click's own usage errors (bad option values) also exit 2 and leave nothing behind."""
    out = tmp_path / "out"
    code, _, stderr = run_cli(monkeypatch, capsys, *invert_args(files, out, steps="many"))
    assert code == 2
    assert "Traceback" not in stderr and "--steps" in stderr
    assert_nothing_written(out)


def test_usage_error_is_one_error_line(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    assert_user_error(monkeypatch, capsys, invert_args(files, out, steps="many"), out, "--steps")


def test_entry_point_missing_model_subprocess(files, tmp_path):
    """The installed `python -m smoothinv` prints one line and exits 2, no traceback."""
    out = tmp_path / "out"
    missing = tmp_path / "missing.safetensors"
    env = {k: v for k, v in os.environ.items() if k != "SMOOTHINV_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "smoothinv", *invert_args(files, out, model=missing)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    message = error_line(proc.stderr)
    assert "missing.safetensors" in message
    assert proc.stdout == ""
    assert_nothing_written(out)


# ----------------------------------------------------------------------------- success


def test_invert_with_image_folder(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(monkeypatch, capsys, *invert_args(files, out, eps="0.5,1"))
    assert code == 0, stderr
    assert "Traceback" not in stderr and "error:" not in stderr
    result = assert_complete_output(out)
    assert len(result["runs"]) == 2  # one per grid point: 2 eps x 1 sigma
    assert len(result["baseline"]) == 2  # plainadv: one per eps
    assert result["grid"]["eps"] == [0.5, 1.0]
    assert result["grid"]["sigmas"] == [0.25]
    for run in result["runs"] + result["baseline"] + [result["best"]]:
        assert 0.0 <= run["asr"] <= 1.0
    assert result["best"]["asr"] == max(r["asr"] for r in result["runs"])
    assert result["target"] == 3 and result["target_name"] == "3"
    assert len(result["model"]["sha256"]) == 64
    assert result["model"]["format"] == "torchscript" and result["model"]["channels"] == 1
    assert result["clean_set"]["images"] == 15
    assert {"load_s", "inversion_s", "evaluation_s", "total_s"} <= set(result["timings"])
    perturbation = np.load(out / "perturbation.npy")
    assert perturbation.shape == (1, 28, 28) and perturbation.dtype == np.float32
    assert np.linalg.norm(perturbation) <= 1.0 + 1e-4
    assert "best:" in stdout


def test_invert_with_npz_and_overwrite(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    (out / ".smoothinv-output").write_text('{"tool": "smoothinv", "files": ["stale.txt"]}')  # a previous run's output
    args = invert_args(files, out, clean=files["clean_npz"], model=files["safetensors"])
    code, _, stderr = run_cli(monkeypatch, capsys, *args, "--overwrite")
    assert code == 0, stderr
    result = assert_complete_output(out)
    assert not (out / "stale.txt").exists()
    assert len(result["runs"]) == 1 and len(result["baseline"]) == 1
    assert result["clean_set"]["images"] == 20 and result["clean_set"]["class_names"] is None
    assert result["model"]["format"] == "safetensors" and result["model"]["arch"] == "small_cnn"
    assert 0.0 <= result["best"]["asr"] <= 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .out.partial-/.out.old- dirs


def test_same_seed_same_perturbation(monkeypatch, capsys, files, tmp_path):
    arrays = []
    for name in ("a", "b"):
        out = tmp_path / name
        code, _, stderr = run_cli(monkeypatch, capsys, *invert_args(files, out, seed="7"), "--no-baseline")
        assert code == 0, stderr
        assert json.loads((out / "result.json").read_text())["baseline"] == []
        arrays.append(np.load(out / "perturbation.npy"))
    np.testing.assert_array_equal(arrays[0], arrays[1])
    assert np.abs(arrays[0]).max() > 0


@pytest.mark.parametrize("method", ["momentum", "plainadv"])
def test_other_methods_run(monkeypatch, capsys, files, tmp_path, method):
    out = tmp_path / "out"
    extra = {"noise_samples": None} if method == "plainadv" else {}
    code, _, stderr = run_cli(monkeypatch, capsys, *invert_args(files, out, method=method, **extra))
    assert code == 0, stderr
    result = assert_complete_output(out)
    assert result["method"] == method
    assert len(result["runs"]) == 1
    if method == "plainadv":
        assert result["baseline"] == []  # plainadv is its own baseline


# ----------------------------------------------------------------------------- listings


def test_models_lists_architectures(monkeypatch, capsys):
    code, stdout, _ = run_cli(monkeypatch, capsys, "models")
    assert code == 0
    names = {line.split()[0] for line in stdout.splitlines() if line.strip()}
    assert {"resnet18", "resnet20", "small_cnn"} <= names


def test_methods_lists_methods(monkeypatch, capsys):
    code, stdout, _ = run_cli(monkeypatch, capsys, "methods")
    assert code == 0
    names = {line.split()[0] for line in stdout.splitlines() if line.strip()}
    assert {"smoothinv", "momentum", "plainadv", "nc"} <= names and "pgd" not in names  # one name per method


@pytest.mark.parametrize("command", ["invert", "scan"])
def test_an_option_the_method_does_not_take_is_a_usage_error(monkeypatch, capsys, files, tmp_path, command):
    """--noise-samples typed for a method without noise is refused (left at its default, it is not passed)."""
    args = invert_args(files, tmp_path / "out", method="plainadv")
    if command == "scan":
        args = ["scan", *(a for a in args[1:] if not a.startswith("--target="))]
    code, _, stderr = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and "--noise-samples does not apply to --method plainadv" in stderr, stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["--help"], ["invert", "--help"], ["--version"]])
def test_help_and_version(monkeypatch, capsys, args):
    code, stdout, stderr = run_cli(monkeypatch, capsys, *args)
    assert code == 0, stderr
    assert stdout.strip()
    if args == ["invert", "--help"]:
        assert "--overwrite" in stdout and "--target" in stdout


def test_step_bar_restarts_for_a_further_pass():
    """The scan's σ fallback is a second pass: it gets its own bar instead of overrunning the first."""
    import io

    from rich.console import Console

    from smoothinv.cli.progress import step_progress

    out = io.StringIO()
    with step_progress(6, Console(file=out, width=120, force_terminal=False)) as bar:
        bar("first pass", 6)
        bar.restart("second pass", 4)
        bar("second pass", 4)
    text = out.getvalue()
    assert "6/6" in text and "4/4" in text and "second pass" in text


def test_no_arguments_prints_the_help_as_written(monkeypatch, capsys):
    code, _, stderr = run_cli(monkeypatch, capsys)
    assert code == 2
    assert stderr.startswith("Usage: smoothinv") and "Commands:" in stderr and "error:" not in stderr
