"""The multi-rank launches of the DADA user-model tests. tests/unit/test_dada_user.py describes what each
launch checks and holds the checks that need no launch."""
from __future__ import annotations
import json
import os
import re

import pytest
import torch

from mpidist import trace
from mpirun import PROGRAMS, check, run_mpi
from bad_cases import assert_refused


# measured: source-only 70.00% -> adapted 89.67% on the target blobs (seed 3, 300 steps, GA p = 2;
# the API run: the same); centralized ADDA, seeds 0-4: 67-74% -> 89-94%
MIN_ADAPTED, MIN_GAIN = 0.80, 0.10
# measured: the example's target 68.7% -> 98.3% (-n 2); -n 3: 68.7% -> 95.7%, 74.3% -> 98.7%
MIN_EXAMPLE = 0.85

USER = ["--source-data", "dada_blobs:source", "--target-data", "dada_blobs:target",
        "--extractor", "dada_blobs:extractor", "--classifier", "dada_blobs:classifier",
        "--discriminator", "dada_blobs:discriminator"]



# ===================================================================================== MPI

@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """tests/programs/dada_user_checks.py under mpiexec -n 2, once."""
    out = tmp_path_factory.mktemp("dada_user")
    proc = run_mpi(2, [os.path.join(PROGRAMS, "dada_user_checks.py"), "--out", str(out)],
                   timeout=600)
    return proc, str(out)


def _models(run_dir, name):
    return [torch.load(os.path.join(run_dir, name, f"rank{r}.pt"), weights_only=True)
            for r in (0, 1)]


def test_cli_adapts_names_and_saves(launched):
    proc, out = launched
    text = check(proc)
    assert "user checks done" in text
    head = text[text.index("DADA ga (p = 2), 300 steps, source dada_blobs:source -> target "
                           "dada_blobs:target, 1 source + 1 target(s)"):]
    assert ("networks: extractor dada_blobs:extractor (688 parameters), classifier "
            "dada_blobs:classifier (51 parameters), discriminator dada_blobs:discriminator "
            "(1633 parameters)") in head
    assert ("data: source dada_blobs:source: 600 training samples of shape (4,); target rank 1 "
            "dada_blobs:target: 600 training samples") in head
    m = re.search(r"target rank 1 \(dada_blobs:target\): source-only ([\d.]+)% -> adapted "
                  r"([\d.]+)%", head)
    before, after = float(m.group(1)) / 100, float(m.group(2)) / 100
    assert after >= MIN_ADAPTED and after - before >= MIN_GAIN, (before, after)
    run = trace.read_run(os.path.join(out, "cli"))
    for r in run.ranks:
        assert r.attrs["status"] == "ok"
        args = json.loads(r.attrs["args"]) if isinstance(r.attrs["args"], str) else r.attrs["args"]
        assert args["source_data"] == "dada_blobs:source"
        assert args["discriminator"] == "dada_blobs:discriminator"
        assert "dada_blobs:extractor (688 parameters)" in r.attrs["networks"]
    # GA keeps D identical on every rank: the saved discriminators are the same bits
    d0, d1 = _models(os.path.join(out, "cli"), "discriminator")
    assert d0.keys() == d1.keys() and all(torch.equal(d0[k], d1[k]) for k in d0)


def test_cli_equals_api(launched):
    """The command line and the user's script on the API (same data, seed, batches): the same
    discriminator and target network, bit for bit."""
    proc, out = launched
    check(proc)
    assert re.search(r"API target rank 1: source-only [\d.]+% -> adapted [\d.]+%", proc.stdout)
    for name in ("discriminator", "model"):
        cli, api = _models(os.path.join(out, "cli"), name), _models(os.path.join(out, "api"), name)
        for r in (0, 1):
            assert cli[r].keys() == api[r].keys(), name
            bad = {k: float((cli[r][k] - api[r][k]).abs().max()) for k in cli[r]
                   if not torch.equal(cli[r][k], api[r][k])}
            assert not bad, f"{name} rank {r}: max |CLI - API| {bad}"


def test_api_checkpoint_resume_bitwise(launched):
    proc, out = launched
    check(proc)
    for name in ("discriminator", "model"):
        full, resumed = (_models(os.path.join(out, d), name) for d in ("api", "part"))
        for r in (0, 1):
            assert all(torch.equal(full[r][k], resumed[r][k]) for k in full[r]), (name, r)
    assert os.path.isdir(os.path.join(out, "part", "checkpoints"))


BAD_MESSAGES = {
    "no_module": "--source-data nosuchmod:f: cannot import module 'nosuchmod'",
    "no_function": "--extractor dada_blobs:nope: module 'dada_blobs' has no function 'nope'",
    "extractor_not_module": "--extractor dada_blobs:not_a_module: returned str, expected a "
                            "torch.nn.Module",
    "data_not_pair": "--source-data dada_blobs:not_a_pair: returned int, expected (train, test)",
    "features_not_flat": "expected features [batch, F]",
    "classifier_wrong_classes": "--classifier dada_blobs:wrong_classes does not fit the labels",
    "discriminator_two_logits": "one domain logit per sample [batch, 1]",
    "builtin_extractor_on_vectors": "the built-in extractor (adda-lenet) takes images",
    "source_too_small": "blobs:tiny: the source holds 3 training samples, fewer than one batch",
    "domains_differ_in_shape": "the domains' inputs differ in shape (source (4,), target rank 1 "
                               "(2,))",
    "target_without_source": "--target-data needs --source-data too",
    "not_a_spec": "argument --source-data: expected MODULE:FUNCTION, got 'blobs'",
    "data_flag": "--data: DADA has a source and a target domain",
}


def test_bad_input_one_line_exit_2_nothing_written(launched):
    proc, _ = launched
    check(proc)
    assert_refused(proc.stdout, BAD_MESSAGES, "mpidist.dada", 2)


def test_example_script(tmp_path):
    proc = run_mpi(2, ["-m", "mpidist.dada.example"], timeout=300, cwd=str(tmp_path))
    out = check(proc)
    m = re.search(r"target rank 1: source-only ([\d.]+)% -> adapted ([\d.]+)%", out)
    assert m, out
    assert float(m.group(2)) / 100 >= MIN_EXAMPLE and float(m.group(2)) > float(m.group(1))
    runs = [d for d in os.listdir(tmp_path / "runs")]
    assert len(runs) == 1
    run = trace.read_run(str(tmp_path / "runs" / runs[0]))
    chans = {c.decode() for r in run.ranks for c in r.comm["channel"]}
    assert {"init_extractor", "init_classifier", "init_disc", "disc_grads", "report"} <= chans
    assert os.path.exists(tmp_path / "runs" / runs[0] / "model" / "rank1.pt")


def test_bad_input_through_python_m(tmp_path):
    """The real entry point: one line on rank 0, exit 2, no run directory."""
    tdir = tmp_path / "bad"
    proc = run_mpi(2, ["-m", "mpidist.dada", *USER[:8], "--discriminator", "dada_blobs:two_logits",
                       "--trace-dir", str(tdir)], timeout=180)
    check(proc, 2)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["mpidist.dada: error: --discriminator dada_blobs:two_logits: gives (2, 2) "
                     "for features (2, 16); expected one domain logit per sample [batch, 1]"], lines
    assert not tdir.exists() or not os.listdir(tdir)
