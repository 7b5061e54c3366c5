"""The SLURM job templates (jobs/*.sbatch + jobs/common.sh), submitted to a real SLURM.

Static checks (always): the templates parse, ask for what a cluster user expects, and the shared
shell code computes MPICH's segment names right. With SLURM (`sbatch` present and a controller
answering; `bash jobs/local-slurm.sh` starts a one-node one as root): every template is submitted
with tiny settings (one of them through the `mpirun` alternative), and a job of the traced demo is
sent the early signal, requeues itself and finishes; exit states, output files and traces are
checked. Without SLURM those tests are skipped, saying why; where SLURM must be there (CI:
`.ci/run` sets MPIDIST_REQUIRE_SLURM=1), its absence is a failure instead.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from mpidist import trace
from mpidist.algorithms import ALGORITHMS as REGISTRY
from mpirun import REPO

JOBS = os.path.join(REPO, "jobs")
ALGORITHMS = list(REGISTRY)  # every algorithm has a template
# tiny settings: (ranks, arguments, environment)
TINY = {
    "pcasgd": (4, ["--steps", "6", "--clusters", "2,2"], {}),
    "adacomm": (2, ["--steps", "8", "--time-budget", "0"], {}),
    "dada": (2, ["--steps", "2", "--pretrain-steps", "2", "--eval-every", "2", "--sync-period", "2"],
             {"MPIDIST_LAUNCHER": "mpirun"}),   # the documented alternative to srun
    "mdgan": (3, ["-I", "3"], {}),
    "dpsgd": (4, ["--steps", "6"], {}),
}
assert set(TINY) == set(ALGORITHMS), "give every registered algorithm tiny settings here"
REQUEUE_STEPS = 150
TIMELIMIT_STEPS = 2400  # 0.05 s each: more than the one-minute limit of the first attempt
WAIT_S = 540


def sh(*cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


# ------------------------------------------------------------------------------ without SLURM

@pytest.mark.parametrize("algo", ALGORITHMS)
def test_template_asks_what_a_cluster_user_expects(algo):
    path = os.path.join(JOBS, f"{algo}.sbatch")
    text = open(path).read()
    assert sh("bash", "-n", path).returncode == 0
    opts = dict(re.findall(r"^#SBATCH --([a-z-]+)(?:=(\S+))?", text, re.M))
    for key in ("job-name", "nodes", "ntasks-per-node", "gpus-per-task", "cpus-per-task", "time",
                "output", "signal", "requeue"):
        assert key in opts, f"{algo}.sbatch has no #SBATCH --{key}"
    assert opts["gpus-per-task"] == "1"                        # one rank per GPU
    assert opts["job-name"] == algo and "%j" in opts["output"]  # output named by job id
    assert re.fullmatch(r"B:USR1@\d+", opts["signal"])          # early signal to the batch script
    assert re.search(rf"^ALGORITHM={algo}$", text, re.M) and 'mpidist_job "$@"' in text


def test_common_launches_with_srun_pmi2_and_documents_the_site_mpi():
    text = open(os.path.join(JOBS, "common.sh")).read()
    assert sh("bash", "-n", os.path.join(JOBS, "common.sh")).returncode == 0
    assert '--mpi=${MPIDIST_SRUN_MPI:-pmi2}' in text
    assert "--no-binary=mpi4py" in text and "module load" in text  # how to build mpi4py
    assert "scontrol requeue" in text


def test_fnv_hash_is_mpich_s():
    """mpidist_fnv must equal MPICH's HASH_FNV (32-bit FNV-1a) of the PMI job name, since the
    requeued job's clean-up finds the stale segments by it (mpich_shm_<hash>_<node>)."""
    def fnv1a(s):
        h = 2166136261
        for b in s.encode():
            h = ((h ^ b) * 16777619) & 0xFFFFFFFF
        return f"{h:x}"
    for s in ["11.0", "123456.7", "slurm.pmix.42.0", "x"]:
        out = sh("bash", "-c", f'source "{JOBS}/common.sh"; mpidist_fnv "{s}"').stdout
        assert out == fnv1a(s), s
    assert fnv1a("11.0") == "d5b6791"  # seen on this machine: /dev/shm/mpich_shm_d5b6791_0


# ------------------------------------------------------------------------------ with SLURM

def slurm_reason() -> str | None:
    if shutil.which("sbatch") is None:
        return ("sbatch not found: SLURM is not installed here (as root on Debian/Ubuntu, "
                "`bash jobs/local-slurm.sh` installs and starts a one-node SLURM)")
    p = sh("scontrol", "ping")
    if p.returncode != 0 or "UP" not in p.stdout:
        return ("sbatch is installed but no slurmctld answers `scontrol ping`; start one with "
                "`bash jobs/local-slurm.sh`")
    cpus = sh("sinfo", "-h", "-o", "%C").stdout.strip()  # allocated/idle/other/total
    if cpus and int(cpus.split("/")[-1]) < 4:
        return f"the SLURM partition has fewer than 4 CPUs ({cpus}); the tests need 4 tasks"
    return None


SLURM_MISSING = slurm_reason()
needs_slurm = pytest.mark.skipif(SLURM_MISSING is not None, reason=SLURM_MISSING or "")


def test_slurm_is_there_where_required():
    """In CI (MPIDIST_REQUIRE_SLURM=1, set by .ci/run) the SLURM tests below must run, not skip."""
    if os.environ.get("MPIDIST_REQUIRE_SLURM") != "1":
        pytest.skip("SLURM is required only where MPIDIST_REQUIRE_SLURM=1 (CI)")
    assert SLURM_MISSING is None, SLURM_MISSING


def job_info(jid: str) -> dict:
    out = sh("scontrol", "show", "job", "-o", jid).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def submit(tmp, name, script, ntasks, args, env=None, opts=()):
    e = dict(os.environ, MPIDIST_RUNS=str(tmp / "runs"), MPIDIST_PYTHON=sys.executable,
             OMP_NUM_THREADS="1", **(env or {}))
    cmd = ["sbatch", "--parsable", f"--job-name={name}", "--gpus-per-task=0", "--cpus-per-task=1",
           "--nodes=1", f"--ntasks-per-node={ntasks}", "--time=15",
           f"--output={tmp}/slurm-%x-%j.out", *opts, script, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=e, cwd=str(tmp))
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().split(";")[0]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Submit every template (tiny settings) and the requeue job at once; wait for all."""
    tmp = tmp_path_factory.mktemp("slurm")
    ids = {}
    for algo in ALGORITHMS:
        n, args, env = TINY[algo]
        ids[algo] = submit(tmp, algo, os.path.join(JOBS, f"{algo}.sbatch"), n, args, env)
    # the requeue job: the traced demo through the adacomm template's plumbing, long enough to be
    # running when the signal comes
    ids["requeue"] = submit(tmp, "requeue", os.path.join(JOBS, "adacomm.sbatch"), 2,
                            ["--steps", str(REQUEUE_STEPS), "--compute-seconds", "0.05"],
                            {"MPIDIST_MODULE": "trace_demo",
                             "PYTHONPATH": os.path.join(REPO, "tests", "programs"), "MPIDIST_GRACE": "60"})
    # the cancelled job: the same demo, ended with a plain `scancel` (SIGTERM to every task, then
    # SIGKILL after KillWait: what the time limit and preemption do)
    ids["term"] = submit(tmp, "term", os.path.join(JOBS, "adacomm.sbatch"), 2,
                         ["--steps", str(REQUEUE_STEPS), "--compute-seconds", "0.05"],
                         {"MPIDIST_MODULE": "trace_demo",
                          "PYTHONPATH": os.path.join(REPO, "tests", "programs")})
    # the time-limit job: one minute, no usable early signal (URG, ignored): SIGTERM at the limit
    # itself; the script requeues it, and the fixture gives the second attempt time to finish
    ids["timelimit"] = submit(tmp, "timelimit", os.path.join(JOBS, "adacomm.sbatch"), 2,
                              ["--steps", str(TIMELIMIT_STEPS), "--compute-seconds", "0.05"],
                              {"MPIDIST_MODULE": "trace_demo",
                               "PYTHONPATH": os.path.join(REPO, "tests", "programs")},
                              opts=["--time=1", "--signal=B:URG@1"])
    deadline = time.monotonic() + WAIT_S
    rq, term, tl = ids["requeue"], ids["term"], ids["timelimit"]
    signalled = released = cancelled = tl_released = False
    pending_since = {}  # job id -> when it was first seen pending again after its requeue
    while time.monotonic() < deadline:
        if not signalled and steps_done(tmp / "runs" / f"adacomm-{rq}" / "trace") >= 3:
            # a few steps in (so the ranks' signal handlers are in place): the early signal
            assert sh("scancel", "--signal=USR1", "--batch", rq).returncode == 0
            signalled = True
        if not cancelled and steps_done(tmp / "runs" / f"adacomm-{term}" / "trace") >= 3:
            assert sh("scancel", term).returncode == 0
            cancelled = True
        if signalled and not released and requeued_a_while(rq, pending_since):
            # SLURM holds a requeued job back for a while (BeginTime); let it start now
            sh("scontrol", "update", f"JobId={rq}", "StartTime=now")
            released = True
        if not tl_released and requeued_a_while(tl, pending_since):
            sh("scontrol", "update", f"JobId={tl}", "StartTime=now", "TimeLimit=15")
            tl_released = True
        states = {k: job_info(j).get("JobState") for k, j in ids.items()}
        if all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
               for s in states.values()):
            break
        time.sleep(2)
    else:
        for j in ids.values():
            sh("scancel", j)
        pytest.fail(f"jobs did not finish in {WAIT_S} s: {states}")
    return tmp, ids


REQUEUE_SETTLE_S = 3.0


def requeued_a_while(jid: str, pending_since: dict) -> bool:
    """Whether job `jid` has been pending again after its first requeue for REQUEUE_SETTLE_S.

    Released at once, a requeued job can be allocated within the second its first attempt's
    credential was revoked; slurmd then refuses to launch it ("Killing non-startable batch JobId:
    Job credential revoked", job FAILED, exit 1:0; seen once in CI). SLURM's own hold (BeginTime)
    avoids that; the tests shorten the hold, but not below a few seconds.
    """
    info = job_info(jid)
    if info.get("JobState") != "PENDING" or info.get("Restarts") != "1":
        return False
    since = pending_since.setdefault(jid, time.monotonic())
    return time.monotonic() - since >= REQUEUE_SETTLE_S


def steps_done(trace_dir) -> int:
    """Steps rank 0 has flushed to its trace so far (0 while there is no readable file)."""
    try:
        return len(trace.read_rank(str(trace_dir / "rank0.h5")).metric("loss")[0])
    except trace.TraceError:
        return 0


def output(tmp, name, jid):
    return (tmp / f"slurm-{name}-{jid}.out").read_text()


@needs_slurm
@pytest.mark.parametrize("algo", ALGORITHMS)
def test_template_runs_on_slurm(jobs, algo):
    tmp, ids = jobs
    jid = ids[algo]
    out = output(tmp, algo, jid)
    info = job_info(jid)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), out[-3000:]
    n, _, env = TINY[algo]
    run_dir = tmp / "runs" / f"{algo}-{jid}"
    launcher = env.get("MPIDIST_LAUNCHER", "srun")
    expect = "srun --mpi=pmi2" if launcher == "srun" else f"mpirun -n {n}"
    assert expect in out and f"trace: {run_dir}/trace" in out
    assert expect in (run_dir / "job.txt").read_text()
    run = trace.read_run(str(run_dir / "trace"))
    assert [r.rank for r in run.ranks] == list(range(n))
    assert {r.attrs["status"] for r in run.ranks} == {"ok"}
    assert run.attrs["algorithm"] == algo and run.attrs["world_size"] == n
    assert len(run.comm) > 0
    summary = (run_dir / "summary.txt").read_text()
    assert f"algorithm  {algo}" in summary and "run totals" in summary
    assert os.path.realpath(run_dir / "slurm.out") == str(tmp / f"slurm-{algo}-{jid}.out")


@needs_slurm
def test_early_signal_checkpoints_and_requeues(jobs):
    tmp, ids = jobs
    jid = ids["requeue"]
    out = output(tmp, "requeue", jid)
    info = job_info(jid)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), out
    assert "got SIGUSR1: sending SIGUSR1 to the ranks" in out
    assert "time limit near: requeueing (restart 1 of at most 3)" in out
    run_dir = tmp / "runs" / f"adacomm-{jid}"
    attempts = (run_dir / "job.txt").read_text().split("attempt ")[1:]
    assert len(attempts) == 2 and "-m trace_demo" in attempts[1]
    # the ranks saved a checkpoint and stopped; the second attempt resumed it in the same trace
    assert f"--resume {run_dir}/trace" in attempts[1]
    assert "(trace status: stopped by signal)" in out
    run = trace.read_run(str(run_dir / "trace"))
    assert {r.attrs["status"] for r in run.ranks} == {"ok"}
    for r in run.ranks:
        steps, _, _ = r.metric("loss")
        # every step exactly once: the rows after the checkpoint were dropped and redone
        assert list(steps) == list(range(REQUEUE_STEPS)), r.rank
        ck, _, _ = r.metric("checkpoint")
        assert len(ck) == 1 and 0 <= ck[0] < REQUEUE_STEPS - 1
        assert r.attrs["resumed_at_step"] == ck[0]


@needs_slurm
def test_scancel_sigterm_checkpoints_every_rank(jobs):
    """`scancel` (like the time limit and preemption) sends SIGTERM to every task: the ranks agree
    on a step, save a checkpoint and exit 0 before SLURM's SIGKILL; the batch script does not pass
    a second SIGTERM on."""
    tmp, ids = jobs
    jid = ids["term"]
    out = output(tmp, "term", jid)
    assert job_info(jid)["JobState"] == "CANCELLED", out
    assert "got SIGTERM (reason " in out and "SLURM signals every rank itself" in out
    assert "got SIGTERM (reason TimeLimit)" not in out and "requeueing" not in out
    assert "(trace status: stopped by signal)" in out and "ranks ended with status 0" in out
    run_dir = tmp / "runs" / f"adacomm-{jid}"
    run = trace.read_run(str(run_dir / "trace"))
    saved = set()
    for r in run.ranks:
        assert r.attrs["status"] == "stopped by signal"
        ck, _, _ = r.metric("checkpoint")
        assert len(ck) == 1 and max(r.metric("loss")[0]) == ck[0] < REQUEUE_STEPS - 1
        saved.add(int(ck[0]))
    assert len(saved) == 1  # the same step on every rank
    assert os.listdir(run_dir / "trace" / "checkpoints") == [f"step-{saved.pop():09d}"]


@needs_slurm
def test_time_limit_sigterm_checkpoints_and_requeues(jobs):
    """A job that reaches its time limit without the early signal: SLURM's SIGTERM makes every rank
    checkpoint, the script sees the reason TimeLimit and requeues; the second attempt resumes and
    finishes, every step exactly once in the trace."""
    tmp, ids = jobs
    jid = ids["timelimit"]
    out = output(tmp, "timelimit", jid)
    info = job_info(jid)
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), out[-3000:]
    assert "got SIGTERM (reason TimeLimit)" in out
    assert "time limit reached: requeueing (restart 1 of at most 3)" in out
    assert "(trace status: stopped by signal)" in out
    run_dir = tmp / "runs" / f"adacomm-{jid}"
    attempts = (run_dir / "job.txt").read_text().split("attempt ")[1:]
    assert len(attempts) == 2 and f"--resume {run_dir}/trace" in attempts[1]
    run = trace.read_run(str(run_dir / "trace"))
    for r in run.ranks:
        assert r.attrs["status"] == "ok"
        assert list(r.metric("loss")[0]) == list(range(TIMELIMIT_STEPS)), r.rank
        ck, _, _ = r.metric("checkpoint")
        assert len(ck) == 1 and r.attrs["resumed_at_step"] == ck[0]
