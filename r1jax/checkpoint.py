"""Checkpoints: orbax for resumable training state, Hugging Face safetensors for finished models.

Training state (params, optimizer state, step, rng) is saved with the data-iterator state and a small JSON of
the run's identity (group size, model shape, data source) under WORKDIR/checkpoints/<step>/. Orbax writes each
step into a temporary directory and renames it on commit, so a killed save is never listed. On restart the
latest committed step is restored; if it is damaged the previous one is tried, with a warning naming the step.

A finished stage exports its model as a Hugging Face checkpoint directory (config.json + model.safetensors)
plus its tokenizer, which is what the next stage (or transformers) loads.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class IncompatibleCheckpointError(ValueError):
    pass


class Checkpointer:
    """Save / restore of {'state': pytree, 'data': json, 'meta': json} steps under `directory`."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True, on_save_error="raise"):
        if on_save_error not in ("raise", "continue"):
            raise ValueError(f"checkpoint.on_save_error={on_save_error!r}: expected 'raise' or 'continue'")
        self.directory = os.path.abspath(directory)
        self.on_save_error = on_save_error
        self.save_failures = 0
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict, meta: dict) -> bool:
        """Start saving `step` (async); False (and counted) when it fails and on_save_error='continue'."""
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave(data_state),
                    meta=ocp.args.JsonSave(meta),
                ),
                force=True,
            )
            return True
        except Exception as e:  # disk full, unwritable workdir: the previous step stays valid
            self.save_failures += 1
            if self.on_save_error == "raise":
                raise RuntimeError(f"checkpoint save of step {step} to {self.directory} failed: {e}") from e
            log.warning("checkpoint save of step %d failed (%s); previous checkpoint kept, training goes on", step, e)
            return False

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            self.save_failures += 1
            if self.on_save_error == "raise":
                raise RuntimeError(f"async checkpoint save to {self.directory} failed: {e}") from e
            log.warning("async checkpoint save failed (%s); previous checkpoint kept", e)

    def restore_latest(self, abstract_state, meta: dict | None = None):
        """(step, state, data_state) of the newest usable step, or None when there is none.

        `abstract_state` holds jax.ShapeDtypeStruct leaves with the target shardings (any mesh). `meta` is checked
        against the saved one; a difference raises IncompatibleCheckpointError naming the fields.
        """
        steps = self.all_steps()
        if not steps:
            return None
        errors = []
        for step in reversed(steps):
            try:
                saved_meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            except Exception as e:
                errors.append(f"step {step}: {e}")
                log.warning("checkpoint step %d is damaged (%s); trying the previous step", step, _short(e))
                continue
            if meta is not None:
                check_compatible(saved_meta, meta)
            try:
                out = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                    ),
                )
            except Exception as e:
                errors.append(f"step {step}: {e}")
                log.warning("checkpoint step %d is damaged (%s); trying the previous step", step, _short(e))
                continue
            return step, out["state"], out["data"]
        raise RuntimeError(
            f"no usable checkpoint in {self.directory}: every step is damaged ({'; '.join(map(_short, errors))}). "
            "Delete the directory to start fresh."
        )

    def reached_preemption(self, step: int) -> bool:
        """True on every host once any host got a preemption notice (orbax's sync point; multi-host)."""
        return self.manager.reached_preemption(step)

    def close(self) -> None:
        self.wait()
        self.manager.close()


def _short(e) -> str:
    s = str(e).splitlines()[0] if str(e) else type(e).__name__
    return s[:300]


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
    from r1jax.models import save_hf_checkpoint

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


def load_model(path: str, *, dtype="float32", **config_overrides):
    """(model, tokenizer) from a directory written by `export_model` or a Hugging Face checkpoint."""
    import jax.numpy as jnp

    from r1jax.models import load_hf_checkpoint
    from r1jax.tokenizer import load_tokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"model.checkpoint={path!r}: no such directory")
    model = load_hf_checkpoint(path, dtype=jnp.dtype(dtype), **config_overrides)
    sp = os.path.join(path, "tokenizer.model")
    tokenizer = load_tokenizer(sp if os.path.exists(sp) else path)
    return model, tokenizer
