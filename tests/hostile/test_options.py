"""Absurd option values are usage errors that name the option, the same way in every command
(findings: --eps 1e39 ran, --steps 1e22 ran, --seed 2**64 crashed, --classes 0.5 was truncated)."""

from __future__ import annotations

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smoothinv.cli.params import BOUNDS, MAX_EPS, FloatList, IntList

from .conftest import FAST_SCAN, assert_refused, run_cli


def _invert(inputs, out, *extra):
    return ["invert", "--model", inputs["model"], "--image", inputs["image"], "--target", "3",
            "--clean", inputs["clean_npz"], "--out", out, "--steps", "2", "--noise-samples", "2", "--eps", "1",
            "--no-baseline", *extra]


def _scan(inputs, out, *extra):
    return ["scan", "--model", inputs["model"], "--image", inputs["image"], "--clean", inputs["clean_npz"],
            "--out", out, *FAST_SCAN, *extra]


def _sanity(inputs, out, *extra):
    return ["sanity", "--model", inputs["model"], "--clean", inputs["clean_npz"],
            "--attack", '{"attack": "badnets", "target": 0}', "--noise-samples", "2", *extra]


BAD = [
    (_scan, ["--eps=1e39"], "--eps"),
    (_scan, ["--eps=0"], "--eps"),
    (_scan, ["--eps=nan"], "--eps"),
    (_invert, ["--eps=-1"], "--eps"),
    (_sanity, ["--sigma=-1"], "--sigma"),
    (_sanity, ["--sigma=-0.5,1"], "--sigma"),
    (_sanity, ["--sigma=1e39"], "--sigma"),
    (_invert, ["--sigma=inf"], "--sigma"),
    (_invert, ["--steps=1e22"], "--steps"),
    (_invert, ["--steps=10000000000000000000000"], "--steps"),
    (_scan, ["--steps=0"], "--steps"),
    (_scan, ["--threshold=nan"], "--threshold"),
    (_scan, ["--threshold=-inf"], "--threshold"),
    (_scan, ["--threshold=0"], "--threshold"),
    (_sanity, ["--noise-samples=0"], "--noise-samples"),
    (_invert, ["--noise-samples=1e22"], "--noise-samples"),
    (_scan, ["--seed=18446744073709551616"], "--seed"),
    (_sanity, ["--seed=-1"], "--seed"),
    (_scan, ["--classes=1e30"], "--classes"),
    (_scan, ["--classes=0.5"], "--classes"),
    (_scan, ["--classes=1.7,2.2"], "--classes"),
    (_scan, ["--classes=-1"], "--classes"),
    (_scan, ["--fallback-sigma=-0.1"], "--fallback-sigma"),
    (_scan, ["--clean-limit=0"], "--clean-limit"),
    (_invert, ["--max-batch=0"], "--max-batch"),
    (_invert, ["--probe-timeout=nan"], "--probe-timeout"),
]


@pytest.mark.parametrize("command, extra, option", BAD, ids=[f"{c.__name__[1:]}{e[0]}" for c, e, _ in BAD])
def test_absurd_values_are_usage_errors(monkeypatch, capsys, tmp_path, inputs, command, extra, option):
    out = tmp_path / "out"
    run = run_cli(monkeypatch, capsys, *command(inputs, out, *extra))
    assert_refused(run, option, out=out)


def test_target_beyond_any_class_count(monkeypatch, capsys, tmp_path, inputs):
    out = tmp_path / "out"
    args = _invert(inputs, out)
    args[args.index("--target") + 1] = "99999999999999999999999"
    assert_refused(run_cli(monkeypatch, capsys, *args), "--target", out=out)


@pytest.mark.parametrize("option, value", [("--seed", "18446744073709551616"), ("--steps", "1e22"),
                                           ("--noise-samples", "0")])
def test_every_command_rejects_the_same_value_the_same_way(monkeypatch, capsys, tmp_path, inputs, option, value):
    """invert, scan, sanity (where the option exists) and bench detect give the same message."""
    messages = set()
    for command in (_invert, _scan, _sanity):
        args = command(inputs, tmp_path / "out", f"{option}={value}")
        if option == "--steps" and command is _sanity:
            continue
        run = run_cli(monkeypatch, capsys, *args)
        messages.add(assert_refused(run, option).split(";")[0])
    bench = run_cli(monkeypatch, capsys, "bench", "detect", f"{option}={value}")
    messages.add(assert_refused(bench, option).split(";")[0])
    assert len(messages) == 1, messages


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_float_list_parses_or_names_the_problem(text):
    """Any text: a tuple of finite values inside the bounds, or click.BadParameter (never a crash)."""
    try:
        values = BOUNDS.eps.convert(text, None, None)
    except click.BadParameter:
        return
    assert values and all(0 < v <= MAX_EPS for v in values)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=40),
                 st.lists(st.integers(min_value=-10**25, max_value=10**25), min_size=1, max_size=5)
                 .map(lambda xs: ",".join(map(str, xs))),
                 st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=5)
                 .map(lambda xs: ",".join(map(str, xs)))))
def test_int_list_parses_or_names_the_problem(text):
    kind = IntList(0, 1000)
    try:
        values = kind.convert(text, None, None)
    except click.BadParameter:
        return
    assert values and all(isinstance(v, int) and 0 <= v <= 1000 for v in values)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1, max_size=4))
def test_float_list_bounds_are_exact(numbers):
    kind = FloatList(0.0, 100.0)
    text = ",".join(repr(v) for v in numbers)
    inside = all(v == v and 0.0 <= v <= 100.0 for v in numbers)
    if inside:
        assert kind.convert(text, None, None) == tuple(numbers)
    else:
        with pytest.raises(click.BadParameter):
            kind.convert(text, None, None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(["--eps", "--sigma", "--classes", "--seed", "--steps", "--threshold", "--noise-samples"]),
       value=st.text(alphabet="0123456789.,-+eEinfa x", min_size=1, max_size=12))
def test_scan_option_fuzz_never_crashes(monkeypatch, capsys, tmp_path_factory, inputs, flag, value):
    """Random values for scan's numeric options, with a model path that does not exist: either a
    usage error naming the option, or (the value was fine) the missing model — always one line."""
    out = tmp_path_factory.mktemp("fuzz") / "out"
    args = _scan(inputs, out, f"{flag}={value}")
    args[args.index("--model") + 1] = str(out.parent / "missing.safetensors")
    run = run_cli(monkeypatch, capsys, *args)
    message = assert_refused(run, out=out)
    assert flag in message or "not found" in message, message
