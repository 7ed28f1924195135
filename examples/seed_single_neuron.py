"""A single ReLU neuron's gradients, as in the first seed chapter (the nnfs book, ch. 9).

x = [1, -2, 3], w = [-3, -1, 2], b = 1; the gradient from the next layer is 1.0.
Expected: d/dz relu = 1.0 and dx0 dw0 dx1 dw1 dx2 dw2 = -3.0 1.0 -1.0 -2.0 2.0 3.0.
"""

import backprop_gpu as bg

neuron = bg.Dense(3, 1, weights=[[-3.0], [-1.0], [2.0]], biases=[[1.0]])  # float64, as given
relu = bg.ReLU()

relu.forward(neuron.forward([[1.0, -2.0, 3.0]]))  # z = 6, y = 6
neuron.backward(relu.backward([[1.0]]))

dx = bg.to_numpy(neuron.dinputs)[0]
dw = bg.to_numpy(neuron.dweights)[:, 0]
print(f"backend: {bg.get_backend().name}")
print(f"d/dz relu = {bg.to_numpy(relu.dinputs)[0, 0]}")
print(f"dsum_db = {bg.to_numpy(neuron.dbiases)[0, 0]}")
print(dx[0], dw[0], dx[1], dw[1], dx[2], dw[2])
