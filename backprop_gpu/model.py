"""``Model``: a stack of layers with a loss, an optimizer and an accuracy (the book's Model
class, on any backend). It builds and checks the stack, runs its passes (forward, backward,
the fused training pass of one batch), evaluates, predicts, and saves and loads itself.

    model = Model([Dense(2, 64), ReLU(), Dense(64, 3), Softmax()])
    model.set(loss=CategoricalCrossEntropy(), optimizer=Adam(), accuracy=Accuracy())
    model.finalize()
    history = model.train(X, y, epochs=10, batch_size=128, validation_data=(X_val, y_val))

Around it, each in its own module: how data enters a pass (:mod:`backprop_gpu.inputs`), the fit
loop that ``train`` hands over to (:mod:`backprop_gpu.trainer`, imported when ``train`` runs),
the checkpoint of a model (:mod:`backprop_gpu.model_io`), and which threads and GPU a pass runs
on (:mod:`backprop_gpu._guards`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import inputs, model_io, precisions
from ._guards import PassGuard, on_its_gpu, one_pass_at_a_time
from .activations import ReLU, Softmax
from .backend import Backend, host_values
from .flat import FlatParameters, pack
from .layers import Dense
from .losses import (
    CLASS_LOSSES,
    BinaryCrossEntropy,
    CategoricalCrossEntropy,
    Loss,
    SoftmaxCrossEntropy,
)
from .metrics import Accuracy, BinaryAccuracy, batch_accuracy
from .optimizers import Optimizer

if TYPE_CHECKING:
    from .callbacks import Callback
    from .trainer import History

Reduce = Callable[[list[Any]], Any]  # (the ranks' sum of an evaluation's sums)


class Model:
    """Layers run in order; ``set`` the loss, optimizer and accuracy; ``finalize``; train.

    Threads: ``predict`` and ``evaluate`` may be called from many threads at once (they take
    turns, and so do ``save``, ``save_parameters`` and ``load_parameters``); ``train`` owns the
    model while it runs, and a second ``train``, or any of those from another thread
    meanwhile, raises ``RuntimeError`` (from ``on_epoch_end`` they work). The layers
    themselves, hand-written loops and ``add``/``set``/``finalize`` are not guarded: use one
    thread per model for those.
    """

    def __init__(self, layers: Iterable[Any] = (), *, precision: str | None = None) -> None:
        self._guard = PassGuard()
        self.layers: list[Any] = []
        self.loss: Loss | None = None
        self.optimizer: Optimizer | None = None
        self.accuracy: Any = None
        self.epochs_trained = 0
        self._finalized = False
        self._flat: FlatParameters | None = None
        self.saved_extra: dict[str, Any] = {}  # what Model.load found in save(extra=...)
        self.precision = precisions.chosen(precision, "Model: precision")  # (precisions.py)
        self._policy: precisions.Passes | None = None
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

    def set(self, *, loss: Loss | None = None, optimizer: Optimizer | None = None,
            accuracy: Any = None, precision: str | None = None) -> Model:  # fmt: skip
        """Set any of the loss, optimizer, accuracy and precision policy (the others are
        kept). Everything is checked before anything changes."""
        precision = precisions.chosen(precision, "Model.set: precision", self.precision)
        if loss is not None and not isinstance(loss, Loss):
            raise TypeError(f"Model.set: loss must be a backprop_gpu Loss, got {loss!r}")
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise TypeError(f"Model.set: optimizer must be an Optimizer, got {optimizer!r}")
        if accuracy is not None and not callable(getattr(accuracy, "calculate", None)):
            raise TypeError(f"Model.set: accuracy must have calculate(), got {accuracy!r}")
        self.loss = loss if loss is not None else self.loss
        self.optimizer = optimizer if optimizer is not None else self.optimizer
        self.accuracy = accuracy if accuracy is not None else self.accuracy
        self.precision = precision
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
        self._policy = precisions.for_model(self)
        if self.accuracy is None and isinstance(self.loss, CLASS_LOSSES):
            self.accuracy = Accuracy()  # the obvious one; regression must choose its own
        elif self.accuracy is None and isinstance(self.loss, BinaryCrossEntropy):
            self.accuracy = BinaryAccuracy()
        self._finalized = True
        return self

    def _pack(self) -> None:
        """The parameters, gradients and optimizer states in flat buffers (``flat.pack``)."""
        self._flat = pack(self.trainable_layers, self.optimizer, self._flat)

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
        """Forward, loss and backward of one training batch (the trainer's step), fused where
        the backend's ops can (a Dense and its ReLU in one op each way, softmax cross-entropy's
        loss and gradient in one): the same values as ``forward``, ``loss.forward`` and
        ``backward``. Returns (data loss, the network's output)."""
        assert self.loss is not None
        mixed = self._policy  # (mixed: the layers in its dtype, the loss in float32; precisions)
        X = Xb if mixed is None else mixed.cast(Xb)
        for stage in self._stages:
            X = stage[0].forward_relu(X, stage[1]) if len(stage) == 2 else stage[0].forward(X)
        X = X if mixed is None else mixed.to_float32(X)
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
        dvalues = dvalues if mixed is None else mixed.scaled(dvalues)
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

    def _infer(self, X: Any) -> Any:
        """``forward`` in inference mode, in the precision policy's compute dtype."""
        policy = self._policy
        return self.forward(X, training=False) if policy is None else policy.infer(self, X)

    def _predictions(self, output: Any) -> Any:
        """What the network predicts: probabilities when the loss applies the softmax."""
        if isinstance(self.loss, SoftmaxCrossEntropy):
            return self.loss.activation.forward(output)
        return output

    # --- training and inference ----------------------------------------------------------

    @on_its_gpu
    @one_pass_at_a_time
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
        data_on_device: bool | None = None,
    ) -> History:
        """Train for ``epochs`` passes over (X, y) in mini-batches of ``batch_size`` (all of X
        when None; the last batch may be smaller) and return the history: one dict per epoch
        with ``epoch``, ``loss`` (data loss), ``regularization_loss``, ``accuracy``,
        ``learning_rate`` and, with ``validation_data``, ``val_loss`` and ``val_accuracy``.

        ``callbacks``: :mod:`backprop_gpu.callbacks` objects (``EarlyStopping``,
        ``ReduceLROnPlateau``, ``ModelCheckpoint``, ``CSVLogger``, ``TerminateOnNaN``,
        ``ProgressBar``, your own ``Callback``), called in order at each point of the loop;
        one may stop training. Shortcuts, added after them: ``print_every`` prints a summary
        every that many epochs (None or 0: silent); ``on_epoch_end`` gets each epoch's dict.

        Epoch ``e`` is shuffled by ``numpy.random.default_rng([seed, e])`` (a resumed run
        shuffles as the uninterrupted one); a loss, parameter or optimizer state gone NaN or
        infinite puts the epoch back and raises ``NonFiniteLossError`` (``on_nonfinite="stop"``
        ends quietly); ``distributed=True`` trains data-parallel over MPI (``mpiexec -n R``).
        Each in full, and the step buffers of NumPy: :meth:`backprop_gpu.trainer.Trainer.fit`.

        ``data_on_device``: True copies the data to the device once, False streams it from
        the host batch by batch (memory-mapped files too, never read whole), None decides
        (``inputs.place``: on a GPU, whether it fits in half the free memory); alike results.
        """
        from .trainer import Trainer, callbacks_for, strategy_for  # (the loop: above the model)

        strategy = strategy_for(distributed)
        if not strategy.is_root:
            print_every = 0
        chosen = callbacks_for(callbacks, print_every, on_epoch_end, on_nonfinite)
        return Trainer(self, chosen, strategy).fit(
            X, y, epochs=epochs, batch_size=batch_size, validation_data=validation_data,
            shuffle=shuffle, seed=seed, data_on_device=data_on_device,
        )  # fmt: skip

    @on_its_gpu
    @one_pass_at_a_time
    def evaluate(
        self, X: Any, y: Any, *, batch_size: int | None = None, data_on_device: bool | None = None
    ) -> dict[str, float]:
        """Loss and accuracy over (X, y) in inference mode (Dropout off), without training;
        ``data_on_device`` as in ``train``."""
        self._ready("evaluate")
        inputs.check_pending("Model.evaluate")
        data = inputs.prepare(self, X, y, "Model.evaluate", data_on_device)
        size = inputs.batch_size(batch_size, data.n, "Model.evaluate")
        with inputs.Unchecked(self.loss, self.accuracy):
            return self._evaluate(data, size)

    def _evaluate(self, data: inputs.Data, size: int, rows: tuple[int, int] | None = None,
                  reduce: Reduce | None = None) -> dict[str, float]:  # fmt: skip
        """Mean loss and accuracy over ``data`` (``inputs.prepare``'s); distributed, each
        rank evaluates its ``rows`` and ``reduce`` sums the (loss, accuracy) sums over ranks."""
        assert self.loss is not None
        n, sums = data.n, [0.0, 0.0]
        lo, hi = rows if rows is not None else (0, n)
        ranges = [(start, min(start + size, hi)) for start in range(lo, hi, size)]
        with precisions.inference(self):  # (a mixed policy's 16-bit copies made once)
            for Xb, yb in data.batches(None, ranges):
                output = self._infer(Xb)
                loss = self.loss.forward(output, yb)
                accuracy = batch_accuracy(self.accuracy, self.loss, output, yb)
                sums = [s + v * Xb.shape[0] for s, v in zip(sums, (loss, accuracy), strict=True)]
        loss_sum, acc_sum = list(host_values(self.backend, sums))
        if reduce is not None:
            loss_sum, acc_sum = reduce([loss_sum, acc_sum])
        return {"loss": float(loss_sum) / n, "accuracy": float(acc_sum) / n}

    @on_its_gpu
    @one_pass_at_a_time
    def predict(self, X: Any, *, batch_size: int | None = None) -> Any:
        """The network's outputs for X (probabilities when the loss is SoftmaxCrossEntropy),
        in inference mode, as a device array (samples, outputs); ``bg.to_numpy`` to read."""
        self._ready("predict")
        X_dev = inputs.prepare_x(self, X, "Model.predict", sync_ok=False)  # predict never waits
        n = X_dev.shape[0]
        size = inputs.batch_size(batch_size, n, "Model.predict")
        with precisions.inference(self):
            outs = [self._predictions(self._infer(X_dev[s : min(s + size, n), ...]))
                    for s in range(0, n, size)]  # fmt: skip
        return outs[0] if len(outs) == 1 else self.backend.xp.concat(outs, axis=0)

    # --- checkpoints (the file's contents: model_io) --------------------------------------

    @one_pass_at_a_time
    def save_parameters(self, path: str | os.PathLike[str]) -> None:
        """Write the layers' parameters (weights and biases) to ``path`` (.npz), atomically."""
        model_io.save_parameters(self, path)

    @one_pass_at_a_time
    def load_parameters(self, path: str | os.PathLike[str]) -> None:
        """Load parameters saved by ``save_parameters`` or ``save`` (from any backend) into
        this model's layers, all checked first (``CheckpointError`` names a mismatch)."""
        model_io.load_parameters(self, path)

    @one_pass_at_a_time
    def save(self, path: str | os.PathLike[str], *, extra: dict[str, Any] | None = None) -> None:
        """Write the whole model to one .npz, atomically: architecture, loss, accuracy,
        optimizer and precision policy as JSON, parameters and optimizer state as arrays, the
        epoch count, so ``Model.load`` can resume training exactly. ``extra``: JSON-able data
        kept beside (``ModelCheckpoint``'s callback states), ``saved_extra`` after ``load``."""
        self._ready("save")
        model_io.save(self, path, extra)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Model:
        """Rebuild a model saved by ``save`` on the active backend, ready to train on. A file
        that does not fit (unknown class, bad setting, missing or misshapen array, ...) raises
        ``CheckpointError`` naming the file and field (see ``model_io.load``)."""
        return model_io.load(cls, path)

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
