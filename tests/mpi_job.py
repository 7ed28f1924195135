"""A small training job for the MPI tests (tests/test_distributed.py), run as
``mpiexec -n R python tests/mpi_job.py MODE OUT`` or as plain ``python`` (one process).

MODE: ``train`` (the equivalence run: float64, L2, seeded Dropout, momentum under a warmup
and cosine schedule, shuffling, a last batch smaller than the global batch), ``streamed`` (the
same with the data streamed from memory-mapped files on even ranks, copied on odd ones:
``data_on_device``), ``raise`` (rank 1
raises in epoch 2), ``kill`` (rank 1 is killed by SIGKILL in epoch 2), ``small-batch`` (a
global batch smaller than the ranks), ``disagree`` (rank 1 builds another model),
``bad-data`` (rank 1's data has a column too many, so only rank 1's input checks fail),
``single`` (train without MPI, to compare), ``hand`` / ``hand-single`` (the nnfs
hand-written loop with DistributedOptimizer / alone), ``controls`` / ``controls-single``
(EarlyStopping restoring the best weights, ReduceLROnPlateau over a step schedule, clipping by
the global norm and weight decay, with MPI / alone: every rank writes where it stopped to
OUT.rankR), ``stop-root`` (a callback on rank 0 only stops training after epoch 2: every rank
writes its epoch count to OUT.rankR), ``disagree-callback`` (rank 1's EarlyStopping has another
baseline), ``mixed16`` / ``mixed_bf16`` (and ``-single``: a float32 model in that precision
policy, the default loss scaler: every rank writes its loss scaler's state and its optimizer's
iterations to OUT.rankR), ``mixed16-overflow`` (the same from a loss scale of 2**30, so that
the first steps overflow and are skipped; ``mixed16-overflow-single`` alone).
Rank 0 saves the model to OUT after every epoch.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np

import backprop_gpu as bg

EPOCHS, BATCH = 4, 20


def build(hidden: int = 16) -> bg.Model:
    model = bg.Model([
        bg.Dense(6, hidden, seed=0, init="he", dtype="float64", weight_regularizer_l2=1e-3),
        bg.ReLU(),
        bg.Dropout(0.25, seed=5),
        bg.Dense(hidden, 4, seed=1, dtype="float64"),
    ])  # fmt: skip
    # 6 steps an epoch (103 samples, batch 20): a warmup over the first epoch, then a cosine
    schedule = bg.CosineDecay(EPOCHS * 6, warmup_steps=6, min_learning_rate=0.01)
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.2, momentum=0.9, schedule=schedule))
    return model.finalize()


def controls(X: np.ndarray, y: np.ndarray, val: tuple[Any, Any], out: str, dist: bool) -> None:
    """Callbacks that decide (on every rank, from the reduced validation metrics): a plateau
    halves the learning rate, and early stopping ends training before the epoch limit.
    Labels that the features decide (the first four columns' argmax) but for a few flipped ones,
    so the validation loss first falls, then rises as the model learns the noise."""
    y = X[:, :4].argmax(axis=1)
    y[::7] = (y[::7] + 1) % 4
    val = (val[0], val[0][:, :4].argmax(axis=1))
    model = bg.Model([bg.Dense(6, 16, seed=0, dtype="float64"), bg.ReLU(), bg.Dropout(0.25, seed=5),
                      bg.Dense(16, 4, seed=1, dtype="float64")])  # fmt: skip
    optimizer = bg.SGD(
        0.5, momentum=0.9, schedule=bg.StepDecay(12, gamma=0.5), clip_norm=0.5, weight_decay=1e-3
    )
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=optimizer).finalize()
    stopper = bg.EarlyStopping("val_loss", patience=3, restore_best_weights=True)
    plateau = bg.ReduceLROnPlateau("val_loss", factor=0.5, patience=0)
    history = model.train(X, y, epochs=30, batch_size=BATCH, validation_data=val, print_every=0,
                          seed=3, callbacks=[stopper, plateau], distributed=dist)  # fmt: skip
    rank = 0 if not dist else __import__("mpi4py.MPI").MPI.COMM_WORLD.Get_rank()
    rates = " ".join(f"{row['learning_rate']:.17g}" for row in history)
    decided = f"stopped {stopper.stopped_epoch} best {stopper.best_epoch} lr {rates}"
    Path(f"{out}.rank{rank}").write_text(decided)  # (ranks' prints would interleave)
    if rank == 0:
        model.save(out)


def mixed(X: np.ndarray, y: np.ndarray, val: tuple[Any, Any], out: str, policy: str,
          dist: bool, overflow: bool) -> None:  # fmt: skip
    model = bg.Model([bg.Dense(6, 16, seed=0, init="he"), bg.ReLU(), bg.Dropout(0.25, seed=5),
                      bg.Dense(16, 4, seed=1)], precision=policy)  # fmt: skip
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.Adam(0.01)).finalize()
    scaler = bg.precisions.loss_scaler(model)
    if overflow:
        scaler.scale = 2.0**30
    model.train(X, y, epochs=EPOCHS, batch_size=BATCH, validation_data=val, print_every=0,
                seed=3, distributed=dist)  # fmt: skip
    rank = 0 if not dist else __import__("mpi4py.MPI").MPI.COMM_WORLD.Get_rank()
    state = scaler.get_state() if scaler is not None else None
    Path(f"{out}.rank{rank}").write_text(f"{state} {model.optimizer.iterations}")
    if rank == 0:
        model.save(out)


def hand_loop(X: np.ndarray, y: np.ndarray, out: str, distributed: bool) -> None:
    """The nnfs loop over the public API; distributed, each rank takes its rows of every
    batch and DistributedOptimizer sums the gradients."""
    from backprop_gpu.distributed import DistributedOptimizer, shard_bounds

    layers = [bg.Dense(6, 16, seed=0, dtype="float64", weight_regularizer_l2=1e-3), bg.ReLU(),
              bg.Dense(16, 4, seed=1, dtype="float64")]  # fmt: skip
    loss = bg.SoftmaxCrossEntropy()
    optimizer: Any = bg.Adam(0.01, decay=1e-2)
    rank, size = 0, 1
    if distributed:
        optimizer = DistributedOptimizer(optimizer)
        rank, size = optimizer.rank, optimizer.size
        if rank == 1:  # a different start, which the broadcast must overwrite
            layers[0].weights *= 2
        optimizer.broadcast(layers)
    dense = [layers[0], layers[2]]
    for _ in range(EPOCHS):
        for start in range(0, len(X), BATCH):
            stop = min(start + BATCH, len(X))
            lo, hi = (start + b for b in shard_bounds(stop - start, rank, size))
            out_ = X[lo:hi]
            for layer in layers:
                out_ = layer.forward(out_)
            loss.forward(out_, y[lo:hi])
            grad = loss.backward(loss.output, y[lo:hi])
            for layer in reversed(layers):
                grad = layer.backward(grad)
            optimizer.pre_update_params()
            for layer in dense:
                if distributed:  # this rank's share of the batch weights its gradients
                    optimizer.update_params(layer, (hi - lo) / (stop - start))
                else:
                    optimizer.update_params(layer)
            optimizer.post_update_params()
    if rank == 0:
        names = ("weights", "biases", "weight_momentums", "weight_cache")
        np.savez(out, **{f"layers.{i}.{n}": getattr(d, n) for i, d in enumerate(dense)
                         for n in names})  # fmt: skip


def main(mode: str, out: str) -> None:
    rng = np.random.default_rng(7)
    X, y = rng.standard_normal((103, 6)), rng.integers(0, 4, 103)  # 103 = 5 x 20 + 3
    X_val, y_val = rng.standard_normal((9, 6)), rng.integers(0, 4, 9)
    if mode in ("controls", "controls-single"):
        controls(X, y, (X_val, y_val), out, dist=mode == "controls")
        return
    if mode.startswith("mixed"):
        X, X_val = X.astype(np.float32), X_val.astype(np.float32)
        mixed(X, y, (X_val, y_val), out, mode.split("-")[0], dist=not mode.endswith("-single"),
              overflow="-overflow" in mode)  # fmt: skip
        return
    if mode in ("hand", "hand-single"):
        hand_loop(X, y, out, distributed=mode == "hand")
        return
    if mode == "single":
        model = build()
        model.train(X, y, epochs=EPOCHS, batch_size=BATCH, validation_data=(X_val, y_val),
                    print_every=0, seed=3)  # fmt: skip
        model.save(out)
        return
    from mpi4py import MPI

    rank = MPI.COMM_WORLD.Get_rank()
    model = build(hidden=17 if mode == "disagree" and rank == 1 else 16)

    def on_epoch_end(row: dict[str, float]) -> None:
        if rank == 0:
            model.save(out)
            print(f"epoch {row['epoch']} loss {row['loss']:.6f}", flush=True)
        if rank == 1 and row["epoch"] == 2:
            if mode == "raise":
                raise RuntimeError("a failure injected on rank 1")
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)

    if mode == "stop-root":

        class StopOnRoot(bg.Callback):
            writes = True  # (so it runs on rank 0 only)

            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                if epoch == 1:
                    self.trainer.stop_training = True

        model.train(X, y, epochs=EPOCHS, batch_size=BATCH, print_every=0, seed=3,
                    callbacks=[StopOnRoot()], distributed=True)  # fmt: skip
        Path(f"{out}.rank{rank}").write_text(str(model.epochs_trained))
        return
    if mode == "disagree-callback":
        stopper = bg.EarlyStopping("val_loss", patience=2, baseline=0.5 if rank == 1 else None)
        model.train(X, y, epochs=EPOCHS, batch_size=BATCH, validation_data=(X_val, y_val),
                    print_every=0, seed=3, callbacks=[stopper], distributed=True)  # fmt: skip
        return
    if mode == "bad-data" and rank == 1:
        X = np.hstack([X, X[:, :1]])
    on_device = None
    if mode == "streamed":  # (each rank its own files: rank r's Xr.npy, ... beside OUT)
        on_device = rank % 2 == 1
        arrays = {"X": X, "y": y, "X_val": X_val, "y_val": y_val}
        for name, a in arrays.items():
            np.save(f"{out}.{name}{rank}.npy", a)
        X, y, X_val, y_val = (np.load(f"{out}.{name}{rank}.npy", mmap_mode="r") for name in arrays)
    model.train(X, y, epochs=EPOCHS, batch_size=1 if mode == "small-batch" else BATCH,
                validation_data=(X_val, y_val), print_every=1, seed=3,
                on_epoch_end=on_epoch_end, distributed=True, data_on_device=on_device)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
