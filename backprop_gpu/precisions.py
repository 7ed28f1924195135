"""Precision policies: which dtype a model's passes compute in, chosen once per model.

- ``"float32"`` (the default): everything in the layers' dtype, as without a policy.
- ``"tf32"``: float32 storage; on CuPy, on a GPU of compute capability 8.0 or more (Ampere
  and later), the matrix products of the model's passes run on TF32 tensor cores (inputs
  rounded to a 10-bit mantissa, float32 accumulation), through CuPy's compute-type switch
  (``cupy._core._routines_linalg.set_compute_type``, what ``CUPY_TF32=1`` sets for the whole
  process), set for the passes and put back after. Elsewhere (NumPy, an older GPU) float32,
  with a warning once saying why.
- ``"mixed16"`` / ``"mixed_bf16"``: the parameters stay float32 (the master weights) and the
  optimizer updates them in float32; each training step makes float16 / bfloat16 copies of
  the weights once, runs the layers' forward and backward in that dtype, computes the loss
  (softmax included) and its gradient in float32, and casts the gradients back to float32
  for the update. ``evaluate`` and ``predict`` run the layers in the compute dtype too.
  ``mixed16`` scales the loss dynamically (``LossScaler``) so small gradients do not flush
  to zero in float16; bfloat16 has float32's range and needs no scaling. bfloat16 on NumPy
  comes from ``ml_dtypes`` (the ``bf16`` extra), whose matrix products compute in float32:
  the result is rounded to bfloat16 (``Ops.matmul``).

Choose it with ``Model(layers, precision=...)`` or ``model.set(precision=...)``; new models
take the default of ``set_precision(name)`` or of a ``with precision(name):`` block. The
policy and the loss scaler's state are saved in checkpoints.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from .activations import Softmax
from .backend import host_values

POLICIES = ("float32", "tf32", "mixed16", "mixed_bf16")
_COMPUTE = {"mixed16": "float16", "mixed_bf16": "bfloat16"}
_default: contextvars.ContextVar[str] = contextvars.ContextVar("precision", default="float32")
_REGULARIZERS = ("weight_regularizer_l1", "weight_regularizer_l2", "bias_regularizer_l1",
                 "bias_regularizer_l2")  # fmt: skip
_tf32_warned: set[str] = set()  # the reasons already given


def check(name: Any, where: str = "precision") -> str:
    """``name`` if it is a policy, else ``ValueError`` listing the valid ones."""
    if not isinstance(name, str) or name not in POLICIES:
        raise ValueError(f"{where} must be one of {', '.join(POLICIES)}, got {name!r}")
    return name


def chosen(name: Any, where: str, default: str | None = None) -> str:
    """``name`` checked, or when None ``default`` (None: ``get_precision()``)."""
    if name is None:
        return default if default is not None else get_precision()
    return check(name, where)


def set_precision(name: str) -> None:
    """The policy of the models built from now on (in this thread or task) that name none."""
    _default.set(check(name, "set_precision: precision"))


def get_precision() -> str:
    """The policy new models take when they name none (``"float32"`` unless set)."""
    return _default.get()


@contextlib.contextmanager
def precision(name: str) -> Iterator[None]:
    """``with precision("mixed16"):`` models built inside take that policy by default."""
    token = _default.set(check(name, "precision: precision"))
    try:
        yield
    finally:
        _default.reset(token)


def compute_dtype(name: str, backend: Any, where: str) -> Any:
    """The dtype object ``backend`` computes policy ``name`` in (None: the layers' own), or
    ``ValueError`` saying why that backend cannot run it."""
    if name not in _COMPUTE:
        return None
    if backend.name in ("numpy", "cupy") and name == "mixed_bf16":
        try:
            import ml_dtypes
        except ImportError as e:
            raise ValueError(
                f"{where}: precision 'mixed_bf16' needs bfloat16 from the ml_dtypes package "
                "(the bf16 extra: pip install 'backprop_gpu[bf16]')"
            ) from e
        on_gpu = backend.name == "cupy"
        why = _before_ampere(backend, "bfloat16 matrix products") if on_gpu else None
        if why is not None:
            raise ValueError(f"{where}: precision 'mixed_bf16' cannot run here: {why}; "
                             "use mixed16")  # fmt: skip
        return np.dtype(ml_dtypes.bfloat16)  # (CuPy 14 takes it as NumPy does)
    if backend.name in ("numpy", "cupy") and name == "mixed16":
        return backend.xp.float16
    why = {
        "array_api_strict": f"the array API has no {_COMPUTE[name]} dtype",
    }.get(backend.name, f"it has no {_COMPUTE[name]} support here")
    raise ValueError(
        f"{where}: precision {name!r} cannot run on the {backend.name} backend: {why}; it runs "
        "on the numpy and cupy backends"
    )


def _before_ampere(backend: Any, what: str) -> str | None:
    """Why ``backend``'s GPU cannot run ``what`` (it needs compute capability 8.0), or None."""
    capability = str(backend.device.compute_capability)  # CuPy's "86", "90", ...
    if int(capability) < 80:
        return (
            f"GPU {backend.device.id} has compute capability {capability[:-1]}.{capability[-1]}"
            f", and {what} need 8.0 (Ampere) or later"
        )
    return None


def tf32_capable(backend: Any, dtype: Any = np.float32) -> str | None:
    """None when ``backend`` runs TF32 GEMMs for a model of ``dtype``, else why not (for the
    warning)."""
    if backend.name != "cupy":
        return f"the {backend.name} backend has no TF32 (a GPU tensor-core format)"
    if np.dtype(dtype) != np.float32:
        return f"the model computes in {np.dtype(dtype).name}, and TF32 stands in for float32"
    why = _before_ampere(backend, "TF32 tensor cores")
    if why is not None:
        return why
    try:
        from cupy._core import _routines_linalg

        _routines_linalg.set_compute_type  # noqa: B018  (CuPy's switch: not a documented API)
        _routines_linalg.COMPUTE_TYPE_TF32  # noqa: B018
    except (ImportError, AttributeError):
        return "this CuPy has no compute-type switch (cupy._core._routines_linalg)"
    return None


def _warn_tf32(why: str) -> None:
    """The warning that tf32 runs in float32, once per reason."""
    if why not in _tf32_warned:
        _tf32_warned.add(why)
        warnings.warn(f"precision 'tf32' computes in float32 here: {why}", stacklevel=4)


class Passes:
    """How a policy runs a model's passes; this base runs them as written (float32). The
    trainer and the model call these around each step and each inference."""

    name = "float32"
    scaler: LossScaler | None = None

    def cast(self, X: Any) -> Any:
        """``X`` in the compute dtype."""
        return X

    def to_float32(self, X: Any) -> Any:
        """The network's output in the master dtype, for the loss and softmax."""
        return X

    def scaled(self, dvalues: Any) -> Any:
        """The loss gradient as the backward pass takes it."""
        return dvalues

    @contextlib.contextmanager
    def computing(self, model: Any, training: bool = False, share: float = 1.0) -> Iterator[None]:
        """The block runs the passes in the policy's arithmetic (``share``: this rank's part
        of a distributed step's batch)."""
        yield

    def infer(self, model: Any, X: Any) -> Any:
        """``model.forward(X, training=False)`` in the policy's arithmetic."""
        with self.computing(model):
            return model.forward(X, training=False)

    def master_gradients(self, model: Any) -> None:
        """The last backward's gradients as the optimizer takes them (here: as they are)."""

    def apply(self, model: Any, reduced: bool = False) -> bool:
        """Whether the step's update goes ahead."""
        return True


class TF32(Passes):
    """``"tf32"`` on a GPU that has TF32 tensor cores: CuPy's float32 compute type set to
    TF32 while the passes run, and put back after, also on error. CuPy's switch is
    process-wide: while any tf32 pass runs (in any thread, of any model) every float32
    matmul of the process uses TF32. The blocks open in the process are counted (under a
    lock): the first sets TF32, the last puts back what was there before the first."""

    name = "tf32"
    _lock = threading.Lock()
    _open = 0  # tf32 blocks open in the process
    _before: Any = None  # the compute type before the first

    def __init__(self, backend: Any, linalg: Any = None) -> None:
        if linalg is None:  # CuPy's switch (CUPY_TF32=1 sets its starting value)
            from cupy._core import _routines_linalg

            linalg = _routines_linalg
        self.backend, self._linalg = backend, linalg

    @contextlib.contextmanager
    def computing(self, model: Any, training: bool = False, share: float = 1.0) -> Iterator[None]:
        linalg, float32, cls = self._linalg, np.float32, TF32
        with cls._lock:
            if cls._open == 0:
                cls._before = linalg.get_compute_type(float32)
                linalg.set_compute_type(float32, linalg.COMPUTE_TYPE_TF32)
            cls._open += 1
        try:
            yield
        finally:
            with cls._lock:
                cls._open -= 1
                if cls._open == 0:
                    linalg.set_compute_type(float32, cls._before)


class LossScaler:
    """Dynamic loss scaling (Chainer's and PyTorch's rule): the loss gradient is multiplied
    by ``scale`` before the float16 backward and the gradients divided by it after. A step
    whose gradients are not all finite is skipped (no update: the optimizer's iterations and
    schedule do not advance) and halves the scale (not below ``min_scale``); after
    ``growth_interval`` finite steps in a row the scale doubles, up to ``max_scale`` (65504,
    float16's largest value)."""

    def __init__(
        self,
        scale: float = 2.0**15,
        growth_interval: int = 2000,
        max_scale: float = 65504.0,
        min_scale: float = 1.0,
    ) -> None:
        if not (isinstance(growth_interval, int) and growth_interval >= 1):
            raise ValueError(
                f"LossScaler: growth_interval must be an integer >= 1, got {growth_interval!r}"
            )
        for arg, value in (("scale", scale), ("max_scale", max_scale), ("min_scale", min_scale)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"LossScaler: {arg} must be a finite number > 0, got {value!r}")
        self.scale, self.growth_interval = float(scale), growth_interval
        self.max_scale, self.min_scale = float(max_scale), float(min_scale)
        self.clean_steps = 0  # finite steps since the scale last changed
        self.skipped = 0  # steps skipped in all

    def update(self, finite: bool) -> bool:
        """Record one step's gradients (all finite or not); whether to apply the update."""
        if not finite:
            self.scale = max(self.scale / 2, self.min_scale)
            self.clean_steps = 0
            self.skipped += 1
            return False
        self.clean_steps += 1
        if self.clean_steps >= self.growth_interval:
            self.scale = min(self.scale * 2, self.max_scale)
            self.clean_steps = 0
        return True

    def get_state(self) -> dict[str, Any]:
        return {"scale": self.scale, "clean_steps": self.clean_steps, "skipped": self.skipped,
                "growth_interval": self.growth_interval}  # fmt: skip

    def set_state(self, state: dict[str, Any]) -> None:
        scale, clean, skipped = state["scale"], state["clean_steps"], state["skipped"]
        if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
            raise ValueError(
                f"LossScaler: the saved scale must be a finite number > 0, got {scale!r}"
            )
        for name, n in (("clean_steps", clean), ("skipped", skipped)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"LossScaler: the saved {name} must be an integer >= 0, got {n!r}")
        self.scale, self.clean_steps, self.skipped = float(scale), clean, skipped
        self.growth_interval = int(state.get("growth_interval", self.growth_interval))


class Mixed(Passes):
    """A model's mixed-precision passes (``Model.finalize`` makes one for a mixed policy)."""

    def __init__(self, name: str, backend: Any, where: str, master: Any = None) -> None:
        self.name = name
        self.backend = backend
        self.dtype = compute_dtype(name, backend, where)
        # the master weights' dtype (float32, unless the layers were built in float64)
        self.float32 = backend.xp.float32 if master is None else master
        self.scaler = LossScaler() if name == "mixed16" else None
        self._active = False  # a computing block is open: an inner one finds the copies there
        self._scale = 1.0  # the training block's: the loss scale times the rank's share
        self._nonfinite: Any = None  # the step's device flag: a gradient was not finite

    def _cast(self, a: Any, dtype: Any) -> Any:
        return a if a.dtype == dtype else self.backend.xp.astype(a, dtype)

    def cast(self, X: Any) -> Any:
        """``X`` in the compute dtype."""
        return self._cast(X, self.dtype)

    def to_float32(self, X: Any) -> Any:
        """The network's output in float32 (the master dtype), for the loss and softmax."""
        return self._cast(X, self.float32)

    def scaled(self, dvalues: Any) -> Any:
        """The float32 loss gradient times the loss scale (and, distributed, the rank's
        share of the batch: each row's 16-bit gradients then have one process's magnitudes;
        the weight and bias gradients, sums over the shard's rows only, are smaller), in the
        compute dtype."""
        if self._scale != 1.0:
            dvalues = dvalues * self._scale
        return self.cast(dvalues)

    @contextlib.contextmanager
    def computing(self, model: Any, training: bool = False, share: float = 1.0) -> Iterator[None]:
        """The trainable layers' parameters swapped for copies in the compute dtype (made
        once) while the block runs, then back to the float32 masters (the same arrays:
        the flat buffers stay in use). ``training``: the L1/L2 penalties are off inside
        (``master_gradients`` adds their gradients in float32), and ``scaled`` scales by
        the loss scale times ``share``. Inside an open block (an evaluate's batches:
        ``inference``) it changes nothing."""
        if training and self.scaler is not None:
            self._scale = self.scaler.scale * share
        if self._active:
            yield
            return
        saved = []
        for layer in model.trainable_layers:
            kept = {name: getattr(layer, name) for name in layer.params}
            if hasattr(layer, "dtype"):
                kept["dtype"] = layer.dtype
            if training and hasattr(layer, "add_regularization_gradients"):
                kept |= {r: getattr(layer, r) for r in _REGULARIZERS if getattr(layer, r, 0)}
            saved.append((layer, kept))
        with self._quiet():
            try:
                for layer, kept in saved:
                    for attr in kept:
                        if attr in layer.params:
                            setattr(layer, attr, self.cast(kept[attr]))
                        else:
                            setattr(layer, attr, self.dtype if attr == "dtype" else 0.0)
                self._active = True
                yield
            finally:
                self._active = False
                for layer, kept in saved:
                    for attr, value in kept.items():
                        setattr(layer, attr, value)

    def infer(self, model: Any, X: Any) -> Any:
        """``model.forward(X, training=False)`` in the compute dtype, returned in float32; a
        last Softmax layer runs in float32, on the float32 logits."""
        layers = model.layers
        softmax = layers[-1] if isinstance(layers[-1], Softmax) else None
        with self.computing(model):
            X = self.cast(X)
            for layer in layers[:-1] if softmax is not None else layers:
                X = layer.forward(X, training=False)
        X = self.to_float32(X)
        return X if softmax is None else softmax.forward(X, training=False)

    def _quiet(self) -> Any:
        """NumPy's overflow warnings off: float16 overflow is what the loss scaler handles
        (a skipped step), and what the float32 loss's finiteness checks report."""
        if self.backend.name == "numpy":
            return np.errstate(over="ignore", invalid="ignore")
        return contextlib.nullcontext()

    def master_gradients(self, model: Any) -> None:
        """Each gradient of the last backward (compute dtype, scaled) as float32, divided by
        the scale, in the master gradient's place (the flat buffer's view where there is
        one), plus the L1/L2 penalties' gradients in float32. One ``ops.unscale`` each (one
        kernel on CuPy), which also marks the step's device flag when a result is not
        finite: ``apply`` reads it once."""
        scale, xp, ops = self._scale, self.backend.xp, self.backend.ops
        if self._nonfinite is None:
            self._nonfinite = self.backend.from_host(np.zeros(1, np.int32))
        self._nonfinite[...] = 0
        with self._quiet():
            for layer in model.trainable_layers:
                views = getattr(layer, "_flat_views", None) or {}
                for name in layer.params:
                    grad = getattr(layer, "d" + name)
                    if grad is None:
                        continue
                    out = views.get("d" + name)
                    if out is None or out.dtype != self.float32 or out.shape != grad.shape:
                        out = xp.empty(grad.shape, dtype=self.float32)
                    ops.unscale(grad, out, scale, self._nonfinite)
                    setattr(layer, "d" + name, out)
                if any(getattr(layer, r, 0) for r in _REGULARIZERS) and hasattr(
                    layer, "add_regularization_gradients"
                ):
                    layer.add_regularization_gradients()

    def apply(self, model: Any, reduced: bool = False) -> bool:
        """Whether the step's update goes ahead: always for bfloat16; for float16, when every
        (unscaled, float32) gradient is finite (one read from the device a step, as
        PyTorch's ``GradScaler.step``), which the loss scaler records. ``reduced``: the
        gradients were summed over the ranks (in float32), so an overflow on any rank is
        non-finite on all: the check is of the sums, and every rank decides alike with no
        message of its own."""
        if self.scaler is None:
            return True
        if reduced or self._nonfinite is None:
            grads = [getattr(layer, "d" + name) for layer in model.trainable_layers
                     for name in layer.params]  # fmt: skip
            grads = [g for g in grads if g is not None]
            with self._quiet():
                flags = host_values(self.backend, self.backend.ops.finite_flags(grads))
            return self.scaler.update(bool(all(flags)))
        (flag,) = host_values(self.backend, [self._nonfinite[0]])
        return self.scaler.update(not int(flag))


def for_model(model: Any, where: str = "Model.finalize") -> Passes | None:
    """The passes of ``model``'s policy: ``Mixed`` for mixed16 / mixed_bf16, ``TF32`` for tf32
    on a GPU that has it; None for float32 (and tf32 elsewhere, with a warning once). An
    existing one of the same policy is kept, with its loss scaler's state."""
    name, backend, current = model.precision, model.backend, getattr(model, "_policy", None)
    if name == "tf32":
        why = tf32_capable(backend, model.dtype)
        if why is not None:
            _warn_tf32(why)
            return None
        kept = isinstance(current, TF32) and current.backend is backend
        return current if kept else TF32(backend)
    if compute_dtype(name, backend, where) is None:
        return None
    if (isinstance(current, Mixed) and current.name == name and current.backend is backend
            and current.float32 == model.dtype):  # fmt: skip
        return current
    return Mixed(name, backend, where, model.dtype)


def inference(model: Any) -> Any:
    """A block in which ``model``'s inference passes (an evaluate's or predict's batches)
    find the policy's compute copies made once, not once a batch."""
    policy = model._policy
    return contextlib.nullcontext() if policy is None else policy.computing(model)


def loss_scaler(model: Any) -> LossScaler | None:
    """The live ``LossScaler`` of a finalized ``mixed16`` model (None for other policies):
    set its ``growth_interval`` (N clean steps before the scale doubles, 2000 by default) or
    ``scale`` there, before training."""
    policy = getattr(model, "_policy", None)
    return policy.scaler if isinstance(policy, Mixed) else None
