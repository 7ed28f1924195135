"""A non-finite epoch in data-parallel training: every rank sees it alike (the check of the
parameters rides on the epoch's one reduction), raises the same NonFiniteLossError (or stops
with the same finite history) and goes back to the same finite state."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.test_distributed import mpirun, needs_mpi

JOB = r"""
import json, sys, warnings
import numpy as np
import backprop_gpu as bg

from mpi4py import MPI

warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's overflow notes
rng = np.random.default_rng(0)
X = (rng.standard_normal((20, 4)) * 100).astype(np.float32)
y = rng.integers(0, 3, 20)
model = bg.Model([bg.Dense(4, 8, seed=0, init="he"), bg.ReLU(), bg.Dense(8, 3, seed=1)])
model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.01)).finalize()
model.train(X / 100, y, epochs=1, print_every=0, seed=0, distributed=True)  # a finite epoch
start = [bg.to_numpy(getattr(layer, p)).tolist() for layer in model.trainable_layers
         for p in layer.params]
model.optimizer.learning_rate = model.optimizer.current_learning_rate = 3e38  # overflows
report = {"rank": MPI.COMM_WORLD.Get_rank()}
try:
    model.train(X, y, epochs=3, print_every=0, seed=0, distributed=True)
except bg.NonFiniteLossError as e:
    report["error"] = str(e)
report["stopped"] = model.train(X, y, epochs=3, print_every=0, seed=0, distributed=True,
                                on_nonfinite="stop")
now = [bg.to_numpy(getattr(layer, p)).tolist() for layer in model.trainable_layers
       for p in layer.params]
report["restored"] = now == start
report["epochs_trained"] = model.epochs_trained
with open(f"{sys.argv[1]}.{report['rank']}.json", "w") as f:
    json.dump(report, f)
"""


@needs_mpi
def test_every_rank_restores_the_same_finite_state(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(JOB)
    run = mpirun(2, sys.executable, str(job), str(tmp_path / "report"))
    assert run.returncode == 0, run.stderr
    reports = [json.loads((tmp_path / f"report.{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        assert report["error"].startswith(
            "Model.train: layer 2 Dense(8, 3) weights became NaN or infinite in epoch 2"
        ), report["error"]
        assert "back at the end of epoch 1" in report["error"]
        assert report["stopped"] == [] and report["restored"] and report["epochs_trained"] == 1
    assert reports[0]["error"] == reports[1]["error"]
