"""backprop_gpu: readable, from-scratch backpropagation on NumPy or a CUDA GPU through CuPy.

The math is written once against an ``xp`` array module chosen by :mod:`backprop_gpu.backend`.
"""

from .activations import ReLU, Softmax
from .backend import Backend, asarray, get_backend, set_backend, to_numpy, use_backend
from .layers import Dense
from .losses import CategoricalCrossEntropy, SoftmaxCrossEntropy
from .metrics import Accuracy
from .optimizers import SGD

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Accuracy",
    "Backend",
    "CategoricalCrossEntropy",
    "Dense",
    "ReLU",
    "Softmax",
    "SoftmaxCrossEntropy",
    "asarray",
    "get_backend",
    "set_backend",
    "to_numpy",
    "use_backend",
]
