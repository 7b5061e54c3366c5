"""mpidist.user: a user's MODULE:FUNCTION model, data and loss (no MPI)."""
from __future__ import annotations


import pytest
import torch

from mpidist import data, models, user
from mpidist.errors import UsageError


def test_dataset_tensors_and_classes():
    tr = data.load("blobs:blobs", None, train=True)
    te = data.load("blobs:blobs", None, train=False)
    assert tr.x.shape == (600, 4) and te.x.shape == (300, 4) and tr.num_classes == 3
    assert tr.y.dtype == torch.int64 and tr.x.dtype == torch.float32
    ref = __import__("blobs").blobs(None)[0]
    assert torch.equal(tr.x[5], ref[5][0]) and int(tr.y[5]) == int(ref[5][1])
    assert data.load("blobs:blobs_with_classes", None).num_classes == 3


def test_regression_targets_stay_float():
    tr = data.load("blobs:regression", None)
    assert tr.y.dtype == torch.float32 and tr.num_classes == 1 and tr.x.shape == (512, 4)


def test_model_and_fit():
    m = models.build("blobs:mlp", (4,), 3, hidden=8)
    assert sum(p.numel() for p in m.parameters()) == 4 * 8 + 8 + 8 * 3 + 3
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    user.check_fit(m, user.loss_function("cross_entropy"), x, y, "blobs:mlp", "cross_entropy")
    mse = user.loss_function("mse")
    out = torch.tensor([[1.0], [2.0]])
    assert float(mse(out, torch.tensor([0.0, 0.0]))) == pytest.approx(2.5)
    assert float(user.loss_function("blobs:l1")(out, torch.tensor([0.0, 0.0]))) == 1.5


@pytest.mark.parametrize("call, message", [
    (lambda: models.build("nosuchmod:f", (4,), 3), "--model nosuchmod:f: cannot import module "
                                                    "'nosuchmod' (ModuleNotFoundError"),
    (lambda: models.build("blobs:nope", (4,), 3), "--model blobs:nope: module 'blobs' has no "
                                                   "function 'nope'"),
    (lambda: models.build("blobs:not_a_module", (4,), 3), "returned str, expected a torch.nn.Module"),
    (lambda: models.build("blobs:mlp", (4,), 3, depth=2),
     "--model blobs:mlp --model-arg depth=2: cannot build it (mlp() got an unexpected keyword"),
    (lambda: user.check_fit(models.build("blobs:wrong_outputs", (4,), 3),
                            user.loss_function("cross_entropy"), torch.randn(2, 4),
                            torch.tensor([0, 2]), "blobs:wrong_outputs", "cross_entropy", 3),
     "--model blobs:wrong_outputs does not fit the data under --loss cross_entropy: output (2, 7), "
     "expected (batch, 3) for 3 classes"),
    (lambda: data.load("blobs:not_a_pair", None), "returned int, expected (train, test)"),
    (lambda: user.loss_function("hinge"), "--loss hinge: expected cross_entropy, mse or "
                                          "MODULE:FUNCTION"),
    (lambda: user.check_fit(models.build("blobs:wrong_outputs", (4,), 3),
                            user.loss_function("mse"), torch.randn(2, 4), torch.zeros(2),
                            "blobs:wrong_outputs", "mse"),
     "--model blobs:wrong_outputs does not fit the data under --loss mse: inputs (2, 4), output "
     "(2, 7), labels (2,)"),
])
def test_one_line_errors(call, message):
    with pytest.raises(UsageError) as e:
        call()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_data_flag_accepts_module_function():
    import argparse
    p = argparse.ArgumentParser()
    data.add_arguments(p)
    assert p.parse_args(["--data", "blobs:blobs"]).data == "blobs:blobs"
    with pytest.raises(SystemExit):
        p.parse_args(["--data", "imagenet"])
