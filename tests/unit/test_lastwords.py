"""mpidist.lastwords: the watcher names a rank that dies without a word, and only that one."""
import os
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from mpidist import lastwords

# a stand-in rank: starts its watcher, then ends as argv[2] says
RANK = r"""
import os, signal, sys, time
from mpidist import lastwords
lastwords.LINGER_S = float(sys.argv[4])
assert lastwords.watch(int(sys.argv[3]), sys.argv[1])
how = sys.argv[2]
if how == "exit":
    sys.exit(0)
if how == "spoke-kill":
    lastwords.spoke()
if how == "wait-kill":
    time.sleep(0.5)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _rank(run_id, how, rank=0, linger=1.0):
    return subprocess.Popen([sys.executable, "-c", RANK, run_id, how, str(rank), str(linger)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p):
    out, err = p.communicate(timeout=30)   # EOF: the watcher closed its copy of stderr too
    return p.returncode, err


@pytest.fixture
def run_id():
    rid = f"test-{uuid.uuid4().hex}"
    yield rid
    try:
        os.unlink(lastwords.claim_path(rid))
    except FileNotFoundError:
        pass


def test_a_killed_rank_is_named_with_its_pid(run_id):
    p = _rank(run_id, "kill", rank=3)
    code, err = _finish(p)
    assert code == -9
    lines = [ln for ln in err.splitlines() if "without a word" in ln]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mpidist: rank 3 (pid {p.pid} on ")


def test_a_normal_exit_says_nothing(run_id):
    code, err = _finish(_rank(run_id, "exit"))
    assert code == 0 and err == ""
    assert not os.path.exists(lastwords.claim_path(run_id))


def test_a_rank_that_reported_its_failure_silences_the_killed_ones(run_id):
    """The failing rank claims (spoke) before MPI_Abort; the ranks the launcher kills after it,
    and the failing rank itself when killed, print nothing."""
    first = _rank(run_id, "spoke-kill", rank=1, linger=3.0)
    assert _finish(first) == (-9, "")
    second = _rank(run_id, "kill", rank=0)
    code, err = _finish(second)
    assert code == -9 and err == ""


def test_only_the_first_killed_rank_speaks_and_the_claim_goes(run_id):
    first = _rank(run_id, "kill", rank=2, linger=2.0)
    code, err = _finish(first)
    assert f"rank 2 (pid {first.pid}" in err
    later = _rank(run_id, "kill", rank=5)
    assert _finish(later) == (-9, "")
    deadline = time.monotonic() + 30
    while os.path.exists(lastwords.claim_path(run_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(lastwords.claim_path(run_id)), "the claim outlived LINGER_S"


def test_claim_path_is_node_local_and_safe():
    path = lastwords.claim_path("../../etc/x y")
    assert os.path.dirname(path) == tempfile.gettempdir()
    assert os.path.basename(path) == "mpidist-etcxy.ended"
