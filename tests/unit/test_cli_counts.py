"""The run-length flags of every algorithm: ``--steps`` and ``--epochs`` refuse 0 and negatives
alike, through the same path as any usage error (one line on rank 0, exit 2), and no ``--help``
line states its default twice.

In-process, a world of 1: parsing comes before any world-size check, so the entry points'
``main(argv)`` refuse these before they need ranks. tests/mpi/test_bad_input.py launches the
same refusals at 2 ranks for the entry points in its table.
"""
from __future__ import annotations

import argparse
import importlib
import re

import pytest

from mpidist.algorithms import ALGORITHMS

POS_INT = "must be a positive integer, got {v}"
POS_FLOAT = "must be > 0, got {v}"

# (algorithm, flag as typed, value, words of the one-line error)
CASES = [(algo, flag, value, words.format(v=value))
         for algo in sorted(ALGORITHMS)
         for flag, words in (("--steps", POS_INT), ("-I", POS_INT), ("--epochs", POS_FLOAT))
         for value in ("0", "-3")]


def _parser(algo: str):
    mod = importlib.import_module(f"mpidist.{algo}.cli")
    return getattr(mod, "build_parser", None) or mod.make_parser


@pytest.mark.parametrize("algo, flag, value, words", CASES,
                         ids=[f"{c[0]}:{c[1]}={c[2]}" for c in CASES])
def test_zero_or_negative_run_length_is_a_usage_error(algo, flag, value, words, capsys):
    """``main([flag, value])``: SystemExit(2) and one line ``mpidist.<algo>: error: argument
    <flag>: <words>``, as PC-ASGD always did; never a run of 0 steps or of the default length."""
    mod = importlib.import_module(f"mpidist.{algo}.cli")
    with pytest.raises(SystemExit) as e:
        mod.main([flag, value, "--quiet"])
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"mpidist.{algo}: error: argument {flag}: {words}"], err
    assert out == ""


def test_run_length_given_is_never_none_and_not_given_is_none():
    """The parsers keep "not given" (None) apart from any number, so that ``is None`` is the test
    everywhere (a 0 could not reach a truthiness test, but a default must not hide as one)."""
    for algo in ("pcasgd", "dpsgd", "adacomm"):
        a = _parser(algo)().parse_args([])
        assert a.steps is None and a.epochs is None, algo
        a = _parser(algo)().parse_args(["--steps", "1"])
        assert a.steps == 1, algo


def test_adacomm_with_steps_and_no_time_budget_has_a_stopping_rule():
    from mpidist.adacomm import cli as A
    a = A.make_parser().parse_args(["--steps", "1", "--time-budget", "0"])
    assert A.check(a, 2) is None
    a = A.make_parser().parse_args(["--time-budget", "0"])
    assert "no stopping rule" in A.check(a, 2)


def test_adacomm_time_budget_defaults_to_30_s_only_without_steps_or_epochs():
    """`--steps 5000` alone runs 5000 steps (it used to stop at the default 30 s as well); with
    no flag the demonstration run lasts 30 s; an explicit --time-budget always counts."""
    from mpidist.adacomm import cli as A, time_budget
    tb = lambda *argv: time_budget(A.make_parser().parse_args(list(argv)))  # noqa: E731
    assert tb() == 30.0
    assert tb("--steps", "5000") == 0.0 and tb("--epochs", "2") == 0.0
    assert tb("--steps", "5000", "--time-budget", "12") == 12.0
    assert tb("--time-budget", "0", "--epochs", "1") == 0.0
    assert A.check(A.make_parser().parse_args([]), 2) is None


def test_adacomm_phase_steps_takes_the_smaller_limit():
    from mpidist.adacomm import phase_steps
    assert phase_steps(None, None, 10.0) is None          # the time budget ends the run
    assert phase_steps(7, None, 10.0) == 7
    assert phase_steps(None, 0.5, 10.0) == 5
    assert phase_steps(30, 0.5, 10.0) == 5 and phase_steps(3, 0.5, 10.0) == 3


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_help_states_each_default_once(algo):
    """No flag's help says "default" twice (as AdaComm's --time-budget did: "(0 = none; the
    default stopping rule) (default 30)")."""
    for action in _parser(algo)()._actions:
        if action.help and action.help != argparse.SUPPRESS:
            assert len(re.findall(r"\bdefault", action.help, re.I)) <= 1, \
                (action.option_strings, action.help)


def test_adacomm_help_says_when_the_run_stops():
    from mpidist.adacomm import cli as A
    helps = {a.dest: a.help for a in A.make_parser()._actions}
    assert "see --epochs" not in helps["steps"] and "no step limit" in helps["steps"]
    assert "whichever of --time-budget, --steps and --epochs comes first" in helps["time_budget"]
    assert "30 s when neither --steps nor --epochs is given" in helps["time_budget"]


def test_run_length_from_steps_epochs_or_the_default():
    """D-PSGD's and PC-ASGD's number of steps: --steps, else --epochs x steps per epoch (rounded,
    at least 1), else the algorithm's default."""
    from types import SimpleNamespace as NS

    from mpidist import cli
    assert cli.run_length(NS(steps=7, epochs=None), 10, 900) == 7
    assert cli.run_length(NS(steps=None, epochs=2.5), 10, 900) == 25
    assert cli.run_length(NS(steps=None, epochs=0.01), 10, 900) == 1
    assert cli.run_length(NS(steps=None, epochs=None), 10, 900) == 900
