"""``Model``: a stack of layers with a loss, an optimizer and an accuracy, trained in
mini-batches (the book's Model class, on any backend).

    model = Model([Dense(2, 64), ReLU(), Dense(64, 3), Softmax()])
    model.set(loss=CategoricalCrossEntropy(), optimizer=Adam(), accuracy=Accuracy())
    model.finalize()
    history = model.train(X, y, epochs=10, batch_size=128, validation_data=(X_val, y_val))

Data come in as host arrays (or arrays already on the model's device). ``train`` checks them
once, on the host where they live there (shapes, NaN/Inf, label range), copies them to the
device once, and then runs every step on the device with no host synchronisation: metrics are
summed on the device and read once per epoch.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import math
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, TypeVar, cast

import numpy as np

from . import _checks, checkpoint, registry
from .activations import ReLU, Softmax
from .backend import Backend, array_library, host_array, to_numpy
from .distributed import (
    Context,
    check_batch,
    fingerprint,
    on_every_rank,
    on_root,
    shard_bounds,
)
from .flat import FlatParameters, assign, state_name
from .layers import Dense, Dropout
from .losses import (
    BinaryCrossEntropy,
    CategoricalCrossEntropy,
    Loss,
    SoftmaxCrossEntropy,
)
from .metrics import Accuracy, BinaryAccuracy
from .optimizers import Optimizer

CLASS_LOSSES = (CategoricalCrossEntropy, SoftmaxCrossEntropy)

History = list[dict[str, float]]
M = TypeVar("M", bound=Callable[..., Any])


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss (see ``Model.train(on_nonfinite=...)``)."""


def _on_its_gpu(method: M) -> M:
    """Run a Model method with the model's GPU as the current CUDA device (CuPy computes on
    the current one), so a model built under ``use_backend("cupy:1")`` still runs there."""

    @functools.wraps(method)
    def run(self: Model, *args: Any, **kwargs: Any) -> Any:
        backend: Backend | None = getattr(self, "backend", None)  # (set by finalize)
        with backend.on_device() if backend is not None else contextlib.nullcontext():
            return method(self, *args, **kwargs)

    return cast(M, run)


class _Guard:
    """One pass at a time through a model's layers, which keep their inputs and outputs
    between forward and backward (two passes at once would mix them up):

    - ``train`` owns the model until it returns. A second ``train`` (another thread, or one
      called from inside the first) raises at once, and so do ``predict`` and ``evaluate``
      from other threads meanwhile; from the training thread itself (``on_epoch_end``)
      they run. ``train`` waits for the predictions already in flight.
    - ``predict`` and ``evaluate`` from several threads take turns (each waits for the one
      running), so every thread gets its own answer. (One that began in the instant a
      ``train`` started waits for that training to end instead of raising.)
    """

    def __init__(self) -> None:
        self._passes = threading.RLock()  # held by the pass running (re-entered inside train)
        self._claim = threading.Lock()  # makes taking the trainer's place one step
        self._trainer: int | None = None  # the thread inside train, if one is

    def enter(self, method: str) -> None:
        """Take the model for ``method`` ("train", "predict", "evaluate", ...), or raise."""
        me = threading.get_ident()
        if method == "train":
            with self._claim:
                if self._trainer is not None:
                    raise RuntimeError(
                        f"Model.train: this model is already training {_which(self._trainer)}; "
                        "one model trains in one thread at a time (build one Model per thread "
                        "to train several)"
                    )
                self._trainer = me  # from now on, other threads' passes raise
            try:
                self._passes.acquire()  # after the predictions already in flight
            except BaseException:  # (Ctrl-C while it waited)
                self._trainer = None
                raise
            return
        trainer = self._trainer
        if trainer is not None and trainer != me:
            raise RuntimeError(
                f"Model.{method}: this model is training in another thread, which changes "
                "its layers' state at every step; call it when train has returned, from "
                "on_epoch_end, or on a copy (Model.load of a checkpoint)"
            )
        self._passes.acquire()  # (a pass of another thread: wait for its end)

    def leave(self, method: str) -> None:
        if method == "train":
            self._trainer = None
        self._passes.release()


def _which(thread: int) -> str:
    if thread == threading.get_ident():
        return "in this thread (train called from inside train, by on_epoch_end?)"
    return "in another thread"


def _one_pass_at_a_time(method: M) -> M:
    """Run a Model method under the model's ``_Guard`` (see there)."""

    name = method.__name__

    @functools.wraps(method)
    def run(self: Model, *args: Any, **kwargs: Any) -> Any:
        self._guard.enter(name)
        try:
            return method(self, *args, **kwargs)
        finally:
            self._guard.leave(name)

    return cast(M, run)


class Model:
    """Layers run in order; ``set`` the loss, optimizer and accuracy; ``finalize``; train.

    Threads: ``predict`` and ``evaluate`` may be called from many threads at once (they take
    turns, and so do ``save``, ``save_parameters`` and ``load_parameters``); ``train`` owns the
    model while it runs, and a second ``train``, or any of those from another thread
    meanwhile, raises ``RuntimeError`` (from ``on_epoch_end`` they work). The layers
    themselves, hand-written loops and ``add``/``set``/``finalize`` are not guarded: use one
    thread per model for those.
    """

    def __init__(self, layers: Iterable[Any] = ()) -> None:
        self._guard = _Guard()
        self.layers: list[Any] = []
        self.loss: Loss | None = None
        self.optimizer: Optimizer | None = None
        self.accuracy: Any = None
        self.epochs_trained = 0
        self._finalized = False
        self._step_buffers: dict[Any, dict[str, Any]] | None = None  # (see _train_pass)
        self._batch_buffers: dict[str, Any] | None = None
        self._flat: FlatParameters | None = None
        for layer in layers:
            self.add(layer)

    # --- building ------------------------------------------------------------------------

    def add(self, layer: Any) -> Model:
        if not (
            callable(getattr(layer, "forward", None)) and callable(getattr(layer, "backward", None))
        ):
            raise TypeError(f"Model.add expected a layer with forward and backward, got {layer!r}")
        self.layers.append(layer)
        self._finalized = False
        return self

    def set(
        self, *, loss: Loss | None = None, optimizer: Optimizer | None = None, accuracy: Any = None
    ) -> Model:
        """Set any of the loss, optimizer and accuracy (the others are kept). Everything is
        checked before anything changes."""
        if loss is not None and not isinstance(loss, Loss):
            raise TypeError(f"Model.set: loss must be a backprop_gpu Loss, got {loss!r}")
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise TypeError(f"Model.set: optimizer must be an Optimizer, got {optimizer!r}")
        if accuracy is not None and not callable(getattr(accuracy, "calculate", None)):
            raise TypeError(f"Model.set: accuracy must have calculate(), got {accuracy!r}")
        self.loss = loss if loss is not None else self.loss
        self.optimizer = optimizer if optimizer is not None else self.optimizer
        self.accuracy = accuracy if accuracy is not None else self.accuracy
        self._finalized = False
        return self

    def finalize(self) -> Model:
        """Check the stack and prepare training: layer sizes chain, one backend throughout,
        and softmax + categorical cross-entropy use the fused backward (as in the book)."""
        if not self.layers:
            raise ValueError("Model.finalize: the model has no layers; add some first")
        if self.loss is None:
            raise ValueError("Model.finalize: no loss; call model.set(loss=...)")
        backends = {layer.backend for layer in self.layers} | {self.loss.backend}
        if len(backends) > 1:
            names = sorted(f"{b.name} ({b.device})" for b in backends)
            raise ValueError(
                f"Model.finalize: layers and loss were built on different backends: {names}; "
                "build them all under one backend"
            )
        self.backend: Backend = self.loss.backend
        dense = [layer for layer in self.layers if isinstance(layer, Dense)]
        for a, b in itertools.pairwise(dense):
            if a.n_neurons != b.n_inputs:
                raise ValueError(
                    f"Model.finalize: {a!r} gives {a.n_neurons} outputs but the next Dense "
                    f"expects {b.n_inputs} inputs"
                )
        self.trainable_layers = [layer for layer in self.layers if getattr(layer, "params", ())]
        self.n_inputs = dense[0].n_inputs if dense else None
        self.n_outputs = dense[-1].n_neurons if dense else None
        self.dtype = dense[0].dtype if dense else self.backend.xp.float32
        fused = isinstance(self.layers[-1], Softmax) and type(self.loss) is CategoricalCrossEntropy
        self._fused = SoftmaxCrossEntropy(validate=False) if fused else None
        if self._fused is not None:
            self._fused.backend = self._fused.activation.backend = self.backend
        self._stages = _stages(self.layers[:-1] if fused else self.layers)
        self._pack()
        if self.accuracy is None and isinstance(self.loss, CLASS_LOSSES):
            self.accuracy = Accuracy()  # the obvious one; regression must choose its own
        elif self.accuracy is None and isinstance(self.loss, BinaryCrossEntropy):
            self.accuracy = BinaryAccuracy()
        self._finalized = True
        return self

    def _pack(self) -> None:
        """Put the trainable layers' parameters, gradients and optimizer states in flat
        buffers (``flat.FlatParameters``: one per dtype, the layers' arrays views into them,
        so an optimizer step is one call per dtype), unless they are there already. Arrays
        that cannot go there (not plain writable arrays of the backend) stay as they are, so
        the optimizer's checks name them."""
        layers = self.trainable_layers
        kinds = self.optimizer.state_kinds if self.optimizer is not None else ()
        flat = self._flat
        if flat is not None and flat.covers(layers) and flat.intact(kinds):
            return
        self._flat = FlatParameters(layers, kinds) if FlatParameters.packable(layers) else None

    def _ready(self, what: str, *, train: bool = False) -> None:
        if not self._finalized:
            raise RuntimeError(
                f"Model.{what}: call model.set(loss=..., optimizer=..., accuracy=...) and "
                "model.finalize() first"
            )
        if train and self.optimizer is None:
            raise RuntimeError(f"Model.{what}: no optimizer; call model.set(optimizer=...)")
        if what in ("train", "evaluate") and self.accuracy is None:
            raise RuntimeError(
                f"Model.{what}: no accuracy for {self.loss!r}; call "
                "model.set(accuracy=RegressionAccuracy()) (or another accuracy)"
            )

    # --- the passes ----------------------------------------------------------------------

    def forward(self, X: Any, training: bool) -> Any:
        for layer in self.layers:
            X = layer.forward(X, training=training)
        return X

    def backward(self, output: Any, y: Any) -> None:
        """Backpropagate the loss of ``output`` against ``y`` through every layer."""
        assert self.loss is not None
        layers = self.layers
        if self._fused is not None:  # Softmax layer + CCE: (p - onehot) / N straight away
            self._fused.backward(output, y)
            layers[-1].dinputs = dvalues = self._fused.dinputs
            layers = layers[:-1]
        elif isinstance(self.loss, SoftmaxCrossEntropy):
            dvalues = self.loss.backward(self.loss.output, y)
        else:
            dvalues = self.loss.backward(output, y)
        for layer in reversed(layers[1:]):
            dvalues = layer.backward(dvalues)
        if not layers:
            return
        if isinstance(layers[0], Dense):
            layers[0].backward(dvalues, need_dinputs=False)  # nothing consumes them
        else:
            layers[0].backward(dvalues)

    def _train_pass(self, Xb: Any, yb: Any) -> tuple[Any, Any]:
        """``_fused_pass`` with each Dense writing its products (output, dweights, dbiases,
        dinputs, its ReLU's output and dinputs) into the arrays of the previous step of this
        ``train`` call, where the backend gains by it (NumPy): nothing outside the step
        reads those arrays in between (the epoch keeps only scalars), and arrays a caller
        holds from before the call are never overwritten (each call starts fresh buffers);
        a layer used outside Model.train always gets fresh arrays."""
        buffers = self._step_buffers
        if buffers is None:
            return self._fused_pass(Xb, yb)
        for layer, kept in buffers.items():
            layer.step_buffers = kept
        try:
            return self._fused_pass(Xb, yb)
        finally:
            for layer in buffers:
                layer.step_buffers = None

    def _fused_pass(self, Xb: Any, yb: Any) -> tuple[Any, Any]:
        """Forward, loss and backward of one training batch, fused where the backend's ops
        can (a Dense and its ReLU in one op each way, softmax cross-entropy's loss and
        gradient in one): the same values as ``forward``, ``loss.forward`` and ``backward``.
        Returns (data loss, the network's output)."""
        assert self.loss is not None
        X = Xb
        for stage in self._stages:
            X = stage[0].forward_relu(X, stage[1]) if len(stage) == 2 else stage[0].forward(X)
        if self._fused is not None:  # the Softmax layer, which the fused backward skips
            output = self.layers[-1].forward(X, training=True)
            data_loss = self.loss.forward(output, yb)
            self._fused.backward(output, yb)
            dvalues = self.layers[-1].dinputs = self._fused.dinputs
        elif isinstance(self.loss, SoftmaxCrossEntropy):
            output = X
            data_loss = self.loss.forward_backward(output, yb)
            dvalues = self.loss.dinputs
        else:
            output = X
            data_loss = self.loss.forward(output, yb)
            dvalues = self.loss.backward(output, yb)
        last = len(self._stages) - 1
        for i, stage in enumerate(reversed(self._stages)):
            layer, first = stage[0], i == last
            if len(stage) == 2:
                dvalues = layer.backward_relu(dvalues, stage[1], need_dinputs=not first)
            elif first and isinstance(layer, Dense):
                layer.backward(dvalues, need_dinputs=False)  # nothing consumes them
            else:
                dvalues = layer.backward(dvalues)
        return data_loss, output

    def _predictions(self, output: Any) -> Any:
        """What the network predicts: probabilities when the loss applies the softmax."""
        if isinstance(self.loss, SoftmaxCrossEntropy):
            return self.loss.activation.forward(output)
        return output

    # --- data ----------------------------------------------------------------------------

    def _prepare(self, X: Any, y: Any, where: str) -> tuple[Any, Any]:
        """Check X and y once (on the host where they are host data) and move them to the
        device; the per-step label checks are then skipped."""
        x_dev = self._inputs(X, where)
        n = x_dev.shape[0]
        if array_library(y) is None:  # Python data: a ragged list is named here
            y = host_array(y, f"{where} y")
        y_len = y.shape[0] if y.ndim else 0
        if y_len != n:
            raise ValueError(f"{where}: X has {n} samples but y has {y_len}; they must match")
        assert self.loss is not None
        if isinstance(self.loss, CLASS_LOSSES):
            if self.n_outputs is None:
                raise ValueError(f"{where}: no Dense layer, so the number of classes is unknown")
            y_dev = _checks.labels(self.backend, y, n, self.n_outputs, self.dtype, f"{where} y")
        else:
            outputs = self.n_outputs or 1
            on_host = array_library(y) == "numpy"
            if on_host and y.dtype.kind in "biuf":  # like X: on the host, first
                _checks.check_finite(y, f"{where}: y")
            y_dev = _checks.targets(self.backend, y, n, outputs, self.dtype, f"{where} y")
            if not on_host:
                _checks.check_finite(y_dev, f"{where}: y")
        return x_dev, y_dev

    def _inputs(self, X: Any, where: str, *, sync_ok: bool = True) -> Any:
        """X checked and on the device. NaN/Inf are looked for on the host before the copy;
        data already on the device costs a sync for that, skipped when not ``sync_ok``."""
        on_host = array_library(X) in ("numpy", None)
        x = host_array(X, f"{where} X") if on_host else self.backend.asarray(X, what=f"{where} X")
        if on_host:
            _checks.warn_if_integer(x.dtype, where)
        if x.ndim != 2:
            hint = " (one sample? use X.reshape(1, -1))" if x.ndim == 1 else ""
            raise ValueError(
                f"{where}: expected X of shape (samples, {self.n_inputs}), got {x.ndim}-D "
                f"shape {tuple(x.shape)}{hint}"
            )
        if self.n_inputs is not None and x.shape[1] != self.n_inputs:
            raise ValueError(
                f"{where}: expected X with {self.n_inputs} features (the first Dense's "
                f"n_inputs), got shape {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{where}: X is empty (shape {tuple(x.shape)})")
        if on_host:
            _checks.check_finite(x, f"{where}: X")
        x = self.backend.asarray(x, self.dtype, what=f"{where} X")
        if not on_host and sync_ok:
            _checks.check_finite(x, f"{where}: X")
        return x

    @staticmethod
    def _batch_size(batch_size: int | None, n: int, where: str) -> int:
        if batch_size is None:
            return n
        if not isinstance(batch_size, int | np.integer) or batch_size <= 0:
            raise ValueError(f"{where}: batch_size must be a positive integer, got {batch_size!r}")
        return int(batch_size)

    # --- training and inference ----------------------------------------------------------

    @_on_its_gpu
    @_one_pass_at_a_time
    def train(
        self,
        X: Any,
        y: Any,
        *,
        epochs: int = 1,
        batch_size: int | None = None,
        validation_data: tuple[Any, Any] | None = None,
        print_every: int | None = 1,
        shuffle: bool = True,
        seed: int | None = None,
        on_epoch_end: Callable[[dict[str, float]], None] | None = None,
        on_nonfinite: str = "raise",
        distributed: bool | Context = False,
    ) -> History:
        """Train for ``epochs`` passes over (X, y) in mini-batches of ``batch_size`` (all of X
        when None; the last batch may be smaller) and return the history: one dict per epoch
        with ``epoch``, ``loss`` (data loss), ``regularization_loss``, ``accuracy``,
        ``learning_rate`` and, with ``validation_data``, ``val_loss`` and ``val_accuracy``.

        Epoch ``e`` (counting every epoch this model has trained) is shuffled with
        ``numpy.random.default_rng([seed, e])``, so a run is repeatable and a run resumed from
        a checkpoint shuffles as the uninterrupted one would. ``print_every`` prints a summary
        every that many epochs (None or 0: silent); ``on_epoch_end`` gets each epoch's dict.
        On NumPy each step writes the Dense layers' outputs and gradients into the previous
        step's arrays (no allocation a step): a layer's ``output``, ``dweights`` etc. read
        in ``on_epoch_end`` hold until the next epoch overwrites them (copy them to keep
        them); arrays held from before the call, and after it, are never overwritten.

        The loss, every parameter and every optimizer state are checked at each epoch's end
        (one reduction an array, read with the epoch's metrics): when any is NaN or infinite,
        parameters and optimizer state go back to where that epoch started, which was
        checked finite too, and then ``on_nonfinite="raise"`` raises ``NonFiniteLossError``
        naming the epoch and step and what went non-finite, while ``"stop"`` ends training
        quietly and returns the finite history. A model whose parameters or optimizer state
        are not finite when ``train`` is called has no finite state to go back to:
        ``ValueError`` names the array, before anything changes.

        ``distributed=True`` (or a ``distributed.Context``) trains data-parallel over MPI, the
        script started under ``mpiexec -n R``: every rank passes the same model, data and
        arguments (checked by hash at start), rank 0's parameters are broadcast, each global
        batch of ``batch_size`` is split across the ranks, gradients are summed in one
        allreduce a step, and the metrics are reduced across ranks. Only rank 0 prints;
        ``on_epoch_end`` runs on every rank (write files from rank 0 only). See
        :mod:`backprop_gpu.distributed`.
        """
        dist = _context(distributed)
        # distributed, every rank checks its own inputs; if any fails, all stop with the reasons
        X_dev, y_dev, val, size = on_every_rank(dist, lambda: self._train_inputs(
            X, y, epochs, batch_size, validation_data, on_nonfinite))  # fmt: skip
        self._pack()  # (again, if a parameter or state was replaced since)
        if dist is not None:
            settings = {"epochs": epochs, "batch_size": size, "shuffle": shuffle,
                        "seed": seed, "on_nonfinite": on_nonfinite}  # fmt: skip
            self._distribute(dist, X_dev, y_dev, val, settings)
            if not dist.is_root:
                print_every = 0
        self._check_state_finite()  # (after the broadcast: alike on every rank)
        if seed is None:  # (rank 0's draw on every rank, so all shuffle alike)
            seed = on_root(dist, lambda: int(np.random.default_rng().integers(2**31)))
        guard = dist.abort_on_error if dist is not None else contextlib.nullcontext
        n = X_dev.shape[0]
        history: History = []
        saved = None
        reuse = self.backend.reuses_step_buffers  # (fresh ones each call: see _train_pass)
        dense = [layer for layer in self.layers if type(layer) is Dense]
        self._step_buffers = {layer: {} for layer in dense} if reuse else None
        self._batch_buffers = {} if reuse else None  # the shuffled batches' rows
        with _Unchecked(self.loss, self.accuracy):
            for _ in range(epochs):
                epoch = self.epochs_trained
                with guard():  # on several ranks: a rank that raises aborts the whole job
                    for layer in self.layers:
                        if hasattr(layer, "reseed"):
                            layer.reseed(epoch)
                    order = None
                    if shuffle:
                        perm = np.random.default_rng([seed, epoch]).permutation(n)
                        order = self.backend.asarray(perm)  # one small copy per epoch
                    saved = self._snapshot(saved)  # (finite: checked before this epoch)
                    loss, reg, acc, bad_step, bad_arrays = self._epoch(
                        X_dev, y_dev, size, order, dist
                    )
                if bad_arrays or not all(math.isfinite(v) for v in (loss, reg, acc)):
                    # (alike on all ranks) back to the epoch's start, which was finite
                    values = {"loss": loss, "regularization loss": reg, "accuracy": acc}
                    message = _nonfinite(values, epoch, bad_step, -(-n // size), bad_arrays)
                    self._restore(saved)
                    if on_nonfinite == "stop":
                        return history
                    raise NonFiniteLossError(message)
                with guard():
                    row = self._epoch_row(loss, reg, acc, val, size, dist)
                if not math.isfinite(row.get("val_loss", 0.0)):  # (reduced: alike on all ranks)
                    # finite parameters whose outputs overflow: as unusable as NaN weights
                    self._restore(saved)
                    if on_nonfinite == "stop":
                        return history
                    raise NonFiniteLossError(_nonfinite_validation(row["val_loss"], epoch))
                with guard():
                    history.append(row)
                    if print_every and (
                        self.epochs_trained % print_every == 0 or len(history) == epochs
                    ):
                        print(_summary(row))
                    if on_epoch_end is not None:
                        on_epoch_end(row)
        return history

    def _train_inputs(
        self,
        X: Any,
        y: Any,
        epochs: int,
        batch_size: int | None,
        validation_data: Any,
        on_nonfinite: str,
    ) -> tuple[Any, Any, Any, int]:
        """``train``'s checks: (X, y) and the validation pair on the device, and the batch
        size; raises naming the bad argument."""
        self._ready("train", train=True)
        _checks.check_pending_labels(_READ_BY.format("Model.train"))
        assert self.loss is not None and self.optimizer is not None
        if not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"Model.train: epochs must be an integer >= 0, got {epochs!r}")
        if on_nonfinite not in ("raise", "stop"):
            raise ValueError(
                f"Model.train: on_nonfinite must be 'raise' or 'stop', got {on_nonfinite!r}"
            )
        X_dev, y_dev = self._prepare(X, y, "Model.train")
        self.optimizer.check_dtype(self.dtype)  # e.g. an epsilon that is 0 in float32
        size = self._batch_size(batch_size, X_dev.shape[0], "Model.train")
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, tuple | list) or len(validation_data) != 2:
                raise ValueError("Model.train: validation_data must be a pair (X_val, y_val)")
            X_val, y_val = validation_data
            val = self._prepare(X_val, y_val, "Model.train validation_data")
        if self.accuracy is not None:
            self.accuracy.init(y)
        return X_dev, y_dev, val, size

    def _epoch_row(
        self, loss: float, reg: float, acc: float, val: Any, size: int, dist: Context | None
    ) -> dict[str, float]:
        """Count the finished epoch and return its history row (validation metrics too)."""
        assert self.optimizer is not None
        self.epochs_trained += 1
        row = {
            "epoch": self.epochs_trained,
            "loss": loss,
            "regularization_loss": reg,
            "accuracy": acc,
            "learning_rate": self.optimizer.current_learning_rate,
        }
        if val is not None:
            X_val, y_val = val
            val_metrics = self._evaluate(X_val, y_val, size, dist)
            row |= {"val_loss": val_metrics["loss"], "val_accuracy": val_metrics["accuracy"]}
        return row

    def _distribute(
        self, dist: Context, X_dev: Any, y_dev: Any, val: Any, settings: dict[str, Any]
    ) -> None:
        """Before distributed training: check on every rank that all ranks agree on the
        model, the data and the arguments, and that the global batch gives every rank a
        sample; then broadcast rank 0's parameters and optimizer state."""
        dist.bind(self.backend)
        spec = {
            "model": [_spec(o) for o in (*self.layers, self.loss, self.optimizer, self.accuracy)
                      if o is not None],
            "backend": self.backend.name,
            "train": settings,
            "data": fingerprint(self.backend, X_dev, y_dev),
            "validation": None if val is None else fingerprint(self.backend, *val),
        }  # fmt: skip
        dist.check_same("the model, the data or the Model.train arguments", spec)
        check_batch(settings["batch_size"], dist.size, "Model.train")
        self.epochs_trained = dist.broadcast_state(self.layers, self.optimizer, self.epochs_trained)
        dist.check_gpus(self.backend, stacklevel=4)  # (the caller of Model.train)
        if dist.is_root:
            print(dist.describe(), file=sys.stderr, flush=True)

    def _epoch(
        self, X_dev: Any, y_dev: Any, size: int, order: Any, dist: Context | None = None
    ) -> tuple[float, float, float, int, list[str]]:
        """One pass over the data in batches (in ``order``, if given). Returns the epoch's
        mean data loss, regularisation loss and accuracy, the first step whose loss was not
        finite (-1 if none), and the names of the parameters and optimizer states that are
        not finite at the end (none: an empty list). Each step's values stay on the device until the
        end of the epoch, then come to the host in one copy with the parameters' finiteness
        (one reduction an array). Distributed, each rank takes its slice of every batch and
        the sums are reduced across ranks at the end."""
        xp, n = self.backend.xp, X_dev.shape[0]
        # (looked up once an epoch, for _train_step: 2 us a layer)
        self._penalized = [layer for layer in self.trainable_layers if _regularized(layer)]
        dropouts = [layer for layer in self.layers if isinstance(layer, Dropout)]
        steps: list[tuple[Any, Any, Any]] = []  # (data loss, regularization loss, accuracy)
        local = []  # samples this rank took in each step
        for start in range(0, n, size):
            stop = min(start + size, n)  # the last batch may be partial
            lo, hi = start, stop
            if dist is not None:
                lo, hi = (start + b for b in shard_bounds(stop - start, dist.rank, dist.size))
            if order is None:
                Xb, yb = X_dev[lo:hi, ...], y_dev[lo:hi, ...]
            else:
                idx, ops, kept = order[lo:hi], self.backend.ops, self._batch_buffers
                out = (_kept(xp, kept, "X", X_dev, hi - lo), _kept(xp, kept, "y", y_dev, hi - lo))
                Xb, yb = ops.take_batch(X_dev, y_dev, idx, None if out[0] is None else out)
            if dist is not None:
                for layer in dropouts:  # each rank keeps its rows of the whole batch's mask
                    layer.rows = (stop - start, lo - start, hi - start)
            steps.append(self._train_step(Xb, yb, dist, (hi - lo) / (stop - start)))
            local.append(hi - lo)
        for layer in dropouts:
            layer.rows = None
        _checks.check_pending_labels(_READ_BY.format("Model.train"))  # (a hand loop's, if any)
        arrays = self._state_arrays()
        finite = self.backend.ops.finite_flags([a for *_, a in arrays])  # read with the metrics
        hits = {i: step[2].rows for i, step in enumerate(steps) if isinstance(step[2], _Hits)}
        steps = [(s[0], s[1], s[2].count) if isinstance(s[2], _Hits) else s for s in steps]
        values = _host_values(self.backend, [v for step in steps for v in step] + finite)
        flags = zip(arrays, values[3 * len(steps) :], strict=True)
        bad_arrays = [_array_name(*where) for (*where, _), ok in flags if not ok]
        values = values[: 3 * len(steps)].reshape(len(steps), 3)
        for i, n_rows in hits.items():  # the float32 division the device would have done
            values[i, 2] = np.float32(values[i, 2]) / np.float32(n_rows)
        sizes = np.minimum(size, n - np.arange(0, n, size))  # samples in each step
        taken = np.array(local, dtype=np.float64)
        loss_sum, acc_sum = (values[:, [0, 2]] * taken[:, None]).sum(axis=0)
        reg = float((values[:, 1] * sizes).sum() / n)  # the same on every rank
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1) & (taken > 0))
        first_bad = float(bad[0] + 1 if bad.size else math.inf)
        n_bad = float(len(bad_arrays))
        if dist is not None:
            loss_sum, acc_sum, n_bad = dist.sum([loss_sum, acc_sum, n_bad])
            first_bad = dist.min(first_bad)
        if n_bad and not bad_arrays:  # (parameters are alike on every rank: not expected)
            bad_arrays = ["an array on another rank"]
        step = int(first_bad) if math.isfinite(first_bad) else -1
        return loss_sum / n, reg, acc_sum / n, step, bad_arrays

    def _state_arrays(self) -> list[tuple[str, Any, str, Any]]:
        """``(key, layer, attribute, array)`` for every parameter and every optimizer state
        that exists (``_array_name`` names one for an error)."""
        return [
            (key, layer, attr, value)
            for key, layer, attr, _ in self._slots(with_state=True)
            if (value := getattr(layer, attr, None)) is not None
        ]

    def _check_state_finite(self) -> None:
        """Before training: every parameter and optimizer state must be finite, since a
        non-finite epoch goes back to the state it started from."""
        arrays = self._state_arrays()
        finite = _host_values(self.backend, self.backend.ops.finite_flags([a for *_, a in arrays]))
        for (key, layer, attr, value), ok in zip(arrays, finite, strict=True):
            if not ok:
                try:
                    _checks.check_finite(value, _array_name(key, layer, attr))
                except ValueError as e:
                    raise ValueError(
                        f"Model.train: {e} before training, so there is no finite state to "
                        "train from or to go back to; rebuild the model or load a finite "
                        "checkpoint"
                    ) from None

    def _snapshot(self, previous: dict[str, Any] | None = None) -> dict[str, Any]:
        """Device copies of every parameter and optimizer state (None where not created
        yet), and the counters, for ``_restore`` after a non-finite loss. The arrays of a
        ``previous`` snapshot are overwritten where they fit, so one copy of the parameters is
        kept, not two at each epoch's start."""
        assert self.optimizer is not None
        xp = self.backend.xp
        arrays, old = [], {}
        if previous is not None:
            old = {(id(layer), attr): copy for layer, attr, copy in previous["arrays"]}
        for _, layer, attr, _ in self._slots(with_state=True):
            value, copy = getattr(layer, attr, None), old.get((id(layer), attr))
            if value is None:
                copy = None
            elif copy is not None and copy is not value and _same_kind(copy, value):
                copy[...] = value
            else:
                copy = xp.asarray(value, copy=True)
            arrays.append((layer, attr, copy))
        counters = (self.optimizer.iterations, self.optimizer.current_learning_rate)
        return {"arrays": arrays, "counters": counters, "epochs": self.epochs_trained}

    def _restore(self, saved: dict[str, Any]) -> None:
        assert self.optimizer is not None
        self._assign(saved["arrays"])
        self.optimizer.iterations, self.optimizer.current_learning_rate = saved["counters"]
        self.epochs_trained = saved["epochs"]

    def _train_step(
        self, Xb: Any, yb: Any, dist: Context | None = None, share: float = 1.0
    ) -> tuple[Any, Any, Any]:
        """Forward, loss, backward and update on one batch; (data loss, regularisation loss,
        accuracy) as device scalars. Distributed, (Xb, yb) is this rank's ``share`` of the
        global batch and the gradients are summed across ranks before the update."""
        assert self.loss is not None and self.optimizer is not None
        penalized = self._penalized
        reg_loss = self.loss.regularization_loss(*penalized) if penalized else 0.0
        if Xb.shape[0] == 0:  # a rank with no sample in a last batch smaller than the ranks
            data_loss = acc = 0.0
            for layer in self.trainable_layers:
                for name in layer.params:
                    setattr(layer, "d" + name, None)  # zeros in the allreduce
        else:
            data_loss, output = self._train_pass(Xb, yb)
            acc = self._accuracy(output, yb, hits_ok=True)
        if dist is not None:
            dist.allreduce_gradients(self.trainable_layers, share)
        self.optimizer.step(self.trainable_layers)
        return data_loss, reg_loss, acc

    def _accuracy(self, output: Any, y: Any, *, hits_ok: bool = False) -> Any:
        """The batch's accuracy; with ``hits_ok``, a device count of hits may come back as
        ``_Hits`` instead, divided on the host with the epoch's read (one launch a step less:
        the same float32 division, so the same bits)."""
        loss = self.loss
        if (  # a fused kernel (C or CUDA) counted the argmax hits already: the same value
            type(self.accuracy) is Accuracy
            and isinstance(loss, SoftmaxCrossEntropy)
            and loss.correct is not None
            and loss.logits is output
        ):
            correct = loss.correct
            if isinstance(correct, (int, np.integer)):  # counted on the host (the C kernel)
                return np.float32(correct) / output.shape[0]
            if hits_ok:
                return _Hits(correct, output.shape[0])
            return correct / output.shape[0]  # a 0-d float32 device count (CUDA): no host sync
        return self.accuracy.calculate(output, y)

    @_on_its_gpu
    @_one_pass_at_a_time
    def evaluate(self, X: Any, y: Any, *, batch_size: int | None = None) -> dict[str, float]:
        """Loss and accuracy over (X, y) in inference mode (Dropout off), without training."""
        self._ready("evaluate")
        _checks.check_pending_labels(_READ_BY.format("Model.evaluate"))
        X_dev, y_dev = self._prepare(X, y, "Model.evaluate")
        size = self._batch_size(batch_size, X_dev.shape[0], "Model.evaluate")
        with _Unchecked(self.loss, self.accuracy):
            return self._evaluate(X_dev, y_dev, size)

    def _evaluate(
        self, X_dev: Any, y_dev: Any, size: int, dist: Context | None = None
    ) -> dict[str, float]:
        """Mean loss and accuracy over (X_dev, y_dev); distributed, each rank evaluates its
        slice and the sums are reduced."""
        assert self.loss is not None
        n = X_dev.shape[0]
        lo, hi = (0, n) if dist is None else shard_bounds(n, dist.rank, dist.size)
        sums = [0.0, 0.0]
        for start in range(lo, hi, size):
            stop = min(start + size, hi)
            Xb, yb = X_dev[start:stop, ...], y_dev[start:stop, ...]
            output = self.forward(Xb, training=False)
            loss = self.loss.forward(output, yb)
            sums = [
                s + v * Xb.shape[0]
                for s, v in zip(sums, (loss, self._accuracy(output, yb)), strict=True)
            ]
        loss_sum, acc_sum = _host_values(self.backend, sums)
        if dist is not None:
            loss_sum, acc_sum = dist.sum([loss_sum, acc_sum])
        return {"loss": float(loss_sum) / n, "accuracy": float(acc_sum) / n}

    @_on_its_gpu
    @_one_pass_at_a_time
    def predict(self, X: Any, *, batch_size: int | None = None) -> Any:
        """The network's outputs for X (probabilities when the loss is SoftmaxCrossEntropy),
        in inference mode, as a device array (samples, outputs); ``bg.to_numpy`` to read."""
        self._ready("predict")
        X_dev = self._inputs(X, "Model.predict", sync_ok=False)  # predict never waits
        n = X_dev.shape[0]
        size = self._batch_size(batch_size, n, "Model.predict")
        outs = [
            self._predictions(self.forward(X_dev[s : min(s + size, n), ...], training=False))
            for s in range(0, n, size)
        ]
        return outs[0] if len(outs) == 1 else self.backend.xp.concat(outs, axis=0)

    # --- checkpoints ---------------------------------------------------------------------

    def _slots(self, with_state: bool) -> Iterator[tuple[str, Any, str, Any]]:
        """``(key, layer, attribute, parameter)`` for every parameter and, ``with_state``,
        every optimizer-state slot beside it; ``key`` is the array's name in a checkpoint."""
        kinds = self.optimizer.state_kinds if with_state and self.optimizer is not None else ()
        for i, layer in enumerate(self.layers):
            for name in getattr(layer, "params", ()):
                param = getattr(layer, name)
                yield f"layers.{i}.{name}", layer, name, param
                for kind in kinds:
                    attr = state_name(name, kind)
                    yield f"optimizer.{i}.{attr}", layer, attr, param

    def _host_arrays(self, with_state: bool) -> dict[str, np.ndarray]:
        """Parameters (and optimizer state that exists) as host arrays, by checkpoint key."""
        return {
            key: to_numpy(value)
            for key, layer, attr, _ in self._slots(with_state)
            if (value := getattr(layer, attr, None)) is not None
        }

    @_one_pass_at_a_time
    def save_parameters(self, path: str | os.PathLike[str]) -> None:
        """Write the layers' parameters (weights and biases) to ``path`` (.npz), atomically."""
        names = [type(layer).__name__ for layer in self.layers]
        checkpoint.save(path, self._host_arrays(False), {"kind": "parameters", "layers": names})

    @_one_pass_at_a_time
    def load_parameters(self, path: str | os.PathLike[str]) -> None:
        """Load parameters saved by ``save_parameters`` or ``save`` (from any backend) into
        this model's layers. Everything is checked first: on any mismatch the model is left
        unchanged and ``CheckpointError`` names the problem."""
        arrays, _ = checkpoint.load(path)
        self._assign(self._checked(arrays, path, with_state=False))

    def _checked(
        self, arrays: dict[str, np.ndarray], path: Any, with_state: bool
    ) -> list[tuple[Any, str, Any]]:
        """``(layer, attribute, device array or None)`` for every slot, after checking that
        every parameter is there, every array has its parameter's shape and none is extra.
        Optimizer state missing from the file was never created: it comes back as None."""
        updates, known = [], set()
        for key, layer, attr, param in self._slots(with_state):
            known.add(key)
            if key not in arrays:
                if key.startswith("layers."):
                    raise checkpoint.CheckpointError(f"{path}: missing array {key!r}")
                updates.append((layer, attr, None))
                continue
            if arrays[key].shape != tuple(param.shape):
                raise checkpoint.CheckpointError(
                    f"{path}: {key} has shape {arrays[key].shape}, the model needs "
                    f"{tuple(param.shape)}"
                )
            updates.append((layer, attr, layer.backend.asarray(arrays[key], param.dtype)))
        families = ("layers.", "optimizer.") if with_state else ("layers.",)
        extra = sorted(k for k in arrays if k.startswith(families) and k not in known)
        if extra:
            raise checkpoint.CheckpointError(
                f"{path}: arrays {extra} have no matching slot in this model"
            )
        return updates

    @staticmethod
    def _assign(updates: list[tuple[Any, str, Any]]) -> None:
        """Set each ``(layer, attribute, value)``, into the flat buffers where the attribute
        is one of their views (so they stay in use)."""
        for layer, attr, value in updates:
            assign(layer, attr, value)

    @_one_pass_at_a_time
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the whole model to one .npz, atomically: architecture, loss, accuracy and
        optimizer as JSON, parameters and optimizer state as arrays, and the epoch count, so
        ``Model.load`` can resume training exactly."""
        self._ready("save")
        assert self.loss is not None
        meta: dict[str, Any] = {
            "kind": "model",
            "layers": [_spec(layer) for layer in self.layers],
            "loss": _spec(self.loss),
            "accuracy": None if self.accuracy is None else _spec(self.accuracy),
            "epochs_trained": self.epochs_trained,
            "optimizer": None,
        }
        if self.optimizer is not None:
            opt = self.optimizer
            meta["optimizer"] = _spec(opt) | {
                "iterations": opt.iterations,
                "current_learning_rate": opt.current_learning_rate,
            }
        checkpoint.save(path, self._host_arrays(with_state=True), meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Model:
        """Rebuild a model saved by ``save`` on the active backend, ready to train on.
        The metadata's values are checked before anything is built (see
        ``checkpoint.check_model_meta``) and each layer is built around its saved parameters,
        so its constructor checks their shapes against its settings and nothing is allocated
        beyond what the file holds. A file that does not fit (unknown class, bad setting,
        missing or misshapen array, ...) raises ``CheckpointError`` naming the file and field."""
        arrays, meta = checkpoint.load(path)
        if meta.get("kind") != "model":
            raise checkpoint.CheckpointError(
                f"{path}: holds {meta.get('kind')!r}, not a whole model; use load_parameters"
            )
        checkpoint.check_model_meta(meta, path)
        layers = []
        for i, spec in enumerate(meta["layers"]):
            where = f"{path}: cannot rebuild layers[{i}] ({spec['class']})"
            try:
                layer_class = registry.lookup(spec["class"], "layer")
            except ValueError as e:
                raise checkpoint.CheckpointError(f"{where}: {e}") from e
            # parameters the constructor takes go to it: Dense(n_inputs, n_neurons,
            # weights=..., biases=...) checks their shapes; the others are assigned below
            takes = inspect.signature(layer_class).parameters
            saved = {}
            for name in getattr(layer_class, "params", ()):
                if (key := f"layers.{i}.{name}") not in arrays:
                    raise checkpoint.CheckpointError(f"{path}: missing array {key!r}")
                if name in takes:
                    saved[name] = arrays[key]
            try:
                layers.append(layer_class(**spec["config"], **saved))
            except (KeyError, TypeError, ValueError) as e:
                raise checkpoint.CheckpointError(f"{where}: {e}") from e
        try:
            model = cls(layers)
            accuracy = meta["accuracy"]
            model.set(
                loss=registry.build(meta["loss"], "loss"),
                accuracy=None if accuracy is None else registry.build(accuracy, "accuracy"),
            )
            opt_meta = meta["optimizer"]
            if opt_meta is not None:
                model.set(optimizer=registry.build(opt_meta, "optimizer"))
                opt = model.optimizer
                assert opt is not None
                opt.iterations = int(opt_meta["iterations"])
                opt.current_learning_rate = float(opt_meta["current_learning_rate"])
            model.finalize()
            model.epochs_trained = int(meta["epochs_trained"])
        except (KeyError, TypeError, ValueError) as e:
            raise checkpoint.CheckpointError(f"{path}: cannot rebuild the model: {e!r}") from e
        model._assign(model._checked(arrays, path, with_state=True))
        return model

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Model([{inner}], loss={self.loss!r}, optimizer={self.optimizer!r})"


# --- helpers -------------------------------------------------------------------------------


# how a label check a hand-written loop left pending came to raise in the Model's pass
_READ_BY = " (checked on the device in an earlier call, read by {})"


class _Unchecked:
    """Turn off the per-call label checks of a loss and accuracy for a block (the Model has
    checked the whole data set once), and restore them after."""

    def __init__(self, *objects: Any) -> None:
        self.objects = [o for o in objects if o is not None and hasattr(o, "validate")]

    def __enter__(self) -> None:
        self.saved = [o.validate for o in self.objects]
        for o in self.objects:
            o.validate = False

    def __exit__(self, *exc: object) -> None:
        for o, v in zip(self.objects, self.saved, strict=True):
            o.validate = v


def _array_name(key: str, layer: Any, attr: str) -> str:
    """A parameter or optimizer state named for an error: ``"layer 2 Dense(64, 3) weights"``
    (``key`` is its checkpoint key, ``layers.2.weights`` or ``optimizer.2.weight_cache``)."""
    state = " (optimizer state)" if key.startswith("optimizer.") else ""
    label = getattr(layer, "name", type(layer).__name__)
    return f"layer {key.split('.')[1]} {label} {attr}{state}"


def _nonfinite(
    values: dict[str, float], epoch: int, step: int, steps: int, bad_arrays: list[str]
) -> str:
    """``NonFiniteLossError``'s message: what went NaN or infinite (the first of ``values``,
    the epoch's loss, regularization loss and accuracy, that is not finite, and the arrays),
    where, and what now."""
    arrays = bad_arrays[0] if bad_arrays else ""
    if len(bad_arrays) > 1:
        arrays += f" and {len(bad_arrays) - 1} more arrays"
    bad = [(name, v) for name, v in values.items() if not math.isfinite(v)]
    back = f"at the end of epoch {epoch}" if epoch else "where they were before training"
    if bad:
        what, value = bad[0]
        text = f"the {what} became {value} at epoch {epoch + 1}, step {step} of {steps}"
        if arrays:
            verb = "are" if len(bad_arrays) > 1 else "is"
            text += f"; {arrays} {verb} no longer finite either"
        if step == 1:  # computed from the very state that is restored
            cause = {
                "loss": "their outputs overflow",
                "regularization loss": "the L1/L2 penalty of those weights overflows",
            }.get(what, "the accuracy's inputs")
            back += (
                f": those parameters are finite but gave that value at step 1 ({cause}), so "
                "no state with a finite loss is kept"
            )
    else:  # every step's loss was finite: the updates made the parameters non-finite
        text = (
            f"{arrays} became NaN or infinite in epoch {epoch + 1} (every step's loss was "
            f"finite, so by the last update, step {steps} of {steps}, at the latest)"
        )
    return (
        f"Model.train: {text}; parameters and optimizer state are back {back}. Lower the "
        "learning rate, or check the data and the loss's inputs"
    )


def _nonfinite_validation(val_loss: float, epoch: int) -> str:
    """``NonFiniteLossError``'s message when only the validation loss is not finite."""
    back = f"at the end of epoch {epoch}" if epoch else "where they were before training"
    return (
        f"Model.train: the validation loss became {val_loss} after epoch {epoch + 1}, though "
        "the parameters and the training loss are finite (the outputs overflow); parameters "
        f"and optimizer state are back {back}. Lower the learning rate, or check the "
        "validation data"
    )


class _Hits(NamedTuple):
    """A batch's count of correct predictions on the device, and its rows (the accuracy is
    count / rows, divided when the epoch's values reach the host)."""

    count: Any
    rows: int


def _stages(layers: list[Any]) -> list[tuple[Any, ...]]:
    """The training pass's stages: ``(dense, relu)`` for a Dense followed by a ReLU (exactly
    those classes: a subclass may change either's math), ``(layer,)`` for any other."""
    stages: list[tuple[Any, ...]] = []
    i = 0
    while i < len(layers):
        pair = layers[i : i + 2]
        if len(pair) == 2 and type(pair[0]) is Dense and type(pair[1]) is ReLU:
            stages.append((pair[0], pair[1]))
            i += 2
        else:
            stages.append((layers[i],))
            i += 1
    return stages


def _kept(xp: Any, buffers: dict[str, Any] | None, key: str, like: Any, rows: int) -> Any:
    """The kept array ``key`` for ``rows`` rows of ``like`` (its dtype and other axes), made
    if missing or of another shape; None where step buffers are off (a fresh array)."""
    if buffers is None:
        return None
    shape = (rows, *like.shape[1:])
    kept = buffers.get(key)
    if kept is None or kept.shape != shape or kept.dtype != like.dtype:
        kept = buffers[key] = xp.empty(shape, dtype=like.dtype)
    return kept


def _context(distributed: bool | Context) -> Context | None:
    if isinstance(distributed, Context):
        return distributed
    return Context() if distributed else None


_REGULARIZERS = ("weight_regularizer_l1", "weight_regularizer_l2", "bias_regularizer_l1",
                 "bias_regularizer_l2")  # fmt: skip


def _regularized(layer: Any) -> bool:
    """Whether a layer has any L1/L2 penalty switched on (else its penalty is 0.0)."""
    return any(getattr(layer, name, 0) for name in _REGULARIZERS)


def _same_kind(a: Any, b: Any) -> bool:
    return bool(a.shape == b.shape and a.dtype == b.dtype)


def _host_values(backend: Backend, values: list[Any]) -> np.ndarray:
    """Device scalars (and Python floats) to the host as float64, the device ones in one copy
    and a constant number of device operations however many there are (an epoch's steps):
    one stack and one cast per dtype, and one concatenation."""
    if backend.host:  # already on the host: no copy to batch (stacking cost 3 us each)
        return np.array([float(v) for v in values], dtype=np.float64)
    out = np.array([float(v) if isinstance(v, float | int) else np.nan for v in values])
    by_dtype: dict[str, list[int]] = {}  # positions of the device values, by dtype
    for i, v in enumerate(values):
        if not isinstance(v, float | int):
            by_dtype.setdefault(str(v.dtype), []).append(i)
    if by_dtype:
        xp = backend.xp
        parts = [xp.astype(xp.stack([values[i] for i in where]), xp.float64)
                 for where in by_dtype.values()]  # fmt: skip
        out[[i for where in by_dtype.values() for i in where]] = to_numpy(
            parts[0] if len(parts) == 1 else xp.concat(parts)
        )
    return out


def _spec(obj: Any) -> dict[str, Any]:
    """What a checkpoint stores of ``obj``: its registered class name and its config
    (``ValueError`` for a class that is not registered: no file could bring it back)."""
    return {"class": registry.name_of(obj), "config": obj.get_config()}


def _summary(row: dict[str, float]) -> str:
    text = (
        f"epoch {int(row['epoch'])}: loss {row['loss']:.4f} "
        f"(reg {row['regularization_loss']:.4f}), acc {row['accuracy']:.4f}, "
        f"lr {row['learning_rate']:.6g}"
    )
    if "val_loss" in row:
        text += f", val_loss {row['val_loss']:.4f}, val_acc {row['val_accuracy']:.4f}"
    return text
