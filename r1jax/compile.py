"""Ahead-of-time compilation of a stage's programs for a TPU topology, on any host (no TPU needed).

    r1jax compile --config experiments/r1_zero.py:qwen2.5-0.5b --topology v5e:2x2 --config.mesh.shape='(1,4,1)'
    r1jax compile --config experiments/r1_zero.py:qwen2.5-7b --topology v5p:2x4x4 --json /tmp/7b.json

libtpu's compile-only client (`jax.experimental.topologies`) gives the topology's devices on a CPU host. Every jitted
program the stage runs is built from ShapeDtypeStructs at the config's shapes (parameters and optimizer state from
`eval_shape` of the preset or the checkpoint's config.json: no weights, no tokenizer) on the config's mesh over those
devices, and compiled by the real XLA:TPU compiler. Per program it reports, per chip: arguments, outputs,
temporaries, generated code and what stays resident on the chip outside the program (the reference parameters with
β > 0, the optimizer state while sampling, ...) against the chip's HBM; FLOPs and bytes from the cost analysis and
the roofline lower bound max(FLOPs / peak, bytes / bandwidth). It exits 1 when a program does not compile or does
not fit, naming the program, the shortfall and what to change.

GRPO stages (r1_zero, reasoning_rl, general_rl) compile: the update, the old / reference log-prob pass, the
sampler's rollout (the scheduler the config names, prefill and decode loop in one program, as it runs), its prefill
and one decode step alone (the loop's cost analysis counts its body once, so the step's roofline takes the decode
step × max_new_tokens), and the evaluation rollout. Other stages are refused with a message for now.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import sys
import time
import types
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from r1jax import config_lib, rollouts, sampling, sharding, train_state
from r1jax.models import KVCache, Transformer
from r1jax.trainers import grpo_config

# The kernel implementation the programs are compiled with (config field kernels.implementation is replaced by it).
# 'auto' resolves from the target mesh's devices (r1jax.kernels: the Mosaic kernels on a TPU, inside shard_map), as
# the run on the pod would. `r1jax compile --kernels chunked` compiles the portable blockwise path instead.
KERNELS = "auto"


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_gib: float  # per chip
    peak_flops: float  # dense bf16 FLOP/s per chip
    hbm_bytes_s: float  # HBM bandwidth, bytes/s per chip


# Per-chip figures from Google Cloud's TPU system-architecture pages (cloud.google.com/tpu/docs/v4, .../v5e,
# .../v5p, .../v6e; bf16 peak, HBM capacity and bandwidth). Keyed by jax's device_kind.
CHIPS = {
    "TPU v4": Chip("v4", 32, 275e12, 1228e9),
    "TPU v5 lite": Chip("v5e", 16, 197e12, 819e9),
    "TPU v5": Chip("v5p", 95, 459e12, 2765e9),
    "TPU v6 lite": Chip("v6e", 32, 918e12, 1640e9),
}

# A program fits when its per-chip total plus what is resident stays under this share of HBM: the runtime keeps
# some HBM for itself, and allocation is not perfectly packed (XLA reports 15.75 of v5e's 16 GiB as its capacity).
USABLE_HBM = 0.9

GIB = 2.0**30


# ---------------------------------------------------------------------------------------------------------------
# Topology and programs


def topology_devices(name: str, num_slices: int = 1):
    """The abstract devices of a TPU topology such as 'v5e:2x2' or 'v5p:2x4x4' (libtpu, compile-only)."""
    from jax.experimental import topologies

    try:
        topo = topologies.get_topology_desc(platform="tpu", topology_name=name, num_slices=num_slices)
    except Exception as e:  # libtpu raises its own error types; the name is what the user can change
        raise ValueError(f"--topology={name!r} (--num-slices={num_slices}): libtpu cannot describe it: {e}") from e
    # Slices first, so the outermost mesh axis ('data') spans them, as over DCN in a multi-slice run.
    return sorted(topo.devices, key=lambda d: (getattr(d, "slice_index", 0), d.id))


def chip_of(devices) -> Chip:
    """The chip table entry of the devices; a topology that lists each TensorCore as a device (v4 without megacore)
    gets each device its share of the chip's HBM and FLOP/s."""
    kind = devices[0].device_kind
    if kind not in CHIPS:
        raise ValueError(f"device kind {kind!r}: no entry in r1jax.compile.CHIPS (known: {sorted(CHIPS)})")
    chip = CHIPS[kind]
    cores = 1 + max(getattr(d, "core_on_chip", 0) for d in devices)
    if cores == 1:
        return chip
    return Chip(chip.name, chip.hbm_gib / cores, chip.peak_flops / cores, chip.hbm_bytes_s / cores)


@dataclasses.dataclass
class Program:
    """One jitted program, its abstract arguments, and its context in the stage."""

    name: str
    fn: Any  # jitted, with explicit shardings or abstract arguments that carry them
    args: tuple
    kwargs: dict
    resident_bytes: float  # per chip: buffers the stage keeps on the chip while this program runs, not its arguments
    runs: float  # times it runs per training step (0: left out of the step's roofline)
    kind: str  # 'update' | 'logps' | 'sampler': what to change when it does not fit


def sds(shape, dtype, sharding_):
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding_)


def per_chip_bytes(tree) -> float:
    """Bytes of one device's shard of every array of `tree` (ShapeDtypeStructs with NamedShardings)."""
    total = 0
    for x in jax.tree.leaves(tree):
        total += math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
    return float(total)


def grpo_programs(c, devices) -> tuple[list[Program], Any]:
    """The programs a GRPO step runs, at config `c`'s shapes on `devices` (abstract). Returns (programs, mesh)."""
    rl, s = c.rl, c.sampling
    grpo_config.validate_shapes(c, len(devices))
    cfg = train_state.model_shape_config(c.model)
    grpo_config.check_context(c, cfg.max_seq_len)
    mesh = sharding.make_mesh(c.mesh.shape, devices=devices[: len(devices) - rl.sampler_devices])
    optimizer = train_state.make_optimizer(c.optim, rl.num_steps * rl.mu)
    graphdef, state, state_shardings = train_state.abstract_train_state(cfg, optimizer, mesh)
    step = rollouts.make_grpo_step(c, graphdef, optimizer, mesh, state_shardings)

    tp = sampling.bucket_length(s.max_prompt_len, s.prompt_bucket)  # the longest prompt bucket
    p, g, tc = rl.prompts_per_step, rl.group_size, s.max_new_tokens
    batch = {k: sds(*_batch_field(k, p * g, tp, tc), sh) for k, sh in step.batch_shardings.items()}
    params_b, opt_b = per_chip_bytes(state.params), per_chip_bytes(state.opt_state)
    ref_b = params_b if rl.beta > 0 else 0.0  # π_ref, a copy of the starting parameters, resident all run
    programs = [Program("grpo_update", step.train_step, (state, batch), {}, ref_b, rl.mu, "update")]
    logps_runs = (rl.mu > 1) + (rl.beta > 0)
    if logps_runs:  # old log-probs (μ > 1) and reference log-probs (β > 0): one program, called with either params
        logps_batch = {k: v for k, v in batch.items() if k not in ("old_logps_bt", "ref_logps_bt")}
        programs.append(Program("policy_logps", step.logps, (state.params, logps_batch), {}, opt_b + ref_b,
                                logps_runs, "logps"))

    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(params=0)))
    placement = rollouts.sampler_placement(c, model, graphdef, mesh, devices=devices)
    sampler_params = placement.abstract(state.params)
    # Sharing the trainer's chips, the sampler runs beside the optimizer state, π_ref and (a copy) the trainer's
    # parameters; on chips of its own (rl.sampler_devices) beside nothing.
    shared = placement.shardings is None
    sampler_resident = (opt_b + ref_b + (params_b if placement.copy else 0.0)) if shared else 0.0
    ids = types.SimpleNamespace(eos_id=1, pad_id=0)  # token ids enter the programs as constants only
    train_cfg = rollouts.sampler_config(c, ids)
    if placement.dtype is not None:
        cfg = cfg.replace(dtype=str(placement.dtype), param_dtype=str(placement.dtype))
    context = (placement, sampler_params, cfg, tp, sampler_resident)
    programs += rollout_programs("sampler", context, train_cfg, p)
    if c.eval.num_prompts:  # the held-out evaluation samples eval.num_samples of each prompt (evals.Evaluator)
        e = c.eval
        eval_cfg = train_cfg.replace(num_samples=e.num_samples, temperature=e.temperature, top_p=e.top_p, top_k=0)
        programs += rollout_programs("eval", context, eval_cfg, e.num_prompts, runs=1 / e.every if e.every else 0,
                                     parts=False)
    return programs, mesh


def _batch_field(key: str, b: int, tp: int, tc: int):
    """(shape, dtype) of a GRPO batch field (rollouts.select_groups, assemble_batch)."""
    fields = {
        "tokens_bs": ((b, tp + tc), jnp.int32), "mask_bs": ((b, tp + tc), bool), "completion_bt": ((b, tc), jnp.int32),
        "loss_mask_bt": ((b, tc), bool), "advantages_b": ((b,), jnp.float32), "grad_scale": ((), jnp.float32),
    }
    return fields.get(key, ((b, tc), jnp.float32))  # sampler / old / reference log-probs


def rollout_programs(name, context, config, num_prompts, runs=1.0, parts=True):
    """The sampler's rollout as `sampling.sample` runs it and, with `parts`, its prefill and one decode step alone
    (the per-token roofline). `context`: (placement, sampler parameters, their ModelConfig, prompt length, resident
    bytes). Rows are split over the sampler mesh's data axes."""
    placement, params, model_cfg, tp, resident = context
    mesh = placement.mesh
    rows = NamedSharding(mesh, P(sharding.BATCH_AXES))
    rep = sharding.replicated(mesh)
    b = num_prompts * config.num_samples
    fn, traced = sampling.rollout_program(config)
    key = jax.eval_shape(lambda: jax.random.key(0))
    args = (placement.graphdef, params, sds((num_prompts, tp), jnp.int32, rows), sds((num_prompts, tp), bool, rows),
            sds((b,), jnp.int32, rows), sds(key.shape, key.dtype, rep))
    out = [Program(f"{name}_rollout_{config.scheduler}", fn, args, dict(config=traced, mesh=mesh), resident,
                   0 if parts else runs, "sampler")]
    if not parts:
        return out
    graphdef = placement.graphdef
    prefill = jax.jit(lambda prm, t, m: sampling.decode.prefill(nnx.merge(graphdef, prm), t, m, traced, mesh))
    out.append(Program(f"{name}_prefill", prefill, args[1:4], {}, resident, runs, "sampler"))
    slots = min(config.num_slots or b, b) if config.scheduler == "continuous" else b
    cache = jax.eval_shape(lambda: KVCache.init(model_cfg, slots, tp + config.max_new_tokens))
    cache = jax.tree.map(lambda x: sds(x.shape, x.dtype, rows if x.ndim else rep), cache)

    def decode(prm, last_b, cache_, keys_b, t):
        logits_bv, cache_ = sampling.decode_logits(nnx.merge(graphdef, prm), last_b, cache_)
        keys_b = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys_b)
        return sampling.select_tokens(logits_bv, keys_b, traced), cache_

    keys = jax.eval_shape(lambda: sampling.row_keys(jax.random.key(0), slots))
    decode_args = (params, sds((slots,), jnp.int32, rows), cache, sds(keys.shape, keys.dtype, rows),
                   sds((), jnp.int32, rep))
    out.append(Program(f"{name}_decode_step", jax.jit(decode, donate_argnums=2), decode_args, {}, resident,
                       runs * config.max_new_tokens, "sampler"))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Compiling and reporting

# XLA:TPU's compile-time out-of-memory messages: "Used 25.01G of 15.75G hbm. Exceeded hbm capacity by 9.26G." and
# "the total memory required for HLO temporaries (293.30G) exceeds available HBM (15.75G)".
_OOM = re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm|\(([\d.]+)([KMGT])\) exceeds available HBM "
                  r"\(([\d.]+)([KMGT])\)")
_UNIT = {"K": 2.0**10 / GIB, "M": 2.0**20 / GIB, "G": 1.0, "T": 1024.0}


def compile_program(prog: Program, chip: Chip) -> dict:
    """Compiles one program; returns its row of the report (see `main` for the fields)."""
    row = dict(name=prog.name, kind=prog.kind, runs=prog.runs, compiled=False, fits=False,
               resident_gib=prog.resident_bytes / GIB, mosaic_calls=0)
    t0 = time.perf_counter()
    try:
        compiled = prog.fn.lower(*prog.args, **prog.kwargs).compile()
    except Exception as e:  # XlaRuntimeError and friends: the message is the diagnosis
        row["compile_s"] = time.perf_counter() - t0
        text = str(e)
        row["error"] = text.strip().splitlines()[0][:2000] if text.strip() else type(e).__name__
        oom = _OOM.search(text)
        if oom:  # the compiler's own count (all buffers, or the temporaries alone): the program exceeds HBM
            used, unit, cap, cap_unit = [g for g in oom.groups() if g is not None]
            used, cap = float(used) * _UNIT[unit], float(cap) * _UNIT[cap_unit]
            row["total_gib"] = used + row["resident_gib"]
            row["shortfall_gib"] = row["total_gib"] - chip.hbm_gib * USABLE_HBM
            row["xla_capacity_gib"] = cap
        return row
    row["compile_s"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    gib = lambda n: float(n) / GIB
    row.update(
        compiled=True,
        argument_gib=gib(mem.argument_size_in_bytes),
        output_gib=gib(mem.output_size_in_bytes - mem.alias_size_in_bytes),  # donated buffers are reused
        temp_gib=gib(mem.temp_size_in_bytes),
        code_mib=mem.generated_code_size_in_bytes / 2**20,
    )
    parts = ("argument_gib", "output_gib", "temp_gib", "resident_gib")
    row["total_gib"] = sum(row[k] for k in parts) + gib(mem.generated_code_size_in_bytes)
    row["shortfall_gib"] = row["total_gib"] - chip.hbm_gib * USABLE_HBM
    row["fits"] = row["shortfall_gib"] <= 0
    cost = compiled.cost_analysis()
    cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
    row["flops"] = float(cost.get("flops", 0.0))
    row["bytes_accessed"] = float(cost.get("bytes accessed", 0.0))
    row["roofline_s"] = max(row["flops"] / chip.peak_flops, row["bytes_accessed"] / chip.hbm_bytes_s)
    row["mosaic_calls"] = compiled.as_text().count('custom_call_target="tpu_custom_call"')
    return row


def advice(row: dict, c, mesh) -> str:
    """What to change when a program does not fit (or the compiler ran out of HBM)."""
    dp = sharding.data_parallel_size(mesh)
    shape = tuple(mesh.shape[a] for a in sharding.MESH_AXES)
    tips = [f"shard the weights further: more 'fsdp' or 'tensor' in mesh.shape (now {shape}) or a larger topology"]
    if row["kind"] in ("update", "logps"):
        rows = c.rl.prompts_per_step * c.rl.group_size // dp
        if not c.model.remat and row["kind"] == "update":
            tips.insert(0, "model.remat=True (recompute each block in the backward pass)")
        tips.append(f"fewer rows per device (now {rows}: rl.prompts_per_step × rl.group_size / data-parallel {dp})")
        if not c.rl.shared_prompt_forward:
            tips.append("rl.shared_prompt_forward=True (each prompt runs once for its G samples)")
    else:
        tips.append("fewer decode rows per device: sampling.scheduler='continuous' with a smaller sampling.num_slots, "
                    "or fewer rl.prompts_per_step / eval.num_prompts")
        if not c.rl.sampler_dtype and c.model.dtype != "bfloat16":
            tips.append("rl.sampler_dtype='bfloat16'")
    return "; ".join(tips)


def report_line(row: dict, chip: Chip) -> str:
    if not row["compiled"]:
        size = f"{row['total_gib']:.1f} GiB" if "total_gib" in row else "-"
        return f"{row['name']:<26} DOES NOT COMPILE ({size}) after {row['compile_s']:.0f} s: {row['error'][:300]}"
    bound = row["roofline_s"]
    return (
        f"{row['name']:<26} {row['argument_gib']:6.2f} {row['output_gib']:6.2f} {row['temp_gib']:6.2f} "
        f"{row['resident_gib']:6.2f} {row['total_gib']:6.2f}/{chip.hbm_gib:<4.0f} {'yes' if row['fits'] else 'NO ':<4} "
        f"{row['code_mib']:6.1f} {row['compile_s']:7.1f} {row['flops'] / 1e12:9.3f} {row['bytes_accessed'] / 1e9:8.2f} "
        f"{bound * 1e3:10.2f} {row['runs']:>6g} {row['mosaic_calls']:>3}"
    )


HEADER = (
    f"{'program':<26} {'args':>6} {'out':>6} {'temp':>6} {'resid':>6} {'total/HBM':>11} {'fits':<4} {'codeMiB':>6} "
    f"{'compile_s':>7} {'TFLOP':>9} {'GB':>8} {'bound_ms':>10} {'runs':>6} {'mosaic':>3}"
)


def compile_stage(config, topology: str, *, num_slices: int = 1, kernels: str = KERNELS, only=()) -> dict:
    """Compiles every program of the stage `config` runs for `topology` (or those whose names start with one of
    `only`); returns the report (see `main`)."""
    c = copy.deepcopy(config)
    c.kernels.implementation = kernels
    devices = topology_devices(topology, num_slices)
    chip = chip_of(devices)
    programs, mesh = grpo_programs(c, devices)
    if only:
        unknown = [o for o in only if not any(p.name.startswith(o) for p in programs)]
        if unknown:
            raise ValueError(f"--programs={','.join(only)}: no program starts with {unknown}; the stage runs "
                             f"{[p.name for p in programs]}")
        programs = [p for p in programs if p.name.startswith(tuple(only))]
    if num_slices > 1 and mesh.shape["data"] % num_slices:
        raise ValueError(f"mesh.shape={tuple(mesh.shape.values())}: with --num-slices={num_slices} the 'data' axis "
                         f"({mesh.shape['data']}) must be a multiple of the slices (only 'data' crosses DCN)")
    rows = []
    for prog in programs:
        row = compile_program(prog, chip)
        if not (row["compiled"] and row["fits"]):
            row["advice"] = advice(row, c, mesh)
        rows.append(row)
        print(report_line(row, chip), flush=True)
    # a partial list (--programs) or a failed compile leaves parts out: the bound is then a bound of those parts
    step = sum(r["roofline_s"] * r["runs"] for r in rows if r["compiled"])
    return dict(
        topology=topology, num_slices=num_slices, chip=chip.name, num_chips=len(devices), hbm_gib=chip.hbm_gib,
        usable_gib=chip.hbm_gib * USABLE_HBM, mesh=dict(mesh.shape), kernels=kernels, programs=rows,
        step_roofline_s=step,
    )


def main(args, overrides) -> int:
    """`r1jax compile`: prints the table; `--json PATH` writes {"topology", "chip", "hbm_gib", "programs": [{"name",
    "compiled", "fits", "argument_gib", "temp_gib", "total_gib", "compile_s", "flops", "mosaic_calls", ...}]}.
    Returns 1 when a program does not compile or does not fit, 2 for a config error."""
    try:
        config = config_lib.load_config(args.config, overrides)
        module = config_lib.load_module(args.config.partition(":")[0])
        if module.ENTRY != "r1jax.trainers.grpo:train":
            raise ValueError(f"--config={args.config}: runs {module.ENTRY}; r1jax compile covers the GRPO stages "
                             "(r1jax.trainers.grpo:train) for now")
        print(f"r1jax compile {args.config} for {args.topology} × {args.num_slices} slice(s), kernels {args.kernels}")
        print(HEADER)
        only = tuple(filter(None, args.programs.split(",")))
        result = compile_stage(config, args.topology, num_slices=args.num_slices, kernels=args.kernels, only=only)
    except (ValueError, FileNotFoundError) as e:
        print(f"r1jax compile: {e}", file=sys.stderr)
        return 2
    result["config"] = args.config
    result["overrides"] = list(overrides)
    print(f"{result['num_chips']} × {result['chip']} ({result['hbm_gib']:g} GiB HBM, fits under "
          f"{result['usable_gib']:.1f}), mesh {result['mesh']}; roofline bound of one RL step "
          f"{result['step_roofline_s']:.2f} s (rollout: prefill + decode step × max_new_tokens)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=float)
    failed = [r for r in result["programs"] if not (r["compiled"] and r["fits"])]
    for r in failed:
        what = "does not fit" if r["compiled"] else "does not compile"
        if not r["compiled"] and "shortfall_gib" in r:
            what = "does not fit (the compiler ran out of HBM)"
        short = f", {r['shortfall_gib']:.2f} GiB over the usable {result['usable_gib']:.1f} GiB per chip" \
            if "shortfall_gib" in r else ""
        print(f"r1jax compile: {r['name']} {what} on {result['chip']}{short}. Try: {r['advice']}", file=sys.stderr)
    return 1 if failed else 0
