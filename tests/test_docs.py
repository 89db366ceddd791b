"""Every shell command in README.md and docs/ stands for something that exists: each `trilemma`
line parses with today's command line (flags, subcommands, choices), each `make` target is in the
Makefile, each `pip install` names a path or an extra of this checkout. Python blocks are run by
test_contract.py; this keeps the shell blocks from drifting the way `--likelihood-images` did."""

import re
import shlex

import pytest
from helpers import REPO

from trilemma.cli import build_parser
from trilemma.plugins import collect

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: Commands of other tools that docs may show, and why they are not checked here.
EXTERNAL = {"ray": "Ray's own CLI (cluster set-up)", "tensorboard": "TensorBoard's own viewer"}


def shell_commands(path):
    """(line number, words) of every command in the file's ```sh blocks, continuations joined."""
    text = path.read_text()
    for match in re.finditer(r"^```sh\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        first = text[:match.start()].count("\n") + 2
        joined = match.group(1).replace("\\\n", " ")
        for offset, line in enumerate(joined.splitlines()):
            words = shlex.split(line, comments=True)
            if words:
                yield first + offset, words


COMMANDS = [(path, number, words) for path in DOCS for number, words in shell_commands(path)]


def test_the_docs_have_shell_commands_to_check():
    assert len(COMMANDS) > 20 and {p.name for p, _, _ in COMMANDS} >= {"README.md", "writing-a-plugin.md"}


def make_targets():
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.MULTILINE))


def extras():
    import tomllib

    return set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def problem(words, parser):
    """Why a documented command would not work from this checkout, or None."""
    program = words[0].removeprefix(".venv/bin/")
    if program == "trilemma":
        try:
            parser.parse_args(words[1:])
        except SystemExit as exc:
            return f"`trilemma` refuses it (exit {exc.code})"
        return None
    if program == "make":
        missing = set(words[1:]) - make_targets()
        return f"no make target(s) {sorted(missing)}" if missing else None
    if program == "pip" and words[1] == "install":
        for target in (w for w in words[2:] if not w.startswith("-")):
            path, _, extra = target.partition("[")
            if not (REPO / path).exists():
                return f"pip install {target}: no {path} in the checkout (nothing is published)"
            if extra and extra.rstrip("]") not in extras():
                return f"pip install {target}: pyproject.toml has no extra {extra.rstrip(']')}"
        return None
    if program in EXTERNAL:
        return None
    return f"unknown program {program!r} (add it to EXTERNAL with why, if docs should show it)"


@pytest.mark.parametrize("path, number, words", COMMANDS, ids=[f"{p.name}:{n}" for p, n, _ in COMMANDS])
def test_every_documented_command_works_from_this_checkout(path, number, words, capsys):
    parser = build_parser(collect())
    assert problem(words, parser) is None, f"{path.name}:{number}: {' '.join(words)}: {problem(words, parser)}"


def test_a_drifted_command_is_caught(capsys):
    parser = build_parser(collect())
    assert "refuses" in problem(["trilemma", "run", "--likelihood-likelihood-images", "5"], parser)
    assert "no make target" in problem(["make", "frobnicate"], parser)
    assert "nothing is published" in problem(["pip", "install", "trilemma-mymodel"], parser)
    assert "no extra" in problem(["pip", "install", "-e", ".[gpu]"], parser)
    assert "unknown program" in problem(["curl", "x"], parser)
