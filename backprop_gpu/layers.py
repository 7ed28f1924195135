"""The built-in layers: ``Dense``, the fully connected layer of the nnfs book, and ``Dropout``.
(Their base class, the contract a layer keeps, is ``bg.Layer``: ``layer.py``.)"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from . import _checks
from .backend import array_library, dtype_name, host_array, to_numpy
from .layer import Layer
from .registry import register

INITS = ("nnfs", "he", "glorot")


@register
class Dense(Layer):
    """Fully connected layer: ``output = inputs @ weights + biases``.

    Shapes: ``weights`` (n_inputs, n_neurons), kept "transposed" as in the book so no transpose
    is needed in forward; ``biases`` (1, n_neurons); inputs (batch, n_inputs); output
    (batch, n_neurons).

    Parameters live on the backend active when the layer is built. ``weights=`` / ``biases=``
    set them explicitly (copied; their dtype kept unless ``dtype=`` is given); otherwise weights
    are drawn on the host from ``numpy.random.default_rng(seed)`` (so a seed gives the same
    weights on every backend) and biases start at zero. ``init`` picks the draw: ``"nnfs"``
    (0.01 * normal, as in the book), ``"he"`` (normal * sqrt(2 / n_inputs), for ReLU stacks) or
    ``"glorot"`` (uniform in +-sqrt(6 / (n_inputs + n_neurons))).

    Regularisation as in the book: ``weight_regularizer_l1`` / ``_l2`` and
    ``bias_regularizer_l1`` / ``_l2`` (lambdas, default 0) add ``lambda * sign(w)`` and
    ``2 * lambda * w`` to the gradients in ``backward``; the loss's ``regularization_loss``
    reports the matching penalty ``lambda * sum(|w|)`` + ``lambda * sum(w**2)``.
    """

    params = ("weights", "biases")  # each has a gradient named "d" + name

    def __init__(
        self,
        n_inputs: int,
        n_neurons: int,
        *,
        weights: Any = None,
        biases: Any = None,
        dtype: Any = None,
        seed: int | np.random.Generator | None = None,
        init: str = "nnfs",
        weight_regularizer_l1: float = 0.0,
        weight_regularizer_l2: float = 0.0,
        bias_regularizer_l1: float = 0.0,
        bias_regularizer_l2: float = 0.0,
    ) -> None:
        for name, n in (("n_inputs", n_inputs), ("n_neurons", n_neurons)):
            if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
                raise ValueError(f"Dense: {name} must be a positive integer, got {n!r}")
        if init not in INITS:
            raise ValueError(f"Dense: init must be one of {', '.join(INITS)}, got {init!r}")
        self.n_inputs, self.n_neurons, self.init = int(n_inputs), int(n_neurons), init
        self.name = f"Dense({self.n_inputs}, {self.n_neurons})"  # names the layer in errors
        check = _checks.non_negative_finite
        self.weight_regularizer_l1 = check(weight_regularizer_l1, "Dense: weight_regularizer_l1")
        self.weight_regularizer_l2 = check(weight_regularizer_l2, "Dense: weight_regularizer_l2")
        self.bias_regularizer_l1 = check(bias_regularizer_l1, "Dense: bias_regularizer_l1")
        self.bias_regularizer_l2 = check(bias_regularizer_l2, "Dense: bias_regularizer_l2")
        super().__init__()  # the backend, and inputs, output, dinputs (None)
        if array_library(weights) is None and weights is not None:  # lists: named if ragged
            weights = host_array(weights, "Dense: weights")
        if array_library(biases) is None and biases is not None:
            biases = host_array(biases, "Dense: biases")
        if dtype is None:  # float32, or the floating dtype of the given weights (or biases)
            given = [to_numpy(a).dtype for a in (weights, biases) if a is not None]
            floats = [g for g in given if g.kind == "f"]
            dtype = floats[0] if floats else np.float32
        self.dtype_name = dtype_name(dtype)
        if np.dtype(self.dtype_name).kind != "f":
            raise ValueError(f"Dense: dtype must be a floating type, got {self.dtype_name}")
        self.dtype = self.backend.dtype(dtype)
        if weights is None:
            weights = _draw(init, self.n_inputs, self.n_neurons, seed)
        if biases is None:
            biases = np.zeros((1, self.n_neurons))
        self.weights = self._param(weights, (self.n_inputs, self.n_neurons), "weights")
        self.biases = self._param(biases, (1, self.n_neurons), "biases")
        self.dweights: Any = None
        self.dbiases: Any = None
        # Model.train's step buffers: while its pass runs, a dict of this layer's arrays from
        # the previous step, overwritten instead of allocated afresh (None: fresh arrays, as a
        # hand-written loop gets them: it may keep an earlier call's output)
        self.step_buffers: dict[str, Any] | None = None

    def _out(self, key: str, rows: int, columns: int) -> Any:
        """The kept (rows, columns) array ``key`` of this layer's dtype to write a result into
        while Model.train reuses step buffers; None (a fresh array) otherwise."""
        buffers = self.step_buffers
        if buffers is None:
            return None
        kept = buffers.get(key)
        if kept is None or kept.shape != (rows, columns):  # (a last, smaller batch: a new one)
            kept = buffers[key] = self.backend.xp.empty((rows, columns), dtype=self.dtype)
        return kept

    def _param(self, value: Any, shape: tuple[int, int], name: str) -> Any:
        library = array_library(value)
        if library not in ("numpy", None) and not self.backend.owns(value):
            raise ValueError(
                f"Dense: {name} come from {library} but the layer is built on "
                f"{self.backend.name}; pass host data or an array of that backend"
            )
        host = to_numpy(value).astype(self.dtype_name)  # a copy: the caller's array is not updated
        if name == "biases" and host.ndim == 1:
            host = host.reshape(1, -1)
        if host.shape != shape:
            raise ValueError(f"Dense: expected {name} of shape {shape}, got {host.shape}")
        return self.backend.asarray(host)

    def forward(self, inputs: Any, training: bool = True) -> Any:
        """(batch, n_inputs) -> (batch, n_neurons); also kept as ``self.output``.
        (``training`` is accepted for a uniform layer interface and ignored.)"""
        self.inputs = _checks.batch(
            self.backend, inputs, self.n_inputs, self.dtype, f"{self.name}.forward"
        )
        ops, n = self.backend.ops, self.inputs.shape[0]
        z = ops.matmul(self.inputs, self.weights, self._out("output", n, self.n_neurons))
        self.output = ops.add_bias(z, self.biases)
        return self.output

    def forward_relu(self, inputs: Any, relu: Any) -> Any:
        """This layer and the ``relu`` after it in one pass (``Ops.bias_relu``): what
        ``Model.train`` runs for a Dense followed by a ReLU. Sets ``relu.output`` (returned);
        this layer's ``output`` (the pre-activation) is not kept: it is None afterwards, and
        ``backward_relu`` is the matching backward."""
        self.inputs = _checks.batch(
            self.backend, inputs, self.n_inputs, self.dtype, f"{self.name}.forward"
        )
        self.output = relu.inputs = None
        ops, n = self.backend.ops, self.inputs.shape[0]
        z = ops.matmul(self.inputs, self.weights, self._out("relu.output", n, self.n_neurons))
        relu.output = ops.bias_relu(z, self.biases)
        return relu.output

    def backward(self, dvalues: Any, need_dinputs: bool = True) -> Any:
        """Chain ``dvalues`` (batch, n_neurons), the loss gradient w.r.t. ``output``.

        Sets ``dweights`` = inputs.T @ dvalues, ``dbiases`` = column sums of dvalues and
        ``dinputs`` = dvalues @ weights.T, and returns ``dinputs`` (batch, n_inputs).
        ``need_dinputs=False`` skips that last product (None instead): the first layer's
        dinputs feed nothing, and the Model saves that matrix product.
        """
        if self.inputs is None or self.output is None:
            raise RuntimeError(
                f"{self.name}.backward called before forward (after forward_relu: use "
                "backward_relu)"
            )
        where = f"{self.name}.backward"
        dvalues = _checks.like(self.backend, dvalues, self.output, where, "dvalues")
        dbiases = self.backend.ops.bias_gradient(  # column sums, (1, n_neurons)
            dvalues, self._dbiases_out(dvalues)
        )
        return self._backward(dvalues, dbiases, need_dinputs)

    def backward_relu(self, dvalues: Any, relu: Any, need_dinputs: bool = True) -> Any:
        """The backward of ``forward_relu``: ``dvalues`` (batch, n_neurons) is the gradient
        w.r.t. ``relu.output``; the ReLU's mask and this layer's bias gradient come from one
        pass (``Ops.relu_backward_bias_gradient``). Sets ``relu.dinputs`` and this layer's
        gradients as ``backward`` does, and returns ``dinputs``."""
        if relu.output is None or self.inputs is None:
            raise RuntimeError(f"{self.name}.backward_relu called before forward_relu")
        where = f"{self.name}.backward_relu"
        dvalues = _checks.like(self.backend, dvalues, relu.output, where, "dvalues")
        out = None
        dbiases_out = self._dbiases_out(dvalues)
        if dbiases_out is not None:
            n, c = dvalues.shape[0], self.n_neurons
            dinputs_out = self._out("relu.dinputs", n, c)
            if dinputs_out is None:
                dinputs_out = self.backend.xp.empty_like(dvalues)
            out = (dinputs_out, dbiases_out)
        relu.dinputs, dbiases = self.backend.ops.relu_backward_bias_gradient(
            dvalues, relu.output, out
        )
        return self._backward(relu.dinputs, dbiases, need_dinputs)

    def _dbiases_out(self, dvalues: Any) -> Any:
        """Where the bias gradient goes: this layer's view of a Model's flat gradient buffer
        when it has one, else a step buffer (in Model.train), else None (a new array)."""
        views = getattr(self, "_flat_views", None)
        if views is not None and views["dbiases"].dtype == dvalues.dtype:
            return views["dbiases"]
        return self._out("dbiases", 1, self.n_neurons)

    def _backward(self, dvalues: Any, dbiases: Any, need_dinputs: bool) -> Any:
        ops = self.backend.ops
        # the last step's gradients are spent (applied): let them go before the new ones are
        # made, so a hand-written loop does not hold both at its peak (a caller keeping one
        # keeps it unchanged, unless it is a view of a Model's flat gradient buffer)
        self.dweights = self.dbiases = self.dinputs = None
        views = getattr(self, "_flat_views", None)  # set by flat.FlatParameters (a Model's)
        if views is not None and views["dweights"].dtype == dvalues.dtype:
            # straight into the flat gradient buffer (the bias gradient is there already)
            self.dweights = ops.matmul(self.inputs.T, dvalues, views["dweights"])
            self.dbiases = views["dbiases"]
            if dbiases is not self.dbiases:
                self.dbiases[...] = dbiases
        else:
            dweights = self._out("dweights", self.n_inputs, self.n_neurons)
            self.dweights = ops.matmul(self.inputs.T, dvalues, dweights)
            self.dbiases = dbiases
        self.add_regularization_gradients()
        self.dinputs = None
        if need_dinputs:
            dinputs = self._out("dinputs", dvalues.shape[0], self.n_inputs)
            self.dinputs = ops.matmul(dvalues, self.weights.T, dinputs)
        return self.dinputs

    def add_regularization_gradients(self) -> None:
        """Add the L1/L2 penalties' gradients (``lambda * sign(w)``, ``2 * lambda * w``) to
        ``dweights`` and ``dbiases``, in place."""
        xp = self.backend.xp
        for grad, param, l1, l2 in (
            (self.dweights, self.weights, self.weight_regularizer_l1, self.weight_regularizer_l2),
            (self.dbiases, self.biases, self.bias_regularizer_l1, self.bias_regularizer_l2),
        ):
            if l1:
                grad += l1 * xp.sign(param)
            if l2:
                grad += 2 * l2 * param

    def regularization_loss(self) -> Any:
        """``l1 * sum(|w|) + l2 * sum(w**2)`` over weights and biases (0.0 when all are off)."""
        xp = self.backend.xp
        total: Any = 0.0
        for param, l1, l2 in (
            (self.weights, self.weight_regularizer_l1, self.weight_regularizer_l2),
            (self.biases, self.bias_regularizer_l1, self.bias_regularizer_l2),
        ):
            if l1:
                total = total + l1 * xp.sum(xp.abs(param))
            if l2:
                total = total + l2 * xp.sum(param * param)
        return total

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments, parameters aside (for checkpoints)."""
        return {
            "n_inputs": self.n_inputs,
            "n_neurons": self.n_neurons,
            "dtype": self.dtype_name,
            "init": self.init,
            "weight_regularizer_l1": self.weight_regularizer_l1,
            "weight_regularizer_l2": self.weight_regularizer_l2,
            "bias_regularizer_l1": self.bias_regularizer_l1,
            "bias_regularizer_l2": self.bias_regularizer_l2,
        }

    def __repr__(self) -> str:
        regs = "".join(
            f", {k}={v}" for k, v in self.get_config().items() if "regularizer" in k and v
        )
        return (
            f"Dense({self.n_inputs}, {self.n_neurons}, dtype={self.dtype_name}{regs}, "
            f"backend={self.backend.name})"
        )


@register
class Dropout(Layer):
    """Inverted dropout: in training, zero each input with probability ``rate`` and scale the
    survivors by ``1 / (1 - rate)`` so the expected output equals the input; in inference
    (``training=False``) pass inputs through unchanged.

    The mask of a forward is a pure function of (seed, epoch, draw number within the epoch,
    element position): Philox4x32-10 uniforms (:mod:`backprop_gpu.philox`), the same bits on
    NumPy, CuPy and array-api-strict, so a seeded run drops the same units on every backend,
    and a run resumed at an epoch boundary (``reseed``) drops what the uninterrupted one
    would, on any machine. ``seed=None`` draws a random 63-bit seed once, here.
    """

    def __init__(self, rate: float, *, seed: int | None = None) -> None:
        self.rate = _checks.in_range(rate, 0.0, 1.0, "Dropout: rate")
        if seed is not None and (
            not isinstance(seed, int | np.integer) or isinstance(seed, bool) or
            not 0 <= seed < 2**64
        ):  # fmt: skip
            raise ValueError(f"Dropout: seed must be None or an int in [0, 2**64), got {seed!r}")
        self.seed = seed
        # the Philox key (unseeded: 63 random bits, drawn once; the config keeps seed=None;
        # os.urandom, as the secrets module would import hashlib: OpenSSL, 5 MiB a process)
        self.mask_seed = (
            int(seed) if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        )
        self.epoch = 0  # the stream of the masks: (epoch, draw number within it)
        self.draws = 0
        super().__init__()  # the backend, and inputs, output, dinputs (None)
        # (global batch size, first row, end row): set by Model.train in distributed training,
        # so each rank computes its rows of the mask of the whole batch, as one process would
        # (None: the mask is drawn for the inputs alone)
        self.rows: tuple[int, int, int] | None = None
        self.mask: Any = None

    def reseed(self, epoch: int) -> None:
        """Start the masks of epoch ``epoch`` (its draw 0); the Model calls this at each epoch
        so a run resumed from a checkpoint drops the same units as an uninterrupted one."""
        if not isinstance(epoch, int | np.integer) or not 0 <= epoch < 2**32:
            raise ValueError(f"Dropout.reseed: epoch must be an int in [0, 2**32), got {epoch!r}")
        self.epoch, self.draws = int(epoch), 0

    def forward(self, inputs: Any, training: bool = True) -> Any:
        self.inputs = _checks.floats(self.backend, inputs, "Dropout.forward")
        if not training or not self.rate:
            self.mask = None
            self.output = self.inputs
            return self.output
        xp = self.backend.xp
        dtype = self.inputs.dtype  # (float16/bfloat16 inputs: float32 uniforms)
        if dtype_name(dtype) not in ("float32", "float64"):
            dtype = xp.float32
        uniforms = self.backend.ops.uniform(
            self.mask_seed, (self.epoch, self.draws), tuple(self.inputs.shape), dtype, self.rows
        )
        self.draws += 1
        keep = uniforms >= self.rate
        self.mask = xp.astype(keep, self.inputs.dtype) / (1 - self.rate)
        self.output = self.inputs * self.mask
        return self.output

    def backward(self, dvalues: Any) -> Any:
        if self.output is None:
            raise RuntimeError("Dropout.backward called before forward")
        dvalues = _checks.like(self.backend, dvalues, self.output, "Dropout.backward", "dvalues")
        self.dinputs = dvalues if self.mask is None else dvalues * self.mask
        return self.dinputs

    def get_config(self) -> dict[str, Any]:
        return {"rate": self.rate, "seed": self.seed}

    def __repr__(self) -> str:
        return f"Dropout(rate={self.rate})"


def _draw(init: str, n_inputs: int, n_neurons: int, seed: Any) -> np.ndarray:
    """Initial weights (n_inputs, n_neurons) drawn on the host in float64."""
    rng = np.random.default_rng(seed)
    if init == "glorot":
        limit = math.sqrt(6.0 / (n_inputs + n_neurons))
        return rng.uniform(-limit, limit, size=(n_inputs, n_neurons))
    scale = 0.01 if init == "nnfs" else math.sqrt(2.0 / n_inputs)
    return scale * rng.standard_normal((n_inputs, n_neurons))
