"""The NumPy backend: arrays in host memory, and ``NumpyOps``, the C extension's fast paths.

``backprop_gpu._cpu`` (``_cpu.c``) is built at install time when a C compiler is there (the
package works without it: ``Ops``, the reference, runs instead). Its loops follow the
reference's arithmetic in the same order and dtype (exp and log stay NumPy's), so results
equal the reference's bit for bit and training is the same with or without them (tested in
tests/test_kernels.py). It pays where NumPy needs several passes or many calls: softmax
cross-entropy (forward, gradient and the accuracy count), the bias add and sums, the ReLU and
the optimizer updates (``python -m benchmarks`` measures the step with and without it:
``BACKPROP_GPU_KERNELS=0``).

Each C function checks its arrays' type (exactly numpy.ndarray), dtype (float32 or float64,
all alike), layout (C-contiguous, aligned) and shapes first and raises TypeError before it
writes anything; the override then runs the reference. (Checking all that in Python too cost
1.8 us for three arrays.)

A Numba build of the same loops was measured too ([784, 256, 256, 10]: 5-15 % faster per
step) but costs 127 MiB more resident memory (LLVM), so the C extension was chosen instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from .base import Backend, Transfer
from .ops import Ops

try:
    from .. import _cpu

    HAVE_C = True
except ImportError:  # installed without a C compiler: the reference code runs
    HAVE_C = False


class NumpyOps(Ops):
    """The reference ops with the C extension's one-pass loops where they apply."""

    name = "c" if HAVE_C else "reference"

    def take_rows(self, a: Any, indices: Any, out: Any = None) -> Any:
        # mode="clip": the same rows (indices are in range), and NumPy writes straight into
        # out (with mode="raise" it stages out in a temporary first)
        return np.take(a, indices, axis=0, out=out, mode="clip" if out is not None else "raise")

    def matmul(self, a: Any, b: Any, out: Any = None) -> Any:
        if a.dtype.itemsize == 2:  # float16, bfloat16: see _half_matmul
            return _half_matmul(a, b, out)
        return np.matmul(a, b, out=out)  # (BLAS writes straight into out: no copy)

    def add_bias(self, out: Any, biases: Any) -> Any:
        # (NumPy's broadcast add runs its inner loop over C only: slow when C is small)
        if out.ndim == 2 and biases.shape in ((out.shape[1],), (1, out.shape[1])):
            try:
                _cpu.add_bias(out, biases)
                return out
            except TypeError:
                pass
        return super().add_bias(out, biases)

    def bias_gradient(self, dvalues: Any, out: Any = None) -> Any:
        # one column: NumPy sums it pairwise (contiguous), not row after row as the C loop does
        if dvalues.ndim == 2 and dvalues.shape[1] != 1:
            sums = np.empty((1, dvalues.shape[1]), dvalues.dtype) if out is None else out
            try:
                _cpu.column_sums(dvalues, sums)
                return sums
            except TypeError:
                pass
        return super().bias_gradient(dvalues, out)

    def bias_relu(self, z: Any, biases: Any) -> Any:
        # one pass instead of two (add_bias, then relu into a new array): z is overwritten
        if z.ndim == 2 and biases.shape in ((z.shape[1],), (1, z.shape[1])):
            try:
                _cpu.bias_relu(z, biases)
                return z
            except TypeError:
                pass
        return super().bias_relu(z, biases)

    def relu_backward_bias_gradient(
        self, dvalues: Any, output: Any, out: tuple[Any, Any] | None = None
    ) -> tuple[Any, Any]:
        # the mask and the column sums in one pass, the sums added row after row as NumPy's
        # axis-0 sum does; one column NumPy sums pairwise: the reference runs there
        if dvalues.ndim == 2 and dvalues.shape[1] != 1:
            dinputs, dbiases = out or (
                np.empty_like(dvalues),
                np.empty((1, dvalues.shape[1]), dvalues.dtype),
            )
            try:
                _cpu.relu_backward_bias_gradient(dvalues, output, dinputs, dbiases)
                return dinputs, dbiases
            except TypeError:
                pass
        return super().relu_backward_bias_gradient(dvalues, output, out)

    def relu(self, inputs: Any) -> Any:
        out = np.empty_like(inputs)
        try:
            _cpu.relu_forward(inputs, out)
            return out
        except TypeError:
            return super().relu(inputs)

    def relu_backward(self, dvalues: Any, inputs: Any) -> Any:
        if dvalues.dtype == inputs.dtype:
            out = np.empty_like(dvalues)
            try:
                _cpu.relu_backward(dvalues, inputs, out)
                return out
            except TypeError:
                pass
        return super().relu_backward(dvalues, inputs)

    def softmax_cross_entropy(self, logits: Any, y: Any, eps: float) -> tuple[Any, Any, Any]:
        """Equal bit for bit to the reference, in four calls instead of about ten:

        - C: each row minus its maximum, and the count of rows whose ``argmax`` is the true
          class (``correct``, for the accuracy, free here);
        - NumPy's own ``exp``, in place (a C loop's ``exp`` rounds differently from NumPy's
          SIMD one: up to 3 ulp in float32, which training amplifies);
        - C: each row divided by its sum, added in NumPy's pairwise order, and the true
          class's probability clipped;
        - NumPy's ``log`` and ``sum`` of those, as the reference.
        """
        probabilities = np.empty_like(logits)
        try:
            correct = _cpu.softmax_shift(logits, y, probabilities)
        except TypeError:
            return super().softmax_cross_entropy(logits, y, eps)
        np.exp(probabilities, out=probabilities)
        picked = np.empty(logits.shape[0], dtype=logits.dtype)
        _cpu.softmax_normalize(probabilities, y, picked, eps, 1 - eps)  # (the arrays fit)
        loss = -np.add.reduce(np.log(picked, out=picked)) / logits.shape[0]  # (np.sum, sooner)
        return probabilities, loss, correct

    def softmax_cross_entropy_backward(self, probabilities: Any, y: Any) -> Any:
        out = np.empty_like(probabilities)
        try:
            _cpu.softmax_ce_backward(probabilities, y, out)
            return out
        except TypeError:
            return super().softmax_cross_entropy_backward(probabilities, y)

    def sgd(self, param: Any, grad: Any, lr: float) -> None:
        try:
            _cpu.sgd(param, grad, lr)
        except TypeError:
            super().sgd(param, grad, lr)

    def sgd_momentum(
        self, param: Any, velocity: Any, grad: Any, lr: float, momentum: float, nesterov: bool
    ) -> None:
        try:
            _cpu.sgd_momentum(param, velocity, grad, lr, momentum, nesterov)
        except TypeError:
            super().sgd_momentum(param, velocity, grad, lr, momentum, nesterov)

    def adam(
        self, param: Any, momentums: Any, cache: Any, grad: Any, *, lr: float, beta_1: float,
        beta_2: float, epsilon: float, t: int,
    ) -> None:  # fmt: skip
        try:  # (the scalars computed as the reference computes them)
            _cpu.adam(
                param, momentums, cache, grad, lr, beta_1, 1 - beta_1, beta_2, 1 - beta_2,
                1 - beta_1**t, 1 - beta_2**t, epsilon,
            )  # fmt: skip
        except TypeError:
            super().adam(
                param, momentums, cache, grad, lr=lr, beta_1=beta_1, beta_2=beta_2,
                epsilon=epsilon, t=t,
            )  # fmt: skip

    def clip_grad_value(self, grad: Any, clip_value: float) -> None:
        # in place in one pass (the reference clips into a new array and copies it back:
        # 265 vs 1227 us for 1.1M float32 gradients); np.clip either way, so the same bits
        np.clip(grad, -clip_value, clip_value, out=grad)

    def uniform(
        self, seed: int, stream: tuple[int, int], shape: tuple[int, ...], dtype: Any,
        rows: tuple[int, int, int] | None = None,
    ) -> Any:  # fmt: skip
        from ..philox import uniform_c  # (one C loop, no temporaries)

        return uniform_c(self.backend, seed, stream, shape, dtype, rows)

    def finite_flags(self, arrays: Sequence[Any]) -> list[Any]:
        # one C call over them all (the reference costs two NumPy calls an array: 30 us an
        # epoch for a small model's 8 parameter and state arrays)
        try:
            if _cpu.all_finite(tuple(arrays)):
                return [True] * len(arrays)
        except TypeError:
            pass
        return [host_finite(a) for a in arrays]


def _half_matmul(a: Any, b: Any, out: Any) -> Any:
    """A float16 or bfloat16 product computed in float32 (BLAS) and rounded once to the
    inputs' dtype, as a GPU's tensor cores accumulate in float32: NumPy has no float16 BLAS
    (its own loop is some 50x slower), and ml_dtypes' bfloat16 products come out in float32."""
    product = np.matmul(a.astype(np.float32), b.astype(np.float32))
    if out is None:
        return product.astype(a.dtype)
    out[...] = product
    return out


def host_finite(a: Any) -> bool:
    """A float array's min and max pass NaN on: two passes and no temporary array (6 vs 9 ms
    for 64 MB, against isfinite)."""
    if a.dtype.kind != "f":  # (complex: min and max compare lexically)
        return bool(np.all(np.isfinite(a)))
    if a.size == 0:
        return True
    lo, hi = a.min(), a.max()
    if a.dtype.itemsize > 8:  # (a long double can exceed what float() holds)
        return bool(np.isfinite(lo) & np.isfinite(hi))
    return math.isfinite(lo) and math.isfinite(hi)  # (2 us less than NumPy's isfinite)


class HostTransfer(Transfer):
    """NumPy's ``Transfer``: the host buffers are the batch (no copy; one slot, refilled
    each step)."""

    def receive(self, slot: int, rows: int) -> list[Any]:
        return [h[:rows] for h in self.host[slot]]


class NumpyBackend(Backend):
    """NumPy on the host (``device`` is ``"cpu"``)."""

    name = "numpy"
    host = True
    reuses_step_buffers = True
    ops_class: ClassVar[type[Ops]] = NumpyOps if HAVE_C else Ops

    def __init__(self, xp: Any = np, device: Any = "cpu", reason: str = "", fast_ops: bool = True):
        super().__init__(xp, device, reason, fast_ops)

    def _array_type(self) -> Any:
        return np.ndarray

    def transfer(self, rows: int, columns: Sequence[tuple[tuple[int, ...], Any]]) -> Transfer:
        return HostTransfer(self, rows, columns)

    def device_of(self, a: Any) -> Any:
        return "cpu"

    def owns(self, a: Any) -> bool:
        return isinstance(a, np.ndarray | np.generic)  # (the scalars reductions return too)

    def ready(self, a: Any, dtype: Any = None) -> bool:
        return type(a) is np.ndarray and (dtype is None or a.dtype == dtype)

    def from_host(self, host: np.ndarray, dtype: Any = None) -> Any:
        return host if dtype is None else host.astype(dtype, copy=False)

    def arange(self, n: int) -> Any:
        return np.arange(n, dtype=np.int64)
