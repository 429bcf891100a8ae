"""Bad GRPO configs fail fast: a ValueError that names the field, in under 2 s, before anything is traced or compiled.

Each case goes through the path a user takes (`r1jax.main.run_experiment`: load the experiment file, apply
`--config.x=y` overrides, run the trainer), except the data-parallel checks, which need more devices than the test
process has and call `grpo.validate(config, num_devices=8)` directly. "Batch not divisible by G" cannot be written
as a config: the rollout batch is P·G by construction (rl.prompts_per_step × rl.group_size).

The model directory holds only a config.json (the tiny preset's shape, 512 tokens of context) and no weights, so the
context check must run before any weight is read.
"""

import json
import pathlib
import time

import pytest
from jax import monitoring

from r1jax import config_lib, train_state
from r1jax.main import run_experiment
from r1jax.models import config_to_hf, get_preset
from r1jax.trainers import grpo

R1_ZERO = str(pathlib.Path(__file__).resolve().parents[1] / "experiments" / "r1_zero.py")
TIME_LIMIT_S = 2.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("config_only_model")
    with open(path / "config.json", "w") as f:
        json.dump(config_to_hf(get_preset("tiny", vocab_size=320, max_seq_len=512)), f)
    return str(path)


@pytest.fixture
def compile_events():
    """Names of JAX trace / lowering / compile events recorded while the test runs."""
    events = []

    def listener(name, *_, **__):
        if "/jax/core/compile" in name:
            events.append(name)

    monitoring.register_event_duration_secs_listener(listener)
    yield events
    monitoring.unregister_event_duration_listener(listener)


def _raises_fast(fn, field, events):
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as info:
        fn()
    elapsed = time.perf_counter() - t0
    assert field in str(info.value), f"the error does not name {field!r}: {info.value}"
    assert elapsed < TIME_LIMIT_S, f"{field}: took {elapsed:.2f} s to fail"
    assert not events, f"{field}: compiled before failing: {sorted(set(events))}"
    return str(info.value)


# (override, the field the message must name)
BAD_OVERRIDES = [
    ("rl.group_size=1", "rl.group_size"),
    ("rl.beta=-0.01", "rl.beta"),
    ("rl.epsilon_low=0.0", "rl.epsilon_low"),
    ("rl.epsilon_low=1.0", "rl.epsilon_low"),
    ("rl.epsilon_high=1.5", "rl.epsilon_high"),
    ("rl.epsilon_high=-0.2", "rl.epsilon_high"),
    ("sampling.temperature=0.0", "sampling.temperature"),
    ("sampling.temperature=-1.0", "sampling.temperature"),
    ("optim.learning_rate=0.0", "optim.learning_rate"),
    ("optim.learning_rate=-1e-6", "optim.learning_rate"),
    ("mesh.shape=(3,1,1)", "mesh.shape"),  # product 3 is no device count here (1, or 8 fake devices)
    ("mesh.shape=(2,2,-1)", "mesh.shape"),
    ("sampling.max_new_tokens=600", "sampling.max_new_tokens"),  # 32 + 600 > the model's 512 positions
    ("sampling.max_prompt_len=500", "sampling.max_prompt_len"),  # 500 + 16 > 512
    ("rl.group_sise=4", "rl.group_sise"),  # unknown field (typo)
    ("rll.beta=0.1", "rll"),  # unknown section
]


@pytest.mark.parametrize("override,field", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_override_fails_fast_naming_the_field(override, field, model_dir, tmp_path, compile_events):
    overrides = [f"--config.model.checkpoint={model_dir}", f"--config.{override}"]
    _raises_fast(lambda: run_experiment(R1_ZERO + ":runlocal", str(tmp_path), overrides), field, compile_events)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("mesh,prompts", [((8, 1, 1), 4), ((2, 2, 2), 6), ((1, 4, 2), 2)])
def test_prompts_not_divisible_by_data_parallel_size(mesh, prompts, model_dir, compile_events):
    c = config_lib.load_config(R1_ZERO + ":runlocal", [f"model.checkpoint={model_dir}"])
    c.mesh.shape = mesh
    c.rl.prompts_per_step = prompts
    msg = _raises_fast(lambda: grpo.validate(c, num_devices=8), "rl.prompts_per_step", compile_events)
    assert "data-parallel size" in msg


def test_mesh_product_not_device_count(model_dir, compile_events):
    c = config_lib.load_config(R1_ZERO + ":runlocal", [f"model.checkpoint={model_dir}"])
    c.mesh.shape = (2, 2, 1)
    msg = _raises_fast(lambda: grpo.validate(c, num_devices=8), "mesh.shape", compile_events)
    assert "8" in msg


def test_check_context_names_both_lengths():
    c = grpo.grpo_config()
    c.sampling.max_prompt_len, c.sampling.max_new_tokens = 100, 28
    grpo.check_context(c, 128)  # exactly the context: allowed
    c.sampling.max_new_tokens = 29
    with pytest.raises(ValueError, match=r"sampling.max_prompt_len \+ sampling.max_new_tokens = 129.*max_seq_len=128"):
        grpo.check_context(c, 128)


def test_unknown_experiment_arg_names_it(compile_events):
    _raises_fast(lambda: config_lib.load_config(R1_ZERO + ":runlokal"), "runlokal", compile_events)


def test_the_valid_configs_pass(model_dir):
    """The checks above reject the bad fields only: the shipped config and the divisible meshes pass."""
    c = config_lib.load_config(R1_ZERO + ":runlocal", [f"model.checkpoint={model_dir}"])
    grpo.validate(c, num_devices=1)
    grpo.check_context(c, grpo.model_max_seq_len(c.model))
    for mesh in ((4, 1, 2), (2, 2, 2), (1, 2, 4), (1, 1, -1)):
        c.mesh.shape = mesh
        grpo.validate(c, num_devices=8)  # runlocal's P = 4 prompts split over data·fsdp = 4, 4, 2, 1
    assert grpo.model_max_seq_len(c.model) == 512


def test_grpo_default_has_no_weight_decay():
    """Zero-advantage steps leave params unchanged only without decoupled weight decay (see test_trainer_grpo)."""
    assert grpo.grpo_config().optim.weight_decay == 0.0
    assert train_state.optimizer_config().weight_decay == 0.0
