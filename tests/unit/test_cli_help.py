"""``--help`` of every algorithm: its own flags and the data group explained in the paper's terms,
the run flags every algorithm shares named only; ``--help-all``: every flag explained and the note
on code mpidist runs but does not ship. Both wrap at one width whatever the terminal.

In-process, a world of 1: ``main(["--help"])`` prints and exits 0 before it needs ranks.
"""
from __future__ import annotations

import argparse
import importlib

import pytest

from mpidist import cli
from mpidist.algorithms import ALGORITHMS

ALGOS = sorted(ALGORITHMS)
MAX_LINES = 120  # AdaComm, the longest, prints 119 (its own 95 lines of flags in full)


def _parser(algo: str) -> cli.ArgumentParser:
    mod = importlib.import_module(f"mpidist.{algo}.cli")
    return (getattr(mod, "build_parser", None) or mod.make_parser)()


def _printed(algo: str, flag: str, capsys) -> str:
    mod = importlib.import_module(f"mpidist.{algo}.cli")
    with pytest.raises(SystemExit) as e:
        mod.main([flag])
    assert e.value.code == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def _words(text: str) -> str:
    return " ".join(text.split())


def _explained(p: cli.ArgumentParser, action: argparse.Action) -> str:
    """The action's help as printed (``%%`` as ``%``), its whitespace collapsed."""
    return _words(p._get_formatter()._expand_help(action))


def _shown(text: str, option: str) -> bool:
    """Whether a line of the help begins with ``option`` (as a flag is listed, not mentioned)."""
    return any(ln.split(",")[0].split()[:1] == [option] for ln in text.splitlines()
               if ln.startswith("  -"))


def test_every_algorithm_is_here():
    assert ALGOS == ["adacomm", "dada", "dpsgd", "mdgan", "pcasgd"]


@pytest.mark.parametrize("algo", ALGOS)
def test_help_explains_own_flags_and_names_the_run_flags(algo, capsys):
    text = _printed(algo, "--help", capsys)
    p = _parser(algo)
    assert text == p.format_help()
    assert len(text.splitlines()) <= MAX_LINES, len(text.splitlines())
    assert text.startswith(f"usage: mpirun -n N python -m mpidist.{algo} [flags]")
    assert p.description.splitlines()[0] in text
    words = _words(text)
    run = p.run_group._group_actions
    for a in p._actions:
        if a.help == argparse.SUPPRESS:          # hidden flags stay hidden
            assert not any(_shown(text, o) for o in a.option_strings), a.option_strings
        elif a in run:                           # named, not explained
            assert f" {a.option_strings[0]} " in f" {words} ", a.option_strings
            assert _explained(p, a) not in words, a.option_strings
        else:                                    # the algorithm's own and the data group in full
            assert all(_shown(text, o) or o in words for o in a.option_strings), a.option_strings
            assert _explained(p, a) in words, a.option_strings
    for name in ("--seed", "--trace-dir", "--checkpoint-every", "--resume", "--quiet"):
        assert name in words
    assert "run (shared by every mpidist algorithm):" not in text
    assert "full unpickle" not in text and "MPIDIST_SETUP" not in text
    assert "--help-all" in text and "does not ship" in text


@pytest.mark.parametrize("algo", ALGOS)
def test_help_all_explains_every_flag_and_the_user_code_note(algo, capsys):
    text = _printed(algo, "--help-all", capsys)
    p = _parser(algo)
    assert text == p.format_help(full=True)
    words = _words(text)
    for a in p._actions:
        if a.help == argparse.SUPPRESS:
            assert not any(_shown(text, o) for o in a.option_strings), a.option_strings
        else:
            assert _shown(text, a.option_strings[0]), a.option_strings
            assert _explained(p, a) in words, a.option_strings
    assert text.rstrip().endswith(cli.USER_CODE.splitlines()[-1])
    assert "run (shared by every mpidist algorithm):" in text and "full unpickle" in text


def test_help_width_does_not_follow_the_terminal(monkeypatch):
    p = _parser("pcasgd")
    monkeypatch.delenv("COLUMNS", raising=False)
    text = p.format_help(full=True)
    for columns in ("40", "200"):
        monkeypatch.setenv("COLUMNS", columns)
        assert p.format_help(full=True) == text, columns
    helps = [ln for ln in text.splitlines() if ln.startswith(" " * 24)]   # wrapped flag help
    assert helps and max(map(len, helps)) <= cli.HELP_WIDTH
    assert "Metropolis-Hastings)/2" in text          # no line breaks inside a hyphenated word


def test_help_all_is_no_setting():
    """--help-all adds nothing to the namespace: a resume compares the same settings as before."""
    p = _parser("dpsgd")
    assert "help_all" not in vars(p.parse_args([]))
