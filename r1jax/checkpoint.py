"""Checkpoints: orbax for resumable training state, Hugging Face safetensors for finished models.

Training state (params, optimizer state, step, rng) is saved with the data-iterator state and a small JSON of
the run's identity (group size, model shape, data source) under WORKDIR/checkpoints/<step>/. Orbax writes each
step into `<step>.orbax-checkpoint-tmp` and renames it on commit, so a killed save is never listed. On restart the
latest committed step is restored; if it is damaged the previous one is tried, with a warning naming the step, and
the damaged steps are moved to checkpoints/damaged/ (so the resumed run can save those step numbers again).

Orbax notices missing and truncated array files but not changed bytes (a flipped bit restores silently), so each
step also stores an `integrity` item: a checksum per state leaf, computed on the device (works for sharded arrays),
and sha256 of the data-iterator and identity JSON. Restore recomputes and compares them; a mismatch is damage.

Paths that come from configs can be confined to a directory with `safe_path(path, root)` (`load_model(...,
allowed_root=...)`, config `model.allowed_root`): a path that resolves, after `..` and symlinks, outside the root is
refused. `config_lib.check_paths` applies it to every path a config names when the config is loaded.

A finished stage exports its model as a Hugging Face checkpoint directory (config.json + model.safetensors)
plus its tokenizer, which is what the next stage (or transformers) loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from r1jax.config_lib import safe_path  # config paths and model loading share one check
from r1jax.models import load_hf_checkpoint, save_hf_checkpoint
from r1jax.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


class IncompatibleCheckpointError(ValueError):
    pass


class Checkpointer:
    """Save / restore of {'state': pytree, 'data': json, 'meta': json, 'integrity': json} steps under `directory`."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True, on_save_error="raise"):
        if on_save_error not in ("raise", "continue"):
            raise ValueError(f"checkpoint.on_save_error={on_save_error!r}: expected 'raise' or 'continue'")
        self.directory = os.path.abspath(directory)
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise NotADirectoryError(
                f"checkpoint directory {self.directory} exists and is not a directory; move the file away or choose "
                "another workdir"
            )
        self.on_save_error = on_save_error
        self.max_to_keep = max_to_keep
        self.save_failures = 0
        self._pending_step = None  # the step whose async save has not been confirmed yet
        self._supersede: list[int] = []  # another run's steps, set aside at this run's first save
        options = ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        if jax.process_index() == 0:  # what a kill left half-deleted (see `_prune`)
            (epath.Path(self.directory) / "deleting").rmtree(missing_ok=True)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict, meta: dict) -> bool:
        """Start saving `step` (async); False (and counted) when it fails and on_save_error='continue'.

        A failure of the previous step's background write is reported here (or by `wait`), naming that step.
        """
        self.wait()
        try:
            if self._supersede:
                self.set_aside(self._supersede, "superseded")
                self._supersede = []
            integrity = {
                "state": state_checksums(state),
                "data_sha256": _json_sha256(data_state),
                "meta_sha256": _json_sha256(meta),
            }
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave(data_state),
                    meta=ocp.args.JsonSave(meta),
                    integrity=ocp.args.JsonSave(integrity),
                ),
                force=True,
            )
            self._pending_step = step
            return True
        except Exception as e:  # disk full, unwritable workdir: the previous step stays valid
            self._failed(f"checkpoint save of step {step} to {self.directory} failed: {e}", e)
            return False

    def wait(self) -> None:
        """Block until the background save finishes; a failed one is reported as on_save_error says."""
        step, self._pending_step = self._pending_step, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            self._failed(f"async checkpoint save of step {step} to {self.directory} failed: {e}", e)
            return
        if step is None:
            return
        # Orbax can also skip finalizing a step after logging the error: the listing on disk is the truth.
        self.manager.reload()
        if step not in self.manager.all_steps():
            self._failed(f"async checkpoint save of step {step} to {self.directory} was not committed", None)
            return
        self._prune()

    def _prune(self) -> None:
        """Keep the newest `max_to_keep` steps. Orbax would delete old steps in place, file by file, so a kill in
        the middle leaves a listed step with items missing; here a step leaves the listing by one rename first."""
        old = self.all_steps()[: -self.max_to_keep] if self.max_to_keep else []
        if old:
            self.set_aside(old, "deleting", quiet=True)
            if jax.process_index() == 0:
                (epath.Path(self.directory) / "deleting").rmtree(missing_ok=True)

    def _failed(self, message: str, error: Exception | None) -> None:
        self.save_failures += 1
        if self.on_save_error == "raise":
            raise RuntimeError(message + " (checkpoint.on_save_error='raise')") from error
        log.warning(
            "%s; the previous checkpoint is kept and training goes on (checkpoint.on_save_error='continue', "
            "%d failed saves so far)",
            message,
            self.save_failures,
        )

    def restore_latest(self, abstract_state, meta: dict | None = None):
        """(step, state, data_state) of the newest usable step, or None when there is none.

        `abstract_state` holds jax.ShapeDtypeStruct leaves with the target shardings (any mesh). `meta` is checked
        against the saved one; a difference raises IncompatibleCheckpointError naming the fields. A step that cannot
        be read, or whose checksums do not match, is skipped with a warning naming it; when an older step is usable
        the damaged newer ones are moved to `damaged/`. None usable: RuntimeError.
        """
        steps = self.all_steps()
        if not steps:
            return None
        errors, damaged = [], []
        for step in reversed(steps):
            try:
                saved_meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            except Exception as e:
                errors.append(f"step {step}: {_short(e)}")
                damaged.append(step)
                log.warning("checkpoint step %d is damaged (%s); trying the previous step", step, _short(e))
                continue
            if meta is not None:
                check_compatible(saved_meta, meta)
            try:
                out = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=ocp.args.JsonRestore(),
                        integrity=ocp.args.JsonRestore(),
                    ),
                )
                _verify(out["integrity"], out["state"], out["data"], saved_meta)
            except Exception as e:
                errors.append(f"step {step}: {_short(e)}")
                damaged.append(step)
                log.warning("checkpoint step %d is damaged (%s); trying the previous step", step, _short(e))
                continue
            if damaged:
                self.set_aside(damaged, "damaged")
            return step, out["state"], out["data"]
        raise RuntimeError(
            f"no usable checkpoint in {self.directory}: every step is damaged ({'; '.join(errors)}). "
            "Delete the directory to start fresh."
        )

    def supersede_at_next_save(self, steps) -> None:
        """A new run (restart_from_weights) starts at step 0 here: the old run's steps stay restorable until this
        run's first save, which moves them to `superseded/` (step numbers are reused)."""
        self._supersede = sorted(steps)

    def set_aside(self, steps, reason: str, quiet: bool = False) -> None:
        """Move step directories to `<directory>/<reason>/<step>.<time_ns>`, out of the step listing (one rename
        each, atomic on a local or POSIX file system)."""
        if jax.process_index() == 0:
            target = epath.Path(self.directory) / reason
            target.mkdir(parents=True, exist_ok=True)
            for step in steps:
                src = epath.Path(self.directory) / str(step)
                if src.exists():
                    dst = target / f"{step}.{time.time_ns()}"
                    src.rename(dst)
                    if not quiet:
                        log.warning("checkpoint step %d moved to %s (%s)", step, dst, reason)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"r1jax_checkpoint_set_aside_{reason}")
        self.manager.reload()

    def reached_preemption(self, step: int) -> bool:
        """True on every host once any host got a preemption notice (orbax's sync point; multi-host)."""
        return self.manager.reached_preemption(step)

    def close(self) -> None:
        self.wait()
        self.manager.close()


def _short(e) -> str:
    s = str(e).splitlines()[0] if str(e) else type(e).__name__
    return s[:300]


# ---------------------------------------------------------------------------------------------------------------
# Integrity: orbax does not notice changed bytes in its array files, so each step carries checksums.


def _leaf_checksum(x) -> jax.Array:
    """Σ_i word_i · (2i + 1) mod 2^32 over the leaf's raw bits (i: flat index).

    The weights are odd, so changing any single word changes the sum; integer sums are exact and order-free, so
    the value does not depend on the sharding or the device count.
    """
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)  # 8-byte dtypes: a trailing axis of 2
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= words.shape[axis]
    return jnp.sum(words * (2 * index + 1), dtype=jnp.uint32)


_checksums = jax.jit(lambda tree: jax.tree.map(_leaf_checksum, tree))


def state_checksums(state) -> dict[str, int]:
    """{leaf path: uint32 checksum} of a pytree of arrays (computed where the arrays live)."""
    leaves = jax.tree_util.tree_leaves_with_path(state)
    sums = jax.device_get(_checksums([leaf for _, leaf in leaves]))
    return {jax.tree_util.keystr(path): int(v) for (path, _), v in zip(leaves, sums)}


def _json_sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _verify(integrity: dict, state, data_state, meta) -> None:
    expected, actual = integrity["state"], state_checksums(state)
    bad = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
    if bad:
        more = ", ..." if len(bad) > 3 else ""
        raise ValueError(f"checksum mismatch in {len(bad)} state arrays ({', '.join(bad[:3])}{more})")
    if integrity["data_sha256"] != _json_sha256(data_state):
        raise ValueError("checksum mismatch in the data-iterator state")
    if integrity["meta_sha256"] != _json_sha256(meta):
        raise ValueError("checksum mismatch in the run identity")


def check_compatible(saved: dict, current: dict) -> None:
    """Refuse to resume when the run's identity (G, model shape, data source, ...) changed."""
    changed = [
        f"{k}: checkpoint has {saved.get(k)!r}, config has {current.get(k)!r}"
        for k in sorted(set(saved) | set(current))
        if saved.get(k) != current.get(k)
    ]
    if changed:
        raise IncompatibleCheckpointError(
            "cannot resume: settings changed since the checkpoint was written ("
            + "; ".join(changed)
            + "). Use a new workdir, or set --config.checkpoint.restart_from_weights=True to start a new run "
            "from the checkpoint's weights."
        )


class PreemptionGuard:
    """SIGTERM (a preemption notice) sets a flag; the loop saves the current step and exits cleanly."""

    def __init__(self):
        self.event = threading.Event()
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    @property
    def triggered(self) -> bool:
        return self.event.is_set()


# ---------------------------------------------------------------------------------------------------------------
# Finished models: a Hugging Face directory + tokenizer, the hand-off between pipeline stages.


def export_model(model, tokenizer, path: str) -> str:
    """Write model (HF safetensors) and tokenizer to `path` atomically (temp dir, then rename)."""
    if jax.process_index() != 0:
        return path
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_hf_checkpoint(model, tmp)
    if hasattr(tokenizer, "model_proto"):
        tokenizer.save(os.path.join(tmp, "tokenizer.model"))
    elif hasattr(tokenizer, "tok"):
        tokenizer.tok.save(os.path.join(tmp, "tokenizer.json"))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def load_model(path: str, *, dtype="float32", allowed_root: str = "", **config_overrides):
    """(model, tokenizer) from a directory written by `export_model` or a Hugging Face checkpoint.

    `allowed_root` (config `model.allowed_root`), when set, confines `path` to that directory (`safe_path`).
    Weights are read from safetensors only (no pickle); a file that is not safetensors raises CheckpointError.
    """
    if allowed_root:
        path = safe_path(path, allowed_root)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model.checkpoint={path!r}: no such directory")
    model = load_hf_checkpoint(path, dtype=jnp.dtype(dtype), **config_overrides)
    sp = os.path.join(path, "tokenizer.model")
    tokenizer = load_tokenizer(sp if os.path.exists(sp) else path)
    return model, tokenizer
