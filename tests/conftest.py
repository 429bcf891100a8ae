"""Shared test fixtures: a tiny stage-0 base model built once per session, and a JAX compilation cache for
subprocess runs (a trainer started in a fresh process otherwise recompiles everything, ~3× its run time on CPU)."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


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
