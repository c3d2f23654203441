"""Flag names live in cli/ only: the library's messages name parameters (errors.param), and the
command line renders them as flags (cli.messages.for_command_line)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
import pytest

import smoothinv
from smoothinv.cli.main import cli, demo_invert_command
from smoothinv.cli.messages import ALIASES, for_command_line
from smoothinv.errors import SmoothInvError, param

PACKAGE = Path(smoothinv.__file__).parent
# `--word`, or a string that ends in `--` (the start of f"--{name}" or "--" + name).
FLAG = re.compile(r"(?<![\w-])--(?:[a-z]|$)")


def _library_strings() -> list[tuple[str, int, str]]:
    """(file, line, text) of every string literal in code outside cli/, docstrings excepted
    (a string that is a whole statement: module, class, function and attribute docstrings)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "cli":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        docstrings = {id(node.value) for node in ast.walk(tree)
                      if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found.append((relative.as_posix(), node.lineno, node.value))
    return found


def test_the_library_names_no_command_line_flags():
    offenders = [f"{file}:{line}: {text!r}" for file, line, text in _library_strings() if FLAG.search(text)]
    assert not offenders, ("library strings that name command-line flags (write errors.param('name') "
                           "and let cli.messages render it):\n" + "\n".join(offenders))


def test_the_flag_pattern_catches_literal_and_built_flags():
    assert FLAG.search("choose another --out") and FLAG.search("--mean has 2 values")
    assert FLAG.search("pass --") and FLAG.search("--")  # f"--{name}", "--" + key
    assert not FLAG.search("|---|---|") and not FLAG.search("a -- b") and not FLAG.search("x--y")


def test_param_writes_a_backquoted_name():
    assert param("num_classes") == "`num_classes`"


@pytest.mark.parametrize("message, rendered", [
    ("pass `num_classes`=10 to override it", "pass --num-classes 10 to override it"),
    ("`mean` has 2 values but `std` has 1", "--mean has 2 values but --std has 1"),
    ("wrong `mean`/`std`", "wrong --mean/--std"),
    ("choose another `out` or pass `overwrite`=True", "choose another --out or pass --overwrite"),
    ("pass `trust_code`=True only if you trust it", "pass --trust-code only if you trust it"),
    ("pass `trust_code`=True; or not", "pass --trust-code; or not"),
    ("needs `arch`=NAME; known: a, b", "needs --arch NAME; known: a, b"),
    ("`model_path` is missing", "--model is missing"),  # the click name, not the flag's spelling
    ("raise `time_budget`", "raise --time-budget"),
    ("raise `timeout` if it is just slow", "raise --probe-timeout if it is just slow"),  # an alias
    ("lower `limit`", "lower --clean-limit"),
    ("choose another `out_dir`", "choose another --out"),
    ("`directory` /x is not a directory", "--zoo-dir /x is not a directory"),
    ("needs a class attribute `name`", "needs a class attribute name"),  # not a parameter
    ("`extra_metadata`=x may not", "extra_metadata=x may not"),
    ("`names` differ", "names differ"),  # --recipe in one command, --model in another: ambiguous
    ("`unsafe_pickle`", "unsafe_pickle"),  # a hidden option
    ("run `smoothinv zoo build` first", "run `smoothinv zoo build` first"),  # not one word
    ("`baseline`=False", "--no-baseline"),
    ("`overwrite`=False", "--overwrite False"),  # a switch without an off flag: as written
    ("no references at all", "no references at all"),
])
def test_for_command_line_writes_parameters_as_flags(message, rendered):
    assert for_command_line(message) == rendered


def test_for_command_line_reads_the_given_commands():
    @click.command()
    @click.option("--num-classes", "-k", type=int)
    @click.option("--dry-run/--no-dry-run")
    def tool(num_classes, dry_run):
        """A stand-in."""

    assert for_command_line("pass `num_classes`=3, `dry_run`=True", tool) == "pass --num-classes 3, --dry-run"
    assert for_command_line("`dry_run`=False.", tool) == "--no-dry-run."
    assert for_command_line("`out`", tool) == "out"  # not an option of this command


def test_every_alias_is_a_flag_of_a_command():
    def flags(command: click.Command) -> set[str]:
        own = {o for p in command.params if isinstance(p, click.Option) for o in p.opts}
        subs = command.commands.values() if isinstance(command, click.Group) else []
        return own.union(*(flags(sub) for sub in subs))

    assert set(ALIASES.values()) <= flags(cli)


def test_the_cli_renders_library_errors(monkeypatch, capsys, tmp_path):
    from conftest import error_line, run_cli

    def refuse(*args, **kwargs):
        raise SmoothInvError(f"{param('num_classes')} is 0; pass {param('overwrite')}=True or {param('arch')}=NAME")

    monkeypatch.setattr("smoothinv.cli.main.check_destination", refuse)
    code, _, err = run_cli(monkeypatch, capsys, "invert", "--model", tmp_path / "m", "--image", tmp_path / "i.png",
                           "--target", "0", "--clean", tmp_path / "c.npz", "--out", tmp_path / "out")
    assert code == 2 and error_line(err) == "--num-classes is 0; pass --overwrite or --arch NAME"


def test_the_demo_command_line_reproduces_its_inversion(tmp_path):
    settings = {"model": tmp_path / "model.safetensors", "image": tmp_path / "image.png", "clean": tmp_path / "clean.npz",
                "target": 0, "eps": [1.5, 3.0], "steps": 300, "noise_samples": 10, "seed": 4}
    assert demo_invert_command(settings, tmp_path).split() == [
        "smoothinv", "invert", "--model", f"{tmp_path}/model.safetensors", "--image", f"{tmp_path}/image.png",
        "--target", "0", "--clean", f"{tmp_path}/clean.npz", "--eps", "1.5,3", "--steps", "300",
        "--noise-samples", "10", "--seed", "4", "--out", f"{tmp_path}/cli-run", "--overwrite"]
