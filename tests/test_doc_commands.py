"""Every ``crowdlearn`` command the documentation shows is one the program accepts: its arguments
parse, and for ``run`` and ``sweep`` the config it names, with its ``--set`` overrides (and a
sweep's grid), validates.  Nothing runs; a renamed key or option in the code fails here instead of
in a reader's terminal."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from crowdlearn import cli
from crowdlearn import config as config_mod
from crowdlearn.sweeps import parse_grid

ROOT = Path(__file__).resolve().parent.parent
#: the pages a reader copies commands from (docs/benchmarks.md holds past runs' commands, some of
#: them of options since renamed on purpose: a log, not instructions)
PAGES = ["README.md", "benchmarks/README.md", *sorted(
    str(p.relative_to(ROOT)) for p in [*ROOT.glob("docs/*.md"), *ROOT.glob("docs/experiments/*.md")]
    if p.name != "benchmarks.md")]
COMMAND = re.compile(r"(?:\.venv/bin/)?\bcrowdlearn (run|sweep|partition|compare|serve|join)\b"
                     r"[^`\n|]*")


def commands(text: str) -> list[str]:
    """The ``crowdlearn`` commands of a page: a shell line (continued by a trailing backslash) or
    an inline code span, without its ``# comment``; a bare mention (``crowdlearn partition``
    with no argument) is prose, and one with a placeholder (``…``, ``<id>``) a pattern, not a
    command.

    >>> commands("x\\n.venv/bin/crowdlearn run a.toml \\\\\\n    --set rounds=2  # two\\n")
    ['crowdlearn run a.toml --set rounds=2']
    >>> commands("(`crowdlearn sweep`) and `.venv/bin/crowdlearn run --out r`; more")
    ['crowdlearn run --out r']
    >>> commands("`crowdlearn run EXAMPLE --set seed=S --set …` `crowdlearn run R/<id>/c.json`")
    []
    """
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for m in COMMAND.finditer(joined):
        words = shlex.split(m.group(0), comments=True)
        if len(words) > 2 and not any("…" in w or re.search(r"<\w+>", w) for w in words):
            out.append(shlex.join(["crowdlearn", *words[1:]]))
    return out


def documented() -> list[tuple[str, str]]:
    found = [(page, c) for page in PAGES for c in commands((ROOT / page).read_text())]
    helps = {name: text for name, text in vars(cli).items()     # the --help texts
             if name.endswith(("EPILOG", "DESCRIPTION")) and isinstance(text, str)}
    found += [(f"cli.{name}", c) for name, text in sorted(helps.items()) for c in commands(text)]
    return found


def test_the_pages_show_commands_of_every_kind():
    kinds = {shlex.split(c)[1] for _, c in documented()}
    assert {"run", "sweep", "partition", "compare", "serve", "join"} <= kinds, kinds


@pytest.mark.parametrize("page,command", documented())
def test_a_documented_command_parses_and_its_config_validates(page, command, monkeypatch):
    monkeypatch.chdir(ROOT)                    # the pages' paths are from the repository root
    argv = shlex.split(command)[1:]
    try:
        args = cli.build_parser().parse_args(argv)
    except SystemExit as e:                    # argparse's usage error
        pytest.fail(f"{page}: `{command}` does not parse (exit {e.code})")
    if args.command in ("run", "sweep"):
        if args.config and args.config.endswith("config.json") and not Path(args.config).exists():
            return      # a results folder's record, made by an earlier command of the page
        sets = list(args.set or [])
        if getattr(args, "runtime", None):
            sets.append(f"runtime.engine={args.runtime}")
        config_mod.load(args.config, sets)      # raises ConfigError naming every problem
    if args.command == "sweep":
        parse_grid(args.grid or [])


def python_blocks(text: str) -> list[str]:
    """The fenced ``python`` blocks of a page, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


def test_the_readme_python_examples_run_as_shown(tmp_path, monkeypatch, capsys):
    """The README's Python blocks, verbatim: a simulation from a dict, then ``results.load`` of
    the folders its Quickstart's commands write (made here by small runs under those names)."""
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) == 2, "a README python block was added or removed: run it here too"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md python block 1", "exec"), {})
    accuracy, sent = capsys.readouterr().out.split()
    assert 0 < float(accuracy) <= 1 and int(sent) > 0
    for name in ("fashion", "fashion-churn", "central"):   # the Quickstart's folders, tiny
        extra = ["--set", "protocol=centralized"] if name == "central" else []
        assert cli.main(["run", "--quiet", "--no-plots", "--set", "rounds=1", "--set",
                         "fleet.devices=4", "--set", "fedavg.clients_per_round=2", *extra,
                         "--out", f"results/{name}"]) == 0
    scope: dict = {}
    exec(compile(blocks[1], "README.md python block 2", "exec"), scope)
    runs = scope["runs"]
    assert sorted(runs.summary["run"]) == ["central", "fashion", "fashion-churn"]
    assert set(runs.metrics["run"]) == {"fashion", "fashion-churn", "central"}
