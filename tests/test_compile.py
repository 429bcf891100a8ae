"""`r1jax compile`: a stage's programs compiled for a TPU topology through libtpu's compile-only client (no TPU),
and the abstract pieces it is built from (train state, validation, sampler placement), which need no libtpu.

The TPU tests compile a one-layer copy of the tiny preset so that they take seconds; the real presets are compiled
by the command itself (docs/scaling.md, benchmarks/RESULTS.md) and by the slow test at the Qwen2.5-0.5B head."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from r1jax import config_lib, rollouts, sharding, train_state
from r1jax.main import run
from r1jax.models import PRESETS, get_preset, init_model
from r1jax.trainers import grpo_config

REPO = pathlib.Path(__file__).resolve().parents[1]
R1_ZERO = str(REPO / "experiments" / "r1_zero.py")

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed (pip install 'jax[tpu]'): compiling for a TPU topology needs its compile-only "
    "client",
)


def _specs(tree):
    return jax.tree.map(lambda x: (x.shape, str(x.dtype), x.sharding.spec), tree)


STATE_SCRIPT = """
import jax
from r1jax import sharding, train_state
from r1jax.models import get_preset, init_model

mesh = sharding.make_mesh((2, 2, 2))
cfg = get_preset("tiny", num_layers=2)
optimizer = train_state.make_optimizer(train_state.optimizer_config(), 10)
graphdef, real, _ = train_state.create_train_state(init_model(cfg, 0), optimizer, mesh, seed=0)
abs_graphdef, abstract, shardings = train_state.abstract_train_state(cfg, optimizer, mesh)
assert abs_graphdef == graphdef
assert jax.tree.structure(abstract) == jax.tree.structure(real) == jax.tree.structure(shardings)
kinds = set()
for r, a in zip(jax.tree.leaves(real), jax.tree.leaves(abstract)):
    assert (r.shape, r.dtype) == (a.shape, a.dtype), (r, a)
    assert r.sharding.is_equivalent_to(a.sharding, r.ndim), (r.shape, r.sharding, a.sharding)
    kinds.add(str(a.sharding.spec))
print(sorted(kinds))
"""


def test_abstract_train_state_matches_the_real_one(tmp_path, subprocess_env):
    """On a (2, 2, 2) mesh of 8 CPU devices: shapes, dtypes and shardings of parameters, optimizer state and
    counters equal create_train_state's (moments sharded like their parameter, counts replicated)."""
    script = tmp_path / "state.py"
    script.write_text(STATE_SCRIPT)
    env = dict(subprocess_env, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "'fsdp'" in proc.stdout and "'tensor'" in proc.stdout  # the comparison covered sharded leaves


def test_validate_shapes_needs_neither_files_nor_live_devices(monkeypatch):
    c = config_lib.load_config(R1_ZERO + ":qwen2.5-0.5b", ["--config.mesh.shape=(1,4,1)"])

    def no_devices():
        raise AssertionError("validate_shapes asked for the live devices")

    monkeypatch.setattr(jax, "device_count", no_devices)
    grpo_config.validate_shapes(c, 4)  # no checkpoint, no tokenizer: shapes only
    with pytest.raises(ValueError, match=r"rl.prompts_per_step=6: not divisible by the data-parallel size 4"):
        grpo_config.validate_shapes(config_lib.apply_overrides(c, ["rl.prompts_per_step=6"]), 4)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="model.checkpoint=''"):  # training still needs its weights
        grpo_config.validate(config_lib.load_config(R1_ZERO + ":qwen2.5-0.5b", ["--config.mesh.shape=(1,1,1)"]))


def test_sampler_placement_abstract_equals_what_it_places():
    """SamplerPlacement.abstract gives the shapes, dtypes and shardings its __call__ returns (bf16 sampler copy)."""
    c = config_lib.load_config(R1_ZERO + ":runlocal", ["--config.rl.sampler_dtype=bfloat16"])
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    model = init_model(get_preset("tiny", num_layers=1), 0)
    graphdef, params, nnx_state = train_state.split_model(model)
    params = jax.device_put(params, sharding.param_shardings(nnx_state, mesh))
    placement = rollouts.sampler_placement(c, model, graphdef, mesh)
    abstract = placement.abstract(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                               params))
    assert _specs(abstract) == _specs(placement(params))
    assert {str(x.dtype) for x in jax.tree.leaves(abstract)} == {str(jnp.dtype("bfloat16"))}


# ---------------------------------------------------------------------------------------------------------------
# Compiled for v5e:2x2 (4 chips of 16 GiB) through libtpu

SMALL = [  # a one-layer tiny model, B = 8 rows of 16 + 16 tokens on mesh (1, 4, 1): seconds to compile
    "--config.model.preset=tiny-1layer", "--config.mesh.shape=(1,4,1)", "--config.rl.prompts_per_step=4",
    "--config.rl.group_size=2", "--config.sampling.max_prompt_len=16", "--config.sampling.max_new_tokens=16",
    "--config.eval.num_prompts=0",
]


@pytest.fixture
def one_layer_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "tiny-1layer", PRESETS["tiny"].replace(num_layers=1))


@needs_libtpu
def test_compile_grpo_update_for_v5e_writes_the_report(one_layer_preset, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = run(["compile", "--config", R1_ZERO + ":tiny", "--topology", "v5e:2x2", "--programs", "grpo_update",
              "--json", str(out), *SMALL])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads(out.read_text())
    assert (report["topology"], report["chip"], report["hbm_gib"]) == ("v5e:2x2", "v5e", 16)
    assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    (row,) = report["programs"]
    for key in ("name", "compiled", "fits", "argument_gib", "temp_gib", "total_gib", "compile_s", "flops",
                "mosaic_calls"):
        assert key in row, key
    assert row["name"] == "grpo_update" and row["compiled"] and row["fits"]
    assert row["total_gib"] >= row["argument_gib"] + row["temp_gib"] > 0
    assert row["flops"] > 0 and row["roofline_s"] > 0 and row["compile_s"] > 0
    # kernels 'auto' on a TPU target: the Mosaic kernels inside shard_map (3 calls: the value, dh and dW passes)
    assert row["mosaic_calls"] > 0
    assert "grpo_update" in printed


@needs_libtpu
def test_a_config_that_cannot_fit_exits_nonzero_naming_program_and_shortfall(one_layer_preset, tmp_path, capsys):
    """4,096 rows per chip of 480 tokens: f32 attention logits alone are 14 GiB per layer on a 16 GiB chip."""
    huge = ["--config.rl.prompts_per_step=1024", "--config.rl.group_size=16", "--config.sampling.max_prompt_len=32",
            "--config.sampling.max_new_tokens=448"]
    out = tmp_path / "report.json"
    rc = run(["compile", "--config", R1_ZERO + ":tiny", "--topology", "v5e:2x2", "--programs", "grpo_update",
              "--json", str(out), *SMALL, *huge])
    err = capsys.readouterr().err
    assert rc == 1, err
    (row,) = json.loads(out.read_text())["programs"]
    assert not row["fits"] and row["shortfall_gib"] > 1
    assert "grpo_update does not" in err and "GiB over the usable 14.4 GiB per chip" in err
    assert "fewer rows per device (now 4096" in err and "model.remat=True" in err


@needs_libtpu
def test_num_slices_put_the_data_axis_across_slices(one_layer_preset, capsys):
    """Two v5e:2x2 slices are 8 devices; only 'data' may cross slices, so (1, 8, 1) is refused before compiling."""
    small = [o for o in SMALL if not o.startswith("--config.mesh")]
    rc = run(["compile", "--config", R1_ZERO + ":tiny", "--topology", "v5e:2x2", "--num-slices", "2",
              "--config.mesh.shape=(1,8,1)", *small, "--config.rl.prompts_per_step=8"])
    assert rc == 2
    assert "--num-slices=2 the 'data' axis (1) must be a multiple of the slices" in capsys.readouterr().err


@needs_libtpu
@pytest.mark.slow
def test_compile_every_grpo_program_at_the_qwen_0_5b_head(monkeypatch, tmp_path):
    """All programs of a GRPO step with μ = 2 and β > 0 (update, log-prob pass, rollout, prefill, decode step,
    evaluation rollout) at Qwen2.5-0.5B's shapes cut to one layer (minutes on 2 cores)."""
    monkeypatch.setitem(PRESETS, "qwen-1layer", PRESETS["qwen2.5-0.5b"].replace(num_layers=1))
    out = tmp_path / "report.json"
    rc = run(["compile", "--config", R1_ZERO + ":qwen2.5-0.5b", "--topology", "v5e:2x2", "--json", str(out),
              "--config.model.preset=qwen-1layer", "--config.mesh.shape=(1,4,1)", "--config.rl.mu=2",
              "--config.rl.prompts_per_step=4", "--config.rl.group_size=4", "--config.sampling.max_new_tokens=64",
              "--config.sampling.max_prompt_len=64", "--config.eval.num_prompts=4", "--config.eval.num_samples=2"])
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["programs"]]
    assert names == ["grpo_update", "policy_logps", "sampler_rollout_static", "sampler_prefill",
                     "sampler_decode_step", "eval_rollout_static"]
    assert rc == 0 and all(r["compiled"] and r["fits"] for r in report["programs"])
    by_name = {r["name"]: r for r in report["programs"]}
    # π_ref (β > 0) is resident beside the update; the optimizer state beside the log-prob pass and the sampler
    assert by_name["policy_logps"]["resident_gib"] > by_name["grpo_update"]["resident_gib"] > 0
    assert by_name["sampler_decode_step"]["runs"] == 64
