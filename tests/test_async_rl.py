"""Asynchronous rollouts (rl.max_staleness, rl.sampler_devices, rl.sampler_dtype; r1jax/trainers/grpo.py and
rollouts.RolloutQueue).

  * max_staleness = 0 is the synchronous trainer bit for bit: a child process drives `grpo.rl_step` by hand (the
    synchronous step: sample with the current parameters, then update) from the same `grpo.setup`, and its final
    parameters equal the trainer's.
  * max_staleness = 1 on 8 CPU devices split 4 / 4 between sampler and trainer: a run killed after 3 steps (the
    waiting rollouts are in the checkpoint) and resumed ends with the parameters, metrics and ledger of an
    uninterrupted run; its first step equals the synchronous run's, its later steps do not (they trained on
    rollouts one update old), and every step records its staleness.
  * max_staleness = 2 with bf16 rollouts on shared devices: staleness 0, 1, 2, 2; the sampler-trainer mismatch is
    measured (nonzero) and the importance weights are logged.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from r1jax import rollouts, sampling
from r1jax.trainers import grpo

REPO = pathlib.Path(__file__).resolve().parents[1]

REWARDS = '''
"""Test reward: spread rewards from the completion's characters, so that every group carries signal."""


def spread(completions, examples):
    return [len(set(c)) / 20 for c in completions]
'''

COMMON = [
    "--config.rl.mu=2", "--config.rl.beta=0.05", "--config.optim.learning_rate=3e-3", "--config.optim.warmup_steps=0",
    "--config.checkpoint.every=100", "--config.export=False",
]

REFERENCE = r"""
import sys
import jax, numpy as np
from r1jax import config_lib
from r1jax.rewards.routing import make_rewards
from r1jax.trainers import grpo

spec, workdir, out, *overrides = sys.argv[1:]
c = config_lib.load_config(spec, [o.removeprefix("--config.") for o in overrides])
reward_fn = make_rewards(c.rewards, c.response_prefix, c.sampling.max_new_tokens)
run = grpo.setup(c, workdir, reward_fn)
state = run.state
for step in range(1, c.rl.num_steps + 1):  # the synchronous algorithm, step by step
    key = jax.random.fold_in(run.base_rng, step - 1)
    state, _, _ = grpo.rl_step(c, state, run.ref_params, run.sampler, run.grpo_step, key, 1.0)
np.savez(out, *[np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))])
reward_fn.close()
"""


def _run(cmd, env):
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}"
    return proc


def _train(spec, workdir, overrides, env):
    cmd = [sys.executable, "-m", "r1jax.main", "train", "--config", spec, "--workdir", str(workdir), *overrides]
    return _run(cmd, env)


def _checkpoint(workdir, step):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()))
    manager.close()
    return jax.tree.map(np.asarray, jax.device_get(out["state"])), out["data"]


def _data_state(workdir, step):
    """The data item of a checkpoint (readable on any device count, unlike the sharded state)."""
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    out = manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
    manager.close()
    return out["data"]


def _exported(workdir) -> dict:
    """The final parameters a run exported (WORKDIR/model, safetensors), by name."""
    from safetensors.numpy import load_file

    return load_file(os.path.join(workdir, "model", "model.safetensors"))


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _without_perf(records):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def _equal_params(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.fixture(scope="module")
def spec(tmp_path_factory, reward_experiment):
    root = tmp_path_factory.mktemp("async_spec")
    return reward_experiment(root, "async_test", REWARDS, "spread") + ":runlocal"


@pytest.fixture(scope="module")
def env8(subprocess_env):
    env = dict(subprocess_env)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    return env


def test_staleness_0_is_the_synchronous_trainer(spec, tiny_base_model, subprocess_env, tmp_path):
    overrides = [f"--config.model.checkpoint={tiny_base_model}", "--config.rl.num_steps=4",
                 "--config.rl.dynamic_sampling=True", "--config.rl.max_staleness=0", *COMMON]
    _train(spec, tmp_path / "trainer", overrides, subprocess_env)
    script = tmp_path / "reference.py"
    script.write_text(REFERENCE)
    out = tmp_path / "reference.npz"
    _run([sys.executable, str(script), spec, str(tmp_path / "reference"), str(out), *overrides], subprocess_env)
    trained, _ = _checkpoint(tmp_path / "trainer", 4)
    reference = np.load(out)
    leaves = jax.tree.leaves(trained["params"])
    assert len(leaves) == len(reference.files)
    for i, x in enumerate(leaves):
        assert np.array_equal(x, reference[f"arr_{i}"]), f"param leaf {i} differs from the synchronous loop"
    assert [r["rl/staleness"] for r in _metrics(tmp_path / "trainer") if "rl/staleness" in r] == [0.0] * 4


@pytest.fixture(scope="module")
def split_runs(spec, tiny_base_model, env8, tmp_path_factory):
    """8 CPU devices, 4 sample and 4 train (mesh (2, 1, 2)): synchronous, asynchronous (s = 1) straight, and
    asynchronous killed after 3 steps then resumed."""
    root = tmp_path_factory.mktemp("async_runs")
    base = [f"--config.model.checkpoint={tiny_base_model}", "--config.rl.num_steps=6", "--config.rl.sampler_devices=4",
            "--config.mesh.shape=(2,1,2)", *COMMON, "--config.export=True"]  # the sharded state is read back as export
    async_ = [*base, "--config.rl.max_staleness=1"]
    _train(spec, root / "sync", [*base, "--config.rl.max_staleness=0"], env8)
    _train(spec, root / "straight", async_, env8)
    first = _train(spec, root / "resumed", [*async_, "--config.debug.stop_after_steps=3"], env8)
    at_kill = _data_state(root / "resumed", 3)
    second = _train(spec, root / "resumed", async_, env8)
    return dict(root=root, first=first, second=second, at_kill=at_kill)


def test_async_resume_is_exact(split_runs):
    root = split_runs["root"]
    assert '"preempted_at": 3' in split_runs["first"].stdout
    assert "resumed from checkpoint step 3" in split_runs["second"].stderr
    waiting = split_runs["at_kill"]["pending_rollouts"]  # step 4's rollouts, sampled in step 3 with step 2's params
    assert [(p["step"], p["version"]) for p in waiting] == [(4, 2)]
    data_a, data_b = _data_state(root / "straight", 6), _data_state(root / "resumed", 6)
    assert data_a == data_b and "pending_rollouts" not in data_a
    straight, resumed = _exported(root / "straight"), _exported(root / "resumed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert np.array_equal(straight[name], resumed[name]), f"{name} differs after the asynchronous resume"
    assert _without_perf(_metrics(root / "straight")) == _without_perf(_metrics(root / "resumed"))


def test_async_trains_on_stale_rollouts(split_runs):
    root = split_runs["root"]
    sync, asyn = _without_perf(_metrics(root / "sync")), _without_perf(_metrics(root / "straight"))
    assert [r["rl/staleness"] for r in asyn if "rl/staleness" in r] == [0, 1, 1, 1, 1, 1]
    assert [r["rl/staleness"] for r in sync if "rl/staleness" in r] == [0] * 6
    # step 1 is the same in both (rollouts of the initial parameters); from step 2 on the rollouts are a step old
    # (stale rollouts also log the sampler-trainer mismatch, rl/sampler/*: here only the keys both runs log)
    assert {k: v for k, v in asyn[0].items() if k in sync[0]} == sync[0]
    assert asyn[0]["rl/sampler/logp_diff_mean"] < 1e-5  # step 1: the same parameters, sampler and trainer meshes
    assert asyn[1]["rl/reward_mean"] != sync[1]["rl/reward_mean"] or asyn[1]["rl/loss"] != sync[1]["rl/loss"]
    a, s = _exported(root / "straight"), _exported(root / "sync")
    assert not all(np.array_equal(a[name], s[name]) for name in a)
    assert all(np.isfinite(x).all() for x in a.values())


def test_bf16_rollouts_two_steps_stale(spec, tiny_base_model, subprocess_env, tmp_path):
    overrides = [f"--config.model.checkpoint={tiny_base_model}", "--config.rl.num_steps=4",
                 "--config.rl.max_staleness=2", "--config.rl.sampler_dtype=bfloat16",
                 "--config.rl.sampler_is_correction=True", "--config.rl.sampler_is_mode=token_truncate", *COMMON]
    _train(spec, tmp_path, overrides, subprocess_env)
    steps = [r for r in _metrics(tmp_path) if "rl/staleness" in r]
    assert [r["rl/staleness"] for r in steps] == [0, 1, 2, 2]
    for r in steps:
        assert r["rl/sampler/logp_diff_mean"] > 0  # bf16 sampling against the f32 trainer: never exactly equal
        assert np.isfinite(r["rl/sampler/is_weight_mean"]) and np.isfinite(r["rl/loss"])


# ----------------------------------------------------------------------------------------------------------------
# In process: the queue's checkpointed state, placement, config checks


def _pending(step):
    rng = np.random.default_rng(step)
    rollout = sampling.Rollout(
        prompt_tokens_pt=rng.integers(0, 50, (2, 3)).astype(np.int32), prompt_mask_pt=rng.random((2, 3)) > 0.3,
        completion_tokens_bt=rng.integers(0, 50, (4, 5)).astype(np.int32), completion_mask_bt=rng.random((4, 5)) > 0.5,
        lengths_b=rng.integers(0, 5, (4,)).astype(np.int32), logps_bt=rng.normal(size=(4, 5)).astype(np.float32),
        group_b=np.array([0, 0, 1, 1], np.int32), truncated_b=np.array([True, False, False, True]),
        logps_kind="tempered",
    )
    records = [{"id": f"q{step}a", "question": "1+1", "answer": "2"}, {"id": f"q{step}b", "question": "x", "answer": 3}]
    round_ = rollouts.Round(records, rollout, rng.random((2, 2)).astype(np.float32), np.array([[1, 1], [1, 0]], bool))
    return rollouts.Pending(step, step - 2, [round_, round_], {"reward/accuracy": 0.25}, 1.5, 0.5)


class _Iterator:
    def __init__(self):
        self.state = {"position": 7}

    def get_state(self):
        return dict(self.state)

    def set_state(self, state):
        self.state = dict(state)


def test_queue_state_round_trips_exactly():
    queue = rollouts.RolloutQueue(_Iterator())
    assert queue.get_state() == {"position": 7}  # nothing waiting: the iterator's state alone (synchronous runs)
    queue.pending.extend([_pending(5), _pending(6)])
    state = json.loads(json.dumps(queue.get_state()))  # as orbax's JSON item stores it
    other = rollouts.RolloutQueue(_Iterator())
    other.set_state(state)
    assert other.data_it.state == {"position": 7} and other.last_step == 6
    for a, b in zip(queue.pending, other.pending, strict=True):
        assert (a.step, a.version, a.reward_stats, a.sample_s, a.reward_s) == (b.step, b.version, b.reward_stats,
                                                                              b.sample_s, b.reward_s)
        for ra, rb in zip(a.rounds, b.rounds, strict=True):
            assert ra.records == rb.records and ra.rollout.logps_kind == rb.rollout.logps_kind
            for x, y in zip(jax.tree.leaves((ra.rollout, ra.rewards_pg, ra.valid_pg)),
                            jax.tree.leaves((rb.rollout, rb.rewards_pg, rb.valid_pg)), strict=True):
                assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)


def _config(**rl):
    c = grpo.grpo_config()
    c.model.checkpoint = str(REPO)  # any directory: validation only
    c.rl.prompts_per_step, c.rl.group_size = 4, 4
    c.rl.update(rl)
    return c


@pytest.mark.parametrize(
    "rl, match",
    [
        (dict(max_staleness=-1), r"rl.max_staleness=-1"),
        (dict(sampler_devices=8), r"rl.sampler_devices=8: must be in \[0, 8\)"),
        (dict(sampler_dtype="int8"), r"rl.sampler_dtype='int8'"),
        (dict(sampler_devices=3), r"rl.prompts_per_step=4: not divisible by the sampler's rl.sampler_devices=3"),
    ],
)
def test_config_errors_name_the_field(rl, match):
    with pytest.raises(ValueError, match=match):
        grpo.validate(_config(**rl), num_devices=8)


def test_trainer_mesh_excludes_the_sampler_devices():
    c = _config(sampler_devices=4)
    c.mesh.shape = (4, 1, 1)
    grpo.validate(c, num_devices=8)  # the trainer's 4 devices
    c.mesh.shape = (8, 1, 1)
    with pytest.raises(ValueError, match=r"mesh.shape=\(8, 1, 1\): product 8 != device count 4"):
        grpo.validate(c, num_devices=8)


def test_placement_copies_only_when_it_must(tiny_base_model):
    from r1jax import sharding, train_state

    c = ml_collections.ConfigDict({"rl": {"sampler_dtype": "", "sampler_devices": 0, "max_staleness": 0}})
    model, _ = train_state.build_model(train_state.model_config(checkpoint=tiny_base_model), 0)
    graphdef, params, _ = train_state.split_model(model)
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    same = rollouts.sampler_placement(c, model, graphdef, mesh)
    assert same(params) is params and same.graphdef is graphdef  # synchronous: the trainer's own arrays
    c.rl.max_staleness = 1
    copied = rollouts.sampler_placement(c, model, graphdef, mesh)(params)
    assert copied is not params and _equal_params(copied, params)
    c.rl.sampler_dtype = "bfloat16"
    bf16 = rollouts.sampler_placement(c, model, graphdef, mesh)
    assert {x.dtype for x in jax.tree.leaves(bf16(params))} == {np.dtype("bfloat16")}
    assert bf16.graphdef != graphdef
