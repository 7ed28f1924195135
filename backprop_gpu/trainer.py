"""The fit loop: epochs of shuffled mini-batches over a ``Model``, with callbacks around it.

``Model.train`` builds a ``Trainer`` and calls ``fit``; the model owns the math (its forward,
loss and backward pass, ``Model._train_pass``), :mod:`backprop_gpu.inputs` how the data enter,
the trainer the order of things:

    on_train_begin
    for each epoch:   on_epoch_begin
                      for each batch: take the batch, pass, (reduce gradients), update
                                      [on_batch_end, only if a callback has one]
                      one read of the epoch's metrics and every array's finiteness
                      non-finite?  -> TerminateOnNaN (restores, raises or stops)
                      validation; history row; on_epoch_end
    on_train_end

Where the loop runs is its ``strategy`` (:mod:`backprop_gpu.strategy`: one process, or MPI
ranks splitting each batch, :class:`backprop_gpu.distributed.DataParallel`). No step reads
the device: the losses and accuracies stay there until the epoch's end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from . import _checks, inputs
from .backend import host_values
from .callbacks import Callback, LambdaCallback, PrintEpochs, TerminateOnNaN, overrides
from .inputs import Unchecked
from .layers import Dense, Dropout
from .metrics import Hits, batch_accuracy
from .state import Slot, walk
from .strategy import Local

History = list[dict[str, float]]


class Trainer:
    """Trains ``model`` (finalized, with an optimizer) where ``strategy`` says, calling
    ``callbacks`` at each point of the loop (see the module docstring). ``stop_training``,
    set by a callback, ends training after the epoch running."""

    def __init__(
        self,
        model: Any,
        callbacks: Iterable[Callback] = (),
        strategy: Local | None = None,
    ) -> None:
        self.model = model
        self.strategy = strategy if strategy is not None else Local()
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(
                    f"Model.train: callbacks must be backprop_gpu Callback objects, got {cb!r}"
                )
        guards = [cb for cb in self.callbacks if isinstance(cb, TerminateOnNaN)]
        if len(guards) > 1:
            raise ValueError(f"Model.train: at most one TerminateOnNaN, got {guards}")
        for i, cb in enumerate(self.callbacks):  # a checkpoint saves the states before it
            stateful = [c for c in self.callbacks[i + 1 :]
                        if not c.writes and overrides(c, "get_state")]  # fmt: skip
            if cb.saves_states and stateful:
                raise ValueError(
                    f"Model.train: {cb!r} saves the callbacks' states, but {stateful[0]!r} "
                    "comes after it and would be saved as of the epoch before; put the "
                    "callbacks that decide (EarlyStopping, ReduceLROnPlateau, ...) first"
                )
        self.nonfinite: TerminateOnNaN = guards[0] if guards else TerminateOnNaN()
        if not guards:
            self.callbacks.insert(0, self.nonfinite)
        self.stop_training = False
        self.epochs_left = 0
        self.metric_names: tuple[str, ...] = ()
        self.slots: list[Slot] = []  # every array of the training state (set by fit)
        self.history: History = []
        # NumPy: each Dense's arrays of the last step, rewritten by the next (see _pass)
        self._step_buffers: dict[Any, dict[str, Any]] | None = None

    # --- the callbacks ---------------------------------------------------------------------

    def _active(self) -> list[Callback]:
        """The callbacks of this rank: all on rank 0, those that do not write elsewhere."""
        root = self.strategy.is_root
        return [cb for cb in self.callbacks if root or not cb.writes]

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self._running:
            getattr(cb, hook)(*args)

    def callback_states(self) -> dict[str, dict[str, Any]]:
        """Every callback's ``get_state()`` by ``"<index>:<class>"`` (what a checkpoint keeps
        for a resume)."""
        states = {}
        for i, cb in enumerate(self.callbacks):
            saved = cb.get_state()
            if saved:
                states[f"{i}:{type(cb).__name__}"] = saved
        return states

    def check_state_finite(self) -> None:
        """Every parameter and optimizer state must be finite before training, since a
        non-finite epoch goes back to the state it started from."""
        model = self.model
        slots = [s for s in walk(model.layers, model.optimizer) if s.value is not None]
        finite = host_values(
            model.backend, model.backend.ops.finite_flags([s.value for s in slots])
        )
        for slot, ok in zip(slots, finite, strict=True):
            if not ok:
                try:
                    _checks.check_finite(slot.value, array_name(slot))
                except ValueError as e:
                    raise ValueError(
                        f"Model.train: {e} before training, so there is no finite state to "
                        "train from or to go back to; rebuild the model or load a finite "
                        "checkpoint"
                    ) from None

    # --- the loop ----------------------------------------------------------------------------

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        epochs: int = 1,
        batch_size: int | None = None,
        validation_data: tuple[Any, Any] | None = None,
        shuffle: bool = True,
        seed: int | None = None,
        data_on_device: bool | None = None,
    ) -> History:
        """``Model.train``'s loop (see there for the arguments and the history).

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
        model, strategy = self.model, self.strategy
        # every rank checks its own inputs; if any fails, all stop with the reasons
        data, val, size = strategy.on_every_rank(
            lambda: self._inputs(X, y, epochs, batch_size, validation_data, data_on_device)
        )
        model._pack()  # (again, if a parameter or state was replaced since)
        self.slots = list(walk(model.layers, model.optimizer))  # (the state's arrays, by name)
        deciding = [_settings(cb) for cb in self.callbacks if not cb.writes]  # (on every rank)
        settings = {"epochs": epochs, "batch_size": size, "shuffle": shuffle, "seed": seed,
                    "callbacks": deciding}  # fmt: skip
        strategy.setup(model, data, val, settings)
        if seed is None:  # (rank 0's draw on every rank, so all shuffle alike)
            seed = strategy.on_root(lambda: int(np.random.default_rng().integers(2**31)))
        names = ("epoch", "loss", "regularization_loss", "accuracy", "learning_rate")
        self.metric_names = names + (("val_loss", "val_accuracy") if val else ())
        self.epochs_left, self.stop_training, self.history = epochs, False, []
        self._running = self._active()
        batch_hooks = [cb for cb in self._running if overrides(cb, "on_batch_end")]
        for cb in self.callbacks:
            cb.set_trainer(self)
        reuse = model.backend.reuses_step_buffers  # (fresh ones each call: see _pass)
        dense = [layer for layer in model.layers if type(layer) is Dense]
        self._step_buffers = {layer: {} for layer in dense} if reuse else None
        try:
            with Unchecked(model.loss, model.accuracy):
                with strategy.guard():  # (distributed: a rank that raises aborts the job)
                    self._call("check")  # (every callback, before any of them writes)
                    self._call("on_train_begin", {})
                while self.epochs_left > 0 and not self.stop_training:
                    self._one_epoch(data, size, val, shuffle, seed, batch_hooks)
                with strategy.guard():
                    self._call("on_train_end", {"history": self.history})
        finally:
            self._step_buffers = None
            for cb in self._running:  # (files and bars, also when training raised)
                cb.close()
        return self.history

    def _one_epoch(
        self,
        data: inputs.Data,
        size: int,
        val: Any,
        shuffle: bool,
        seed: int,
        batch_hooks: list[Callback],
    ) -> None:
        model, guard = self.model, self.strategy.guard
        epoch, n = model.epochs_trained, data.n
        with guard():  # (distributed: a rank that raises aborts the whole job)
            for layer in model.layers:
                if hasattr(layer, "reseed"):
                    layer.reseed(epoch)
            order = None
            if shuffle:
                perm = np.random.default_rng([seed, epoch]).permutation(n)
                order = data.order(perm)  # (on the device: one small copy an epoch)
            self._call("on_epoch_begin", epoch, {})
            loss, reg, acc, bad_step, bad_arrays = self._epoch(data, size, order, batch_hooks)
        self.epochs_left -= 1
        steps = -(-n // size)
        # a non-finite epoch is seen alike on every rank (reduced): each raises or stops alike
        if bad_arrays or not all(math.isfinite(v) for v in (loss, reg, acc)):
            values = {"loss": loss, "regularization loss": reg, "accuracy": acc}
            restore = self.nonfinite.restore
            message = nonfinite_message(values, epoch, bad_step, steps, bad_arrays, restore)
            self.nonfinite.on_nonfinite(message)  # (back to the epoch's start, which was finite)
            return
        with guard():
            model.epochs_trained += 1
            row = {
                "epoch": model.epochs_trained,
                "loss": loss,
                "regularization_loss": reg,
                "accuracy": acc,
                "learning_rate": model.optimizer.current_learning_rate,
            }
            if val is not None:
                rows = self.strategy.evaluation_rows(val.n)
                metrics = model._evaluate(val, size, rows, self.strategy.sum)
                row |= {"val_loss": metrics["loss"], "val_accuracy": metrics["accuracy"]}
        if not math.isfinite(row.get("val_loss", 0.0)):
            # finite parameters whose outputs overflow: as unusable as NaN weights
            message = nonfinite_validation_message(row["val_loss"], epoch, self.nonfinite.restore)
            model.epochs_trained -= 1
            self.nonfinite.on_nonfinite(message)
            return
        with guard():
            self.history.append(row)
            self._call("on_epoch_end", epoch, row)
        # every rank stops together, whichever rank's callback asked (one scalar reduction)
        self.stop_training = self.strategy.any(self.stop_training)

    def _inputs(
        self, X: Any, y: Any, epochs: int, batch_size: int | None, validation_data: Any,
        data_on_device: bool | None = None,
    ) -> tuple[inputs.Data, inputs.Data | None, int]:  # fmt: skip
        """``fit``'s checks: (X, y) and the validation pair checked and placed (on the
        device, or streamed: ``inputs.prepare``), and the batch size; raises naming the bad
        argument."""
        model = self.model
        model._ready("train", train=True)
        inputs.check_pending("Model.train")
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise ValueError(f"Model.train: epochs must be an integer >= 0, got {epochs!r}")
        data = inputs.prepare(model, X, y, "Model.train", data_on_device)
        model.optimizer.check_dtype(model.dtype)  # e.g. an epsilon that is 0 in float32
        size = inputs.batch_size(batch_size, data.n, "Model.train")
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, tuple | list) or len(validation_data) != 2:
                raise ValueError("Model.train: validation_data must be a pair (X_val, y_val)")
            X_val, y_val = validation_data
            where = "Model.train validation_data"
            val = inputs.prepare(model, X_val, y_val, where, data_on_device)
        if model.accuracy is not None:
            model.accuracy.init(y)
        return data, val, size

    def _epoch(
        self, data: inputs.Data, size: int, order: Any, batch_hooks: list[Callback]
    ) -> tuple[float, float, float, int, list[str]]:
        """One pass over the data in batches (in ``order``, if given). Returns the epoch's
        mean data loss, regularisation loss and accuracy, the first step whose loss was not
        finite (-1 if none), and the names of the parameters and optimizer states that are
        not finite at the end (none: an empty list). Each step's values stay on the device
        until the end of the epoch, then come to the host in one copy with the parameters'
        finiteness (one reduction an array). The strategy gives this rank its rows of each
        batch, which ``data`` gives (from the device, or streamed), and reduces the sums at
        the end."""
        model, strategy, n = self.model, self.strategy, data.n
        # (looked up once an epoch, for _train_step: 2 us a layer)
        self._penalized = [layer for layer in model.trainable_layers if _regularized(layer)]
        dropouts = [layer for layer in model.layers if isinstance(layer, Dropout)]
        steps: list[tuple[Any, Any, Any]] = []  # (data loss, regularization loss, accuracy)
        starts = range(0, n, size)  # the last batch may be partial
        rows = [strategy.shard(start, min(start + size, n)) for start in starts]
        local = [hi - lo for lo, hi in rows]  # samples this rank takes in each step
        # (the batches first: zip resumes them after the last step, which lets its buffers go)
        for (Xb, yb), start, mine in zip(data.batches(order, rows), starts, local, strict=True):
            stop = min(start + size, n)
            if dropouts:
                strategy.shard(start, stop, dropouts)  # (each Dropout's rows of the batch)
            steps.append(self._train_step(Xb, yb, mine / (stop - start)))
            for cb in batch_hooks:
                cb.on_batch_end(len(steps) - 1, {"size": mine, "loss": steps[-1][0]})
        strategy.end_epoch(dropouts)
        inputs.check_pending("Model.train")  # (a hand loop's, if any)
        slots = [s for s in self.slots if s.value is not None]
        finite = model.backend.ops.finite_flags([s.value for s in slots])  # read with metrics
        hits = {i: step[2].rows for i, step in enumerate(steps) if isinstance(step[2], Hits)}
        steps = [(s[0], s[1], s[2].count) if isinstance(s[2], Hits) else s for s in steps]
        values = host_values(model.backend, [v for step in steps for v in step] + finite)
        flags = zip(slots, values[3 * len(steps) :], strict=True)
        bad_arrays = [array_name(slot) for slot, ok in flags if not ok]
        values = values[: 3 * len(steps)].reshape(len(steps), 3)
        for i, n_rows in hits.items():  # the float32 division the device would have done
            values[i, 2] = np.float32(values[i, 2]) / np.float32(n_rows)
        sizes = np.minimum(size, n - np.arange(0, n, size))  # samples in each step
        taken = np.array(local, dtype=np.float64)
        loss_sum, acc_sum = (values[:, [0, 2]] * taken[:, None]).sum(axis=0)
        reg = float((values[:, 1] * sizes).sum() / n)  # the same on every rank
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1) & (taken > 0))
        first_bad = float(bad[0] + 1 if bad.size else math.inf)
        loss_sum, acc_sum, n_bad = strategy.sum([loss_sum, acc_sum, float(len(bad_arrays))])
        first_bad = strategy.min(first_bad)
        if n_bad and not bad_arrays:  # (parameters are alike on every rank: not expected)
            bad_arrays = ["an array on another rank"]
        step = int(first_bad) if math.isfinite(first_bad) else -1
        return float(loss_sum) / n, reg, float(acc_sum) / n, step, bad_arrays

    def _train_step(self, Xb: Any, yb: Any, share: float = 1.0) -> tuple[Any, Any, Any]:
        """Forward, loss, backward and update on one batch; (data loss, regularisation loss,
        accuracy) as device scalars. ``share``: this rank's part of the global batch (the
        strategy sums the gradients over ranks before the update)."""
        model = self.model
        penalized = self._penalized
        reg_loss = model.loss.regularization_loss(*penalized) if penalized else 0.0
        if Xb.shape[0] == 0:  # a rank with no sample in a last batch smaller than the ranks
            data_loss = acc = 0.0
            for layer in model.trainable_layers:
                for name in layer.params:
                    setattr(layer, "d" + name, None)  # zeros in the allreduce
        else:
            if model._policy is None:
                data_loss, output = self._pass(model, Xb, yb)
            else:  # a policy's pass (mixed: on 16-bit copies, float32 gradients after)
                with model._policy.computing(model, training=True, share=share):
                    data_loss, output = self._pass(model, Xb, yb)
                model._policy.master_gradients(model)
            acc = batch_accuracy(model.accuracy, model.loss, output, yb, hits_ok=True)
        self.strategy.reduce_gradients(model.trainable_layers, share)
        # (mixed16: a step whose gradients overflowed is skipped, the loss scale halved; the
        # gradients are float32 and summed over the ranks already: every rank decides alike)
        if model._policy is None or model._policy.apply(model, type(self.strategy) is not Local):
            model.optimizer.step(model.trainable_layers)
        return data_loss, reg_loss, acc

    def _pass(self, model: Any, Xb: Any, yb: Any) -> tuple[Any, Any]:
        """``model._train_pass`` with each Dense writing its products (output, dweights,
        dbiases, dinputs, its ReLU's output and dinputs) into the arrays of the previous step
        of this ``fit``, where the backend gains by it (NumPy): nothing outside the step reads
        those arrays in between (the epoch keeps only scalars), and arrays a caller holds
        from before the call are never overwritten (each call starts fresh buffers); a layer
        used outside the step (a callback's, a hand-written loop's) gets fresh arrays."""
        buffers = self._step_buffers
        if buffers is None:
            return model._train_pass(Xb, yb)  # type: ignore[no-any-return]
        for layer, kept in buffers.items():
            layer.step_buffers = kept
        try:
            return model._train_pass(Xb, yb)  # type: ignore[no-any-return]
        finally:
            for layer in buffers:
                layer.step_buffers = None


def _settings(callback: Callback) -> str:
    """What a callback that decides is set to and where it stands (its public plain
    settings and ``get_state()``), for checking that every rank has the same."""
    plain = (bool, int, float, str, type(None), tuple)
    settings = {k: v for k, v in sorted(vars(callback).items())
                if not k.startswith("_") and isinstance(v, plain)}  # fmt: skip
    return f"{type(callback).__name__}({settings}, state={callback.get_state()})"


def callbacks_for(
    callbacks: Iterable[Callback] | None,
    print_every: int | None,
    on_epoch_end: Callable[[dict[str, float]], None] | None,
    on_nonfinite: str,
) -> list[Callback]:
    """``Model.train``'s callbacks: the given ones, then its shortcuts as callbacks
    (``on_nonfinite`` as a TerminateOnNaN unless one is given, ``print_every`` as
    PrintEpochs, ``on_epoch_end`` as a LambdaCallback)."""
    if on_nonfinite not in ("raise", "stop"):
        raise ValueError(
            f"Model.train: on_nonfinite must be 'raise' or 'stop', got {on_nonfinite!r}"
        )
    if isinstance(callbacks, Callback):
        raise TypeError(
            f"Model.train: callbacks must be a list of callbacks, got one callback, {callbacks!r}"
            " (pass callbacks=[...])"
        )
    if callbacks is not None and (isinstance(callbacks, type | str) or
                                  not isinstance(callbacks, Iterable)):  # fmt: skip
        raise TypeError(
            f"Model.train: callbacks must be a list of Callback objects, got {callbacks!r}"
        )
    given = list(callbacks or ())
    result: list[Callback] = []
    if on_nonfinite != "raise":  # (else the Trainer's own default, TerminateOnNaN("raise"))
        if any(isinstance(cb, TerminateOnNaN) for cb in given):
            raise ValueError(
                "Model.train: on_nonfinite and a TerminateOnNaN callback both say what to do "
                "on a NaN; give the mode to the callback (TerminateOnNaN(mode=...)) and drop "
                "on_nonfinite"
            )
        result.append(TerminateOnNaN(on_nonfinite))
    result += given
    if print_every:
        result.append(PrintEpochs(print_every))
    if on_epoch_end is not None:
        if not callable(on_epoch_end):
            raise TypeError(f"Model.train: on_epoch_end must be callable, got {on_epoch_end!r}")
        result.append(LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch_end(logs)))
    return result


def strategy_for(distributed: Any) -> Local:
    """The strategy of ``Model.train(distributed=...)``: False, one process; True, MPI data
    parallelism over ``COMM_WORLD``; a ``distributed.Context``, over its communicator."""
    if distributed is False or distributed is None:
        return Local()
    from .distributed import Context, DataParallel  # (only when asked for: needs mpi4py)

    if distributed is True:
        return DataParallel(Context())
    if isinstance(distributed, Context):
        return DataParallel(distributed)
    raise TypeError(
        f"Model.train: distributed must be True, False or a distributed.Context, got "
        f"{distributed!r}"
    )


# --- helpers ---------------------------------------------------------------------------------


_REGULARIZERS = ("weight_regularizer_l1", "weight_regularizer_l2", "bias_regularizer_l1",
                 "bias_regularizer_l2")  # fmt: skip


def _regularized(layer: Any) -> bool:
    """Whether a layer has any L1/L2 penalty switched on (else its penalty is 0.0)."""
    return any(getattr(layer, name, 0) for name in _REGULARIZERS)


# --- messages ---------------------------------------------------------------------------------


def array_name(slot: Any) -> str:
    """A parameter or optimizer state named for an error: ``"layer 2 Dense(64, 3) weights"``."""
    state = " (optimizer state)" if slot.is_state else ""
    label = getattr(slot.layer, "name", type(slot.layer).__name__)
    return f"layer {slot.key.split('.')[1]} {label} {slot.attr}{state}"


def _where_now(epoch: int, restored: bool) -> str:
    if not restored:
        return "left as they are (TerminateOnNaN(restore=False))"
    back = f"at the end of epoch {epoch}" if epoch else "where they were before training"
    return f"back {back}"


def nonfinite_message(
    values: dict[str, float],
    epoch: int,
    step: int,
    steps: int,
    bad_arrays: Sequence[str],
    restored: bool = True,
) -> str:
    """``NonFiniteLossError``'s message: what went NaN or infinite (the first of ``values``,
    the epoch's loss, regularization loss and accuracy, that is not finite, and the arrays),
    where, and what now."""
    arrays = bad_arrays[0] if bad_arrays else ""
    if len(bad_arrays) > 1:
        arrays += f" and {len(bad_arrays) - 1} more arrays"
    bad = [(name, v) for name, v in values.items() if not math.isfinite(v)]
    now = _where_now(epoch, restored)
    if bad:
        what, value = bad[0]
        text = f"the {what} became {value} at epoch {epoch + 1}, step {step} of {steps}"
        if arrays:
            verb = "are" if len(bad_arrays) > 1 else "is"
            text += f"; {arrays} {verb} no longer finite either"
        if step == 1 and restored:  # computed from the very state that is restored
            cause = {
                "loss": "their outputs overflow",
                "regularization loss": "the L1/L2 penalty of those weights overflows",
            }.get(what, "the accuracy's inputs")
            now += (
                f": those parameters are finite but gave that value at step 1 ({cause}), so "
                "no state with a finite loss is kept"
            )
    else:  # every step's loss was finite: the updates made the parameters non-finite
        text = (
            f"{arrays} became NaN or infinite in epoch {epoch + 1} (every step's loss was "
            f"finite, so by the last update, step {steps} of {steps}, at the latest)"
        )
    return (
        f"Model.train: {text}; parameters and optimizer state are {now}. Lower the "
        "learning rate, or check the data and the loss's inputs"
    )


def nonfinite_validation_message(val_loss: float, epoch: int, restored: bool = True) -> str:
    """``NonFiniteLossError``'s message when only the validation loss is not finite."""
    return (
        f"Model.train: the validation loss became {val_loss} after epoch {epoch + 1}, though "
        "the parameters and the training loss are finite (the outputs overflow); parameters "
        f"and optimizer state are {_where_now(epoch, restored)}. Lower the learning rate, or "
        "check the validation data"
    )
