"""Where the memory of a GRPO step sits at a real model shape: XLA's own accounting, compiled, nothing run.

The GRPO train step (`r1jax.rollouts.make_grpo_step`: forward, fused log-prob with entropy, loss, backward,
AdamW) and the no-grad log-prob pass (π_ref / π_old) are compiled for abstract inputs of the chosen shape, and
XLA's memory analysis is read off each: arguments (parameters, optimizer state, batch), outputs, the aliased
(donated) part, and the temporary buffer (everything the program holds while it runs: saved activations, the
backward's working set, gradients). Variants set switches against the base setting, joined by '+' to combine
(`remat+shared`):

  remat        `model.remat`: each block's activations recomputed in the backward pass (block inputs kept)
  xla_logprob  `kernels.implementation='xla'`: the (B·Tc, V) logits materialised (the oracle), against the
               default chunked kernel that never holds more than one (block_n, block_v) tile
  shared       `rl.shared_prompt_forward`: each prompt runs once for its G = `--group` samples (KV cache)

    python -m benchmarks.measure.grpo_memory --shape qwen2.5-0.5b --rows 16 --prompt_len 256 --completion_len 128 \\
        --json /tmp/grpo_memory.json

Nothing is allocated but the compile itself (the inputs are `jax.ShapeDtypeStruct`s), so any shape can be
examined on a laptop; compile time grows with the layer count (about a minute per variant at 0.5B on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax import rollouts, sharding, train_state
from r1jax.models import Transformer, get_preset
from r1jax.trainers import grpo_config


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen2.5-0.5b", help="a model preset name")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the preset's)")
    p.add_argument("--layers", type=int, default=None, help="layer count (default: the preset's)")
    p.add_argument("--rows", type=int, default=16, help="B = P·G rows in the batch")
    p.add_argument("--prompt_len", type=int, default=256)
    p.add_argument("--completion_len", type=int, default=128)
    p.add_argument("--group", type=int, default=8, help="G, samples per prompt (the 'shared' variant)")
    p.add_argument("--beta", type=float, default=0.04, help="β > 0: the batch carries π_ref log-probs")
    p.add_argument("--variants", default="base,remat,xla_logprob", help="comma-separated, from the docstring")
    p.add_argument("--json", default=None)
    return p.parse_args()


def _config(args, variant: str):
    c = grpo_config.grpo_config()
    c.rl.beta, c.rl.mu = args.beta, 1
    c.sampling.max_new_tokens = args.completion_len
    switches = set(variant.split("+"))
    c.kernels.implementation = "xla" if "xla_logprob" in switches else "auto"
    c.rl.group_size, c.rl.shared_prompt_forward = args.group, "shared" in switches
    return c


def analyse(args, variant: str) -> dict:
    extra = {k: v for k, v in (("vocab_size", args.vocab), ("num_layers", args.layers)) if v is not None}
    remat = "remat" in variant.split("+")
    cfg = get_preset(args.shape, max_seq_len=args.prompt_len + args.completion_len, remat=remat, **extra)
    abstract_model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(params=0)))
    graphdef, state = nnx.split(abstract_model)
    params = nnx.to_pure_dict(state)
    c = _config(args, variant)
    optimizer = train_state.make_optimizer(c.optim, 10)
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    rep = sharding.replicated(mesh)

    def scalar(dtype):
        return jax.ShapeDtypeStruct((), dtype, sharding=rep)

    p_sh = sharding.param_shardings(state, mesh)
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, p_sh)
    opt_state = jax.eval_shape(optimizer.init, params)
    opt_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep if x.ndim == 0 else None), opt_state
    )
    abstract = train_state.TrainState(
        step=scalar(jnp.int32),
        params=params,
        opt_state=opt_state,
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
        nonfinite_consecutive=scalar(jnp.int32),
        nonfinite_total=scalar(jnp.int32),
    )
    state_sh = jax.tree.map(lambda x: x.sharding if x.sharding is not None else rep, abstract)
    step = rollouts.make_grpo_step(c, graphdef, optimizer, mesh, state_sh)
    b, s, tc = args.rows, args.prompt_len + args.completion_len, args.completion_len
    shapes = {
        "tokens_bs": ((b, s), jnp.int32),
        "mask_bs": ((b, s), jnp.bool_),
        "completion_bt": ((b, tc), jnp.int32),
        "loss_mask_bt": ((b, tc), jnp.bool_),
        "advantages_b": ((b,), jnp.float32),
        "grad_scale": ((), jnp.float32),
        "sampler_logps_bt": ((b, tc), jnp.float32),
        "old_logps_bt": ((b, tc), jnp.float32),
        "ref_logps_bt": ((b, tc), jnp.float32),
    }
    batch = {k: jax.ShapeDtypeStruct(*shapes[k]) for k in step.batch_shardings}
    out = {"params": cfg.num_params(), "param_bytes": 4 * cfg.num_params()}
    for name, fn, fn_args in (
        ("train_step", step.train_step, (abstract, batch)),
        ("logps_pass", step.logps, (params, batch)),
    ):
        t0 = time.perf_counter()
        mem = fn.lower(*fn_args).compile().memory_analysis()
        out[name] = {
            "argument_bytes": mem.argument_size_in_bytes,
            "output_bytes": mem.output_size_in_bytes,
            "alias_bytes": mem.alias_size_in_bytes,
            "temp_bytes": mem.temp_size_in_bytes,
            "peak_bytes": mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes,
            "compile_s": time.perf_counter() - t0,
        }
    return out


def main():
    args = parse_args()
    results = {}
    print(
        f"{args.shape}: B={args.rows}, prompt {args.prompt_len} + completion {args.completion_len} tokens, "
        f"β={args.beta}, μ=1, f32, {jax.default_backend()}"
    )
    print("| variant | program | arguments GiB | outputs GiB | donated GiB | temporaries GiB | peak GiB | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for variant in args.variants.split(","):
        results[variant] = r = analyse(args, variant)
        for prog in ("train_step", "logps_pass"):
            m = r[prog]
            gib = [m[k] / 2**30 for k in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "peak_bytes")]
            print(
                f"| {variant} | {prog} | " + " | ".join(f"{x:.2f}" for x in gib) + f" | {m['compile_s']:.0f} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "jax": jax.__version__, "cpus": os.cpu_count(), **results}, f, indent=2)


if __name__ == "__main__":
    main()
