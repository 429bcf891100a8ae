"""Sharded == unsharded: one GRPO `train_step` on 8 fake CPU devices gives the same loss and updated params on the
meshes ('data', 'fsdp', 'tensor') = (8,1,1), (2,4,1), (2,2,2) as on (1,1,1), and so does the step with
`rl.shared_prompt_forward` (each group's prompt run once) on (2,4,1) and (2,2,2), where a group's rows sit on
different devices.

The step runs in a child process (XLA_FLAGS must force 8 host devices before jax is imported), built by
`r1jax.rollouts.make_grpo_step` as for `r1jax.trainers.grpo.train` (explicit in/out shardings, state donated). The
batch carries old and reference log-probs (μ > 1 and β > 0 paths) and is built directly: random tokens with
left-padded prompts and completions of different lengths. The tiny preset's dimensions divide every mesh size, so
`RULES` really shard the params (checked: on (2,2,2) weights are split over 'fsdp' and 'tensor' and each device
holds a quarter of a matrix or less).

The update is plain SGD (passed to `make_grpo_step` as its optimizer), so the updated params are a linear function
of the gradients and the comparison measures the sharded gradient. AdamW's first step is lr·g/(|g|+eps), about
lr·sign(g): a gradient entry that is 0 up to round-off would move by ±lr depending on summation order, on any mesh.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2)]
SHARED = [(2, 4, 1), (2, 2, 2)]  # meshes that also run the step with the shared prompt forward
RTOL = 1e-5

SCRIPT = r"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from r1jax import rollouts, sharding
from r1jax.models import get_preset, init_model
from r1jax import train_state
from r1jax.trainers.grpo_config import grpo_config

assert jax.device_count() == 8, jax.devices()
out_dir, meshes, shared = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
cfg = get_preset("tiny", vocab_size=256, num_layers=2)
B, TP, TC, G = 8, 6, 10, 2  # G rows per prompt, as a GRPO batch has
rng = np.random.default_rng(0)
tokens_bs = rng.integers(1, cfg.vocab_size, (B, TP + TC)).astype(np.int32)
tokens_bs[:, :TP] = np.repeat(tokens_bs[::G, :TP], G, axis=0)
mask_bs = np.ones((B, TP + TC), bool)
for b in range(B):
    if b % G == 0:
        mask_bs[b : b + G, : rng.integers(0, TP - 1)] = False  # left-padded prompt
    mask_bs[b, TP + rng.integers(2, TC + 1) :] = False  # completion stopped early
batch = {
    "tokens_bs": tokens_bs, "mask_bs": mask_bs, "completion_bt": tokens_bs[:, TP:],
    "loss_mask_bt": mask_bs[:, TP:], "advantages_b": rng.normal(size=B).astype(np.float32),
    "grad_scale": np.float32(1.0),
}
c = grpo_config()  # 'dapo', epsilon_low 0.2, temperature 1, kernels 'auto'; μ > 1 and β > 0: old and ref log-probs
c.rl.mu, c.rl.beta, c.rl.epsilon_high, c.sampling.max_new_tokens = 2, 0.05, 0.28, TC
c.rl.group_size = G
optimizer = optax.sgd(0.1)
results = {}
runs = [(tuple(m), False) for m in meshes] + [(tuple(m), True) for m in shared]
for shape, shared_prompt in runs:
    c.rl.shared_prompt_forward = shared_prompt
    if shape == (1, 1, 1):  # the unsharded reference: one of the 8 devices
        mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(shape), sharding.MESH_AXES)
    else:
        mesh = sharding.make_mesh(shape)
    graphdef, state, state_sh = train_state.create_train_state(init_model(cfg, 0), optimizer, mesh, seed=0)
    grpo_step = rollouts.make_grpo_step(c, graphdef, optimizer, mesh, state_sh)
    shardings = grpo_step.batch_shardings
    if shape == (1, 1, 1):
        # pi_old and pi_ref: the model's own log-probs, perturbed so that the ratio both stays inside and leaves
        # [1 - eps_low, 1 + eps_high] and the k3 KL is not 0
        logps = rollouts.completion_logps(graphdef, state.params, batch, temperature=1.0, implementation="auto")
        logps = np.asarray(logps)
        batch["old_logps_bt"] = (logps + 0.2 * rng.normal(size=logps.shape)).astype(np.float32)
        batch["ref_logps_bt"] = (logps + 0.3 * rng.normal(size=logps.shape)).astype(np.float32)
    step = grpo_step.train_step
    init = jax.device_get(state.params)
    sharded = {}
    for path, x in jax.tree_util.tree_leaves_with_path(state.params):
        local = x.addressable_shards[0].data.shape
        if local != x.shape:
            sharded[jax.tree_util.keystr(path)] = [str(x.sharding.spec), list(x.shape), list(local)]
    new_state, m = step(state, jax.device_put(batch, shardings))
    new = jax.device_get(new_state.params)
    flat = {}
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(new), jax.tree.leaves(init)):
        flat["delta" + jax.tree_util.keystr(path)] = np.asarray(a) - np.asarray(b)
        flat["param" + jax.tree_util.keystr(path)] = np.asarray(a)
    name = "x".join(map(str, shape)) + ("_shared" if shared_prompt else "")
    np.savez(f"{out_dir}/{name}.npz", **flat)
    results[name] = {"metrics": {k: float(v) for k, v in jax.device_get(m).items()}, "sharded": sharded}
with open(f"{out_dir}/results.json", "w") as f:
    json.dump(results, f)
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory, subprocess_env):
    out = tmp_path_factory.mktemp("sharding")
    script = out / "step_on_meshes.py"
    script.write_text(SCRIPT)
    env = dict(subprocess_env, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    cmd = [sys.executable, str(script), str(out), json.dumps(MESHES), json.dumps(SHARED)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out / "results.json") as f:
        res = json.load(f)
    arrays = {name: dict(np.load(out / f"{name}.npz")) for name in res}
    return res, arrays


def _name(shape):
    return "x".join(map(str, shape))


def test_params_are_really_sharded_on_2x2x2(results):
    res, _ = results
    sharded = res["2x2x2"]["sharded"]
    specs = " ".join(spec for spec, _, _ in sharded.values())
    assert "fsdp" in specs and "tensor" in specs, sharded
    two_way = {k: v for k, v in sharded.items() if "fsdp" in v[0] and "tensor" in v[0]}
    assert two_way, "no weight is split over both 'fsdp' and 'tensor'"
    for _, shape, local in two_way.values():
        assert np.prod(local) * 4 == np.prod(shape)  # a quarter per device
    # every matrix of the blocks and the (tied) embedding is sharded; only norm scales and biases may be replicated
    assert any("embed" in k for k in sharded) and sum("mlp" in k for k in sharded) == 3 * 2
    assert res["8x1x1"]["sharded"] == {}  # pure data parallelism replicates the params


def test_the_step_is_nontrivial(results):
    """The batch exercises what sharding could break: a loss, clipping, a KL term and a real update."""
    m = results[0]["1x1x1"]["metrics"]
    assert m["rl/kl"] > 1e-3 and 0 < m["rl/clip_ratio/region_mean"] < 1 and m["train/grad_norm"] > 1e-3
    assert m["train/update_skipped"] == 0.0


@pytest.mark.parametrize(
    "name", [_name(s) for s in MESHES[1:]] + [_name(s) + "_shared" for s in SHARED]
)
def test_sharded_step_equals_unsharded(results, name):
    res, arrays = results
    ref_m, m = res["1x1x1"]["metrics"], res[name]["metrics"]
    for key in ("rl/loss", "rl/pg_loss", "rl/kl", "rl/entropy", "train/grad_norm", "rl/ratio_mean"):
        assert m[key] == pytest.approx(ref_m[key], rel=RTOL, abs=1e-7), key
    for key in ("rl/clip_ratio/low_mean", "rl/clip_ratio/high_mean", "rl/tokens"):
        assert m[key] == ref_m[key], key
    ref, got = arrays["1x1x1"], arrays[name]
    assert sorted(ref) == sorted(got)
    for key in (k for k in ref if k.startswith("param")):
        # the updated params: an update off by even 1 % (params move ~1e-3 of their size here) fails this
        err, scale = np.linalg.norm(got[key] - ref[key]), np.linalg.norm(ref[key])
        assert err <= RTOL * scale, f"{key}: |diff|={err:.3g}, |ref|={scale:.3g}"
        # the updates themselves (−lr·grad), to RTOL of their size, plus the f32 rounding of new − old: a norm scale
        # of ~1 moved by ~1e-4 keeps only ~3 significant digits of its update
        delta = "delta" + key.removeprefix("param")
        err, scale = np.linalg.norm(got[delta] - ref[delta]), np.linalg.norm(ref[delta])
        ulp = 2 * np.finfo(np.float32).eps * np.linalg.norm(ref[key])
        assert scale > 0 and err <= RTOL * scale + ulp, f"{delta}: |diff|={err:.3g}, |ref|={scale:.3g}"
