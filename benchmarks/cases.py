"""What the suite measures: the MLP sizes, the contenders, and the targets they are judged by.

Pure Python (no NumPy): both the parent process (:mod:`benchmarks.suite`) and the contender
processes (:mod:`benchmarks.contenders`) import it.
"""

from __future__ import annotations

from dataclasses import dataclass

LEARNING_RATE = 0.01
MOMENTUM = 0.9
SEED = 0
STEPS_PER_EPOCH = 20  # k: bg-model and sklearn train on batch * k samples, k steps an epoch
MAX_EPOCH_SAMPLES = 32_768  # ... but at most this many samples (k shrinks for big batches)


@dataclass(frozen=True)
class Case:
    """One MLP, layer sizes (inputs, hidden..., classes), trained at one batch size."""

    sizes: tuple[int, ...]
    batch: int

    @property
    def label(self) -> str:
        return f"{'-'.join(map(str, self.sizes))}@{self.batch}"

    @property
    def steps_per_epoch(self) -> int:
        """k for the contenders that train on a data set (bg-model, sklearn): 20, or fewer so
        the data set stays at most MAX_EPOCH_SAMPLES (k = 8 at batch 4096)."""
        return max(1, min(STEPS_PER_EPOCH, MAX_EPOCH_SAMPLES // self.batch))

    def to_json(self) -> dict[str, object]:
        return {"sizes": list(self.sizes), "batch": self.batch}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Case:
        sizes = data["sizes"]
        batch = data["batch"]
        assert isinstance(sizes, list) and isinstance(batch, int)
        return cls(tuple(int(s) for s in sizes), batch)


SPIRAL = (2, 64, 3)
MNIST = (784, 256, 256, 10)
WIDE = (784, 1024, 1024, 10)

CASES = (
    Case(SPIRAL, 300),
    Case(MNIST, 32),
    Case(MNIST, 128),
    Case(MNIST, 1024),
    Case(MNIST, 4096),
    Case(WIDE, 512),
)
MEMORY_CASE = Case(WIDE, 512)  # peak RSS over MEMORY_STEPS steps
GROWTH_CASE = Case(SPIRAL, 300)  # RSS after warm-up vs after GROWTH_STEPS steps

# Each contender runs in its own process. "+dx1": the first layer's input gradient is
# computed too, as the hand-written loop's Dense.backward does; without it, as a Model needs.
CONTENDERS = (
    "bg-loop",  # backprop_gpu's nnfs loop over the public API
    "bg-model",  # backprop_gpu's Model.train, shuffling and batching included
    "floor+dx1",  # the step's matrix products alone, in NumPy
    "floor",
    "torch+dx1",  # eager PyTorch on the CPU (when torch imports)
    "torch",
    "jax+dx1",  # jax.jit of the whole step on the CPU (when jax imports)
    "jax",
    "sklearn",  # scikit-learn's MLPClassifier(solver="sgd"), for reference
)
# skipped, with a note, when torch / jax is missing
OPTIONAL = frozenset({"torch+dx1", "torch", "jax+dx1", "jax"})

# (numerator, denominator): the ratios printed per size. Each pair compares like with like:
# bg-loop computes the first layer's dinputs, as do floor+dx1 and torch+dx1.
RATIOS = (
    ("bg-loop", "floor+dx1"),
    ("bg-loop", "torch+dx1"),
    ("bg-model", "floor"),
    ("bg-model", "torch"),
    ("bg-loop", "jax+dx1"),
    ("bg-model", "jax"),
    ("bg-model", "sklearn"),
)

MEMORY_RATIO_TARGET = 1.20  # peak RSS of bg-loop / bg-model over the floor process's
GROWTH_TARGET_MIB = 2.0  # RSS growth allowed over the growth run (as benchmarks/soak.py)


def ratio_target(case: Case, numerator: str, denominator: str) -> float | None:
    """The ratio to meet (median step time over the denominator's), or None: report only.

    step / floor: <= 1.10 at batch >= 1024, <= 1.35 at batch 128, <= 3.0 for [2, 64, 3]@300.
    step / torch: <= 1.0 everywhere, <= 0.75 at batch 32, <= 0.25 for [2, 64, 3].
    bg-model / jax: <= 0.95 everywhere (bg-loop / jax+dx1: reported only).
    """
    if denominator.startswith("jax"):
        return 0.95 if numerator == "bg-model" else None
    if denominator.startswith("floor"):
        if case.sizes == SPIRAL and case.batch == 300:
            return 3.0
        if case.batch >= 1024:
            return 1.10
        if case.batch == 128:
            return 1.35
        return None
    if denominator.startswith("torch"):
        if case.sizes == SPIRAL:
            return 0.25
        if case.batch == 32:
            return 0.75
        return 1.0
    return None  # sklearn: for reference
