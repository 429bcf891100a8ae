"""Tests of the GRPO trainer (r1jax/trainers/grpo.py) and its rollouts layer (r1jax/rollouts.py): zero-advantage
steps, μ > 1, dynamic sampling, exact resume.

In-process tests run the step that `rollouts.make_grpo_step` builds for the trainer on a batch that
`rollouts.assemble_batch` makes from a real rollout of the session's tiny base model. The trainer-level tests run
the CLI (`python -m r1jax.main train`) in child processes on a test experiment (conftest `reward_experiment`):
experiments/r1_zero.py:runlocal with one reward swapped in, `grpo_test_rewards:half_informative`, which gives spread
rewards to half of the prompts (a hash of the prompt id decides which) and a constant to the rest, so every step has
informative and zero-spread groups.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from r1jax import checkpoint as ckpt_lib
from r1jax import config_lib, rollouts, sampling, sharding, train_state
from r1jax.sampling import Rollout

REPO = pathlib.Path(__file__).resolve().parents[1]
R1_ZERO = str(REPO / "experiments" / "r1_zero.py")

# ----------------------------------------------------------------------------------------------------------------
# train_step on a real rollout


P, GROUP_SIZE, T_NEW = 2, 4, 8


@pytest.fixture(scope="module")
def setup(tiny_base_model):
    """A 1-device mesh, the base model's train state, a P×G rollout of real task prompts, and the trainer's GRPO
    step for μ = 1 and μ = 2 (r1_zero runlocal: 'dapo', ε = 0.2 / 0.28, β = 0, T = 1)."""
    model, tokenizer = ckpt_lib.load_model(tiny_base_model)
    c = config_lib.load_config(
        R1_ZERO + ":runlocal",
        [
            f"model.checkpoint={tiny_base_model}", f"rl.prompts_per_step={P}", f"rl.group_size={GROUP_SIZE}",
            f"sampling.max_new_tokens={T_NEW}", "sampling.prompt_bucket=32",
        ],
    )
    assert (c.rl.loss_type, c.rl.epsilon_low, c.rl.epsilon_high, c.rl.beta, c.rl.mu) == ("dapo", 0.2, 0.28, 0.0, 1)
    records = rollouts.load_splits(c)[0][:P]
    prompt_ids = rollouts.encode_prompts(tokenizer, records, c.template, c.response_prefix, c.sampling.max_prompt_len)
    mesh = sharding.make_mesh((1, 1, 1))
    # weight_decay stays at its default, 0 (asserted): AdamW's decoupled decay would move params even when every
    # gradient is 0. The large constant LR makes one update move the policy enough for the ratio to clip.
    optim_cfg = train_state.optimizer_config(learning_rate=1e-2, decay="constant")
    assert optim_cfg.weight_decay == 0.0 and c.optim.weight_decay == 0.0
    optimizer = train_state.make_optimizer(optim_cfg, 10)
    graphdef, state, state_sh = train_state.create_train_state(model, optimizer, mesh, seed=0)
    cfg = rollouts.sampler_config(c, tokenizer)
    rollout = sampling.sample(graphdef, state.params, prompt_ids, jax.random.PRNGKey(0), cfg, mesh=mesh)
    c_mu2 = c.copy_and_resolve_references()
    c_mu2.rl.mu = 2
    make_step = lambda cfg: rollouts.make_grpo_step(cfg, graphdef, optimizer, mesh, state_sh)
    return dict(
        config=c, mesh=mesh, state=state, rollout=rollout, records=records,
        step=make_step(c), step_mu2=make_step(c_mu2), make_step=make_step,
    )


def _batch(setup, rewards_pg, grpo_step):
    """The trainer's batch for `rewards_pg`, with advantages as the trainer computes them (group scaling), placed
    on the mesh for `grpo_step`."""
    rewards_pg = np.asarray(rewards_pg, np.float32)
    part = rollouts.Round(setup["records"], setup["rollout"], rewards_pg, np.ones_like(rewards_pg, bool))
    _, batch, _ = rollouts.assemble_batch(setup["config"], [part], setup["mesh"], grpo_step.batch_shardings)
    return batch


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _state(setup):
    """A copy of the initial train state: the step donates the state it is given."""
    return jax.tree.map(jnp.copy, setup["state"])


def test_equal_rewards_with_beta_0_leave_params_bit_identical(setup):
    batch = _batch(setup, [[1.0] * GROUP_SIZE, [0.5] * GROUP_SIZE], setup["step"])  # every group has equal rewards
    assert np.all(batch["advantages_b"] == 0)
    before = _host(setup["state"])
    state, m = setup["step"].train_step(_state(setup), batch)
    after = _host(state)
    assert float(m["rl/loss"]) == 0.0
    assert float(m["train/update_skipped"]) == 0.0 and int(after.step) == 1  # the update ran, it was not skipped
    for path, b in jax.tree_util.tree_leaves_with_path(before.params):
        a = after.params
        for k in path:
            a = a[k.key]
        assert np.array_equal(a, b), f"param {jax.tree_util.keystr(path)} changed"
    # AdamW's moments stay exactly 0 too (a later informative step is not skewed by the zero-advantage one).
    for x in jax.tree.leaves(after.opt_state):
        if x.ndim:
            assert not np.any(x), "an optimizer moment moved"


def test_spread_rewards_do_move_params(setup):
    """Control for the test above: the same batch with spread rewards changes most params."""
    batch = _batch(setup, [[1.0, 0.0, 0.0, 1.0], [0.0, 0.2, 0.9, 0.4]], setup["step"])
    assert np.all(batch["advantages_b"] != 0)
    before = jax.tree.leaves(_host(setup["state"].params))
    state, m = setup["step"].train_step(_state(setup), batch)
    after = jax.tree.leaves(_host(state.params))
    assert float(m["train/grad_norm"]) > 1e-3  # (the on-policy loss value itself is ~0: advantages sum to 0)
    moved = sum(not np.array_equal(a, b) for a, b in zip(after, before))
    assert moved > 0.9 * len(before)


def test_shared_prompt_forward_gives_the_same_update(setup):
    """`rl.shared_prompt_forward` (each prompt run once for its G samples) on a real rollout, with β > 0 so the
    reference log-prob pass runs too: the same log-probs, loss, gradient norm and updated parameters as the plain
    forward, up to float rounding."""
    steps = []
    for shared in (False, True):
        c = setup["config"].copy_and_resolve_references()
        c.rl.beta, c.rl.shared_prompt_forward = 0.04, shared
        steps.append(setup["make_step"](c))
    rewards = [[1.0, 0.0, 0.0, 1.0], [0.0, 0.2, 0.9, 0.4]]
    out = []
    for step in steps:
        batch = _batch(setup, rewards, step)
        batch = rollouts.add_policy_logps(batch, step.logps, setup["state"].params, setup["state"].params, mu=1,
                                          beta=0.04)
        state, m = step.train_step(_state(setup), batch)
        out.append((_host(batch["ref_logps_bt"]), _host(m), _host(state.params)))
    (lp0, m0, p0), (lp1, m1, p1) = out
    assert np.abs(lp0).max() > 0.1  # real log-probs, not a masked-out zero array
    np.testing.assert_allclose(lp1, lp0, rtol=1e-5, atol=1e-5)
    for k in ("rl/loss", "train/grad_norm", "rl/entropy"):
        np.testing.assert_allclose(m1[k], m0[k], rtol=1e-4, atol=1e-7, err_msg=k)
    # AdamW's first update is about ±lr per entry whatever the gradient's size, so an entry whose gradient is near 0
    # carries rounding into a visible step: compare each parameter's update as a whole (a wrong forward is O(1))
    p_init = _host(setup["state"].params)
    rel = jax.tree.map(lambda a, b, i: np.linalg.norm(a - b) / np.linalg.norm(b - i), p1, p0, p_init)
    assert max(jax.tree.leaves(rel)) < 1e-3, rel


def test_mu_1_ratio_is_exactly_one(setup):
    """μ = 1: no old-log-prob pass, π_old = stop_gradient(π_θ), so ρ ≡ 1 and nothing clips, even after an update."""
    batch = _batch(setup, [[1.0, 0.0, 0.0, 1.0], [0.0, 0.2, 0.9, 0.4]], setup["step"])
    state = _state(setup)
    for _ in range(2):
        state, m = setup["step"].train_step(state, batch)
        assert float(m["rl/ratio_mean"]) == 1.0
        assert float(m["rl/clip_ratio/region_mean"]) == 0.0


def test_mu_2_second_update_sees_the_old_policy(setup):
    """μ = 2, as the trainer's loop: old log-probs from one forward before the updates; the first update has ρ = 1
    (up to round-off between two compiled forwards), the second sees π_θ ≠ π_old and clips."""
    grpo_step = setup["step_mu2"]
    batch = _batch(setup, [[1.0, 0.0, 0.0, 1.0], [0.0, 0.2, 0.9, 0.4]], grpo_step)
    batch = rollouts.add_policy_logps(batch, grpo_step.logps, setup["state"].params, None, mu=2, beta=0.0)
    assert set(batch) == set(grpo_step.batch_shardings) and "old_logps_bt" in batch
    state, m1 = grpo_step.train_step(_state(setup), batch)
    assert abs(float(m1["rl/ratio_mean"]) - 1.0) < 1e-5
    assert float(m1["rl/clip_ratio/region_mean"]) == 0.0
    state, m2 = grpo_step.train_step(state, batch)
    assert abs(float(m2["rl/ratio_mean"]) - 1.0) > 1e-3
    assert float(m2["rl/clip_ratio/region_mean"]) > 0.0
    assert float(m2["rl/clip_ratio/region_mean"]) == pytest.approx(
        float(m2["rl/clip_ratio/low_mean"]) + float(m2["rl/clip_ratio/high_mean"]), abs=1e-6
    )  # low needs A < 0 and high A > 0: disjoint


# ----------------------------------------------------------------------------------------------------------------
# select_groups (dynamic sampling) on synthetic rounds


def _fake_part(tag, prompt_lens, tc, lengths, truncated, rewards, valid=None):
    """One sampling round: prompt p = [tag*100 + 10p + j + 1 ...] left-padded with 0 to the longest; completion row b =
    [tag*1000 + 100b + t + 1 ...] right-padded with 0 after its length."""
    p_n, group_size = len(prompt_lens), len(lengths) // len(prompt_lens)
    tp = max(prompt_lens)
    prompt = np.zeros((p_n, tp), np.int32)
    for p, n in enumerate(prompt_lens):
        prompt[p, tp - n :] = tag * 100 + 10 * p + np.arange(n) + 1
    comp = np.zeros((p_n * group_size, tc), np.int32)
    for b, n in enumerate(lengths):
        comp[b, :n] = tag * 1000 + 100 * b + np.arange(n) + 1
    rollout = Rollout(
        prompt_tokens_pt=prompt,
        prompt_mask_pt=prompt > 0,
        completion_tokens_bt=comp,
        completion_mask_bt=comp > 0,
        lengths_b=np.asarray(lengths, np.int32),
        logps_bt=np.zeros((p_n * group_size, tc), np.float32),
        group_b=np.repeat(np.arange(p_n), group_size),
        truncated_b=np.asarray(truncated, bool),
    )
    rewards = np.asarray(rewards, np.float32)
    records = [{"id": f"{tag}-{p}"} for p in range(p_n)]
    valid = np.ones(rewards.shape, bool) if valid is None else np.asarray(valid)
    return rollouts.Round(records, rollout, rewards, valid)


@pytest.fixture
def rounds():
    # Round A: 3 prompts × G=2, prompts up to 3 tokens, completions 4 wide. Group 0 has zero spread.
    a = _fake_part(1, [2, 3, 1], 4, [4, 2, 3, 4, 1, 4], [1, 0, 0, 1, 0, 1], [[1, 1], [0, 1], [2, 0]])
    # Round B: prompts up to 5 tokens, completions 2 wide. Group 2's only valid reward gives it zero spread.
    b = _fake_part(
        2,
        [5, 4, 2],
        2,
        [2, 1, 2, 2, 1, 1],
        [1, 0, 1, 1, 0, 0],
        [[0, 1], [3, 3], [5, np.nan]],
        valid=[[1, 1], [1, 1], [1, 0]],
    )
    return [a, b]


def _check_rows(parts, chosen, out, mask_truncated=False):
    """Row by row: [left-padded prompt ; right-padded completion] holds exactly the round's tokens."""
    records, batch, rewards, valid, lengths, truncated = out
    assert [r["id"] for r in records] == [f"{parts[i][0][p]['id']}" for i, p in chosen]
    tp = max(parts[i][1].prompt_tokens_pt.shape[1] for i, _ in chosen)
    tc = max(parts[i][1].completion_tokens_bt.shape[1] for i, _ in chosen)
    group_size = 2
    assert batch["tokens_bs"].shape == (len(chosen) * group_size, tp + tc) and batch["tokens_bs"].dtype == np.int32
    assert batch["completion_bt"].shape == (len(chosen) * group_size, tc)
    np.testing.assert_array_equal(batch["completion_bt"], batch["tokens_bs"][:, tp:])
    for row, (i, p) in enumerate((i, p) for i, p in chosen for _ in range(group_size)):
        _, ro, r_pg, v_pg = parts[i]
        b = p * group_size + row % group_size
        prompt = ro.prompt_tokens_pt[p][ro.prompt_mask_pt[p]]
        comp = ro.completion_tokens_bt[b][: ro.lengths_b[b]]
        mask = batch["mask_bs"][row]
        # left padding of the prompt: every padded slot is before every real token
        assert not mask[:tp][: tp - len(prompt)].any() and mask[:tp][tp - len(prompt) :].all()
        assert mask[tp:].sum() == len(comp) and mask[tp : tp + len(comp)].all()
        np.testing.assert_array_equal(batch["tokens_bs"][row][mask], np.concatenate([prompt, comp]))
        keep = not (mask_truncated and ro.truncated_b[b])
        np.testing.assert_array_equal(batch["loss_mask_bt"][row], mask[tp:] & keep)
        assert lengths[row] == ro.lengths_b[b] and truncated[row] == ro.truncated_b[b]
    np.testing.assert_array_equal(rewards, np.stack([parts[i][2][p] for i, p in chosen]))
    np.testing.assert_array_equal(valid, np.stack([parts[i][3][p] for i, p in chosen]))


def test_select_groups_informative_first_then_fill(rounds):
    out = rollouts.select_groups(rounds, 4, informative_first=True, mask_truncated=False)
    _check_rows(rounds, [(0, 1), (0, 2), (1, 0), (0, 0)], out)  # 3 informative, then the first zero-spread group
    # by hand: round A's prompt 1 (3 tokens, left-padded to 5) + row 2 (3 tokens); round B's prompt 0 (5 tokens) +
    # row 0 (2 tokens, right-padded to 4)
    np.testing.assert_array_equal(out[1]["tokens_bs"][4], [201, 202, 203, 204, 205, 2001, 2002, 0, 0])
    np.testing.assert_array_equal(out[1]["tokens_bs"][0], [0, 0, 111, 112, 113, 1201, 1202, 1203, 0])


def test_select_groups_only_informative_when_enough(rounds):
    out = rollouts.select_groups(rounds, 2, informative_first=True, mask_truncated=True)
    _check_rows(rounds, [(0, 1), (0, 2)], out, mask_truncated=True)
    assert out[1]["tokens_bs"].shape == (4, 3 + 4)  # round B is not used, so neither is its wider prompt


def test_select_groups_without_dynamic_sampling_keeps_order(rounds):
    out = rollouts.select_groups(rounds[:1], 3, informative_first=False, mask_truncated=False)
    _check_rows(rounds, [(0, 0), (0, 1), (0, 2)], out)


# ----------------------------------------------------------------------------------------------------------------
# The trainer end to end (child processes): exact resume, μ = 2, β > 0 and dynamic sampling in one configuration

REWARDS_MODULE = '''
"""Test reward: spread rewards for prompts whose id hash is even, a constant for the others."""
import zlib


def informative(example_id):
    return zlib.crc32(example_id.encode()) % 2 == 0


def half_informative(completions, examples):
    return [len(set(c)) / 20 if informative(e["id"]) else 0.5 for c, e in zip(completions, examples)]
'''


NUM_STEPS = 8


def _train(spec, workdir, overrides, env):
    cmd = [sys.executable, "-m", "r1jax.main", "train", "--config", spec, "--workdir", str(workdir), *overrides]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}"
    return proc


def _metrics(workdir, drop_perf=True):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    return [{k: v for k, v in r.items() if not (drop_perf and k.startswith("perf/"))} for r in recs]


def _ledger(workdir):
    with open(os.path.join(workdir, "ledger.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _checkpoint(workdir, step):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()))
    manager.close()
    return _host(out["state"]), out["data"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_base_model, subprocess_env, reward_experiment):
    """8 steps straight; and 4 steps (the process saves and exits) + a new process resuming for the other 4."""
    root = tmp_path_factory.mktemp("grpo_runs")
    spec = reward_experiment(root, "grpo_test", REWARDS_MODULE, "half_informative") + ":runlocal"
    overrides = [
        f"--config.model.checkpoint={tiny_base_model}",
        f"--config.rl.num_steps={NUM_STEPS}",
        "--config.rl.mu=2",
        "--config.rl.beta=0.05",
        "--config.rl.dynamic_sampling=True",
        "--config.optim.learning_rate=3e-3",
        "--config.optim.warmup_steps=0",
        "--config.checkpoint.every=100",
        "--config.export=False",
    ]
    straight, resumed = root / "straight", root / "resumed"
    _train(spec, straight, overrides, subprocess_env)
    first = _train(spec, resumed, [*overrides, "--config.debug.stop_after_steps=4"], subprocess_env)
    checkpointer = ckpt_lib.Checkpointer(resumed / "checkpoints")
    after_first = dict(stdout=first.stdout, steps=checkpointer.all_steps(), metrics=_metrics(resumed))
    checkpointer.close()
    second = _train(spec, resumed, overrides, subprocess_env)
    return dict(straight=str(straight), resumed=str(resumed), after_first=after_first, second_log=second.stderr)


def test_resume_is_bit_exact(runs):
    first = runs["after_first"]
    assert first["steps"] == [4] and [r["step"] for r in first["metrics"]] == [1, 2, 3, 4]
    assert '"preempted_at": 4' in first["stdout"]
    # the second process continued from step 4 (a restart from 0 would also end equal, and prove nothing)
    assert "resumed from checkpoint step 4" in runs["second_log"]
    state_a, data_a = _checkpoint(runs["straight"], NUM_STEPS)
    state_b, data_b = _checkpoint(runs["resumed"], NUM_STEPS)
    assert data_a == data_b
    assert int(state_a["step"]) == int(state_b["step"]) == NUM_STEPS * 2  # μ = 2 updates per step
    paths_a, _ = zip(*jax.tree_util.tree_leaves_with_path(state_a))
    paths_b, _ = zip(*jax.tree_util.tree_leaves_with_path(state_b))
    assert paths_a == paths_b
    for path, a, b in zip(paths_a, jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
        assert a.dtype == b.dtype and np.array_equal(a, b), f"{jax.tree_util.keystr(path)} differs after resume"
    # the run trained (equal states would otherwise prove little): step 4's params differ from step 8's
    state_4, _ = _checkpoint(runs["resumed"], 4)
    pairs = zip(jax.tree.leaves(state_4["params"]), jax.tree.leaves(state_a["params"]))
    assert all(not np.array_equal(a, b) for a, b in pairs)
    metrics_a, metrics_b = _metrics(runs["straight"]), _metrics(runs["resumed"])
    assert [r["step"] for r in metrics_a] == [*range(1, NUM_STEPS + 1), NUM_STEPS]  # 8 steps, then the final eval
    assert metrics_a == metrics_b
    assert _ledger(runs["straight"]) == _ledger(runs["resumed"])


def test_mu_2_in_the_trainer_moves_the_ratio_and_clips(runs):
    """The logged metrics are those of the μ-th update, which sees π_θ ≠ π_old; β > 0 logs a positive k3 KL."""
    steps = [r for r in _metrics(runs["straight"]) if "rl/ratio_mean" in r]
    assert len(steps) == NUM_STEPS
    assert all(r["rl/ratio_mean"] != 1.0 for r in steps)
    assert any(r["rl/clip_ratio/region_mean"] > 0 for r in steps)
    assert all(r["rl/kl"] > 0 for r in steps[1:])  # π_θ = π_ref before the first update


def test_dynamic_sampling_in_the_trainer_drops_zero_spread_groups(runs):
    """Each step's batch holds the informative groups found in up to 1 + max_resample_rounds rounds, then
    zero-spread ones only when too few were found; rl/sampling_rounds counts the rounds."""
    rewards = _load_module(os.path.join(os.path.dirname(runs["straight"]), "grpo_test_rewards.py"))
    c = config_lib.load_config(R1_ZERO + ":runlocal")
    p, cap = c.rl.prompts_per_step, 1 + c.rl.max_resample_rounds
    metrics = {r["step"]: r for r in _metrics(runs["straight"]) if "rl/sampling_rounds" in r}
    resampled = 0
    for entry in _ledger(runs["straight"]):
        m = metrics[entry["step"]]
        zero_spread = sum(not rewards.informative(i) for i in entry["ids"])
        assert len(entry["ids"]) == p
        assert 1 <= m["rl/sampling_rounds"] <= cap
        assert m["rl/zero_spread_groups"] == zero_spread / p
        if m["rl/sampling_rounds"] < cap:  # stopped early: enough informative groups, none zero-spread kept
            assert zero_spread == 0
        resampled += m["rl/sampling_rounds"] > 1
    assert resampled > 0  # half the prompts are zero-spread: some step must have needed a second round


def _load_module(path):
    spec = importlib.util.spec_from_file_location("grpo_test_rewards_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
