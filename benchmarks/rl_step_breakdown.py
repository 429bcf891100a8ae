"""Where the time of one RL step goes: sample / reward / old + reference log-probs / update, for the default tiny
R1-Zero config (`experiments/r1_zero.py:tiny`: P=16 prompts × G=8, 96 new tokens, the tiny preset), so that the
slowest part is visible.

The phases are the trainer's own functions (r1jax/rollouts.py: prompt encoding, the sampler config, decoding,
`assemble_batch`, and the step that `make_grpo_step` builds), called in the trainer's order, each timed to
completion (`jax.block_until_ready`):

  sample      `sampling.sample`: shared prefill, KV cache broadcast to G, jitted decode loop
  decode      token ids → text for the B = P·G completions (host)
  reward      the composed, timeout-guarded reward function of the config (accuracy + format), worker processes
  advantages  `rollouts.assemble_batch`: group advantages and the host → device copy of the batch
  logps       the old (μ > 1) and reference (β > 0) log-prob forwards the config's step runs; the tiny config has
              μ = 1 and β = 0, so its step runs neither, and the table says so. One such no-cache forward over the
              batch is also timed on its own (`logps_one_pass`), outside the step, to show what each would cost
  update      the GRPO train step: forward, loss, backward, AdamW (jitted, state donated)

The first `--warmup` steps (compilation) are excluded; medians over `--steps` steps are reported. The base model
is a stage-0 export (`--base DIR`; default: `experiments/pretrain.py:runlocal` is trained into a temp dir first),
so completions stop at EOS as in a real run. The headline `ratio` is the slowest phase's share of the step.

    python benchmarks/rl_step_breakdown.py --json /tmp/rl_breakdown.json [--base /tmp/stage0/model]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import config_lib, rollouts, sampling, sharding, train_state
from r1jax.data.pipeline import make_prompt_iterator
from r1jax.data.sources import PromptFields
from r1jax.main import run_experiment
from r1jax.trainers import grpo as trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(REPO, "experiments", "r1_zero.py") + ":tiny")
    p.add_argument("--base", default=None, help="stage-0 model dir (default: train pretrain.py:runlocal first)")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation)")
    p.add_argument("--json", default=None, help="write the figures here; `ratio` is the slowest phase's share")
    return p.parse_args()


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.base
        if base is None:
            run_experiment(os.path.join(REPO, "experiments", "pretrain.py") + ":runlocal", os.path.join(tmp, "s0"))
            base = os.path.join(tmp, "s0", "model")
        c = config_lib.load_config(args.config, [f"--config.model.checkpoint={base}"])
        trainer.validate(c)
        mesh = sharding.make_mesh(c.mesh.shape)
        train_records, _, _ = rollouts.load_splits(c)
        model, tokenizer = train_state.build_model(c.model, c.seed, c.tokenizer.path)
        rl, group_size, P = c.rl, c.rl.group_size, c.rl.prompts_per_step
        optimizer = train_state.make_optimizer(c.optim, rl.num_steps)
        graphdef, state, state_sh = train_state.create_train_state(model, optimizer, mesh, c.seed)
        ref_params = jax.tree.map(jnp.copy, state.params) if rl.beta > 0 else None
        data_it, _ = make_prompt_iterator(
            train_records, batch_size=P, seed=c.seed, fields=PromptFields(extras=("task", "meta"))
        )
        reward_fn = trainer.make_rewards(c.rewards, c.response_prefix, c.sampling.max_new_tokens)
        sample_cfg = rollouts.sampler_config(c, tokenizer)
        grpo_step = rollouts.make_grpo_step(c, graphdef, optimizer, mesh, state_sh)
        base_rng = jax.random.wrap_key_data(jax.device_get(state.rng))
        rows, lengths = [], []
        for step in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            records = next(data_it)
            prompt_ids = rollouts.encode_prompts(
                tokenizer, records, c.template, c.response_prefix, c.sampling.max_prompt_len
            )
            rollout = sampling.sample(
                graphdef, state.params, prompt_ids, jax.random.fold_in(base_rng, step), sample_cfg, mesh=mesh
            )
            jax.block_until_ready(rollout)
            t1 = time.perf_counter()
            completions = rollouts.decode_completions(tokenizer, rollout)
            t2 = time.perf_counter()
            group = [r for r in records for _ in range(group_size)]
            rb = reward_fn([r["question"] for r in group], completions, group, lengths=np.asarray(rollout.lengths_b))
            t3 = time.perf_counter()
            part = rollouts.Round(records, rollout, rb.rewards.reshape(P, group_size), rb.valid.reshape(P, group_size))
            _, batch, summary = rollouts.assemble_batch(c, [part], mesh, grpo_step.batch_shardings)
            jax.block_until_ready(batch)
            t4 = time.perf_counter()
            batch = rollouts.add_policy_logps(batch, grpo_step.logps, state.params, ref_params, mu=rl.mu, beta=rl.beta)
            jax.block_until_ready(batch)
            t5 = time.perf_counter()
            state, m = grpo_step.train_step(state, batch)
            jax.block_until_ready((state, m))
            t6 = time.perf_counter()
            jax.block_until_ready(grpo_step.logps(state.params, batch))  # one π_old or π_ref pass, on its own
            t7 = time.perf_counter()
            t = {
                "sample": t1 - t0,
                "decode": t2 - t1,
                "reward": t3 - t2,
                "advantages": t4 - t3,
                "logps": t5 - t4,
                "update": t6 - t5,
                "logps_one_pass": t7 - t6,
            }
            if step >= args.warmup:
                rows.append(t)
                lengths.append(float(summary.lengths_b.mean()))
        reward_fn.close()

    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    phases = {
        "sample": med["sample"],
        "decode": med["decode"],
        "reward": med["reward"],
        "advantages": med["advantages"],
        "old+ref logps": med["logps"],
        "update": med["update"],
    }
    total = sum(phases.values())
    slowest = max(phases, key=phases.get)
    print(
        f"{args.config}: P={P} group_size={group_size} max_new_tokens={c.sampling.max_new_tokens}, "
        f"μ={rl.mu} β={rl.beta}; "
        f"medians of {len(rows)} steps (after {args.warmup} warm-up), mean completion "
        f"{statistics.mean(lengths):.1f} tokens"
    )
    print("| phase | ms | share |\n|---|---|---|")
    for k, v in phases.items():
        print(f"| {k} | {1e3 * v:.1f} | {v / total:.0%} |")
    print(f"| step | {1e3 * total:.1f} | 100% |")
    print(f"(one log-prob pass, as μ > 1 or β > 0 would add each: {1e3 * med['logps_one_pass']:.1f} ms)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "ratio": phases[slowest] / total,
                    "slowest": slowest,
                    "phases_s": phases,
                    "step_s": total,
                    "logps_one_pass_s": med["logps_one_pass"],
                    "per_step": rows,
                    "completion_len_mean": lengths,
                    "settings": {
                        "config": args.config,
                        "P": P,
                        "group_size": group_size,
                        "max_new_tokens": c.sampling.max_new_tokens,
                        "mu": rl.mu,
                        "beta": rl.beta,
                        "jax": jax.__version__,
                        "cpus": os.cpu_count(),
                        "load_avg_1min": os.getloadavg()[0],
                        "steps": args.steps,
                        "warmup": args.warmup,
                    },
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
