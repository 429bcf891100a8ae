"""The `r1jax` command: train | eval | demo | pipeline | sweep | results | compile.

    r1jax train --config experiments/r1_zero.py:tiny --workdir /tmp/r1z [--config.rl.group_size=8 ...]
    r1jax eval  --config experiments/eval.py:tiny --workdir /tmp/ev --config.model.checkpoint=/tmp/r1z/model
    r1jax demo  --workdir /tmp/r1jax_demo [--seeds 3] # stage 0 → R1-Zero → before/after table with intervals
    r1jax pipeline --config experiments/pipeline.py:tiny --workdir /tmp/r1
    r1jax sweep --config experiments/r1_zero.py:tiny --workdir /tmp/sw [--print-launch tpu --tpu-name N --zone Z]
    r1jax results --workdir /tmp/sw                  # final metrics of each run of a sweep, one Markdown table
    r1jax compile --config experiments/r1_zero.py:qwen2.5-0.5b --topology v5e:2x2 --config.mesh.shape='(1,4,1)'
                                                     # compile a stage's programs for a TPU topology (libtpu, no TPU)

An experiment file defines `get_config(arg)` and names what runs it in `ENTRY` ('module:function'); `--config.a.b=v`
overrides any declared field (configs are locked, so a typo fails before anything compiles).

Multi-host: on a TPU VM slice run the same command on every worker (`r1jax sweep --print-launch tpu` prints it);
elsewhere give each process --coordinator HOST:PORT --num-processes N --process-id I (or R1JAX_COORDINATOR,
R1JAX_NUM_PROCESSES, R1JAX_PROCESS_ID); see r1jax/distributed.py.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

COMMANDS = ("train", "eval", "demo", "pipeline", "sweep", "results", "compile")


# `r1jax demo --variant`: the arg appended to each demo stage's experiment file (experiments/pretrain.py, r1_zero.py).
DEMO_VARIANTS = {"headroom": "tiny,headroom", "two-digit": ""}


def _parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"r1jax {command}", description=__doc__.split("\n\n")[0])
    if command == "results":
        p.add_argument("--workdir", required=True, help="the sweep's directory")
        p.add_argument("--keys", default="", help="comma-separated metric names (default: the headline ones)")
        return p
    if command == "compile":
        from r1jax.compile import KERNELS

        p.add_argument("--config", required=True, help="experiment file and arg")
        p.add_argument("--topology", required=True, help="TPU topology, e.g. v5e:2x2, v5p:2x4x4, v6e:4x4")
        p.add_argument("--num-slices", type=int, default=1, help="slices (the mesh's 'data' axis spans them)")
        p.add_argument("--json", default="", help="also write the report here")
        p.add_argument("--programs", default="", help="compile only the programs whose names start with these "
                       "(comma-separated, e.g. grpo_update,policy_logps); default: all of the stage's")
        p.add_argument("--kernels", default=KERNELS, choices=("chunked", "xla", "pallas", "auto"),
                       help=f"kernels.implementation to compile with (default {KERNELS!r})")
        return p
    needs_config = command in ("train", "eval", "pipeline")
    p.add_argument("--config", required=needs_config, help="experiment file and arg, e.g. experiments/r1_zero.py:tiny")
    p.add_argument("--workdir", required=command != "demo", default=None, help="where checkpoints and logs go")
    if command == "demo":
        p.add_argument("--seed", type=int, default=0, help="the (first) seed")
        p.add_argument("--seeds", type=int, default=1,
                       help="run seeds SEED..SEED+N-1, each in WORKDIR/seed_<s>/, and pool them with intervals")
        p.add_argument("--variant", choices=tuple(DEMO_VARIANTS), default="headroom",
                       help="headroom (the default): 3-digit sums whose base mixes direct, worked and re-checked "
                       "solutions, experiments/pretrain.py:tiny,headroom then experiments/r1_zero.py:tiny,headroom; "
                       "two-digit: the easy base, where R1-Zero's gain is the format (experiments/*.py:tiny)")
    if command == "sweep":
        p.add_argument("--print-launch", choices=("local", "tpu"), default=None,
                       help="print the command that starts each run instead of running them here")
        p.add_argument("--tpu-name", default="", help="TPU VM slice name (with --print-launch tpu)")
        p.add_argument("--zone", default="", help="its zone (with --print-launch tpu)")
        p.add_argument("--remote-dir", default="", help="directory to cd into on each worker before starting")
    else:  # multi-process launch (see r1jax/distributed.py); flags win over the R1JAX_* environment
        p.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
        p.add_argument("--num-processes", type=int, default=None)
        p.add_argument("--process-id", type=int, default=None)
    return p


def run_experiment(config_spec: str, workdir: str, overrides=()) -> dict:
    """Load `file.py:arg`, apply overrides, and run the function the file names in `ENTRY`."""
    from r1jax import config_lib

    path = config_spec.partition(":")[0]
    module = config_lib.load_module(path)
    config = config_lib.load_config(config_spec, overrides)
    module_name, _, function = module.ENTRY.partition(":")
    return getattr(importlib.import_module(module_name), function)(config, workdir)


def run(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("commands:", ", ".join(COMMANDS))
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"r1jax: unknown command {command!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from r1jax import config_lib

    rest, overrides = config_lib.split_cli_overrides(rest)
    args = _parser(command).parse_args(rest)
    if command in ("sweep", "results"):
        return run_sweep_command(command, args, overrides)
    if command == "compile":  # compile-only: no jax.distributed, no live devices
        from r1jax import compile as compile_lib

        return compile_lib.main(args, overrides)
    from r1jax import distributed

    # Before anything touches a device: jax.distributed must come first in every process of a multi-host run.
    distributed.initialize(distributed.resolve_spec(args.coordinator, args.num_processes, args.process_id))
    if command == "demo":
        from r1jax import demo

        demo.run_demo(
            args.workdir or os.path.abspath("r1jax_demo"), seed=args.seed, seeds=args.seeds, overrides=overrides,
            arg=DEMO_VARIANTS[args.variant],
        )
        return 0
    result = run_experiment(args.config, args.workdir, overrides)
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str))}, indent=1, default=str))
    return 0


def run_sweep_command(command: str, args, overrides) -> int:
    """`sweep` (expand, then run here one after another or print launch commands) and `results`."""
    from r1jax import sweep

    if command == "results":
        table = sweep.results_table(args.workdir, [k for k in args.keys.split(",") if k])
        with open(os.path.join(args.workdir, sweep.RESULTS), "w") as f:
            f.write(table)
        print(table, end="")
        return 0
    runs = sweep.expand(args.config, overrides)
    if args.print_launch:
        for line in sweep.launch_commands(
            args.config, args.workdir, runs, target=args.print_launch, common_overrides=overrides,
            tpu_name=args.tpu_name, zone=args.zone, remote_dir=args.remote_dir,
        ):
            print(line)
        return 0
    status = sweep.run_local(args.config, args.workdir, runs, overrides)
    table = sweep.results_table(args.workdir)
    with open(os.path.join(args.workdir, sweep.RESULTS), "w") as f:
        f.write(table)
    print(table, end="")
    failed = [name for name, s in status.items() if s["returncode"]]
    if failed:
        print(f"r1jax sweep: {len(failed)} of {len(runs)} runs failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run())
