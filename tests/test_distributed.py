"""Multi-process runs on one machine: 2 processes × 4 fake CPU devices joined by jax.distributed (gloo collectives).

Default suite (≈40 s): launch settings and their errors; a 2-process worker (this file run as a script) that moves
per-process rows to global arrays and back, and gets a SIGTERM on one process, after which both reach orbax's
preemption sync point at the same step, save that step collectively, restore it, and exit 0; and the training loop
every trainer shares (r1jax.trainers.loop) on 2 processes around a tiny step: a SIGTERM to one process stops both
at one saved step, and the restart resumes there and ends with the exact uninterrupted result.

Slow (`-m slow`): the GRPO trainer itself (≈3 min) — 2 processes on one global mesh give the same per-step losses
as 1 process with 8 devices; a SIGTERM to one process makes both save the same step and exit 0, and a restart
resumes from it and continues with the same losses. SFT and reward-model training (≈1 min each on an idle
machine): a SIGTERM to one of 2 processes, then a restart, ends with the uninterrupted run's final params, bit
for bit.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from r1jax import distributed

REPO = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(base: dict, devices: int) -> dict:
    env = dict(base)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    for k in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
        env.pop(k, None)
    return env


# ---------------------------------------------------------------------------------------------------------------
# Launch settings


def test_resolve_spec_from_environment_and_flags():
    env = {"R1JAX_COORDINATOR": "h0:1234", "R1JAX_NUM_PROCESSES": "4", "R1JAX_PROCESS_ID": "3"}
    assert distributed.resolve_spec(environ=env) == distributed.LaunchSpec("explicit", "h0:1234", 4, 3)
    # flags win over the environment
    assert distributed.resolve_spec(process_id=1, environ=env) == distributed.LaunchSpec("explicit", "h0:1234", 4, 1)
    assert distributed.resolve_spec(environ={}).mode in ("off", "cluster")  # 'cluster' only on a TPU VM
    assert distributed.resolve_spec(environ={"R1JAX_DISTRIBUTED": "off"}) == distributed.LaunchSpec("off")
    assert distributed.resolve_spec(environ={"R1JAX_DISTRIBUTED": "cluster"}) == distributed.LaunchSpec("cluster")


@pytest.mark.parametrize(
    "kw, env, match",
    [
        ({}, {"R1JAX_COORDINATOR": "h0:1234", "R1JAX_NUM_PROCESSES": "2"}, "--process-id/R1JAX_PROCESS_ID not set"),
        ({"coordinator": "h0:1", "num_processes": 2, "process_id": 2}, {}, "R1JAX_PROCESS_ID=2: must be in"),
        ({"coordinator": "h0", "num_processes": 2, "process_id": 0}, {}, "R1JAX_COORDINATOR='h0': expected host:port"),
        ({}, {"R1JAX_NUM_PROCESSES": "two"}, "R1JAX_NUM_PROCESSES='two': expected an integer"),
        ({}, {"R1JAX_DISTRIBUTED": "yes"}, "R1JAX_DISTRIBUTED='yes': expected one of"),
        ({"coordinator": "h0:1"}, {"R1JAX_DISTRIBUTED": "off"}, "R1JAX_DISTRIBUTED=off, but --coordinator"),
    ],
)
def test_resolve_spec_errors_name_the_setting(kw, env, match):
    with pytest.raises(ValueError, match=match):
        distributed.resolve_spec(**kw, environ=env)


def test_single_process_helpers_are_identities():
    """Alone, a process holds every row: the multi-process helpers must not change single-process runs."""
    import jax

    from r1jax import sharding

    n = jax.device_count()
    mesh = sharding.make_mesh((-1, 1, 1))
    x = np.arange(2 * n * 3, dtype=np.float32).reshape(2 * n, 3)
    assert distributed.local_batch_slice(mesh, 2 * n) == slice(0, 2 * n)
    assert distributed.local_data_shards(mesh) == n
    g = distributed.host_to_global(x, sharding.batch_sharding(mesh, 2))
    np.testing.assert_array_equal(distributed.global_to_host(g), x)
    np.testing.assert_array_equal(distributed.gather_rows(x, mesh), x)
    np.testing.assert_array_equal(distributed.fetch({"w": g})["w"], x)
    assert distributed.all_processes(True) and not distributed.all_processes(False)
    assert distributed.process_max(7) == 7


# ---------------------------------------------------------------------------------------------------------------
# Memory per device (docs/scaling.md)


def test_memory_estimate_hand_computed():
    """V=64, D=16, F=32, L=2, H=4, K=2, Dh=8, untied, no biases, f32; mesh fsdp=2 × tensor=2; 4 rows of 8 tokens.

    Elements per device (vocab, mlp, heads → tensor; embed → fsdp; each ÷ the sizes of its sharded axes):
      embed (64,16) ÷4 = 256; lm_head 256; final norm 16
      block: 2 norms 32; wq (16,4,8) ÷4 = 128; wk, wv (16,2,8) ÷4 = 64 each; wo 128; gate, up, down ÷4 = 128 each
             = 800, × 2 layers = 1600            → 2128 elements = 8512 bytes
    Activations, b = 4 / 2 = 2 rows, t = 2: per layer 2·8·(4·16 + 2·(2 + 2·1)·8 + 4·16)·4 = 12288
      + attention 2·2·8²·(4 + 4) = 2048 → 14336; × 2 layers = 28672
      + FSDP gather of one block ÷ tensor only (32 + 256 + 128 + 128 + 256 + 3·256 = 1568 elements) × 2 × 4 = 12544
    Log-prob head: 2·8·16·4 + 2·16·32·4 = 5120. KV cache: 2·2 layers·2 rows·1 head·8·8·4 = 2048.
    """
    from r1jax.models.config import ModelConfig
    from r1jax.sharding import memory_estimate

    cfg = ModelConfig(
        vocab_size=64,
        embed_dim=16,
        mlp_dim=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        qkv_bias=False,
        tie_embeddings=False,
    )
    m = memory_estimate(cfg, (1, 2, 2), batch=4, seq=8)
    assert m["params"] == 8512 and m["grads"] == 8512 and m["optimizer"] == 2 * 8512
    assert m["reference_params"] == 0
    assert m["activations"] == 28672 + 12544
    assert m["logprob_head"] == 5120
    assert m["kv_cache"] == 2048 and m["rollout_logits"] == 2 * 32 * 4
    assert m["update_total"] == 4 * 8512 + 28672 + 12544 + 5120
    assert m["peak"] == m["update_total"]
    # remat keeps each layer's input only, plus one layer's working set
    r = memory_estimate(cfg, (1, 2, 2), batch=4, seq=8, remat=True, reference_model=True)
    assert r["activations"] == 2 * 2 * 8 * 16 * 4 + 14336 + 12544
    assert r["reference_params"] == 8512
    # one device: every weight whole; the element count is the model's own
    one = memory_estimate(cfg, (1, 1, 1), batch=4, seq=8)
    assert one["params"] == 4 * cfg.num_params()
    with pytest.raises(ValueError, match="batch=3: not divisible by data × fsdp = 2"):
        memory_estimate(cfg, (2, 1, 1), batch=3, seq=8)


# ---------------------------------------------------------------------------------------------------------------
# Two processes: global arrays from per-process rows, and a collective preemption save


def _worker(out_dir: str) -> None:
    """One of 2 processes (R1JAX_* in the environment), 4 CPU devices each; writes its observations as JSON."""
    from r1jax import distributed as dist

    assert dist.initialize(dist.resolve_spec())
    import jax
    import jax.numpy as jnp

    from r1jax import checkpoint as ckpt_lib
    from r1jax import sharding

    pid = jax.process_index()
    mesh = sharding.make_mesh((-1, 1, 1))
    rows = dist.local_batch_slice(mesh, 16)
    local_x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)[rows]  # this process's rows of a known array
    global_x = dist.host_to_global(local_x, sharding.batch_sharding(mesh, 2))
    total = float(jax.jit(jnp.sum)(global_x))
    back = dist.global_to_host(jax.jit(lambda a: a * 2)(global_x))
    gathered = dist.gather_rows(local_x[:, 0], mesh)
    replicated = sharding.replicated(mesh)
    state = {"w": global_x, "step": dist.host_to_global(np.int32(0), replicated)}

    checkpointer = ckpt_lib.Checkpointer(os.path.join(out_dir, "ckpt"), async_save=False)
    reached = None
    with dist.preemption_guard() as guard:
        for step in range(1, 200):
            if pid == 1 and step == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # a preemption notice to one process only
            time.sleep(0.1)  # a training step
            if guard.triggered or checkpointer.reached_preemption(step):
                state["step"] = dist.host_to_global(np.int32(step), replicated)
                checkpointer.save(step, state, {"next_index": step}, {"run": "t"})
                reached = step
                break
    checkpointer.wait()
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
    restored_step, restored, data = checkpointer.restore_latest(abstract, {"run": "t"})
    checkpointer.close()
    with open(os.path.join(out_dir, f"worker{pid}.json"), "w") as f:
        json.dump(
            {
                "rows": [rows.start, rows.stop],
                "total": total,
                "back": back.tolist(),
                "gathered": gathered.tolist(),
                "guard": type(guard).__name__,
                "reached": reached,
                "restored_step": restored_step,
                "restored_w_local": dist.global_to_host(restored["w"]).tolist(),
                "data": data,
            },
            f,
        )


def test_two_processes_global_arrays_and_collective_preemption_save(tmp_path, subprocess_env):
    port = _free_port()
    procs = []
    for pid in range(2):
        env = _env(subprocess_env, 4)
        env.update(R1JAX_COORDINATOR=f"localhost:{port}", R1JAX_NUM_PROCESSES="2", R1JAX_PROCESS_ID=str(pid))
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "worker", str(tmp_path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    w = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    full = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    assert w[0]["rows"] == [0, 8] and w[1]["rows"] == [8, 16]
    for i in range(2):
        assert w[i]["total"] == float(full.sum())  # a collective over both processes' rows
        np.testing.assert_array_equal(w[i]["back"], 2 * full[8 * i : 8 * (i + 1)])
        np.testing.assert_array_equal(w[i]["gathered"], full[:, 0])
        assert w[i]["guard"] == "_SyncPointOnly"  # no Python SIGTERM handler over jax.distributed's notifier
        np.testing.assert_array_equal(w[i]["restored_w_local"], full[8 * i : 8 * (i + 1)])
    # the signalled process and the other one stopped at the same step and saved it together
    assert w[0]["reached"] is not None and w[0]["reached"] == w[1]["reached"] >= 3
    assert w[0]["restored_step"] == w[1]["restored_step"] == w[0]["reached"]
    assert w[0]["data"] == {"next_index": w[0]["reached"]}
    assert sorted(os.listdir(tmp_path / "ckpt")) == [str(w[0]["reached"])]


# ---------------------------------------------------------------------------------------------------------------
# The GRPO trainer on 2 processes (slow)

EXPERIMENT = '''
"""r1_zero runlocal with a reward that varies on near-random text (language consistency), μ = 2 and β > 0, so
that losses, the old / reference log-probs and the gradient all-reduce are exercised; for test_distributed."""
import importlib.util

_spec = importlib.util.spec_from_file_location("r1_zero_for_distributed_test", {r1_zero!r})
_r1 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_r1)
ENTRY = _r1.ENTRY


def get_config(arg=None):
    c = _r1.get_config("runlocal")
    c.rewards.weights = {{"language": 1.0}}
    c.rl.num_steps = 4
    c.rl.prompts_per_step = 8
    c.rl.mu = 2
    c.rl.beta = 0.04
    c.eval.num_prompts = 8
    c.eval.greedy = False
    c.export = False
    c.checkpoint.every = 100
    return c
'''


def _losses(workdir) -> dict[int, dict]:
    out = {}
    for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "rl/loss" in r:
            out[r["step"]] = r
    return out


def _start_pair(exp, workdir, env_base, base_model, extra=()):
    port = _free_port()
    procs = []
    for pid in range(2):
        argv = [
            sys.executable,
            "-m",
            "r1jax.main",
            "train",
            "--config",
            str(exp),
            "--workdir",
            str(workdir),
            "--coordinator",
            f"localhost:{port}",
            "--num-processes",
            "2",
            "--process-id",
            str(pid),
            f"--config.model.checkpoint={base_model}",
            *extra,
        ]
        log = open(f"{workdir}.{len(list(pathlib.Path(workdir).parent.glob('*.log')))}.p{pid}.log", "w")
        procs.append((subprocess.Popen(argv, env=_env(env_base, 4), stdout=log, stderr=subprocess.STDOUT), log))
    return procs


def _wait(procs, timeout=400):
    rcs = []
    for p, log in procs:
        rcs.append(p.wait(timeout=timeout))
        log.close()
    return rcs


def _log_text(procs) -> str:
    return "\n".join(pathlib.Path(log.name).read_text()[-3000:] for _, log in procs)


@pytest.mark.slow
def test_grpo_two_processes_match_one_and_survive_preemption(tmp_path, tiny_base_model, subprocess_env):
    snapshot = tmp_path / "r1_zero_snapshot.py"  # one version of the experiment for every run of this test
    shutil.copy(REPO / "experiments" / "r1_zero.py", snapshot)
    exp = tmp_path / "r1_zero_mp.py"
    exp.write_text(EXPERIMENT.format(r1_zero=str(snapshot)))

    # Reference: one process, 8 devices.
    ref_dir = tmp_path / "ref"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "r1jax.main",
            "train",
            "--config",
            str(exp),
            "--workdir",
            str(ref_dir),
            f"--config.model.checkpoint={tiny_base_model}",
        ],
        env=_env(subprocess_env, 8),
        check=True,
        capture_output=True,
        timeout=400,
    )
    ref = _losses(ref_dir)
    assert sorted(ref) == [1, 2, 3, 4]
    assert len({round(r["rl/loss"], 6) for r in ref.values()}) > 1  # real, changing losses (not all zero)

    # Two processes; SIGTERM to process 1 once step 1 is logged.
    mp_dir = tmp_path / "mp"
    procs = _start_pair(exp, mp_dir, subprocess_env, tiny_base_model, ["--config.debug.step_sleep_s=1.0"])
    deadline = time.time() + 400
    while not (mp_dir / "metrics.jsonl").exists() or '"step": 1' not in (mp_dir / "metrics.jsonl").read_text():
        assert time.time() < deadline and all(p.poll() is None for p, _ in procs), _log_text(procs)
        time.sleep(0.2)
    procs[1][0].send_signal(signal.SIGTERM)
    assert _wait(procs) == [0, 0], _log_text(procs)
    saved = [
        int(line.split("saved step ")[1].split(",")[0])
        for _, log in procs
        for line in pathlib.Path(log.name).read_text().splitlines()
        if "preemption notice: saved step" in line
    ]
    assert len(saved) == 2 and saved[0] == saved[1] < 4, _log_text(procs)
    step = saved[0]
    assert str(step) in os.listdir(mp_dir / "checkpoints")

    # Restart: both resume from the saved step and finish; every step's loss equals the 1-process run's.
    procs = _start_pair(exp, mp_dir, subprocess_env, tiny_base_model)
    assert _wait(procs) == [0, 0], _log_text(procs)
    assert all(f"resumed from checkpoint step {step}" in pathlib.Path(log.name).read_text() for _, log in procs)
    got = _losses(mp_dir)
    assert sorted(got) == [1, 2, 3, 4]
    for s in ref:
        for key in ("rl/loss", "rl/kl", "train/grad_norm", "rl/reward_mean"):
            np.testing.assert_allclose(got[s][key], ref[s][key], rtol=2e-5, atol=1e-7, err_msg=f"step {s} {key}")


# ---------------------------------------------------------------------------------------------------------------
# SFT and reward-model training on 2 processes: a SIGTERM to one process, then a restart, ends where an
# uninterrupted run ends (every trainer goes through r1jax.trainers.loop's one preemption path)


LOOP_STEPS, LOOP_LR, LOOP_MOMENTUM = 12, 0.5, 0.5


def _loop_batch(i: int) -> np.ndarray:
    """The data iterator's i-th batch (8 rows × 4): small integers, so every sum below is exact in float32."""
    return ((i + np.arange(8)[:, None] + np.arange(4)[None, :]) % 5).astype(np.float32)


def _loop_reference() -> np.ndarray:
    """w after LOOP_STEPS steps of SGD with momentum on ½·mean_rows |w − x|² (grad = w − mean_rows x)."""
    w, trace = np.zeros(4, np.float32), np.zeros(4, np.float32)
    for i in range(LOOP_STEPS):
        trace = (w - _loop_batch(i).mean(0)) + np.float32(LOOP_MOMENTUM) * trace
        w = w - np.float32(LOOP_LR) * trace
    return w


def _loop_worker(workdir: str, notice_at: int) -> None:
    """One of 2 processes running r1jax.trainers.loop.TrainLoop around a tiny jitted step (no model): rows of the
    batch split over both processes' devices, gradients all-reduced, a data iterator whose position is saved;
    with `notice_at` > 0 process 1 sends itself SIGTERM when that step ends."""
    from r1jax import distributed as dist

    logging.basicConfig(level=logging.INFO)
    assert dist.initialize(dist.resolve_spec())
    import jax
    import jax.numpy as jnp
    import optax

    from r1jax import sharding, train_state
    from r1jax.trainers.loop import TrainLoop, checkpoint_config

    class Counter:
        def __init__(self):
            self.i = 0

        def __next__(self):
            self.i += 1
            return _loop_batch(self.i - 1)

        def get_state(self):
            return {"i": self.i}

        def set_state(self, state):
            self.i = state["i"]

    mesh = sharding.make_mesh((-1, 1, 1))
    rep, rows = sharding.replicated(mesh), sharding.batch_sharding(mesh, 2)
    optimizer = optax.sgd(LOOP_LR, momentum=LOOP_MOMENTUM)
    params = {"w": np.zeros(4, np.float32)}
    state = train_state.TrainState(
        step=np.int32(0),
        params=params,
        opt_state=jax.device_get(optimizer.init(params)),
        rng=np.zeros(2, np.uint32),
        nonfinite_consecutive=np.int32(0),
        nonfinite_total=np.int32(0),
    )
    state = dist.global_batch(state, jax.tree.map(lambda _: rep, state))
    shardings = jax.tree.map(lambda x: x.sharding, state)

    def step(state, x_bt):
        loss, grads = jax.value_and_grad(lambda p: 0.5 * jnp.mean(jnp.sum((p["w"] - x_bt) ** 2, -1)))(state.params)
        state, m = train_state.apply_gradients(state, grads, loss, optimizer)
        return state, {"loss": loss, **m}

    step_fn = jax.jit(step, in_shardings=(shardings, rows), out_shardings=(shardings, None), donate_argnums=0)
    data_it = Counter()
    loop = TrainLoop(workdir, checkpoint_config(every=100), {"run": "loop"}, LOOP_STEPS, desc="loop", log_every=1)
    state = loop.restore(state, shardings, data_it)
    with loop:
        for s in loop.steps():
            state, m = step_fn(state, dist.global_batch(next(data_it), rows))
            if jax.process_index() == 1 and s == notice_at:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(2.0)  # the notice reaches the coordination service before this step's check
            loop.end_step(s, state, m, data_it.get_state)
    out = {"start": loop.start_step, "preempted": loop.preempted, "step": loop.step, "w": dist.fetch(state.params)["w"]}
    with open(os.path.join(workdir, f"loop.{jax.process_index()}.{notice_at}.json"), "w") as f:
        json.dump(jax.tree.map(lambda x: np.asarray(x).tolist(), out), f)


def _run_pair(argv_tail, env_base, timeout=240) -> list[str]:
    port = _free_port()
    procs = []
    for pid in range(2):
        env = _env(env_base, 4)
        env.update(R1JAX_COORDINATOR=f"localhost:{port}", R1JAX_NUM_PROCESSES="2", R1JAX_PROCESS_ID=str(pid))
        argv = [sys.executable, __file__, *argv_tail]
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def test_train_loop_two_processes_sigterm_one_resumes_to_the_uninterrupted_result(tmp_path, subprocess_env):
    """The loop every trainer runs: a SIGTERM to one of 2 processes stops both at the same step, which is saved
    (params, optimizer state, data position); the restart resumes there and ends with the uninterrupted result."""
    workdir = tmp_path / "loop"
    workdir.mkdir()
    _run_pair(["loop", str(workdir), "2"], subprocess_env)
    stopped = [json.loads((workdir / f"loop.{pid}.2.json").read_text()) for pid in range(2)]
    assert stopped[0]["preempted"] and stopped[1]["preempted"]
    assert stopped[0]["step"] == stopped[1]["step"] and 2 <= stopped[0]["step"] < LOOP_STEPS
    assert sorted(os.listdir(workdir / "checkpoints")) == [str(stopped[0]["step"])]
    outs = _run_pair(["loop", str(workdir), "0"], subprocess_env)
    assert all(f"resumed from checkpoint step {stopped[0]['step']}" in out for out in outs), outs[0][-3000:]
    for pid in range(2):
        done = json.loads((workdir / f"loop.{pid}.0.json").read_text())
        assert (done["start"], done["step"], done["preempted"]) == (stopped[0]["step"], LOOP_STEPS, False)
        np.testing.assert_array_equal(np.float32(done["w"]), _loop_reference())
    history = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert history == list(range(1, LOOP_STEPS + 1))  # each step logged once, by process 0


def _train_worker(spec: str, workdir: str, notice_at: int, overrides: list[str]) -> None:
    """One of 2 processes running `spec`; with `notice_at` > 0, process 1 sends itself SIGTERM (a scheduler's
    preemption notice) when step `notice_at` ends. Writes the trainer's return value as JSON."""
    from r1jax import distributed as dist

    logging.basicConfig(level=logging.INFO)  # "resumed from checkpoint step N" is checked in the output
    assert dist.initialize(dist.resolve_spec())
    import jax

    from r1jax.main import run_experiment
    from r1jax.trainers import loop as loop_lib

    end_step = loop_lib.TrainLoop.end_step

    def end_step_with_notice(self, step, *args, **kwargs):
        if jax.process_index() == 1 and step == notice_at:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the notice reaches the coordination service before this step's check
        return end_step(self, step, *args, **kwargs)

    loop_lib.TrainLoop.end_step = end_step_with_notice
    result = run_experiment(spec, workdir, overrides)
    with open(os.path.join(workdir, f"result.{jax.process_index()}.{notice_at}.json"), "w") as f:
        json.dump({k: v for k, v in result.items() if isinstance(v, (int, float, str))}, f)


def _run_train_pair(spec, workdir, env_base, notice_at, overrides) -> tuple[list[dict], list[str]]:
    os.makedirs(workdir, exist_ok=True)
    outs = _run_pair(["train", spec, str(workdir), str(notice_at), *overrides], env_base, timeout=400)
    results = [json.loads((pathlib.Path(workdir) / f"result.{pid}.{notice_at}.json").read_text()) for pid in range(2)]
    return results, outs


def _params(model_dir) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(pathlib.Path(model_dir).glob("*.safetensors")):
        out.update(load_file(str(f)))
    head = pathlib.Path(model_dir) / "reward_head.npz"
    if head.exists():
        out.update({f"head/{k}": v for k, v in np.load(head).items()})
    return out


def _preempt_and_resume(tmp_path, subprocess_env, spec, overrides, num_steps, notice_at, base_model):
    """Uninterrupted 2-process run vs the same command SIGTERMed on one process at `notice_at` and restarted:
    both processes stop at one step and save it; the restart resumes there; the final params are equal."""
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref, _ = _run_train_pair(spec, ref_dir, subprocess_env, 0, overrides)
    assert "preempted_at" not in ref[0]
    stopped, outs = _run_train_pair(spec, run_dir, subprocess_env, notice_at, overrides)
    steps = [r.get("preempted_at") for r in stopped]
    assert steps[0] is not None and steps[0] == steps[1], (stopped, outs[1][-3000:])  # the same step on both
    assert notice_at <= steps[0] < num_steps
    assert sorted(int(d) for d in os.listdir(run_dir / "checkpoints") if d.isdigit())[-1] == steps[0]
    assert not (run_dir / "model").exists()
    resumed, outs = _run_train_pair(spec, run_dir, subprocess_env, 0, overrides)
    assert all(f"resumed from checkpoint step {steps[0]}" in out for out in outs), outs[0][-3000:]
    want, got = _params(ref_dir / "model"), _params(run_dir / "model")
    assert sorted(got) == sorted(want) and len(want) > 1
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    start = _params(base_model)  # the runs trained: their params left the starting model's
    assert any(not np.array_equal(want[k], start[k]) for k in start if k in want)
    return ref, resumed, steps[0]


@pytest.mark.slow
def test_sft_two_processes_sigterm_one_resumes_to_the_uninterrupted_params(tmp_path, tiny_base_model, subprocess_env):
    overrides = [
        f"--config.model.checkpoint={tiny_base_model}",
        "--config.num_steps=5",
        "--config.batch_size=8",  # one packed row per device
        "--config.checkpoint.every=100",  # only the preemption save and the last step's
    ]
    ref, resumed, _ = _preempt_and_resume(
        tmp_path,
        subprocess_env,
        str(REPO / "experiments" / "cold_start.py") + ":runlocal",
        overrides,
        5,
        2,
        tiny_base_model,
    )
    assert resumed[0]["sft/loss"] == ref[0]["sft/loss"]


@pytest.mark.slow
def test_reward_model_two_processes_sigterm_one_resumes_to_the_uninterrupted_params(
    tmp_path, tiny_base_model, subprocess_env
):
    overrides = [
        f"--config.model.checkpoint={tiny_base_model}",
        "--config.num_steps=5",
        "--config.checkpoint.every=100",
    ]
    ref, resumed, _ = _preempt_and_resume(
        tmp_path,
        subprocess_env,
        str(REPO / "experiments" / "reward_model.py") + ":runlocal",
        overrides,
        5,
        2,
        tiny_base_model,
    )
    assert resumed[0]["eval/pairwise_accuracy"] == ref[0]["eval/pairwise_accuracy"]
    assert resumed[0]["rm/loss"] == ref[0]["rm/loss"]


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    _worker(sys.argv[2])
if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "loop":
    _loop_worker(sys.argv[2], int(sys.argv[3]))
if __name__ == "__main__" and len(sys.argv) >= 5 and sys.argv[1] == "train":
    _train_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:])
