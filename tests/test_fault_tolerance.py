"""Fault tolerance of the GRPO trainer (issue 7): kill it anywhere, corrupt it, feed it NaN — and lose nothing.

Runs of the real CLI (`python -m r1jax.main train`) in child processes, on a tiny base model and a test reward
with spread (so params move every step), compared bit for bit with an uninterrupted run: params (the exported
safetensors bytes), metrics (last record per step, timing keys left out) and the ledger of prompt ids. The
checkpoint-level cases (corruption, failing saves) also run in this process on small pytrees. Children share
the session's compilation cache (conftest `subprocess_env`), so after the first run each costs seconds.

The 10-kill campaign is `@pytest.mark.slow`; the default suite kills 3 times (and 5 times for the ledger test).
"""

from __future__ import annotations

import errno
import glob
import io
import json
import logging
import os
import pathlib
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from r1jax import checkpoint as ckpt_lib
from r1jax import config_lib
from r1jax.data import archive
from r1jax.data import tasks as tasks_lib
from r1jax.trainers import common
from r1jax.trainers import grpo as grpo_trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 8
RUN_TIMEOUT_S = 300

REWARDS_MODULE = '''
"""Test reward with spread in every group (distinct characters of the completion), so every step moves params."""


def distinct_chars(completions):
    return [len(set(c)) / 20 for c in completions]
'''


# ---------------------------------------------------------------------------------------------------------------
# Helpers: running the CLI, reading what a run leaves behind


@pytest.fixture(scope="module")
def spec(tmp_path_factory, reward_experiment) -> str:
    """experiments/r1_zero.py:runlocal with the test reward ft_test_rewards:distinct_chars."""
    directory = tmp_path_factory.mktemp("ft_experiment")
    return reward_experiment(directory, "ft_test", REWARDS_MODULE, "distinct_chars") + ":runlocal"


@pytest.fixture(scope="module")
def overrides(tiny_base_model) -> list[str]:
    """The command every run shares (async saves every step, so kills land in and around saves)."""
    return [
        f"--config.model.checkpoint={tiny_base_model}",
        f"--config.rl.num_steps={NUM_STEPS}",
        "--config.optim.learning_rate=3e-3",
        "--config.optim.warmup_steps=0",
        "--config.checkpoint.every=1",
        "--config.checkpoint.async_save=True",
    ]


def _cmd(spec, workdir, overrides):
    return [sys.executable, "-m", "r1jax.main", "train", "--config", spec, "--workdir", str(workdir), *overrides]


def _run(spec, workdir, overrides, env, expect_ok=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _cmd(spec, workdir, overrides), env=env, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    if expect_ok:
        assert proc.returncode == 0, f"run in {workdir} failed:\n{proc.stderr[-4000:]}"
    return proc


def _popen(spec, workdir, overrides, env, log_path) -> subprocess.Popen:
    """A run in its own process group (its reward workers die with it)."""
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            _cmd(spec, workdir, overrides),
            env=env,
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def _metrics(workdir) -> dict[int, dict]:
    """Last record per step (a step's metrics and its eval are merged), timing keys (perf/*) left out."""
    by_step: dict[int, dict] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            by_step.setdefault(rec["step"], {}).update(
                {k: v for k, v in rec.items() if not any(part.startswith("perf") for part in k.split("/"))}
            )
    return by_step


def _ledger(workdir) -> list[dict]:
    with open(os.path.join(workdir, "ledger.jsonl")) as f:
        return [json.loads(line) for line in f]


def _model_bytes(workdir) -> bytes:
    return pathlib.Path(workdir, "model", "model.safetensors").read_bytes()


def _ckpt_dir(workdir) -> str:
    return os.path.join(workdir, "checkpoints")


def _committed_steps(workdir) -> list[int]:
    """What a restart would list (orbax: integer-named step directories; temporaries are `<step>.orbax-...`)."""
    return ckpt_lib.Checkpointer(_ckpt_dir(workdir)).all_steps()


def _load_state(workdir, step) -> dict:
    manager = ocp.CheckpointManager(_ckpt_dir(workdir))
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return jax.tree.map(np.asarray, out["state"])


def _trees_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb))


def _resumed_step(log_text: str) -> int | None:
    found = re.findall(r"resumed from checkpoint step (\d+)", log_text)
    return int(found[-1]) if found else None


def _assert_same_as_reference(workdir, reference) -> dict:
    """Params (exported safetensors, byte for byte), metrics and ledger equal; returns what was compared."""
    ref_bytes, got_bytes = _model_bytes(reference), _model_bytes(workdir)
    assert got_bytes == ref_bytes, "final params differ from the uninterrupted run"
    ref_metrics, got_metrics = _metrics(reference), _metrics(workdir)
    assert sorted(got_metrics) == sorted(ref_metrics) == list(range(1, NUM_STEPS + 1))
    for step in ref_metrics:  # compared as JSON text, so that NaN equals NaN
        assert json.dumps(got_metrics[step], sort_keys=True) == json.dumps(ref_metrics[step], sort_keys=True), (
            f"metrics of step {step} differ"
        )
    assert _ledger(workdir) == _ledger(reference)
    values = sum(map(len, ref_metrics.values()))
    return {"param_bytes": len(got_bytes), "steps": len(ref_metrics), "metric_values": values}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, spec, overrides, subprocess_env) -> dict:
    """Two uninterrupted runs of the same command, side by side (one compile's wall time on 2 cores)."""
    root = tmp_path_factory.mktemp("ft_reference")
    runs = {name: root / name for name in ("a", "b")}
    procs = {
        name: subprocess.Popen(
            _cmd(spec, wd, overrides),
            env=subprocess_env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, wd in runs.items()
    }
    for name, p in procs.items():
        _, err = p.communicate(timeout=RUN_TIMEOUT_S)
        assert p.returncode == 0, f"reference run {name} failed:\n{err[-4000:]}"
    return {name: str(wd) for name, wd in runs.items()}


# ---------------------------------------------------------------------------------------------------------------
# 1 + 3. Kill anywhere (SIGKILL, including inside an async save); the restarted command resumes and ends bit-exact


def _wait_for(predicate, proc, timeout_s=120.0, poll_s=0.002) -> bool:
    """True once predicate() holds; False when the process exited first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return bool(predicate())
        time.sleep(poll_s)
    raise TimeoutError("the run made no progress")


def _ledger_steps(workdir) -> int:
    path = os.path.join(workdir, "ledger.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if line.endswith("\n"))


def _tmp_dirs(workdir) -> set[str]:
    return set(glob.glob(os.path.join(_ckpt_dir(workdir), "*.orbax-checkpoint-tmp")))


def _step_dirs(workdir) -> list[int]:
    d = _ckpt_dir(workdir)
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _one_start(spec, workdir, overrides, env, log_path, mode, delay_s, expected_resume) -> dict:
    """One start of the command, SIGKILLed per `mode` (or run to the end: 'finish'); what happened.

    'startup': `delay_s` after the start (imports, compilation, restore or the first steps);
    'step': `delay_s` s after this process committed a checkpoint; 'save': after this process committed a
    checkpoint, the moment the next `<step>.orbax-checkpoint-tmp` directory appears (an async save in flight).
    """
    offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    done = expected_resume or 0

    def log_text():
        with open(log_path, errors="replace") as f:
            f.seek(offset)
            return f.read()

    tmp_before = _tmp_dirs(workdir)  # leftovers of earlier kills do not count as this one's
    proc = _popen(spec, workdir, overrides, env, log_path)
    if mode == "startup":
        time.sleep(delay_s)
    elif mode in ("step", "save"):
        _wait_for(lambda: max(_step_dirs(workdir), default=0) > done, proc, poll_s=0.005)
        tmp_before = _tmp_dirs(workdir)
        if mode == "step":
            time.sleep(delay_s)
        else:
            _wait_for(lambda: _tmp_dirs(workdir) - tmp_before, proc)
    killed = during_save = False
    if mode == "finish":
        assert proc.wait(timeout=RUN_TIMEOUT_S) == 0, log_text()[-4000:]
    elif proc.poll() is None:
        _kill_group(proc)
        killed, during_save = True, bool(_tmp_dirs(workdir) - tmp_before)
    return {"log": log_text(), "killed": killed, "during_save": during_save}


def _kill_campaign(spec, workdir, overrides, env, modes, seed) -> dict:
    """Run the same command over and over, SIGKILLing it per `modes`, then once to the end.

    Delays are seeded random. After each kill the committed steps are listed (a temporary is never among them,
    every listed one is complete), and the next start must resume from the newest of them.
    """
    rng = random.Random(seed)
    overrides = [*overrides, "--config.debug.step_sleep_s=0.15"]
    log_path = os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + ".log")
    stats = {"kills": 0, "kills_during_save": 0, "resumed_from": []}
    expected_resume = None
    for i, mode in enumerate([*modes, "finish"]):
        delay_s = rng.uniform(0.5, 4.0) if mode == "startup" else rng.uniform(0.0, 0.5)
        out = _one_start(spec, workdir, overrides, env, log_path, mode, delay_s, expected_resume)
        stats["kills"] += out["killed"]
        stats["kills_during_save"] += out["during_save"]
        text = out["log"]
        assert "is damaged" not in text, f"run {i} met a damaged (half-written?) checkpoint:\n{text[-3000:]}"
        if mode != "startup":  # a process killed during its imports never got to restore anything
            assert _resumed_step(text) == expected_resume, f"run {i} did not resume from step {expected_resume}"
            stats["resumed_from"].append(expected_resume)
        committed = _committed_steps(workdir)
        for step in committed:  # listed steps are complete: every item committed
            for item in ("state", "data", "meta", "integrity"):
                assert os.path.isdir(os.path.join(_ckpt_dir(workdir), str(step), item)), (step, item)
        expected_resume = max(committed) if committed else None
    return stats


def test_kill_anywhere_resumes_bit_exact(tmp_path, spec, overrides, subprocess_env, reference):
    """3 SIGKILLs (one inside an async save); the restarted command ends with the uninterrupted run's results."""
    stats = _kill_campaign(spec, str(tmp_path / "run"), overrides, subprocess_env, ["save", "step", "step"], seed=0)
    compared = _assert_same_as_reference(str(tmp_path / "run"), reference["a"])
    assert stats["kills"] == 3 and stats["kills_during_save"] >= 1, stats
    resumed = stats["resumed_from"]  # every start after a kill resumed further along
    assert resumed[0] is None and resumed[1] >= 1 and all(a < b for a, b in zip(resumed[1:], resumed[2:])), stats
    print("kill campaign:", stats, compared)


@pytest.mark.slow
def test_kill_anywhere_ten_times(tmp_path, spec, overrides, subprocess_env, reference):
    """10 SIGKILLs: 5 after progress (3 inside an async save), 5 at random moments of start-up and first steps."""
    modes = ["save", "startup", "step", "startup", "save", "startup", "step", "startup", "save", "startup"]
    stats = _kill_campaign(spec, str(tmp_path / "run"), overrides, subprocess_env, modes, seed=1)
    compared = _assert_same_as_reference(str(tmp_path / "run"), reference["a"])
    assert stats["kills"] >= 9 and stats["kills_during_save"] >= 2, stats
    print("kill campaign (10):", stats, compared)


def test_no_data_replayed_or_skipped_over_five_kills(tmp_path, spec, overrides, subprocess_env, reference):
    """5 kill/resume cycles: the ledger of prompt ids (per step, in order) is the uninterrupted run's, exactly."""
    workdir = str(tmp_path / "run")
    stats = _kill_campaign(spec, workdir, overrides, subprocess_env, ["step", "save", "step", "save", "step"], seed=2)
    ledger, ref = _ledger(workdir), _ledger(reference["a"])
    assert [r["step"] for r in ledger] == list(range(1, NUM_STEPS + 1))
    assert ledger == ref
    ids = [i for r in ledger for i in r["ids"]]
    assert len(ids) == NUM_STEPS * 4  # P = 4 prompts per step, none twice in an epoch of 64
    assert len(set(ids)) == len(ids)
    assert stats["kills"] >= 4, stats
    dropped = os.path.join(workdir, "ledger.jsonl.dropped")
    print("ledger cycles:", stats, "dropped records:", sum(1 for _ in open(dropped)) if os.path.exists(dropped) else 0)


# ---------------------------------------------------------------------------------------------------------------
# 2. Preemption: SIGTERM saves the current step and exits 0; the restart resumes there


def test_sigterm_saves_and_exits_cleanly(tmp_path, spec, overrides, subprocess_env, reference):
    workdir = str(tmp_path / "run")
    log_path = str(tmp_path / "run.log")
    args = [*overrides, "--config.checkpoint.every=100", "--config.debug.step_sleep_s=0.3"]
    proc = _popen(spec, workdir, args, subprocess_env, log_path)
    _wait_for(lambda: _ledger_steps(workdir) >= 2, proc, poll_s=0.01)
    os.kill(proc.pid, signal.SIGTERM)  # the notice goes to the trainer, as a scheduler sends it
    assert proc.wait(timeout=RUN_TIMEOUT_S) == 0
    text = pathlib.Path(log_path).read_text()
    stopped = int(re.findall(r'"preempted_at": (\d+)', text)[-1])
    assert 2 <= stopped < NUM_STEPS
    assert _committed_steps(workdir) == [stopped]  # every=100: only the preemption save
    assert _ledger_steps(workdir) == stopped
    resumed = _run(spec, workdir, args[:-1], subprocess_env)
    assert _resumed_step(resumed.stderr) == stopped
    _assert_same_as_reference(workdir, reference["a"])


# ---------------------------------------------------------------------------------------------------------------
# 4. Corrupted checkpoints: fall back to the previous step with a warning naming the damaged one, or stop


def _tiny_state(seed):
    r = np.random.RandomState(seed)
    return {
        "params": {"w": jnp.asarray(r.randn(64, 64), jnp.float32), "b": jnp.asarray(r.randn(100), jnp.float32)},
        "step": jnp.int32(seed),
    }


def _abstract(tree):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _save_steps(directory, steps, **kw) -> ckpt_lib.Checkpointer:
    c = ckpt_lib.Checkpointer(str(directory), **kw)
    for s in steps:
        assert c.save(s, _tiny_state(s), {"position": s}, {"G": 4})
    c.wait()
    return c


def _array_files(directory, step) -> list[str]:
    files = glob.glob(os.path.join(str(directory), str(step), "state", "ocdbt.process_0", "d", "*"))
    assert files, "no OCDBT array files found"
    return files


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip(path):
    data = bytearray(pathlib.Path(path).read_bytes())
    data[len(data) // 2] ^= 0x10
    pathlib.Path(path).write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip"])
def test_damaged_latest_step_falls_back(tmp_path, caplog, damage):
    """Each kind of damage to step 3's array files: step 2 is restored (exact values), step 3 is named and moved
    aside, and a new save of step 3 then works. A flipped byte restores silently in orbax: the checksum sees it."""
    _save_steps(tmp_path, [1, 2, 3]).close()
    for path in _array_files(tmp_path, 3):
        {"truncate": _truncate, "delete": os.remove, "flip": _flip}[damage](path)
    c = ckpt_lib.Checkpointer(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="r1jax.checkpoint"):
        step, state, data = c.restore_latest(_abstract(_tiny_state(0)), {"G": 4})
    assert step == 2 and data == {"position": 2}
    assert _trees_equal(jax.tree.map(np.asarray, state), jax.tree.map(np.asarray, _tiny_state(2)))
    assert "checkpoint step 3 is damaged" in caplog.text
    assert c.all_steps() == [1, 2] and glob.glob(str(tmp_path / "damaged" / "3.*"))
    assert c.save(3, _tiny_state(33), {"position": 3}, {"G": 4})
    c.close()
    assert ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(_abstract(_tiny_state(0)))[0] == 3


def test_old_steps_leave_the_listing_in_one_rename(tmp_path):
    """max_to_keep: old steps are renamed into deleting/ and removed there, so a kill in the middle of a deletion
    never leaves a listed step with items missing; the next start clears what such a kill left."""
    c = _save_steps(tmp_path, [1, 2, 3, 4], max_to_keep=2)
    c.close()
    assert c.all_steps() == [3, 4] and sorted(os.listdir(tmp_path)) == ["3", "4"]
    (tmp_path / "deleting" / "2.123" / "state").mkdir(parents=True)  # as a kill during rmtree leaves it
    assert ckpt_lib.Checkpointer(str(tmp_path)).all_steps() == [3, 4] and sorted(os.listdir(tmp_path)) == ["3", "4"]


def test_orbax_alone_loads_a_flipped_byte(tmp_path):
    """Why the checksum exists: orbax restores a bit-flipped array file without complaint, with wrong values."""
    _save_steps(tmp_path, [1]).close()
    for path in _array_files(tmp_path, 1):
        _flip(path)
    manager = ocp.CheckpointManager(str(tmp_path))
    out = manager.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(_tiny_state(0)))))
    assert not _trees_equal(jax.tree.map(np.asarray, out["state"]), jax.tree.map(np.asarray, _tiny_state(1)))
    with pytest.raises(RuntimeError, match="every step is damaged.*checksum mismatch"):
        ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(_abstract(_tiny_state(0)))


def test_every_step_damaged_stops_with_a_clear_error(tmp_path):
    _save_steps(tmp_path, [1, 2]).close()
    for step in (1, 2):
        for path in _array_files(tmp_path, step):
            _truncate(path)
    with pytest.raises(RuntimeError, match=r"no usable checkpoint in .*step 2: .*step 1: .*Delete the directory"):
        ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(_abstract(_tiny_state(0)))
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]  # nothing moved: the evidence stays for inspection


def test_trainer_falls_back_past_a_truncated_step(tmp_path, spec, overrides, subprocess_env, reference):
    """The reference run's last checkpoints (steps N-2, N-1, N), step N truncated: the same command warns about
    step N, resumes from N-1, redoes step N and ends with the uninterrupted run's params, metrics and ledger."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    shutil.copytree(_ckpt_dir(reference["a"]), _ckpt_dir(workdir))
    for name in ("ledger.jsonl", "metrics.jsonl"):
        shutil.copy(os.path.join(reference["a"], name), workdir / name)
    assert _committed_steps(workdir) == [NUM_STEPS - 2, NUM_STEPS - 1, NUM_STEPS]
    for path in _array_files(_ckpt_dir(workdir), NUM_STEPS):
        _truncate(path)
    proc = _run(spec, workdir, overrides, subprocess_env)
    assert f"checkpoint step {NUM_STEPS} is damaged" in proc.stderr
    assert _resumed_step(proc.stderr) == NUM_STEPS - 1
    _assert_same_as_reference(str(workdir), reference["a"])


# ---------------------------------------------------------------------------------------------------------------
# 5. Resume with changed settings: refused naming the change, unless restart_from_weights


@pytest.fixture
def closed_rewards(monkeypatch):
    """In-process train() calls start reward worker processes; close them when the test ends."""
    made = []
    original = grpo_trainer.make_rewards

    def make_rewards(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(grpo_trainer, "make_rewards", make_rewards)
    yield made
    for fn in made:
        fn.close()


def _config(spec, overrides):
    return config_lib.load_config(spec, [o.removeprefix("--config.") for o in overrides])


def _write_model(src_dir, dst_dir, **changes):
    """A copy of the model in src_dir (tokenizer too), re-initialised with `changes` to its shape when given."""
    from r1jax.models import init_model, load_hf_checkpoint, save_hf_checkpoint

    shutil.rmtree(dst_dir, ignore_errors=True)
    shutil.copytree(src_dir, dst_dir)
    if changes:
        model = load_hf_checkpoint(src_dir)
        save_hf_checkpoint(init_model(model.cfg.replace(**changes), seed=1), str(dst_dir))


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory, spec, overrides, subprocess_env) -> tuple[str, list[str]]:
    """A workdir with one committed step, and the command that made it."""
    workdir = tmp_path_factory.mktemp("ft_one_step") / "run"
    args = [o for o in overrides if "num_steps" not in o] + ["--config.rl.num_steps=1", "--config.export=False"]
    _run(spec, workdir, args, subprocess_env)
    assert _committed_steps(workdir) == [1]
    return str(workdir), args


def test_resume_with_changed_settings_is_refused(tmp_path, spec, one_step_run, tiny_base_model, closed_rewards):
    workdir, args = one_step_run
    train_file = tmp_path / "train.jsonl"  # another data source: the same kind of prompts, from a file
    task = tasks_lib.get_task("arithmetic")
    train_file.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in task.generate(16, seed=5)))
    changes = {
        "rl.group_size": (["--config.rl.group_size=2"], "rl.group_size: checkpoint has 4, config has 2"),
        "data.train_files": (
            [f"--config.data.train_files={train_file}"],
            f"data.train_files: checkpoint has [], config has ['{train_file}']",
        ),
    }
    for field, (extra, message) in changes.items():
        with pytest.raises(ckpt_lib.IncompatibleCheckpointError) as e:
            grpo_trainer.train(_config(spec, [*args, *extra]), workdir)
        assert message in str(e.value) and "restart_from_weights" in str(e.value), field
        assert len([part for part in str(e.value).split("; ") if "checkpoint has" in part]) == 1, str(e.value)
    # a model with 2 layers instead of 4 (its own directory, so model.checkpoint is named too)
    other_model = tmp_path / "model"
    _write_model(tiny_base_model, other_model, num_layers=2)
    with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match=r"model_shape: .*'num_layers': 4.*'num_layers': 2"):
        grpo_trainer.train(_config(spec, [*args, f"--config.model.checkpoint={other_model}"]), workdir)
    assert _committed_steps(workdir) == [1] and _ledger_steps(workdir) == 1  # refusals touch nothing


def test_restart_from_weights(tmp_path, spec, one_step_run, subprocess_env):
    """A changed data order (data.train_seed) with restart_from_weights: a new run from the checkpoint's params,
    step 0, fresh optimizer; the old steps are set aside at its first save; the same command rerun resumes it."""
    workdir = tmp_path / "run"
    shutil.copytree(one_step_run[0], workdir)
    old = _load_state(workdir, 1)
    new_args = [
        *one_step_run[1],
        "--config.data.train_seed=7",
        "--config.checkpoint.restart_from_weights=True",
        "--config.optim.learning_rate=1e-30",  # so the new step 1 keeps the old weights bit for bit
    ]
    proc = _run(spec, workdir, new_args, subprocess_env)
    assert "restart_from_weights" in proc.stderr and "data.train_seed: checkpoint has 1, config has 7" in proc.stderr
    assert _resumed_step(proc.stderr) is None
    assert _committed_steps(workdir) == [1] and glob.glob(str(workdir / "checkpoints" / "superseded" / "1.*"))
    new = _load_state(workdir, 1)
    assert _trees_equal(new["params"], old["params"])  # started from the checkpoint's weights (lr ≈ 0)
    assert not _trees_equal(new["opt_state"], old["opt_state"])  # a fresh optimizer, one update old
    assert [r["step"] for r in _ledger(workdir)] == [1]  # the old run's line went to ledger.jsonl.dropped
    assert (workdir / "ledger.jsonl.dropped").read_text().count("\n") == 1
    rerun = _run(spec, workdir, new_args, subprocess_env)
    assert _resumed_step(rerun.stderr) == 1, rerun.stderr[-3000:]
    assert "restart_from_weights:" not in rerun.stderr


# ---------------------------------------------------------------------------------------------------------------
# 6. NaN gradients: the update is skipped and counted; too many in a row stop the run with a usable checkpoint


def test_nan_updates_are_skipped_counted_and_stop_the_run(tmp_path, spec, overrides, subprocess_env):
    workdir = tmp_path / "run"
    args = [o for o in overrides if "num_steps" not in o] + [
        "--config.rl.num_steps=8",
        "--config.debug.inject_nan_steps=(2, 4, 5)",
        "--config.checkpoint.max_to_keep=10",
        "--config.optim.max_consecutive_nonfinite=2",
        "--config.export=False",
    ]
    proc = _run(spec, workdir, args, subprocess_env, expect_ok=False)
    assert proc.returncode != 0
    assert "FloatingPointError: 2 consecutive non-finite updates at step 6" in proc.stderr
    assert _committed_steps(workdir) == [1, 2, 3, 4, 5, 6]
    s = {step: _load_state(workdir, step) for step in range(2, 7)}
    # loop index 2 = step 3: params and optimizer state exactly as after step 2; step 4 trains again
    assert _trees_equal(s[3]["params"], s[2]["params"]) and _trees_equal(s[3]["opt_state"], s[2]["opt_state"])
    assert not _trees_equal(s[4]["params"], s[3]["params"])
    assert _trees_equal(s[6]["params"], s[4]["params"]) and _trees_equal(s[6]["opt_state"], s[4]["opt_state"])
    assert [int(s[k]["step"]) for k in range(2, 7)] == [2, 2, 3, 3, 3]  # applied updates only
    assert [int(s[k]["nonfinite_total"]) for k in range(2, 7)] == [0, 1, 1, 2, 3]
    assert int(s[6]["nonfinite_consecutive"]) == 2
    m = _metrics(workdir)
    assert [m[k]["train/nonfinite_total"] for k in range(1, 7)] == [0, 0, 1, 1, 2, 3]
    assert [m[k]["train/update_skipped"] for k in range(1, 7)] == [0, 0, 1, 0, 1, 1]
    # the checkpoint it stopped with is usable: the same command resumes there (checksums verified) and finishes
    resumed = _run(spec, workdir, args, subprocess_env)
    assert _resumed_step(resumed.stderr) == 6 and "is damaged" not in resumed.stderr
    m = _metrics(workdir)
    assert sorted(m) == list(range(1, 9)) and [m[k]["train/update_skipped"] for k in (7, 8)] == [0, 0]
    final = _load_state(workdir, 8)
    assert int(final["step"]) == 5 and all(np.isfinite(x).all() for x in jax.tree.leaves(final["params"]))


# ---------------------------------------------------------------------------------------------------------------
# 7. Determinism on CPU


def test_same_seed_same_run_other_seed_other_rollouts(tmp_path, spec, overrides, subprocess_env, reference):
    compared = _assert_same_as_reference(reference["b"], reference["a"])
    assert compared["param_bytes"] > 100_000
    other = tmp_path / "seed1"
    _run(
        spec, other, [*overrides, "--config.seed=1", "--config.rl.num_steps=2", "--config.export=False"], subprocess_env
    )
    a, b = _metrics(reference["a"]), _metrics(other)
    rollout_keys = ("rl/reward_mean", "rl/entropy", "rl/completion_length_mean")
    for step in (1, 2):
        assert any(a[step][k] != b[step][k] for k in rollout_keys), step
    assert _ledger(other)[0]["ids"] != _ledger(reference["a"])[0]["ids"]


# ---------------------------------------------------------------------------------------------------------------
# 8. Failing saves (disk full, a file where the checkpoint directory should be)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device (simulated)")


def test_failed_save_is_reported_and_the_previous_step_stays(tmp_path, monkeypatch, caplog):
    c = _save_steps(tmp_path / "continue", [1], on_save_error="continue")
    monkeypatch.setattr(c.manager, "save", _enospc)
    with caplog.at_level(logging.WARNING, logger="r1jax.checkpoint"):
        assert c.save(2, _tiny_state(2), {"position": 2}, {"G": 4}) is False
    assert "checkpoint save of step 2" in caplog.text and "No space left on device" in caplog.text
    assert c.save_failures == 1 and c.all_steps() == [1]
    assert c.restore_latest(_abstract(_tiny_state(0)))[0] == 1

    r = _save_steps(tmp_path / "raise", [1], on_save_error="raise")
    monkeypatch.setattr(r.manager, "save", _enospc)
    with pytest.raises(RuntimeError, match=r"checkpoint save of step 2 to .*raise failed: .*No space left"):
        r.save(2, _tiny_state(2), {"position": 2}, {"G": 4})
    assert r.restore_latest(_abstract(_tiny_state(0)))[0] == 1


def test_failed_async_commit_is_reported(tmp_path, monkeypatch, caplog):
    """The background half of an async save fails (its final rename): reported at the next save, naming the step;
    the step is not listed, the next save works."""
    from orbax.checkpoint._src.path import atomicity

    c = _save_steps(tmp_path, [1], on_save_error="continue")

    async def failing_finalize(self):
        raise OSError(errno.ENOSPC, "No space left on device (simulated)")

    with monkeypatch.context() as m:
        m.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", failing_finalize)
        assert c.save(2, _tiny_state(2), {"position": 2}, {"G": 4})  # started; fails in the background
        with caplog.at_level(logging.WARNING, logger="r1jax.checkpoint"):
            c.wait()
    assert "async checkpoint save of step 2" in caplog.text and c.save_failures == 1
    assert c.save(3, _tiny_state(3), {"position": 3}, {"G": 4})
    c.wait()
    assert c.all_steps() == [1, 3] and c.restore_latest(_abstract(_tiny_state(0)))[0] == 3


def test_file_where_the_checkpoint_directory_should_be(tmp_path, spec, overrides, closed_rewards):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("not a directory")
    with pytest.raises(NotADirectoryError, match=r"checkpoint directory .*/run/checkpoints exists and is not a dir"):
        grpo_trainer.train(_config(spec, overrides), str(workdir))


SAVE_ERROR_DRIVER = '''
"""Runs the GRPO CLI in-process with orbax's commit rename failing for step 2 (disk full), as the test says."""
import errno, sys
from orbax.checkpoint._src.path import atomicity
from r1jax.main import run

original = atomicity.AtomicRenameTemporaryPath.finalize

async def finalize(self):
    if self._final_path.name == "2":
        raise OSError(errno.ENOSPC, "No space left on device (simulated)")
    return await original(self)

atomicity.AtomicRenameTemporaryPath.finalize = finalize
sys.exit(run(sys.argv[1:]))
'''


@pytest.mark.parametrize("on_error", ["continue", "raise"])
def test_trainer_on_save_error(tmp_path, spec, overrides, subprocess_env, on_error):
    driver = tmp_path / "driver.py"
    driver.write_text(SAVE_ERROR_DRIVER)
    workdir = tmp_path / "run"
    args = [o for o in overrides if "num_steps" not in o] + [
        "--config.rl.num_steps=3",
        f"--config.checkpoint.on_save_error={on_error}",
        "--config.export=False",
    ]
    proc = subprocess.run(
        [sys.executable, str(driver), "train", "--config", spec, "--workdir", str(workdir), *args],
        env=subprocess_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert "async checkpoint save of step 2" in proc.stderr and "No space left on device" in proc.stderr
    if on_error == "continue":
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert _committed_steps(workdir) == [1, 3] and sorted(_metrics(workdir)) == [1, 2, 3]
    else:
        assert proc.returncode != 0 and "on_save_error='raise'" in proc.stderr
        assert _committed_steps(workdir) == [1]  # stopped at the next save; step 1 is intact
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(_load_state(workdir, 1)["params"]))


# ---------------------------------------------------------------------------------------------------------------
# 9. Untrusted files


class _Payload:
    """Unpickling this creates `marker`: proof that a loader ran pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_disguised_as_safetensors_is_refused(tmp_path, spec, overrides, tiny_base_model, closed_rewards):
    from r1jax.models import CheckpointError

    model_dir = tmp_path / "model"
    _write_model(tiny_base_model, model_dir)
    marker = tmp_path / "pwned"
    (model_dir / "model.safetensors").write_bytes(pickle.dumps(_Payload(str(marker))))
    args = [o for o in overrides if "model.checkpoint" not in o] + [f"--config.model.checkpoint={model_dir}"]
    with pytest.raises(CheckpointError, match="not a safetensors file.*looks like a pickle"):
        grpo_trainer.train(_config(spec, args), str(tmp_path / "run"))
    assert not marker.exists()


def test_model_path_escaping_the_allowed_root_is_refused(tmp_path, spec, overrides, tiny_base_model, closed_rewards):
    allowed = tmp_path / "allowed"
    _write_model(tiny_base_model, allowed / "model")
    _write_model(tiny_base_model, tmp_path / "outside")
    (allowed / "link").symlink_to(tmp_path / "outside")
    assert ckpt_lib.safe_path(str(allowed / "sub" / ".." / "model"), str(allowed)) == str((allowed / "model").resolve())
    for path in (allowed / ".." / "outside", allowed / "link", tmp_path / "outside"):
        with pytest.raises(ValueError, match="outside the allowed root"):
            ckpt_lib.safe_path(str(path), str(allowed))
    args = [o for o in overrides if "model.checkpoint" not in o] + [
        f"--config.model.checkpoint={allowed}/../outside",
        f"--config.model.allowed_root={allowed}",
    ]
    with pytest.raises(ValueError, match=r"outside.*resolves to .*/outside.*outside the allowed root"):
        grpo_trainer.train(_config(spec, args), str(tmp_path / "run"))
    model, _ = ckpt_lib.load_model(str(allowed / "model"), allowed_root=str(allowed))  # inside: loads
    assert model.cfg.num_layers == 4


def _tar(path, members):
    """members: (TarInfo fields, data or None)."""
    with tarfile.open(path, "w") as tar:
        for fields, data in members:
            info = tarfile.TarInfo(fields.pop("name"))
            for k, v in fields.items():
                setattr(info, k, v)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


@pytest.mark.parametrize(
    "bad, why",
    [
        ({"name": "/tmp/evil.txt"}, "absolute path"),
        ({"name": "data/../../evil.txt"}, "outside"),
        ({"name": "data/link", "type": tarfile.SYMTYPE, "linkname": "../../etc"}, "symlink"),
        ({"name": "data/abs_link", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "symlink"),
        ({"name": "data/hard", "type": tarfile.LNKTYPE, "linkname": "../outside.txt"}, "hard link"),
        ({"name": "data/dev", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, "device"),
    ],
)
def test_unsafe_archive_is_refused_and_writes_nothing(tmp_path, bad, why):
    data = None if bad.get("type") in (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE) else b"evil"
    tar = _tar(tmp_path / "a.tar", [({"name": "data/ok.jsonl"}, b'{"id": 1}\n'), (dict(bad), data)])
    dest = tmp_path / "dest"
    with pytest.raises(archive.UnsafeArchiveError, match=why):
        archive.safe_extract(str(tar), str(dest))
    assert list(dest.rglob("*")) == [] and not (tmp_path / "evil.txt").exists()


def test_safe_archive_extracts(tmp_path):
    tar = _tar(
        tmp_path / "a.tar",
        [
            ({"name": "data/train.jsonl"}, b'{"id": 1}\n'),
            ({"name": "data/alias.jsonl", "type": tarfile.SYMTYPE, "linkname": "train.jsonl"}, None),
        ],
    )
    names = archive.safe_extract(str(tar), str(tmp_path / "dest"))
    assert names == ["data/train.jsonl", "data/alias.jsonl"]
    assert (tmp_path / "dest" / "data" / "alias.jsonl").read_bytes() == b'{"id": 1}\n'


UNSAFE_LOADS = [
    (re.compile(r"\bpickle\.loads?\("), "pickle.load"),
    (re.compile(r"\b(cloudpickle|dill|joblib)\.loads?\("), "pickle-based load"),
    (re.compile(r"allow_pickle\s*=\s*True"), "allow_pickle=True"),
    (re.compile(r"\btorch\.load\((?![^)]*weights_only\s*=\s*True)"), "torch.load without weights_only=True"),
]


def _unsafe_lines(text: str) -> list[str]:
    return [f"{why}: {line.strip()}" for line in text.splitlines() for rx, why in UNSAFE_LOADS if rx.search(line)]


def test_no_unsafe_deserialisation_in_the_package():
    # the patterns catch what they should, and let the safe forms through
    assert len(_unsafe_lines("x = pickle.load(f)\ny = np.load(p, allow_pickle=True)\nz = torch.load(p)")) == 3
    assert _unsafe_lines("w = torch.load(p, map_location='cpu', weights_only=True)\nnp.load(p)") == []
    hits = []
    for root in ("r1jax", "kernels", "experiments", "benchmarks"):
        for path in sorted((REPO / root).rglob("*.py")):
            hits += [f"{path.relative_to(REPO)}: {h}" for h in _unsafe_lines(path.read_text())]
    assert hits == [], "\n".join(hits)


# ---------------------------------------------------------------------------------------------------------------
# Records a killed run appended after its last checkpoint


def test_drop_records_after(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_text('{"step": 1, "ids": [1]}\n{"step": 2, "ids": [2]}\n\n{"step": 3, "ids": [3]}\n{"step": 3, "i')
    assert common.drop_records_after(str(path), 2) == 2
    assert path.read_text() == '{"step": 1, "ids": [1]}\n{"step": 2, "ids": [2]}\n\n'
    assert (tmp_path / "ledger.jsonl.dropped").read_text() == '{"step": 3, "ids": [3]}\n{"step": 3, "i\n'
    assert common.drop_records_after(str(path), 0) == 2 and path.read_text() == "\n"


def test_checksum_sees_any_single_changed_word():
    x = jnp.asarray(np.random.RandomState(0).randn(8, 16), jnp.float32)
    base = ckpt_lib.state_checksums({"x": x})
    for i, j in ((0, 0), (3, 7), (7, 15)):
        y = x.at[i, j].set(jnp.nextafter(x[i, j], jnp.inf))  # the smallest possible change of one value
        assert ckpt_lib.state_checksums({"x": y}) != base
    swapped = x.at[0, 0].set(x[0, 1]).at[0, 1].set(x[0, 0])
    assert ckpt_lib.state_checksums({"x": swapped}) != base
    tree = {"b": jnp.ones((3,), jnp.bfloat16), "k": jnp.arange(4, dtype=jnp.uint32), "f": jnp.array([True, False])}
    assert ckpt_lib.state_checksums(tree) == ckpt_lib.state_checksums(jax.tree.map(jnp.copy, tree))
