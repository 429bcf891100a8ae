"""The `r1jax` command: help, and a 2-step GRPO smoke run of the shipped runlocal config whose TensorBoard event file,
JSONL history and checkpoint are read back.

The event file is parsed here (TFRecord framing checked with its masked CRC-32C, then tensorboardX's Event proto), so
the test needs no `tensorboard` package.
"""

import json
import math
import os
import pathlib
import struct
import subprocess
import sys

import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from r1jax import checkpoint as ckpt_lib
from r1jax import config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
R1_ZERO_RUNLOCAL = str(REPO / "experiments" / "r1_zero.py") + ":runlocal"
R1JAX = os.path.join(os.path.dirname(sys.executable), "r1jax")  # the console script of this environment

SCALARS = [
    "rl/reward_mean",
    "rl/kl",
    "rl/clip_ratio/low_mean",
    "rl/clip_ratio/high_mean",
    "rl/clip_ratio/region_mean",
    "rl/entropy",
    "rl/completion_length_mean",
    "rl/ratio_mean",
    "rl/loss",
    "train/grad_norm",
    "perf/tokens_per_s",
    "perf/sample_time_s",
]


def read_scalars(path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from one TensorBoard event file."""
    out: dict[str, dict[int, float]] = {}
    data = pathlib.Path(path).read_bytes()
    pos = 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        assert header_crc == masked_crc32c(header), f"{path}: bad length CRC at byte {pos}"
        body = data[pos + 12 : pos + 12 + length]
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        assert body_crc == masked_crc32c(body), f"{path}: bad record CRC at byte {pos}"
        pos += 16 + length
        event = event_pb2.Event.FromString(body)
        for v in event.summary.value:
            value = v.simple_value if v.HasField("simple_value") else v.tensor.float_val[0]
            out.setdefault(v.tag, {})[event.step] = value
    return out


def _run(args, env, timeout=300):
    return subprocess.run([R1JAX, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_help(subprocess_env):
    top = _run(["--help"], subprocess_env, timeout=60)
    assert top.returncode == 0, top.stderr
    assert "commands: train, eval, demo, pipeline" in top.stdout and "--config" in top.stdout
    sub = _run(["train", "--help"], subprocess_env, timeout=60)
    assert sub.returncode == 0, sub.stderr
    assert "--config" in sub.stdout and "--workdir" in sub.stdout
    bad = _run(["trian"], subprocess_env, timeout=60)
    assert bad.returncode == 2 and "unknown command 'trian'" in bad.stderr


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, tiny_base_model, subprocess_env):
    workdir = tmp_path_factory.mktemp("cli_smoke")
    args = [
        "train",
        "--config",
        R1_ZERO_RUNLOCAL,
        "--workdir",
        str(workdir),
        f"--config.model.checkpoint={tiny_base_model}",
        "--config.rl.beta=0.01",
        "--config.rl.num_steps=2",
    ]
    proc = _run(args, subprocess_env)
    assert proc.returncode == 0, f"r1jax {' '.join(args)} failed:\n{proc.stderr[-4000:]}"
    return workdir, proc


def test_smoke_run_logs_scalars_to_tensorboard(smoke_run):
    workdir, _ = smoke_run
    files = sorted((workdir / "tb").glob("events.out.tfevents.*"))
    assert len(files) == 1
    scalars = read_scalars(files[0])
    with open(workdir / "metrics.jsonl") as f:
        history = {r["step"]: r for r in map(json.loads, f) if "rl/loss" in r}
    assert sorted(history) == [1, 2]
    for tag in SCALARS:
        assert tag in scalars, f"{tag} missing from the event file; it has {sorted(scalars)}"
        assert sorted(scalars[tag]) == [1, 2], tag
        for step, value in scalars[tag].items():
            assert math.isfinite(value)
            assert value == pytest.approx(history[step][tag], rel=1e-6, abs=1e-12), (tag, step)  # stored as f32
    assert all(v > 0 for v in scalars["perf/tokens_per_s"].values())
    # Step 1's update starts from the reference itself, so its KL is 0 up to rounding (a wrong reference, or a KL
    # estimator with an offset, would not be); k3 >= 0 holds for any pair of models, so it is no check.
    assert abs(scalars["rl/kl"][1]) < 1e-6, scalars["rl/kl"]
    # μ = 1 (the default): no old-log-prob pass, so the importance ratio is exactly 1 and nothing clips
    assert all(v == 1.0 for v in scalars["rl/ratio_mean"].values())
    assert all(v == 0.0 for v in scalars["rl/clip_ratio/region_mean"].values())
    assert "eval/pass_at_1" in scalars and "eval/cons_at_k" in scalars  # the final evaluation; "@" → "_at_"


def test_smoke_run_writes_a_resumable_checkpoint(smoke_run):
    workdir, proc = smoke_run
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints")
    assert checkpointer.all_steps()[-1] == 2
    meta = checkpointer.manager.restore(2, args=ckpt_lib.ocp.args.Composite(meta=ckpt_lib.ocp.args.JsonRestore()))
    assert meta["meta"]["rl.group_size"] == config_lib.load_config(R1_ZERO_RUNLOCAL).rl.group_size
    checkpointer.close()
    assert (workdir / "model" / "model.safetensors").exists()  # exported for the next stage
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert "rl/reward_mean" in result and "eval/pass@1" in result
