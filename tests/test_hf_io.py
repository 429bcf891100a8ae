"""Hugging Face interop: parity with transformers' logits and greedy generations, export round trips, and the
errors a broken checkpoint must raise. Goldens come from tests/goldens/make_hf_goldens.py (transformers 5)."""

import json
import os
import pickle
import shutil
import zipfile

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from r1jax.models import (
    PRESETS,
    KVCache,
    RopeScaling,
    compute_logits,
    load_hf_checkpoint,
    save_hf_checkpoint,
)
from r1jax.models.hf_io import CheckpointError, config_from_hf, config_to_hf

GOLDENS = os.path.join(os.path.dirname(__file__), "goldens", "hf")
CASES = ["qwen2_tied", "qwen2_untied", "llama3"]


def _golden(case):
    return dict(np.load(os.path.join(GOLDENS, case, "goldens.npz")))


def _params(model) -> dict:
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _copy_case(case, tmp_path):
    dst = tmp_path / case
    shutil.copytree(os.path.join(GOLDENS, case), dst)
    return dst


def _tensors(path):
    return safetensors.numpy.load_file(str(path / "model.safetensors"))


def _write_tensors(path, tensors):
    safetensors.numpy.save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


@nnx.jit
def _logits(model, tokens_bt):
    return compute_logits(model, tokens_bt)


@nnx.jit
def _greedy_step(model, tokens_bt, mask_bt, cache):
    hidden, cache = model(tokens_bt, mask_bt=mask_bt, cache=cache)
    return jnp.argmax(model.logits(hidden[:, -1]), axis=-1).astype(jnp.int32), cache


def _greedy(model, prompt_ids_pt, prompt_lens_p, new_tokens):
    """Greedy decoding of left-padded prompts through the KV cache (prefill once, then one token per step)."""
    b, t = prompt_ids_pt.shape
    mask_bt = jnp.arange(t)[None] >= (t - jnp.asarray(prompt_lens_p))[:, None]
    cache = KVCache.init(model.cfg, b, t + new_tokens)
    next_b, cache = _greedy_step(model, jnp.asarray(prompt_ids_pt), mask_bt, cache)
    out = [next_b]
    for _ in range(new_tokens - 1):
        next_b, cache = _greedy_step(model, next_b[:, None], jnp.ones((b, 1), bool), cache)
        out.append(next_b)
    return np.stack(out, axis=1)


# ----------------------------------------------------------------------------------------- parity with goldens


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(case):
    g = _golden(case)
    model = load_hf_checkpoint(os.path.join(GOLDENS, case))
    logits_btv = np.asarray(_logits(model, g["logits_tokens_bt"]))
    assert logits_btv.shape == g["logits_btv"].shape
    # The goldens' logits spread over several units, so 1e-4 is tight relative to their scale.
    assert np.abs(g["logits_btv"]).std() > 1.0
    assert np.abs(logits_btv - g["logits_btv"]).max() <= 1e-4


@pytest.mark.parametrize("case", CASES)
def test_greedy_generation_matches_transformers(case):
    g = _golden(case)
    model = load_hf_checkpoint(os.path.join(GOLDENS, case))
    n = g["generate_ids_pn"].shape[1]
    got = _greedy(model, g["prompt_ids_pt"], g["prompt_lens_p"], n)
    np.testing.assert_array_equal(got, g["generate_ids_pn"])


def test_llama3_rope_scaling_matters_at_golden_positions():
    """Without the llama3 rescaling the golden is missed by far: the parity test does test the scaling."""
    g = _golden("llama3")
    model = load_hf_checkpoint(os.path.join(GOLDENS, "llama3"))
    assert model.cfg.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 16)
    unscaled = load_hf_checkpoint(os.path.join(GOLDENS, "llama3"), rope_scaling=None)
    logits_btv = np.asarray(_logits(unscaled, g["logits_tokens_bt"]))
    assert np.abs(logits_btv - g["logits_btv"]).max() > 1e-1


def test_config_parsed_from_transformers_5_form():
    with open(os.path.join(GOLDENS, "llama3", "config.json")) as f:
        hf = json.load(f)
    assert "rope_parameters" in hf and "rope_theta" not in hf  # written by transformers 5
    cfg = config_from_hf(hf)
    assert (cfg.family, cfg.vocab_size, cfg.embed_dim, cfg.mlp_dim, cfg.num_layers) == ("llama", 48, 16, 24, 2)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.qkv_bias) == (4, 2, 8, False)
    assert (cfg.rope_theta, cfg.rms_norm_eps, cfg.tie_embeddings) == (10_000.0, 1e-5, False)
    with open(os.path.join(GOLDENS, "qwen2_tied", "config.json")) as f:
        qwen = config_from_hf(json.load(f))
    assert (qwen.family, qwen.qkv_bias, qwen.tie_embeddings, qwen.rope_scaling) == ("qwen2", True, True, None)
    assert (qwen.num_heads, qwen.num_kv_heads, qwen.head_dim) == (2, 1, 8)


@pytest.mark.parametrize("scaling_key", ["rope_type", "type"])
def test_transformers_4_form_loads_the_same(tmp_path, scaling_key):
    """The same checkpoint with its config rewritten in the transformers 4 form (rope_theta + rope_scaling)."""
    case_dir = _copy_case("llama3", tmp_path)
    hf = json.loads((case_dir / "config.json").read_text())
    rope = hf.pop("rope_parameters")
    hf["rope_theta"] = rope.pop("rope_theta")
    rope[scaling_key] = rope.pop("rope_type")  # transformers before 4.45 wrote "type"
    hf["rope_scaling"] = rope
    hf["torch_dtype"] = hf.pop("dtype")
    (case_dir / "config.json").write_text(json.dumps(hf))
    model = load_hf_checkpoint(case_dir)
    assert model.cfg == load_hf_checkpoint(os.path.join(GOLDENS, "llama3")).cfg
    g = _golden("llama3")
    assert np.abs(np.asarray(_logits(model, g["logits_tokens_bt"])) - g["logits_btv"]).max() <= 1e-4


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_to_hf_round_trip(name):
    cfg = PRESETS[name]
    hf = config_to_hf(cfg)
    assert hf["architectures"] == [{"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[cfg.family]]
    assert "rope_theta" in hf and "rope_parameters" not in hf
    assert config_from_hf(json.loads(json.dumps(hf))) == cfg


# ------------------------------------------------------------------------------------------------ export


@pytest.mark.parametrize("case", CASES)
def test_export_reload_is_exact(case, tmp_path):
    model = load_hf_checkpoint(os.path.join(GOLDENS, case))
    save_hf_checkpoint(model, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    reloaded = load_hf_checkpoint(tmp_path / "out")
    assert reloaded.cfg == model.cfg
    want, got = _params(model), _params(reloaded)
    assert want.keys() == got.keys()
    for path in want:
        np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))
    # The exported tensors are the golden ones, bit for bit, in HF layout and naming.
    exported = _tensors(tmp_path / "out")
    original = safetensors.numpy.load_file(os.path.join(GOLDENS, case, "model.safetensors"))
    assert exported.keys() == original.keys()
    for name in original:
        np.testing.assert_array_equal(exported[name], original[name], err_msg=name)


def test_logical_axes_survive_loading():
    model = load_hf_checkpoint(os.path.join(GOLDENS, "llama3"))
    assert model.blocks[1].attn.wq.get_metadata()["logical_axes"] == ("embed", "q_heads", "head_dim")
    assert model.lm_head.get_metadata()["logical_axes"] == ("embed", "vocab")
    assert model.blocks[0].attn.wq[...].shape == (16, 4, 8) and model.blocks[0].attn.wo[...].shape == (4, 8, 16)


def test_bf16_checkpoint_loads_exactly(tmp_path):
    case_dir = _copy_case("qwen2_untied", tmp_path)
    tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in _tensors(case_dir).items()}
    _write_tensors(case_dir, tensors)
    want = _params(load_hf_checkpoint(os.path.join(GOLDENS, "qwen2_untied")))
    for dtype in (jnp.float32, jnp.bfloat16):
        got = _params(load_hf_checkpoint(case_dir, dtype=dtype))
        for path, w in want.items():
            assert got[path].dtype == dtype
            np.testing.assert_array_equal(got[path], w.astype(ml_dtypes.bfloat16).astype(dtype), err_msg=str(path))


def test_sharded_checkpoint_with_index(tmp_path):
    case_dir = _copy_case("llama3", tmp_path)
    tensors = _tensors(case_dir)
    os.remove(case_dir / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, shard_names in shards.items():
        safetensors.numpy.save_file({n: tensors[n] for n in shard_names}, str(case_dir / shard))
    weight_map = {n: shard for shard, shard_names in shards.items() for n in shard_names}
    (case_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    want = _params(load_hf_checkpoint(os.path.join(GOLDENS, "llama3")))
    got = _params(load_hf_checkpoint(case_dir))
    for path in want:
        np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))

    os.remove(case_dir / "model-00002-of-00002.safetensors")
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors, which does not exist"):
        load_hf_checkpoint(case_dir)


def test_tied_checkpoint_with_redundant_lm_head_loads(tmp_path):
    """Some tied exports still carry lm_head.weight; like transformers, the embedding wins."""
    case_dir = _copy_case("qwen2_tied", tmp_path)
    tensors = _tensors(case_dir)
    tensors["lm_head.weight"] = np.zeros_like(tensors["model.embed_tokens.weight"])
    _write_tensors(case_dir, tensors)
    g = _golden("qwen2_tied")
    logits_btv = np.asarray(_logits(load_hf_checkpoint(case_dir), g["logits_tokens_bt"]))
    assert np.abs(logits_btv - g["logits_btv"]).max() <= 1e-4


# ------------------------------------------------------------------------------------------------ errors


def test_missing_tensor_is_named(tmp_path):
    case_dir = _copy_case("qwen2_untied", tmp_path)
    tensors = _tensors(case_dir)
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    _write_tensors(case_dir, tensors)
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.self_attn\.k_proj\.bias'"):
        load_hf_checkpoint(case_dir)


def test_untied_checkpoint_without_lm_head_is_an_error(tmp_path):
    case_dir = _copy_case("qwen2_untied", tmp_path)
    tensors = _tensors(case_dir)
    del tensors["lm_head.weight"]
    _write_tensors(case_dir, tensors)
    with pytest.raises(CheckpointError, match="missing tensor 'lm_head.weight'"):
        load_hf_checkpoint(case_dir)


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
    case_dir = _copy_case("llama3", tmp_path)
    hf = json.loads((case_dir / "config.json").read_text())
    hf["intermediate_size"] = 32
    (case_dir / "config.json").write_text(json.dumps(hf))
    with pytest.raises(CheckpointError) as e:
        load_hf_checkpoint(case_dir)
    msg = str(e.value)
    assert "'model.layers.0.mlp.gate_proj.weight' has shape (24, 16)" in msg
    assert "implies (32, 16)" in msg and "intermediate_size=32" in msg


def test_extra_layer_is_unexpected(tmp_path):
    case_dir = _copy_case("llama3", tmp_path)
    hf = json.loads((case_dir / "config.json").read_text())
    hf["num_hidden_layers"] = 1
    (case_dir / "config.json").write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['model\.layers\.1\..*num_hidden_layers=1"):
        load_hf_checkpoint(case_dir)


def test_wrong_dtype_is_named(tmp_path):
    case_dir = _copy_case("qwen2_tied", tmp_path)
    tensors = _tensors(case_dir)
    tensors["model.norm.weight"] = tensors["model.norm.weight"].astype(np.int32)
    _write_tensors(case_dir, tensors)
    with pytest.raises(CheckpointError, match=r"'model\.norm\.weight' has dtype I32; expected one of \['BF16'"):
        load_hf_checkpoint(case_dir)


class _Canary:
    """Unpickling this creates a file: proof that a loader unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_named_safetensors_is_refused_unread(tmp_path):
    case_dir = _copy_case("qwen2_tied", tmp_path)
    canary = tmp_path / "unpickled"
    (case_dir / "model.safetensors").write_bytes(pickle.dumps({"w": _Canary(str(canary))}, protocol=2))
    with pytest.raises(CheckpointError, match="not a safetensors file.*pickle.*never unpickles"):
        load_hf_checkpoint(case_dir)
    assert not canary.exists()


def test_torch_zip_named_safetensors_is_refused(tmp_path):
    case_dir = _copy_case("qwen2_tied", tmp_path)
    with zipfile.ZipFile(case_dir / "model.safetensors", "w") as z:  # the layout torch.save writes
        z.writestr("archive/data.pkl", pickle.dumps({"w": [1.0, 2.0]}))
    with pytest.raises(CheckpointError, match="model.safetensors: not a safetensors file.*torch.save"):
        load_hf_checkpoint(case_dir)


def test_other_bytes_are_refused(tmp_path):
    case_dir = _copy_case("qwen2_tied", tmp_path)
    (case_dir / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00<html>not found</html>")
    with pytest.raises(CheckpointError, match=r"not a safetensors file \(header is not a JSON object\)"):
        load_hf_checkpoint(case_dir)
    (case_dir / "model.safetensors").write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="too short"):
        load_hf_checkpoint(case_dir)


def test_truncated_file(tmp_path):
    case_dir = _copy_case("llama3", tmp_path)
    data = (case_dir / "model.safetensors").read_bytes()
    (case_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated: tensor '[\w.]+' needs bytes up to \d+, file has"):
        load_hf_checkpoint(case_dir)
    (case_dir / "model.safetensors").write_bytes(data[:100])  # cut inside the JSON header
    with pytest.raises(CheckpointError, match="not a safetensors file.*truncated"):
        load_hf_checkpoint(case_dir)


def test_bad_configs_are_named(tmp_path):
    with open(os.path.join(GOLDENS, "llama3", "config.json")) as f:
        hf = json.load(f)
    with pytest.raises(CheckpointError, match="rope_type='yarn'"):
        config_from_hf({**hf, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}})
    with pytest.raises(CheckpointError, match="model_type='mistral'"):
        config_from_hf({**hf, "model_type": "mistral", "architectures": ["MistralForCausalLM"]})
    with pytest.raises(CheckpointError, match="attention_bias=true"):
        config_from_hf({**hf, "attention_bias": True})
    with pytest.raises(CheckpointError, match="no 'hidden_size'"):
        config_from_hf({k: v for k, v in hf.items() if k != "hidden_size"})
    with pytest.raises(CheckpointError, match="no model.safetensors or model.safetensors.index.json"):
        case_dir = _copy_case("llama3", tmp_path)
        os.remove(case_dir / "model.safetensors")
        load_hf_checkpoint(case_dir)


# The published config.json files of two real checkpoints (transformers 4 form), as on their model pages.
QWEN25_1_5B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 1536, "initializer_range": 0.02,
    "intermediate_size": 8960, "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "qwen2",
    "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1", "use_cache": True, "use_mrope": False, "use_sliding_window": False,
    "vocab_size": 151936,
}  # fmt: skip
LLAMA31_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 128256,
}  # fmt: skip


def test_published_configs_parse_to_the_presets():
    assert config_from_hf(QWEN25_1_5B_CONFIG) == PRESETS["qwen2.5-1.5b"]
    assert config_from_hf(LLAMA31_8B_CONFIG) == PRESETS["llama-3.1-8b"]
