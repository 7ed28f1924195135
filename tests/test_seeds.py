"""The two notebook chapters in ../shared/seeds, reproduced number for number."""

from __future__ import annotations

import numpy as np

import backprop_gpu as bg

from .tolerances import assert_within, matmul_difference, sum_difference, unit_roundoff

INPUTS = np.array([[1, 2, 3, 2.5], [2.0, 5.0, -1.0, 2], [-1.5, 2.7, 3.3, -0.8]])
WEIGHTS = np.array([[0.2, 0.8, -0.5, 1], [0.5, -0.91, 0.26, -0.5], [-0.26, -0.27, 0.17, 0.87]]).T
BIASES = np.array([[2, 3, 0.5]])

# As printed in 004_*.txt (numpy's repr of the float64 results).
DINPUTS = """array([[ 0.9449 ,  2.09495, -1.67995,  6.26995],
       [ 1.728  ,  7.066  , -4.416  ,  9.074  ],
       [ 0.80074,  0.16457, -0.42732,  0.90712]])"""
DWEIGHTS = """array([[20.485 , -0.3665,  2.746 ],
       [57.907 ,  5.2577,  5.8402],
       [10.153 ,  7.0983,  7.0408],
       [28.672 ,  2.1842,  6.3417]])"""
DBIASES = "array([[15.11 ,  2.261,  2.611]])"
NEW_WEIGHTS = """[[ 0.179515   0.5003665 -0.262746 ]
 [ 0.742093  -0.9152577 -0.2758402]
 [-0.510153   0.2529017  0.1629592]
 [ 0.971328  -0.5021842  0.8636583]]"""
NEW_BIASES = "[[1.98489  2.997739 0.497389]]"
LAYER_OUTPUTS = np.array([[4.8, 1.21, 2.385], [8.9, -1.81, 0.2], [1.41, 1.051, 0.026]])


def test_single_neuron_gradients(backend: bg.Backend) -> None:
    # 000_*.txt: x = [1, -2, 3], w = [-3, -1, 2], b = 1, ReLU, dvalue 1.0
    neuron = bg.Dense(3, 1, weights=[[-3.0], [-1.0], [2.0]], biases=[[1.0]])
    relu = bg.ReLU()
    z = neuron.forward([[1.0, -2.0, 3.0]])
    assert bg.to_numpy(relu.forward(z)).tolist() == [[6.0]]
    neuron.backward(relu.backward([[1.0]]))
    assert bg.to_numpy(relu.dinputs).tolist() == [[1.0]]  # d/dz relu = 1.0
    assert bg.to_numpy(neuron.dinputs).tolist() == [[-3.0, -1.0, 2.0]]  # dx
    assert bg.to_numpy(neuron.dweights).tolist() == [[1.0], [-2.0], [3.0]]  # dw
    assert bg.to_numpy(neuron.dbiases).tolist() == [[1.0]]  # db


def test_layer_backprop_and_sgd_step(backend: bg.Backend) -> None:
    # 004_*.txt: 3 samples, 4 inputs, 3 neurons; the ReLU output is the incoming gradient
    dense = bg.Dense(4, 3, weights=WEIGHTS, biases=BIASES)
    relu = bg.ReLU()
    relu.forward(dense.forward(INPUTS))
    dense.backward(relu.backward(relu.output))
    bg.SGD(learning_rate=0.001).update_params(dense)
    if backend.name == "cupy":  # cuBLAS sums in its own order: within the derived bounds
        gpu_within_rounding(dense, relu)
        return
    np.testing.assert_allclose(bg.to_numpy(relu.output), np.maximum(LAYER_OUTPUTS, 0), rtol=1e-14)
    assert repr(bg.to_numpy(dense.dinputs)) == DINPUTS
    assert repr(bg.to_numpy(dense.dweights)) == DWEIGHTS
    assert repr(bg.to_numpy(dense.dbiases)) == DBIASES
    assert str(bg.to_numpy(dense.weights)) == NEW_WEIGHTS
    assert str(bg.to_numpy(dense.biases)) == NEW_BIASES
    # bit-for-bit the seed's own `weights += -0.001 * dweights`
    expected = WEIGHTS + -0.001 * (INPUTS.T @ np.maximum(0, INPUTS @ WEIGHTS + BIASES))
    assert np.array_equal(bg.to_numpy(dense.weights), expected)
    assert np.array_equal(WEIGHTS[0], [0.2, 0.5, -0.26])  # the caller's array is untouched


def gpu_within_rounding(dense: bg.Dense, relu: bg.ReLU) -> None:
    """The same step in NumPy float64, and each result within the float64 rounding bound of
    two evaluations (tests/tolerances.py), each input's own bound carried forward."""
    f64, u = np.float64, unit_roundoff(np.float64)
    z = INPUTS @ WEIGHTS + BIASES
    output = np.maximum(z, 0)  # also the incoming gradient, and ReLU's backward of it
    d_output = matmul_difference(INPUTS, WEIGHTS, f64, bias=BIASES)  # ReLU: 1-Lipschitz
    dinputs, dweights = output @ WEIGHTS.T, INPUTS.T @ output
    dbiases = output.sum(axis=0, keepdims=True)
    d_dweights = matmul_difference(INPUTS.T, output, f64, db=d_output)
    d_dbiases = sum_difference(output, f64, dx=d_output)
    for name, got, want, bound in [
        ("output", relu.output, output, d_output),
        ("dinputs", dense.dinputs, dinputs, matmul_difference(output, WEIGHTS.T, f64, da=d_output)),
        ("dweights", dense.dweights, dweights, d_dweights),
        ("dbiases", dense.dbiases, dbiases, d_dbiases),
    ]:
        assert_within(bg.to_numpy(got), want, bound, name)
    for name, param, start, grad, d_grad in [
        ("weights", dense.weights, WEIGHTS, dweights, d_dweights),
        ("biases", dense.biases, BIASES, dbiases, d_dbiases),
    ]:  # start + -0.001 * grad: a product and a sum rounded on each side
        new = start + -0.001 * grad
        bound = 0.001 * d_grad * (1 + u) + 2 * u * (0.001 * np.abs(grad) * (1 + u) + np.abs(new))
        assert_within(bg.to_numpy(param), new, bound * 1.01, name)
