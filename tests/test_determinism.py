"""Same command, same seed, same bytes: a shortened stage 0 run twice in fresh processes gives the same tokenizer
model and the same parameters.

The two processes differ in everything a host may change without asking: the string-hash seed (set and dict
iteration order of strings), the working directory's path, and the order in which the workdirs are created. What
stays outside this test, because the process cannot control it, is measured and stated in
`r1jax/data/provenance.py` (`environment`): XLA on CPU partitions loops over the schedulable cores
(`len(os.sched_getaffinity(0))`), and a different count changes float rounding, so runs compare bit for bit
only on hosts with the same core count, CPU features and library versions.
"""

import hashlib
import json
import os
import platform
import subprocess
import sys

from r1jax.data import provenance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STAGE0 = """
import hashlib, json, os, sys
from r1jax import config_lib
from r1jax.trainers import sft

workdir = sys.argv[1]
config = config_lib.load_config(os.path.join(sys.argv[2], "experiments", "pretrain.py") + ":runlocal")
sft.train(config, workdir)
digest = lambda name: hashlib.sha256(open(os.path.join(workdir, "model", name), "rb").read()).hexdigest()
print("HASHES " + json.dumps({n: digest(n) for n in ("tokenizer.model", "model.safetensors", "config.json")}))
"""


def _run_stage0(workdir: str, hash_seed: str, subprocess_env: dict) -> dict:
    # The session's compilation cache: the second process loads the executables the first compiled, which are
    # keyed by their whole HLO, so a program that changed with the hash seed would compile anew and differ.
    env = dict(subprocess_env, PYTHONHASHSEED=hash_seed)
    out = subprocess.run(
        [sys.executable, "-c", STAGE0, workdir, REPO], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("HASHES "))
    return json.loads(line.removeprefix("HASHES "))


def test_stage0_twice_in_fresh_processes_gives_the_same_tokenizer_and_parameters(tmp_path, subprocess_env):
    first = _run_stage0(str(tmp_path / "a"), "1", subprocess_env)
    second = _run_stage0(str(tmp_path / "b" / "deeper path"), "2", subprocess_env)
    assert first == second
    # The hashes are of real files: a changed byte changes them (the comparison above can fail).
    model = tmp_path / "a" / "model" / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 1
    assert hashlib.sha256(bytes(data)).hexdigest() != first["model.safetensors"]


def test_environment_names_what_the_numbers_depend_on():
    env = provenance.environment()
    assert env["schedulable_cpus"] == len(os.sched_getaffinity(0))
    for name in ("jax", "jaxlib", "sentencepiece", "numpy", "grain", "python"):
        assert isinstance(env["versions"][name], str) and env["versions"][name][0].isdigit(), (name, env)
    if platform.machine() == "x86_64":  # the widest vector ISA, as XLA names it, read from the CPU's flags
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
        assert env["isa"] == ("AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "AVX"), env["isa"]
    json.dumps(env)  # goes into results files as is
