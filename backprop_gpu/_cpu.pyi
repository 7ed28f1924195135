# Types of the optional C extension built from _cpu.c (see backprop_gpu/backend/numpy_backend.py).
# Every array: a C-contiguous, aligned numpy.ndarray; floats all float32 or all float64.
import numpy as np

def all_finite(arrays: list[np.ndarray] | tuple[np.ndarray, ...], /) -> bool: ...
def relu_forward(x: np.ndarray, out: np.ndarray, /) -> None: ...
def relu_backward(dvalues: np.ndarray, inputs: np.ndarray, out: np.ndarray, /) -> None: ...
def add_bias(out: np.ndarray, biases: np.ndarray, /) -> None: ...
def column_sums(d: np.ndarray, out: np.ndarray, /) -> None: ...
def softmax_shift(logits: np.ndarray, y: np.ndarray, out: np.ndarray, /) -> int: ...
def softmax_normalize(
    exp: np.ndarray, y: np.ndarray, picked: np.ndarray, lo: float, hi: float, /
) -> None: ...
def softmax_ce_backward(probabilities: np.ndarray, y: np.ndarray, out: np.ndarray, /) -> None: ...
def sgd_momentum(
    param: np.ndarray,
    velocity: np.ndarray,
    grad: np.ndarray,
    lr: float,
    momentum: float,
    nesterov: bool,
    /,
) -> None: ...
def sgd(param: np.ndarray, grad: np.ndarray, lr: float, /) -> None: ...
def adam(
    param: np.ndarray,
    momentums: np.ndarray,
    cache: np.ndarray,
    grad: np.ndarray,
    lr: float,
    beta_1: float,
    one_minus_beta_1: float,
    beta_2: float,
    one_minus_beta_2: float,
    bias_fix_1: float,
    bias_fix_2: float,
    epsilon: float,
    /,
) -> None: ...

# the fused Dense + ReLU section
def bias_relu(z: np.ndarray, biases: np.ndarray, /) -> None: ...
def relu_backward_bias_gradient(
    dvalues: np.ndarray, output: np.ndarray, out: np.ndarray, sums: np.ndarray, /
) -> None: ...

# Dropout's counter-based generator (backprop_gpu/philox.py)
def philox_uniform(
    out: np.ndarray, seed: int, stream0: int, stream1: int, start: int, /
) -> None: ...
