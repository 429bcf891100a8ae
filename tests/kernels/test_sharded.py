"""The Pallas kernels inside shard_map (kernels/_sharded.py) equal the unsharded XLA oracle, values and gradients.

On 8 fake CPU devices (a child process: XLA_FLAGS must be set before jax is imported), the TPU kernels run in
interpret mode per device: tokens split over ('data', 'fsdp'), the vocabulary over 'tensor' with the log-sum-exp,
target logit, entropy and KL combined across its shards. Shapes where the split does not divide (N = 37 tokens,
V = 75 on a tensor axis of 2) fall back to replicating that dimension and must agree too.
"""

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from r1jax.kernels.grouped_logprob import api as logprob_api
from r1jax.kernels.kl import api as kl_api

assert jax.device_count() == 8
OPTS = dict(block_n=8, block_v=16, interpret=True)
out = {}
for shape, n, d, e, v in [((2, 2, 2), 48, 22, 13, 150), ((2, 2, 2), 37, 21, 13, 75), ((8, 1, 1), 64, 21, 13, 75)]:
    mesh = Mesh(np.asarray(jax.devices()).reshape(shape), ("data", "fsdp", "tensor"))
    keys = jax.random.split(jax.random.key(n + v), 5)
    h = jax.random.normal(keys[0], (n, d)); w = jax.random.normal(keys[1], (d, v)) * 0.6
    hq = jax.random.normal(keys[2], (n, e)); wq = jax.random.normal(keys[3], (e, v)) * 0.6
    t = jax.random.randint(keys[4], (n,), 0, v)
    g1, g2 = jnp.linspace(-1.0, 2.0, n), jnp.linspace(0.5, -1.5, n)

    def logprob_loss(h, w, impl, mesh):
        kw = dict(mesh=mesh, **OPTS) if impl != "xla" else {}
        lp, ent = logprob_api.grouped_logprob_nd(
            h, w, t, temperature=0.7, return_entropy=True, implementation=impl, **kw
        )
        return jnp.sum(g1 * lp + g2 * ent), (lp, ent)

    def kl_loss(h, w, impl, mesh):
        kw = dict(mesh=mesh, **OPTS) if impl != "xla" else {}
        k = kl_api.kl_nd(h, w, hq, wq, temperature=0.7, implementation=impl, **kw)
        return jnp.sum(g1 * k), (k,)

    for name, loss in (("logprob", logprob_loss), ("kl", kl_loss)):
        grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
        (_, ref_out), ref_g = jax.jit(lambda h, w: grad(h, w, "xla", None))(h, w)
        fit = lambda size, axes: axes if size % int(np.prod([mesh.shape[a] for a in axes])) == 0 else None
        row = NamedSharding(mesh, P(fit(n, ("data", "fsdp"))))
        head = NamedSharding(mesh, P(fit(d, ("fsdp",)), fit(v, ("tensor",))))
        f = jax.jit(lambda h, w: grad(h, w, "pallas_tpu", mesh), in_shardings=(row, head))
        (_, got_out), got_g = f(h, w)
        pairs = zip((*got_out, *got_g), (*ref_out, *ref_g))
        errs = [float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in pairs]
        manual = "manual" in f.lower(h, w).as_text().lower()  # shard_map's per-device region in the program
        out[f"{name}-{'x'.join(map(str, shape))}-n{n}-v{v}"] = dict(errs=errs, shard_map=manual)
json.dump(out, open(sys.argv[1], "w"))
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory, subprocess_env):
    out = tmp_path_factory.mktemp("sharded_kernels")
    script = out / "sharded_kernels.py"
    script.write_text(SCRIPT)
    env = dict(subprocess_env, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, str(script), str(out / "r.json")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "r.json").read_text())


def test_sharded_kernels_equal_the_oracle(results):
    assert len(results) == 6
    for name, r in results.items():
        assert r["shard_map"], name  # the kernels really ran per device
        assert max(r["errs"]) < 2e-5, (name, r["errs"])  # values, then dh and dW
