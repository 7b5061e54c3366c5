"""mpidist.rundir: one job at a time owns a run directory (no MPI: the owner is a process)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from mpidist import rundir

HOLD = """
import sys, time
from mpidist import rundir
err = rundir.own(sys.argv[1])
print("held" if err is None else err, flush=True)
time.sleep(600)
"""


def _holder(path):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_job_is_refused_naming_the_first(tmp_path):
    p = _holder(tmp_path)
    try:
        err = rundir.own(str(tmp_path))
        assert err is not None and "\n" not in err
        assert f"is in use by another job (host {os.uname().nodename}, pid {p.pid}" in err
        who = json.loads((tmp_path / rundir.OWNER).read_text())
        assert who["pid"] == p.pid
        # choose() refuses the same way (a --resume of that directory)
        _, err2, created = rundir.choose(str(tmp_path), "pcasgd", os.path.abspath(tmp_path))
        assert err2 == err and not created
    finally:
        p.kill()
        p.wait()


def test_a_dead_owner_is_taken_over_and_a_clean_end_removes_the_file(tmp_path):
    p = _holder(tmp_path)
    p.send_signal(signal.SIGKILL)       # dies holding it: the kernel drops the lock
    p.wait()
    assert (tmp_path / rundir.OWNER).exists()          # stale file of the dead job
    assert rundir.own(str(tmp_path)) is None
    assert json.loads((tmp_path / rundir.OWNER).read_text())["pid"] == os.getpid()
    assert rundir.own(str(tmp_path)) is None            # again in the same process: allowed
    rundir.release(str(tmp_path))
    assert not (tmp_path / rundir.OWNER).exists()
    # and the lock is really free again: another process takes it
    q = _holder(tmp_path)
    q.kill()
    q.wait()


def test_refused_start_leaves_no_directory(tmp_path):
    d = tmp_path / "new"
    run_dir, err, created = rundir.choose(str(d), "pcasgd", None)
    assert err is None and created and (d / rundir.OWNER).exists()
    rundir.remove_if_empty(run_dir, True)
    assert not d.exists()
