"""Shared test fixtures: a tiny stage-0 base model built once per session, a JAX compilation cache for
subprocess runs (a trainer started in a fresh process otherwise recompiles everything, ~3× its run time on CPU),
and the GRPO test experiment with a reward of the test's own."""

import os
import pathlib
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# Where libtpu is installed (compile-only TPU tests, tests/test_compile.py), every process that loads it takes a host
# lockfile; parallel test workers would refuse each other without this.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# The suite compiles far more than it runs (hundreds of small programs, each run a few times), so XLA:CPU's code
# generation is set to LLVM's cheapest optimisation level, here and in every child process, whose environment starts
# from this one. The HLO passes and fusions are the same; results agree to float32 rounding, not bit for bit (a
# stage-0 step's loss moves in the 7th digit), so a test compares runs made under the same flags, as it would anyway.
# benchmarks/RESULTS.md ("The test suite's time") has the measurement. A level already in XLA_FLAGS wins
# (`XLA_FLAGS=--xla_backend_optimization_level=3`, XLA's default, runs the suite as the package runs).
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    _FLAGS = [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
    os.environ["XLA_FLAGS"] = " ".join(filter(None, _FLAGS))

# libtpu (a dev dependency: tests/test_tpu_compile.py compiles for TPU chips on this host) takes a host-wide lock
# when a process loads it, which jax does at backend start-up; parallel test workers each load it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

REWARD_EXPERIMENT = '''
"""experiments/r1_zero.py with the test reward {reward} (tests only)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from r1jax import config_lib

_base = config_lib.load_module({r1_zero!r})
ENTRY = _base.ENTRY


def get_config(arg=None):
    c = _base.get_config(arg)
    c.rewards.weights = {{{reward!r}: 1.0}}
    return c
'''


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory) -> str:
    """The exported model dir (HF safetensors + tokenizer) of `experiments/pretrain.py:runlocal`: a few SFT steps,
    so it samples near-random text. Built once per session (~30 s on 2 CPU cores)."""
    from r1jax.main import run_experiment

    workdir = tmp_path_factory.mktemp("tiny_base")
    run_experiment(str(REPO / "experiments" / "pretrain.py") + ":runlocal", str(workdir))
    return str(workdir / "model")


@pytest.fixture(scope="session")
def subprocess_env(tmp_path_factory) -> dict:
    """Environment for child processes (`r1jax ...`, scripts): CPU only, and a persistent compilation cache shared
    by every child of this session, so the second run of the same program loads its executables instead of
    compiling them. Executables are keyed by their full HLO, so a cache hit runs exactly what a compile would."""
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


@pytest.fixture(scope="session")
def reward_experiment():
    """A factory: `make(directory, name, reward_source, function)` writes the module `name`_rewards.py (holding
    `reward_source`) and the experiment `name`.py (experiments/r1_zero.py with `name`_rewards:`function` as its only
    reward) into `directory`, and returns the experiment's path. Trainer tests use it because the near-random base
    model never earns the shipped accuracy / format rewards, whose advantages would all be 0."""

    def make(directory, name: str, reward_source: str, function: str) -> str:
        directory = pathlib.Path(directory)
        (directory / f"{name}_rewards.py").write_text(textwrap.dedent(reward_source))
        r1_zero = str(REPO / "experiments" / "r1_zero.py")
        experiment = REWARD_EXPERIMENT.format(reward=f"{name}_rewards:{function}", r1_zero=r1_zero)
        (directory / f"{name}.py").write_text(textwrap.dedent(experiment))
        return str(directory / f"{name}.py")

    return make
