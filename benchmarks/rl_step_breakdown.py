"""Where the time of one RL step goes: sample / reward / old + reference log-probs / update, for the default tiny
R1-Zero config (`experiments/r1_zero.py:tiny`: P=16 prompts × G=8, 96 new tokens, the tiny preset), so that the
slowest part is visible.

The phases are the trainer's own functions (r1jax/trainers/grpo.py), called in its order, each timed to
completion (`jax.block_until_ready`):

  sample      `sampling.sample`: shared prefill, KV cache broadcast to G, jitted decode loop
  decode      token ids → text for the B = P·G completions (host)
  reward      the composed, timeout-guarded reward function of the config (accuracy + format), worker processes
  advantages  group advantages and the host → device copy of the batch
  logps       one no-cache forward for log π over the batch: what π_old (μ > 1) and π_ref (β > 0) each cost;
              the tiny config has μ = 1 and β = 0, so its step runs neither, and the table says so
  update      `train_step`: forward, GRPO loss, backward, AdamW (jitted, state donated)

The first `--warmup` steps (compilation) are excluded; medians over `--steps` steps are reported. The base model
is a stage-0 export (`--base DIR`; default: `experiments/pretrain.py:runlocal` is trained into a temp dir first),
so completions stop at EOS as in a real run. The headline `ratio` is the slowest phase's share of the step.

    python benchmarks/rl_step_breakdown.py --json /tmp/rl_breakdown.json [--base /tmp/stage0/model]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

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
    from r1jax import config_lib, grpo, sampling, sharding
    from r1jax.data.pipeline import make_prompt_iterator
    from r1jax.data.sources import PromptFields
    from r1jax.trainers import common
    from r1jax.trainers import grpo as trainer

    with tempfile.TemporaryDirectory() as tmp:
        base = args.base
        if base is None:
            from r1jax.main import run_experiment

            run_experiment(os.path.join(REPO, "experiments", "pretrain.py") + ":runlocal", os.path.join(tmp, "s0"))
            base = os.path.join(tmp, "s0", "model")
        c = config_lib.load_config(args.config, [f"--config.model.checkpoint={base}"])
        trainer.validate(c)
        mesh = sharding.make_mesh(c.mesh.shape)
        train_records, _, _ = trainer.load_splits(c)
        model, tokenizer = common.build_model(c.model, c.seed, c.tokenizer.path)
        rl, G, P = c.rl, c.rl.group_size, c.rl.prompts_per_step
        optimizer = common.make_optimizer(c.optim, rl.num_steps)
        graphdef, state, state_sh = common.create_train_state(model, optimizer, mesh, c.seed)
        data_it, _ = make_prompt_iterator(
            train_records, batch_size=P, seed=c.seed, fields=PromptFields(extras=("task", "meta"))
        )
        reward_fn = trainer.make_rewards(c.rewards, c.response_prefix, c.sampling.max_new_tokens)
        sample_cfg = sampling.SamplingConfig(
            num_samples=G,
            max_new_tokens=c.sampling.max_new_tokens,
            temperature=c.sampling.temperature,
            top_p=c.sampling.top_p,
            top_k=c.sampling.top_k,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
        )
        loss_kw = dict(
            loss_type=rl.loss_type,
            epsilon_low=rl.epsilon_low,
            epsilon_high=rl.epsilon_high,
            beta=rl.beta,
            max_completion_length=c.sampling.max_new_tokens,
            kl_bias_correction=rl.kl_bias_correction,
            importance_sampling_level=rl.importance_sampling_level,
        )
        impl = c.kernels.implementation
        batch_sh = sharding.batch_sharding(mesh, 2)
        shardings = {
            "tokens_bs": batch_sh,
            "mask_bs": batch_sh,
            "completion_bt": batch_sh,
            "loss_mask_bt": batch_sh,
            "advantages_b": sharding.batch_sharding(mesh, 1),
            "grad_scale": sharding.replicated(mesh),
        }
        step_fn = jax.jit(
            functools.partial(
                trainer.train_step,
                graphdef=graphdef,
                optimizer=optimizer,
                loss_kw=loss_kw,
                temperature=c.sampling.temperature,
                implementation=impl,
            ),
            in_shardings=(state_sh, shardings),
            out_shardings=(state_sh, None),
            donate_argnums=0,
        )
        logp_fn = jax.jit(
            functools.partial(
                trainer.completion_logps, graphdef, temperature=c.sampling.temperature, implementation=impl
            )
        )
        base_rng = jax.random.wrap_key_data(jax.device_get(state.rng))
        rows, lengths = [], []
        for step in range(args.warmup + args.steps):
            t = {}
            t0 = time.perf_counter()
            records = next(data_it)
            prompt_ids = trainer.encode_prompts(
                tokenizer, records, c.template, c.response_prefix, c.sampling.max_prompt_len
            )
            rollout = sampling.sample(
                graphdef, state.params, prompt_ids, jax.random.fold_in(base_rng, step), sample_cfg, mesh=mesh
            )
            jax.block_until_ready(rollout)
            t1 = time.perf_counter()
            completions = trainer.decode_completions(tokenizer, rollout)
            t2 = time.perf_counter()
            group = [r for r in records for _ in range(G)]
            rb = reward_fn([r["question"] for r in group], completions, group, lengths=np.asarray(rollout.lengths_b))
            t3 = time.perf_counter()
            parts = [(records, rollout, rb.rewards.reshape(P, G), rb.valid.reshape(P, G))]
            _, batch, rewards_pg, valid_pg, lens, _ = trainer.select_groups(
                parts, P, informative_first=False, mask_truncated=rl.mask_truncated
            )
            adv = grpo.group_advantages(
                jnp.asarray(rewards_pg), scale_rewards=rl.scale_rewards, eps=rl.adv_eps, valid_pg=jnp.asarray(valid_pg)
            )
            batch["advantages_b"] = np.asarray(adv, np.float32).reshape(-1)
            batch["grad_scale"] = np.float32(1.0)
            batch = jax.device_put({k: batch[k] for k in shardings}, shardings)
            jax.block_until_ready(batch)
            t4 = time.perf_counter()
            jax.block_until_ready(logp_fn(state.params, batch))  # one π_old or π_ref pass
            t5 = time.perf_counter()
            state, m = step_fn(state, batch)
            jax.block_until_ready((state, m))
            t6 = time.perf_counter()
            t = {
                "sample": t1 - t0,
                "decode": t2 - t1,
                "reward": t3 - t2,
                "advantages": t4 - t3,
                "logps_one_pass": t5 - t4,
                "update": t6 - t5,
            }
            if step >= args.warmup:
                rows.append(t)
                lengths.append(float(lens.mean()))
        reward_fn.close()

    passes = (rl.mu > 1) + (rl.beta > 0)  # log-prob passes the config's step actually runs
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    phases = {
        "sample": med["sample"],
        "decode": med["decode"],
        "reward": med["reward"],
        "advantages": med["advantages"],
        "old+ref logps": passes * med["logps_one_pass"],
        "update": med["update"],
    }
    total = sum(phases.values())
    slowest = max(phases, key=phases.get)
    print(
        f"{args.config}: P={P} G={G} max_new_tokens={c.sampling.max_new_tokens}, μ={rl.mu} β={rl.beta}; "
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
                        "G": G,
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
