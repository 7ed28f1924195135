"""A layer of 3 neurons with 4 inputs: backprop and one SGD step, as in the second seed chapter.

The ReLU's own output is used as the incoming gradient (we "minimise the output"), then the
weights and biases take one SGD step with learning rate 0.001.
"""

import numpy as np

import backprop_gpu as bg

inputs = np.array([[1, 2, 3, 2.5], [2.0, 5.0, -1.0, 2], [-1.5, 2.7, 3.3, -0.8]])
weights = np.array([[0.2, 0.8, -0.5, 1], [0.5, -0.91, 0.26, -0.5], [-0.26, -0.27, 0.17, 0.87]]).T
biases = np.array([[2, 3, 0.5]])

dense = bg.Dense(4, 3, weights=weights, biases=biases)  # float64 parameters, kept as given
relu = bg.ReLU()

relu.forward(dense.forward(inputs))
dense.backward(relu.backward(relu.output))

print(f"backend: {bg.get_backend().name}")
print(f"layer_outputs\n{bg.to_numpy(dense.output)!r}")
print(f"dinputs\n{bg.to_numpy(dense.dinputs)!r}")
print(f"dweights\n{bg.to_numpy(dense.dweights)!r}")
print(f"dbiases\n{bg.to_numpy(dense.dbiases)!r}")

bg.SGD(learning_rate=0.001).update_params(dense)
print(f"new weights\n{bg.to_numpy(dense.weights)}")
print(f"new biases\n{bg.to_numpy(dense.biases)}")
