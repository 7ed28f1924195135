"""``Ops``: every hot-path operation of a training step, written once as plain ``xp`` code.

This is the book's math in one place, and the reference: the layers, losses and optimizers
call ``self.backend.ops.<op>(...)`` and never ask which backend they run on. A backend that
can do an operation faster (the C extension on NumPy, CUDA kernels on CuPy) subclasses
``Ops`` in its own file and overrides only that operation; the tests hold each override
equal to the method here (bit for bit unless a test states a tolerance). An override that
cannot take some arrays (a dtype or layout its kernel does not handle) calls the method here.

Every method works in the arrays' own dtype, takes and returns arrays of the backend's
library on its device, and writes in place only where it says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Backend


class Ops:
    """The reference operations on ``backend``'s arrays (``self.xp`` is its array module)."""

    name = "reference"

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.xp = backend.xp

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend.name})"

    # --- batches -------------------------------------------------------------------------

    def take_rows(self, a: Any, indices: Any, out: Any = None) -> Any:
        """``a[indices]`` along the first axis: the rows of a shuffled batch, (N, ...) with
        int64 ``indices`` (B,), all in range, -> (B, ...); written into ``out`` (an array
        of that shape and ``a``'s dtype) when given, and returned."""
        return _into(out, self.xp.take(a, indices, axis=0))

    def take_batch(
        self, X: Any, y: Any, indices: Any, out: tuple[Any, Any] | None = None
    ) -> tuple[Any, Any]:
        """A shuffled batch: ``(X[indices], y[indices])`` along the first axis (``take_rows``
        of each), into ``out`` (two arrays) when given."""
        x_out, y_out = (None, None) if out is None else out
        return self.take_rows(X, indices, x_out), self.take_rows(y, indices, y_out)

    # --- Dense ---------------------------------------------------------------------------

    def matmul(self, a: Any, b: Any, out: Any = None) -> Any:
        """``a @ b``, (N, K) @ (K, M) -> (N, M); written into ``out`` (an (N, M) array of the
        result's dtype) when given, and returned. (The reference computes and copies; NumPy
        and CuPy write straight into ``out``.)"""
        if out is None:
            return a @ b
        out[...] = a @ b
        return out

    def add_bias(self, out: Any, biases: Any) -> Any:
        """``out += biases`` in place and return ``out``: (N, C) + (1, C) (or (C,))."""
        out += biases  # the product is a fresh array: adding in place saves a copy
        return out

    def bias_gradient(self, dvalues: Any, out: Any = None) -> Any:
        """The bias gradient, the column sums of ``dvalues``: (N, C) -> (1, C); written into
        ``out`` (a (1, C) array of ``dvalues``' dtype) when given, and returned."""
        return _into(out, self.xp.sum(dvalues, axis=0, keepdims=True))

    def bias_relu(self, z: Any, biases: Any) -> Any:
        """``max(z + biases, 0)``: a Dense's product (N, C), a fresh array that may be
        overwritten, and its biases (1, C); a Dense followed by a ReLU in one pass."""
        return self.relu(self.add_bias(z, biases))

    # --- ReLU ----------------------------------------------------------------------------

    def relu(self, inputs: Any) -> Any:
        """``max(inputs, 0)`` elementwise (NaN stays NaN); a new array."""
        return self.xp.maximum(inputs, 0)

    def relu_backward(self, dvalues: Any, inputs: Any) -> Any:
        """``dvalues`` times the 0/1 mask of positive ``inputs`` (so an infinite ``dvalues``
        on a masked input gives NaN, not 0); a new array of ``dvalues``' shape. The ReLU's
        input or its output give the same mask (``max(x, 0) > 0`` exactly where ``x > 0``):
        ``ReLU.backward`` passes its output."""
        # (a multiply by the mask: xp.where was 8x slower on NumPy)
        return dvalues * self.xp.astype(inputs > 0, dvalues.dtype)

    def relu_backward_bias_gradient(
        self, dvalues: Any, output: Any, out: tuple[Any, Any] | None = None
    ) -> tuple[Any, Any]:
        """A ReLU's backward and the bias gradient of the Dense before it, in one pass:
        ``(dinputs, column sums of dinputs)``, (N, C) and (1, C). The mask comes from the
        ReLU's ``output``: ``max(x, 0) > 0`` exactly when ``x > 0`` (NaN too: neither is).
        ``out``: a pair of arrays of those shapes and ``dvalues``' dtype, sharing no memory
        with the inputs, written and returned."""
        dinputs = self.relu_backward(dvalues, output)
        dbiases = self.bias_gradient(dinputs)
        if out is None:
            return dinputs, dbiases
        return _into(out[0], dinputs), _into(out[1], dbiases)

    # --- softmax cross-entropy -----------------------------------------------------------

    def softmax(self, logits: Any) -> Any:
        """Row-wise softmax of (N, C) ``logits``, shifted by the row maximum so ``exp``
        never overflows."""
        xp = self.xp
        exp = xp.exp(logits - xp.max(logits, axis=1, keepdims=True))
        return exp / xp.sum(exp, axis=1, keepdims=True)

    def softmax_cross_entropy(self, logits: Any, y: Any, eps: float) -> tuple[Any, Any, Any]:
        """Softmax and mean cross-entropy of (N, C) ``logits`` against class indices ``y``
        (int64, (N,)): ``(probabilities (N, C), mean loss (0-d), correct)``, with the loss the
        mean of ``-log(clip(p[range(N), y], eps, 1 - eps))``. ``correct``, the number of rows
        whose largest logit is the true class, is None here (a fused kernel finds it on the
        way; without one the accuracy metric computes it)."""
        probabilities = self.softmax(logits)
        return probabilities, self.cross_entropy(probabilities, y, eps), None

    def cross_entropy(self, probabilities: Any, y: Any, eps: float) -> Any:
        """Mean of ``-log(clip(p, eps, 1 - eps))`` of the true class: ``y`` int64 indices (N,)
        or one-hot rows (N, C); a 0-d array."""
        xp, n = self.xp, probabilities.shape[0]
        p = xp.clip(probabilities, eps, 1 - eps)
        # indices: the book's p[range(N), y]; one-hot: the row sums of p * y
        correct = p[self.backend.arange(n), y] if y.ndim == 1 else xp.sum(p * y, axis=1)
        return -xp.sum(xp.log(correct)) / n  # the mean, without xp.mean's slower wrapper

    def softmax_cross_entropy_forward_backward(
        self, logits: Any, y: Any, eps: float
    ) -> tuple[Any, Any, Any, Any]:
        """``softmax_cross_entropy`` and its gradient w.r.t. the logits at once (what a
        training step needs): ``(probabilities, mean loss, correct, dinputs)``."""
        probabilities, loss, correct = self.softmax_cross_entropy(logits, y, eps)
        dinputs = self.softmax_cross_entropy_backward(probabilities, y)
        return probabilities, loss, correct, dinputs

    def softmax_cross_entropy_backward(self, probabilities: Any, y: Any) -> Any:
        """The gradient w.r.t. the logits, ``(p - onehot(y)) / N``, for int64 class indices
        ``y`` (N,) or one-hot rows (N, C); a new (N, C) array."""
        return (probabilities - self.onehot(y, probabilities)) / probabilities.shape[0]

    def onehot(self, y: Any, like: Any) -> Any:
        """Class indices ``y`` (N,) as one-hot rows shaped and typed like ``like`` (N, C);
        one-hot rows ``y`` (N, C) cast to ``like``'s dtype."""
        xp = self.xp
        if y.ndim == 2:
            return y if y.dtype == like.dtype else xp.astype(y, like.dtype)
        classes = self.backend.arange(like.shape[1])
        return xp.astype(y[:, None] == classes[None, :], like.dtype)

    # --- Dropout --------------------------------------------------------------------------

    def uniform(
        self, seed: int, stream: tuple[int, int], shape: tuple[int, ...], dtype: Any,
        rows: tuple[int, int, int] | None = None,
    ) -> Any:  # fmt: skip
        """Philox4x32-10 uniforms in [0, 1) of ``shape`` and ``dtype``: element ``i`` of the
        ``(seed, stream)`` sequence (``backprop_gpu/philox.py``), the same bits on every
        backend; ``rows=(total, lo, hi)``: rows lo:hi of a (total, ...) draw."""
        from ..philox import uniform_reference  # (philox imports this package)

        return uniform_reference(self.backend, seed, stream, shape, dtype, rows)

    # --- optimizer updates: each in place, on one parameter and its state ---------------

    def sgd(self, param: Any, grad: Any, lr: float) -> None:
        """``param -= lr * grad``."""
        param -= lr * grad

    def sgd_momentum(
        self, param: Any, velocity: Any, grad: Any, lr: float, momentum: float, nesterov: bool
    ) -> None:
        """``v = momentum * v - lr * grad``; ``param += v`` (Nesterov: ``param += momentum * v
        - lr * grad`` with the new ``v``)."""
        velocity *= momentum
        velocity -= lr * grad
        if nesterov:
            param += momentum * velocity - lr * grad
        else:
            param += velocity

    def adagrad(self, param: Any, cache: Any, grad: Any, lr: float, epsilon: float) -> None:
        """``cache += grad**2``; ``param -= lr * grad / (sqrt(cache) + epsilon)``."""
        cache += grad**2
        param -= lr * grad / (self.xp.sqrt(cache) + epsilon)

    def rmsprop(
        self, param: Any, cache: Any, grad: Any, lr: float, rho: float, epsilon: float
    ) -> None:
        """``cache = rho * cache + (1 - rho) * grad**2``; ``param -= lr * grad / (sqrt(cache)
        + epsilon)``."""
        cache *= rho
        cache += (1 - rho) * grad**2
        param -= lr * grad / (self.xp.sqrt(cache) + epsilon)

    def adam(
        self, param: Any, momentums: Any, cache: Any, grad: Any, *, lr: float, beta_1: float,
        beta_2: float, epsilon: float, t: int,
    ) -> None:  # fmt: skip
        """Adam at step ``t`` (1, 2, ...): ``m = beta_1 m + (1 - beta_1) g``, ``c = beta_2 c +
        (1 - beta_2) g**2``, ``param -= lr * (m / (1 - beta_1**t)) / (sqrt(c / (1 -
        beta_2**t)) + epsilon)``."""
        momentums *= beta_1
        momentums += (1 - beta_1) * grad
        cache *= beta_2
        cache += (1 - beta_2) * grad**2
        corrected_m = momentums / (1 - beta_1**t)
        corrected_c = cache / (1 - beta_2**t)
        param -= lr * corrected_m / (self.xp.sqrt(corrected_c) + epsilon)

    # --- before an update: clipping the gradients, weight decay --------------------------

    def clip_grad_norm(self, grads: Sequence[Any], max_norm: float) -> Any:
        """Scale every array of ``grads`` in place by ``min(max_norm / (norm + 1e-6), 1)``,
        ``norm`` the 2-norm of all of them together (``torch.nn.utils.clip_grad_norm_``),
        and return ``norm``: a 0-d array on the device (nothing is read to the host). One
        reduction per array (the sum of its squares, in its dtype) and one scaling per array;
        arrays of several dtypes are summed in the widest and the factor is cast back to each
        one's. A NaN or infinite gradient makes the factor NaN or 0, as in torch."""
        xp = self.xp
        total: Any = None
        for g in grads:
            flat = xp.reshape(g, (-1,))
            squares = flat @ flat  # (one dot product: BLAS / cuBLAS, no temporary)
            total = squares if total is None else total + squares
        if total is None:
            return None
        norm = xp.sqrt(total)
        factor = xp.clip(max_norm / (norm + 1e-6), None, 1.0)
        for g in grads:
            g *= factor if factor.dtype == g.dtype else xp.astype(factor, g.dtype)
        return norm

    def clip_grad_value(self, grad: Any, clip_value: float) -> None:
        """``grad`` clipped to ``[-clip_value, clip_value]`` in place (NaN stays NaN), as
        ``torch.nn.utils.clip_grad_value_``."""
        grad[...] = self.xp.clip(grad, -clip_value, clip_value)

    def weight_decay_gradient(self, param: Any, grad: Any, weight_decay: float) -> Any:
        """``grad + weight_decay * param``, a new array: the gradient of the loss plus
        ``weight_decay / 2 * ||param||**2`` (L2 weight decay coupled to the gradient, as
        ``torch.optim.SGD(weight_decay=...)``)."""
        return grad + weight_decay * param

    def decoupled_weight_decay(self, param: Any, lr: float, weight_decay: float) -> None:
        """``param *= 1 - lr * weight_decay`` in place (``torch.optim.AdamW``'s decay, before
        its Adam step)."""
        param *= 1 - lr * weight_decay

    # --- mixed precision -----------------------------------------------------------------

    def unscale(self, grad: Any, out: Any, scale: float, nonfinite: Any) -> None:
        """A mixed step's hand-off of a gradient to its master's dtype, in place: ``out[...] =
        astype(grad, out.dtype) / scale``, the division in ``out``'s dtype (``scale`` a Python
        float, a "weak" scalar: CuPy 14 and NumPy 2 cast it to that dtype; when it is 1.0,
        just the cast). ``grad`` (a float16, bfloat16 or any float array) and ``out`` have
        the same shape. ``nonfinite``, a device int32 array of shape (1,), is set to 1 when
        any element of the result is NaN or infinite and is left as it is otherwise (never
        reset to 0 here: the caller zeroes it once a step and reads it once); nothing is
        read to the host."""
        xp = self.xp
        value = xp.astype(grad, out.dtype)
        if scale != 1.0:
            value = value / scale
        out[...] = value
        bad = xp.any(~xp.isfinite(out))  # (0-d, on the device)
        nonfinite[...] = xp.maximum(nonfinite, xp.astype(bad, nonfinite.dtype))

    # --- checks --------------------------------------------------------------------------

    def checked_labels(self, y: Any, n_classes: int) -> tuple[Any, Any]:
        """Class indices ``y`` (N,) (int64) checked on the device without a read: ``(labels,
        errors)``, ``labels`` being ``y`` with every index outside [0, n_classes) replaced by
        0 (safe to gather with: the caller makes that batch's loss NaN) and ``errors`` how
        many were outside, a 0-d int64 array (the caller reads it later)."""
        xp = self.xp
        bad = (y < 0) | (y >= n_classes)
        return xp.where(bad, xp.zeros_like(y), y), xp.sum(xp.astype(bad, xp.int64))

    def finite_flags(self, arrays: Sequence[Any]) -> list[Any]:
        """For each array of ``arrays``, whether it holds no NaN or infinity: 0-d boolean
        arrays on the device (the caller reads them with the epoch's metrics, in one copy),
        or Python bools where the answer is on the host already."""
        xp = self.xp
        return [xp.all(xp.isfinite(a)) for a in arrays]


def _into(out: Any, value: Any) -> Any:
    """``value`` copied into ``out`` (returned), or ``value`` itself when ``out`` is None: the
    reference's ``out=``, which computes first and then copies."""
    if out is None:
        return value
    out[...] = value
    return out
