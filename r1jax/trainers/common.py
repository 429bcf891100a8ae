"""What every trainer shares to resume: run identity, restore-or-start from the latest good checkpoint, and
dropping metric records a killed run wrote after its checkpoint. The train state, optimizer and model loading
are in r1jax/train_state.py (evaluation and the GRPO step builder use them too)."""

from __future__ import annotations

import hashlib
import json
import logging
import os

from r1jax import checkpoint as ckpt_lib
from r1jax import train_state

log = logging.getLogger(__name__)


def run_identity(config, keys) -> dict:
    """The settings that make a checkpoint resumable, as plain JSON values (checked on resume)."""
    out = {}
    for key in keys:
        node = config
        for part in key.split("."):
            node = node[part]
        out[key] = json.loads(json.dumps(node.to_dict() if hasattr(node, "to_dict") else node, default=list))
    return out


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_identity(cfg) -> dict:
    """The model fields a checkpoint's state depends on (shapes, parameter dtype), as JSON values; compute dtype
    and remat may change between a run and its resume."""
    return {k: json.loads(json.dumps(v, default=str)) for k, v in cfg.__dict__.items() if k not in ("dtype", "remat")}


def restore_or_start(checkpointer, state, shardings, identity: dict, restart_from_weights: bool):
    """(state, data_state or None, start_step). Resumes from the newest usable checkpoint of this workdir.

    Settings that differ from the checkpoint's `identity` are refused, unless `restart_from_weights`: then a new
    run starts at step 0 from the checkpoint's params (fresh optimizer state and data order). A checkpoint
    written by that new run has the new identity, so restarting the same command after a kill resumes it.
    """
    target = train_state.abstract_state(train_state.state_to_dict(state), train_state.state_to_dict(shardings))
    try:
        found = checkpointer.restore_latest(target, identity)
    except ckpt_lib.IncompatibleCheckpointError as e:
        if not restart_from_weights:
            raise
        step, saved, _ = checkpointer.restore_latest(target, None)
        log.warning(
            "restart_from_weights: %s. Starting a new run at step 0 from the weights of checkpoint step %d; "
            "the old run's steps move to %s/superseded at the first save",
            e,
            step,
            checkpointer.directory,
        )
        checkpointer.supersede_at_next_save(checkpointer.all_steps())
        return state.replace(params=saved["params"]), None, 0
    if found is None:
        return state, None, 0
    step, saved, data_state = found
    log.info("resumed from checkpoint step %d", step)
    return train_state.TrainState(**saved), data_state, step


def drop_records_after(path: str, step: int) -> int:
    """Keep the JSONL records of `path` with "step" <= `step` (the restored checkpoint's); returns how many went.

    A killed run has appended records (ledger, metrics) for steps after its last checkpoint, and the resumed run
    writes those steps again. The dropped lines (and a torn last line) go to `path + '.dropped'`, not lost.
    """
    if not os.path.exists(path):
        return 0
    keep, drop = [], []
    with open(path) as f:
        for line in f:
            try:
                ok = int(json.loads(line)["step"]) <= step
            except (ValueError, KeyError, TypeError):
                ok = not line.strip()  # blank lines are harmless; a torn or foreign one is not kept
            (keep if ok else drop).append(line if line.endswith("\n") else line + "\n")
    if drop:
        with open(path + ".dropped", "a") as f:
            f.writelines(drop)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)
        log.info("%s: dropped %d records after step %d (a run killed after its last checkpoint)", path, len(drop), step)
    return len(drop)
