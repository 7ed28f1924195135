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
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, cast

import numpy as np

from . import _checks, checkpoint, registry
from .activations import ReLU, Softmax
from .backend import Backend, array_library, host_array, to_numpy
from .callbacks import Callback
from .flat import FlatParameters, assign
from .layers import Dense
from .losses import (
    BinaryCrossEntropy,
    CategoricalCrossEntropy,
    Loss,
    SoftmaxCrossEntropy,
)
from .metrics import Accuracy, BinaryAccuracy
from .optimizers import Optimizer
from .state import walk
from .strategy import Local
from .trainer import (
    READ_BY,
    History,
    Hits,
    Trainer,
    Unchecked,
    callbacks_for,
    host_values,
    strategy_for,
)

CLASS_LOSSES = (CategoricalCrossEntropy, SoftmaxCrossEntropy)

M = TypeVar("M", bound=Callable[..., Any])


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
        self.saved_extra: dict[str, Any] = {}  # what Model.load found in save(extra=...)
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
        callbacks: Iterable[Callback] | None = None,
        on_epoch_end: Callable[[dict[str, float]], None] | None = None,
        on_nonfinite: str = "raise",
        distributed: Any = False,
    ) -> History:
        """Train for ``epochs`` passes over (X, y) in mini-batches of ``batch_size`` (all of X
        when None; the last batch may be smaller) and return the history: one dict per epoch
        with ``epoch``, ``loss`` (data loss), ``regularization_loss``, ``accuracy``,
        ``learning_rate`` and, with ``validation_data``, ``val_loss`` and ``val_accuracy``.
        The loop is :class:`backprop_gpu.trainer.Trainer`'s.

        ``callbacks``: :mod:`backprop_gpu.callbacks` objects (``EarlyStopping``,
        ``ReduceLROnPlateau``, ``ModelCheckpoint``, ``CSVLogger``, ``TerminateOnNaN``,
        ``ProgressBar``, your own ``Callback``), called in order at each point of the loop;
        one may stop training. Shortcuts, added after them: ``print_every`` prints a summary
        every that many epochs (None or 0: silent); ``on_epoch_end`` gets each epoch's dict.

        Epoch ``e`` (counting every epoch this model has trained) is shuffled with
        ``numpy.random.default_rng([seed, e])``, so a run is repeatable and a run resumed from
        a checkpoint shuffles as the uninterrupted one would. On NumPy each step writes the
        Dense layers' outputs and gradients into the previous step's arrays (no allocation a
        step): a layer's ``output``, ``dweights`` etc. read in a callback hold until the next
        step overwrites them (copy them to keep them); arrays held from before the call, and
        after it, are never overwritten.

        The loss, every parameter and every optimizer state are checked at each epoch's end
        (one reduction an array, read with the epoch's metrics): when any is NaN or infinite,
        parameters and optimizer state go back to where that epoch started, which was
        checked finite too, and then ``on_nonfinite="raise"`` raises ``NonFiniteLossError``
        naming the epoch and step and what went non-finite, while ``"stop"`` ends training
        quietly and returns the finite history (``TerminateOnNaN`` in ``callbacks`` says the
        same, and can keep no copy: ``restore=False``). A model whose parameters or
        optimizer state are not finite when ``train`` is called has no finite state to go
        back to: ``ValueError`` names the array, before anything changes.

        ``distributed=True`` (or a ``distributed.Context``) trains data-parallel over MPI, the
        script started under ``mpiexec -n R``: every rank passes the same model, data and
        arguments (checked by hash at start), rank 0's parameters are broadcast, each global
        batch of ``batch_size`` is split across the ranks, gradients are summed in one
        allreduce a step, and the metrics are reduced across ranks. Only rank 0 prints;
        callbacks run on every rank but those that write files (``writes = True``), which
        run on rank 0 only. See :mod:`backprop_gpu.distributed`.
        """
        strategy = strategy_for(distributed)
        if not strategy.is_root:
            print_every = 0
        chosen = callbacks_for(callbacks, print_every, on_epoch_end, on_nonfinite)
        return Trainer(self, chosen, strategy).fit(
            X, y, epochs=epochs, batch_size=batch_size, validation_data=validation_data,
            shuffle=shuffle, seed=seed,
        )  # fmt: skip

    def _accuracy(self, output: Any, y: Any, *, hits_ok: bool = False) -> Any:
        """The batch's accuracy; with ``hits_ok``, a device count of hits may come back as
        ``Hits`` instead, divided on the host with the epoch's read (one launch a step less:
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
                return Hits(correct, output.shape[0])
            return correct / output.shape[0]  # a 0-d float32 device count (CUDA): no host sync
        return self.accuracy.calculate(output, y)

    @_on_its_gpu
    @_one_pass_at_a_time
    def evaluate(self, X: Any, y: Any, *, batch_size: int | None = None) -> dict[str, float]:
        """Loss and accuracy over (X, y) in inference mode (Dropout off), without training."""
        self._ready("evaluate")
        _checks.check_pending_labels(READ_BY.format("Model.evaluate"))
        X_dev, y_dev = self._prepare(X, y, "Model.evaluate")
        size = self._batch_size(batch_size, X_dev.shape[0], "Model.evaluate")
        with Unchecked(self.loss, self.accuracy):
            return self._evaluate(X_dev, y_dev, size)

    def _evaluate(
        self, X_dev: Any, y_dev: Any, size: int, strategy: Local | None = None
    ) -> dict[str, float]:
        """Mean loss and accuracy over (X_dev, y_dev); distributed (``strategy``), each rank
        evaluates its rows and the sums are reduced."""
        assert self.loss is not None
        strategy = strategy if strategy is not None else Local()
        n = X_dev.shape[0]
        lo, hi = strategy.evaluation_rows(n)
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
        loss_sum, acc_sum = strategy.sum(list(host_values(self.backend, sums)))
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
        every optimizer-state slot beside it (``state.walk``); ``key`` is the array's name in
        a checkpoint."""
        for slot in walk(self.layers, self.optimizer if with_state else None):
            yield slot.key, slot.layer, slot.attr, slot.param

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
    def save(self, path: str | os.PathLike[str], *, extra: dict[str, Any] | None = None) -> None:
        """Write the whole model to one .npz, atomically: architecture, loss, accuracy and
        optimizer as JSON, parameters and optimizer state as arrays, and the epoch count, so
        ``Model.load`` can resume training exactly. ``extra``: JSON-able data kept beside
        (``ModelCheckpoint`` stores its callbacks' states there), ``saved_extra`` after a
        ``load``."""
        self._ready("save")
        assert self.loss is not None
        meta: dict[str, Any] = {
            "kind": "model",
            "layers": [_spec(layer) for layer in self.layers],
            "loss": _spec(self.loss),
            "accuracy": None if self.accuracy is None else _spec(self.accuracy),
            "epochs_trained": self.epochs_trained,
            "optimizer": None,
            "extra": extra or {},
        }
        if self.optimizer is not None:
            opt = self.optimizer
            meta["optimizer"] = _spec(opt) | {
                "iterations": opt.iterations,
                "current_learning_rate": opt.current_learning_rate,
                "base_learning_rate": opt.learning_rate,
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
                # (a ReduceLROnPlateau may have lowered the base rate since construction)
                opt.learning_rate = float(opt_meta.get("base_learning_rate", opt.learning_rate))
            model.finalize()
            model.epochs_trained = int(meta["epochs_trained"])
            model.saved_extra = dict(meta.get("extra") or {})
        except (KeyError, TypeError, ValueError) as e:
            raise checkpoint.CheckpointError(f"{path}: cannot rebuild the model: {e!r}") from e
        model._assign(model._checked(arrays, path, with_state=True))
        return model

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Model([{inner}], loss={self.loss!r}, optimizer={self.optimizer!r})"


# --- helpers -------------------------------------------------------------------------------


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


def _spec(obj: Any) -> dict[str, Any]:
    """What a checkpoint stores of ``obj``: its registered class name and its config
    (``ValueError`` for a class that is not registered: no file could bring it back)."""
    return {"class": registry.name_of(obj), "config": obj.get_config()}
