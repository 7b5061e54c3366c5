"""What every test shares: launching multi-rank programs, and a hermetic environment.

- ``run_mpi(n, args, timeout)`` runs ``mpiexec -n n python <args>`` with a timeout, so that a
  deadlock fails the test with what was printed instead of hanging; ``check(proc)`` asserts the
  exit status and shows the output when it fails; ``check_program(proc)`` asserts a check
  program's status against its PASS/FAIL lines (1 exactly when one FAILed). Multi-rank launches are expensive on 2 cores
  (each rank imports torch): batch checks into few launches. (Test files import them from
  ``mpirun``, which re-exports them.)
- Hermetic: every launch and every in-process test sees ``MPIDIST_CACHE`` in a temporary folder of
  the session (MD-GAN's scoring classifier is cached there, never in ~/.cache), and
  ``tests/programs`` on ``PYTHONPATH`` (and on ``sys.path``): the check programs that tests launch,
  the reference implementations they import, and a user's own model and data outside the package.

Layout: ``tests/unit`` (no multi-rank launch), ``tests/mpi`` (each test launches ranks with
``mpiexec`` or ``srun``), ``tests/programs`` (what they launch or import).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


PROGRAMS = os.path.join(REPO, "tests", "programs")
sys.path.insert(0, PROGRAMS)


@pytest.fixture(autouse=True, scope="session")
def _hermetic(tmp_path_factory):
    """The session's own scorer cache and the programs' folder, for every test and launch."""
    saved = {k: os.environ.get(k) for k in ("MPIDIST_CACHE", "PYTHONPATH")}
    os.environ["MPIDIST_CACHE"] = str(tmp_path_factory.mktemp("mpidist-cache"))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (PROGRAMS, saved["PYTHONPATH"]) if p)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _fresh_user_modules():
    """Each test loads a user's MODULE:FUNCTION dataset anew (mpidist.data caches them per process)."""
    yield
    data = sys.modules.get("mpidist.data")
    if data is not None:
        data._USER_CACHE.clear()


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size)`` -> a fresh directory on a tmpfs of ``size`` (e.g. "3m"): a disk that fills
    up. Needs root and mount (the test skips otherwise, saying why); unmounted after the test."""
    mounted = []

    def mount(size: str):
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        d = tmp_path / f"disk{len(mounted)}"
        d.mkdir()
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if p.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def mpiexec() -> str:
    exe = os.path.join(BIN, "mpiexec")
    if os.path.exists(exe):
        return exe
    from shutil import which
    exe = which("mpiexec") or which("mpirun")
    if exe is None:
        pytest.skip("no mpiexec in the environment (pip install -e '.[mpich]')")
    return exe


def run_mpi(n: int, args: list[str], timeout: float = 120, env: dict | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run ``mpiexec -n n python <args>``; on timeout fail the test with what was printed."""
    e = dict(os.environ)
    e.setdefault("PYTHONUNBUFFERED", "1")
    e.setdefault("OMP_NUM_THREADS", "1")
    e.update(env or {})
    cmd = [mpiexec(), "-n", str(n), sys.executable, *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e,
                              cwd=cwd or REPO)
    except subprocess.TimeoutExpired as t:
        out = (t.stdout or b"").decode(errors="replace") if isinstance(t.stdout, bytes) else (t.stdout or "")
        err = (t.stderr or b"").decode(errors="replace") if isinstance(t.stderr, bytes) else (t.stderr or "")
        pytest.fail(f"mpiexec -n {n} {' '.join(args)} did not finish in {timeout} s "
                    f"(deadlock?)\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}")


def check_program(proc: subprocess.CompletedProcess) -> str:
    """A check program's exit status goes with its lines (tests/programs/checks.py): 1 when it
    printed a ``FAIL`` line, else 0; anything else (a crash, a deadlock broken by a signal) fails
    here. Returns stdout, for the caller to parse line by line."""
    failed = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAIL ")]
    assert proc.returncode == (1 if failed else 0), (
        f"exit {proc.returncode} with {len(failed)} FAIL lines\n--- stdout\n{proc.stdout[-4000:]}"
        f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc.stdout


def check(proc: subprocess.CompletedProcess, code: int = 0) -> str:
    """Assert the exit status; return stdout. The output is shown when it fails."""
    assert proc.returncode == code, (f"exit {proc.returncode}, expected {code}\n--- stdout\n"
                                     f"{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc.stdout
