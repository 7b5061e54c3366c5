"""``python -m mpidist.check`` on one rank, in this process: every line it promises, and bad
arguments as one line with status 2. Two ranks: tests/mpi/test_check.py."""
from __future__ import annotations

from mpi4py import MPI

from mpidist import check


def _lines(text: str) -> dict:
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines())}


def test_one_rank(capsys):
    assert check.main([]) == 0
    out = _lines(capsys.readouterr().out)
    assert out["MPI library"] == " ".join(MPI.Get_library_version().splitlines()[0].split())
    assert out["ranks"].startswith("1 on 1 node(s)")
    assert out["MPI_WTIME_IS_GLOBAL"] in ("0", "1")
    assert out["latency"] == "one rank: no pair to measure"
    for key in ("MPI standard", "mpi4py", "CUDA", "CUDA-aware MPI (library)", "huge pages",
                "clock method"):
        assert out[key], key


def test_bad_arguments_are_one_line(capsys):
    for argv in (["--bytes", "0"], ["--reps", "x"], ["--nope"]):
        assert check.main(argv) == 2
        cap = capsys.readouterr()
        assert cap.out == "" and len(cap.err.strip().splitlines()) == 1, cap.err
        assert cap.err.startswith("mpidist.check: error:")


def test_help(capsys):
    assert check.main(["--help"]) == 0
    assert "--bytes" in capsys.readouterr().out
