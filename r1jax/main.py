"""The `r1jax` command: train | eval | demo | pipeline.

    r1jax train --config experiments/r1_zero.py:tiny --workdir /tmp/r1z [--config.rl.group_size=8 ...]
    r1jax eval  --config experiments/eval.py:tiny --workdir /tmp/ev --config.model.checkpoint=/tmp/r1z/model
    r1jax demo  --workdir /tmp/r1jax_demo            # stage 0 → R1-Zero → before/after evaluation
    r1jax pipeline --config experiments/pipeline.py:tiny --workdir /tmp/r1

An experiment file defines `get_config(arg)` and names what runs it in `ENTRY` ('module:function'); `--config.a.b=v`
overrides any declared field (configs are locked, so a typo fails before anything compiles).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

COMMANDS = ("train", "eval", "demo", "pipeline")


def _parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"r1jax {command}", description=__doc__.split("\n\n")[0])
    needs_config = command in ("train", "eval", "pipeline")
    p.add_argument("--config", required=needs_config, help="experiment file and arg, e.g. experiments/r1_zero.py:tiny")
    p.add_argument("--workdir", required=command != "demo", default=None, help="where checkpoints and logs go")
    if command == "demo":
        p.add_argument("--seed", type=int, default=0)
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
    if command == "demo":
        from r1jax import demo

        demo.run_demo(args.workdir or os.path.abspath("r1jax_demo"), seed=args.seed, overrides=overrides)
        return 0
    result = run_experiment(args.config, args.workdir, overrides)
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str))}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run())
