"""``Layer``: the base class of every layer, and the contract a layer of your own keeps.

``Dense``, ``Dropout`` and the activations derive from it; ``examples/custom_layer.py``
writes a LeakyReLU on it, gradient-checks it, trains with it, saves and loads it.
"""

from __future__ import annotations

import abc
import inspect
from typing import Any, ClassVar

import numpy as np

from .backend import Backend, get_backend


class Layer(abc.ABC):
    """One step of a network, in the nnfs book's terms: ``forward`` computes ``output`` from
    ``inputs``; ``backward`` takes the loss gradient w.r.t. ``output`` and gives the one
    w.r.t. ``inputs`` (and w.r.t. each parameter).

    What ``Model``, the optimizers, checkpoints and ``testing.check_layer`` rely on:

    - ``backend``: the backend active when the layer is built (``Layer.__init__`` sets it,
      so call ``super().__init__()``). Compute with ``self.backend.xp`` (NumPy, CuPy or the
      array-api-strict stand-in: the array API's functions, ``xp.where``, ``xp.sum``,
      ``xp.exp``, ...) and the layer runs on every backend. Its inputs and ``dvalues``
      arrive as arrays of that backend on its device: the layer never copies them.
    - ``forward(inputs, training=True)`` sets ``self.inputs`` and ``self.output`` and
      returns ``output``. ``training`` is False in ``predict`` and ``evaluate`` (it matters
      to layers like Dropout only).
    - ``backward(dvalues)``: ``dvalues`` has the shape of ``output``. Sets and returns
      ``self.dinputs`` (the shape of ``inputs``) and sets ``self.d<name>`` (the shape of the
      parameter) for each name in ``params``.
    - ``params``: the names of the trainable arrays (attributes holding arrays of
      ``backend``), ``()`` for none. Optimizers update them in place (``Model`` keeps them
      as views of one flat buffer), so assign ``self.<name>`` in ``__init__`` only.
    - ``get_config()``: the constructor's arguments, as JSON values, such that
      ``type(layer)(**layer.get_config())`` builds the same layer, parameters aside (a
      checkpoint holds those as arrays: ``Model.load`` builds the layer from its config,
      passes the saved arrays as keywords named as in ``params`` if the constructor takes
      them, else assigns them after building). The default reads each constructor argument
      from the attribute of the same name (as scikit-learn's ``get_params`` does), so
      ``self.alpha = alpha`` is all ``LeakyReLU(alpha)`` needs.
    - Register the class (``@bg.register``) so ``Model.load`` finds it by name; import its
      module before loading.
    """

    params: tuple[str, ...] = ()  # each has a gradient named "d" + name
    registry_kind: ClassVar[str] = "layer"  # (what the registry files it under)

    def __init__(self) -> None:
        self.backend: Backend = get_backend()
        self.inputs: Any = None
        self.output: Any = None
        self.dinputs: Any = None

    @abc.abstractmethod
    def forward(self, inputs: Any, training: bool = True) -> Any:
        """Set ``self.inputs``, compute and return ``self.output``."""

    @abc.abstractmethod
    def backward(self, dvalues: Any) -> Any:
        """``dvalues`` (the shape of ``output``) -> ``self.dinputs`` (the shape of
        ``inputs``), returned; sets ``self.d<name>`` for each name in ``params``."""

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments (parameters aside), each read from the attribute of
        its name; override it when the layer keeps them otherwise."""
        config: dict[str, Any] = {}
        signature = inspect.signature(type(self).__init__)
        for name, arg in list(signature.parameters.items())[1:]:  # (self aside)
            if arg.kind in (arg.VAR_POSITIONAL, arg.VAR_KEYWORD) or name in self.params:
                continue
            if not hasattr(self, name):
                raise NotImplementedError(
                    f"{type(self).__name__}.get_config: the constructor argument {name!r} is "
                    f"not kept as self.{name}; keep it there, or override get_config to "
                    "return the constructor's arguments"
                )
            value = getattr(self, name)
            config[name] = value.item() if isinstance(value, np.generic) else value
        return config

    def __repr__(self) -> str:
        try:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        except NotImplementedError:
            args = "..."
        return f"{type(self).__name__}({args})"
