"""backprop_gpu: readable, from-scratch backpropagation on NumPy or a CUDA GPU through CuPy.

The math is written once against an ``xp`` array module chosen by :mod:`backprop_gpu.backend`.
"""

from ._checks import check_finite
from ._checks import to_numpy_checked as to_numpy
from .activations import Linear, ReLU, Sigmoid, Softmax
from .backend import (
    Backend,
    BackendUnavailableError,
    asarray,
    get_backend,
    set_backend,
    use_backend,
)
from .callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    LambdaCallback,
    ModelCheckpoint,
    NonFiniteLossError,
    ProgressBar,
    ReduceLROnPlateau,
    TerminateOnNaN,
)
from .checkpoint import CheckpointError
from .layer import Layer
from .layers import Dense, Dropout
from .losses import (
    BinaryCrossEntropy,
    CategoricalCrossEntropy,
    MeanAbsoluteError,
    MeanSquaredError,
    SoftmaxCrossEntropy,
)
from .metrics import Accuracy, BinaryAccuracy, RegressionAccuracy
from .model import Model
from .optimizers import SGD, Adagrad, Adam, AdamW, RMSprop
from .precisions import LossScaler, get_precision, precision, set_precision
from .registry import register
from .schedules import (
    CosineDecay,
    ExponentialDecay,
    InverseTimeDecay,
    OneCycle,
    Schedule,
    StepDecay,
)

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Accuracy",
    "Adagrad",
    "Adam",
    "AdamW",
    "Backend",
    "BackendUnavailableError",
    "BinaryAccuracy",
    "BinaryCrossEntropy",
    "CSVLogger",
    "Callback",
    "CategoricalCrossEntropy",
    "CheckpointError",
    "CosineDecay",
    "Dense",
    "Dropout",
    "EarlyStopping",
    "ExponentialDecay",
    "InverseTimeDecay",
    "LambdaCallback",
    "Layer",
    "Linear",
    "LossScaler",
    "MeanAbsoluteError",
    "MeanSquaredError",
    "Model",
    "ModelCheckpoint",
    "NonFiniteLossError",
    "OneCycle",
    "ProgressBar",
    "RMSprop",
    "ReLU",
    "ReduceLROnPlateau",
    "RegressionAccuracy",
    "Schedule",
    "Sigmoid",
    "Softmax",
    "SoftmaxCrossEntropy",
    "StepDecay",
    "TerminateOnNaN",
    "asarray",
    "check_finite",
    "get_backend",
    "get_precision",
    "precision",
    "register",
    "set_backend",
    "set_precision",
    "to_numpy",
    "use_backend",
]
