"""Hugging Face checkpoint interop: Qwen2 / Llama `config.json` + safetensors in, and out again.

`load_hf_checkpoint(path)` reads a local checkpoint directory (one `model.safetensors`, or shards listed in
`model.safetensors.index.json`) of a `Qwen2ForCausalLM` or `LlamaForCausalLM` into a `Transformer`;
`save_hf_checkpoint(model, path)` writes `config.json` + `model.safetensors` that transformers loads back
exactly. `config.json` is read in both the transformers 4 form (`rope_theta`, `rope_scaling`, `torch_dtype`)
and the transformers 5 form (`rope_parameters`, `dtype`); it is written in the transformers 4 form, which both
versions read.

Safetensors files are parsed here (8-byte header length, JSON header, raw little-endian data) and read through a
memory map, so that bf16 works with any numpy (as `ml_dtypes.bfloat16`), and so that a file that is not
safetensors (a pickle renamed `.safetensors`, a truncated download) fails with a message naming the file and
the problem before a byte of it is interpreted. Nothing is ever unpickled. Every tensor is checked (present,
shape implied by config.json, floating dtype) and the whole parameter tree is built before the model is.

Layout differences (HF `nn.Linear` stores (out, in)):
    q_proj (H*Dh, D) -> wq (D, H, Dh)    k/v_proj (K*Dh, D) -> wk/wv (D, K, Dh)    o_proj (D, H*Dh) -> wo (H, Dh, D)
    gate/up_proj (F, D) -> gate/up (D, F)    down_proj (D, F) -> down (F, D)    lm_head (V, D) -> lm_head (D, V)
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from r1jax.models.config import ModelConfig, RopeScaling
from r1jax.models.transformer import Transformer

_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
# Safetensors dtype codes r1jax accepts for weights (everything is cast to the requested dtype on load).
_FLOAT_DTYPES = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16)}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_DTYPE_CODES = {v: k for k, v in _FLOAT_DTYPES.items()}
_MAX_HEADER_BYTES = 100 * 2**20  # the safetensors library's own limit
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old exports saved; recomputed from config


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: the message names the file, tensor and values involved."""


# ----------------------------------------------------------------------------------------------------- config


def _get(hf: dict, key: str):
    if key not in hf:
        raise CheckpointError(f"config.json has no {key!r}: required for {hf.get('model_type')!r} models")
    return hf[key]


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
    """ModelConfig from a parsed HF `config.json` (transformers 4 or 5 form); `overrides` replace fields."""
    model_type = hf.get("model_type")
    if model_type not in _ARCHITECTURES:
        raise CheckpointError(
            f"config.json model_type={model_type!r} (architectures={hf.get('architectures')}): "
            f"r1jax reads only {sorted(_ARCHITECTURES)} ({', '.join(_ARCHITECTURES.values())})"
        )
    arch = hf.get("architectures") or [_ARCHITECTURES[model_type]]
    if arch != [_ARCHITECTURES[model_type]]:
        raise CheckpointError(
            f"config.json architectures={arch}: expected [{_ARCHITECTURES[model_type]!r}] for model_type={model_type!r}"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json hidden_act={hf['hidden_act']!r}: r1jax implements only 'silu' (SwiGLU)")
    if model_type == "llama":
        for key in ("attention_bias", "mlp_bias"):
            if hf.get(key, False):
                raise CheckpointError(f"config.json {key}=true: r1jax's Llama has no attention / MLP biases")
    if model_type == "qwen2" and hf.get("use_sliding_window", False):
        raise CheckpointError("config.json use_sliding_window=true: r1jax implements only full attention")

    heads = int(_get(hf, "num_attention_heads"))
    hidden = int(_get(hf, "hidden_size"))
    head_dim = hf.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise CheckpointError(f"config.json hidden_size={hidden} is not a multiple of num_attention_heads={heads}")
        head_dim = hidden // heads

    # transformers 5 folds rope_theta and the scaling into `rope_parameters`; 4 keeps `rope_theta` + `rope_scaling`.
    rope = hf.get("rope_parameters")
    if rope is None:
        rope = dict(hf.get("rope_scaling") or {})
        rope.setdefault("rope_theta", hf.get("rope_theta", 10_000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        rope_scaling = None
    elif rope_type == "llama3":
        try:
            rope_scaling = RopeScaling(
                factor=float(rope["factor"]),
                low_freq_factor=float(rope["low_freq_factor"]),
                high_freq_factor=float(rope["high_freq_factor"]),
                original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
            )
        except KeyError as e:
            raise CheckpointError(f"config.json llama3 rope scaling {rope} has no {e.args[0]!r}") from None
    else:
        raise CheckpointError(f"config.json rope_type={rope_type!r}: r1jax implements only 'default' and 'llama3' RoPE")

    fields = dict(
        vocab_size=int(_get(hf, "vocab_size")),
        embed_dim=hidden,
        mlp_dim=int(_get(hf, "intermediate_size")),
        num_layers=int(_get(hf, "num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        rope_theta=float(rope.get("rope_theta", 10_000.0)),
        rope_scaling=rope_scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=model_type == "qwen2",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),  # both families' config classes default False
        max_seq_len=int(hf.get("max_position_embeddings", ModelConfig.max_seq_len)),
        family=model_type,
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def config_to_hf(cfg: ModelConfig) -> dict:
    """A transformers-4-style `config.json` dict (read by transformers 4.43+ and 5) for `cfg`."""
    if cfg.qkv_bias != (cfg.family == "qwen2"):
        raise CheckpointError(
            f"model.qkv_bias={cfg.qkv_bias} with model.family={cfg.family!r}: {_ARCHITECTURES[cfg.family]} "
            f"{'always has' if cfg.family == 'qwen2' else 'has no'} q/k/v biases, so it cannot be exported as such"
        )
    rs = cfg.rope_scaling
    hf = dict(
        architectures=[_ARCHITECTURES[cfg.family]],
        model_type=cfg.family,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.embed_dim,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        rope_scaling=None
        if rs is None
        else dict(
            rope_type="llama3",
            factor=rs.factor,
            low_freq_factor=rs.low_freq_factor,
            high_freq_factor=rs.high_freq_factor,
            original_max_position_embeddings=rs.original_max_position_embeddings,
        ),
        tie_word_embeddings=cfg.tie_embeddings,
        torch_dtype=str(np.dtype(cfg.param_dtype)),
        attention_dropout=0.0,
        initializer_range=0.02,
        use_cache=True,
    )
    if cfg.family == "qwen2":
        hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
    else:
        hf.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    return hf


# ------------------------------------------------------------------------------------------------ safetensors


def _read_header(filename: str) -> tuple[dict, int]:
    """The tensor table of a safetensors file and the offset of its data, after checking the file's structure."""
    size = os.path.getsize(filename)
    with open(filename, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        raw = f.read(n) if 0 <= n <= min(size - 8, _MAX_HEADER_BYTES) else b""

    def fail(why):
        # A torch.save archive is a zip ('PK'); a bare pickle starts with the PROTO opcode 0x80.
        hint = (
            "; it looks like a pickle / torch.save file, which r1jax never unpickles: convert it to safetensors"
            if head[:2] == b"PK" or head[:1] == b"\x80"
            else ""
        )
        return CheckpointError(f"{filename}: not a safetensors file ({why}){hint}")

    if n < 0:
        raise fail(f"{size} bytes, too short for a header")
    if not raw:
        raise fail(f"header length {n} but the file has {size} bytes: truncated or another format")
    try:
        header = json.loads(raw.decode("utf-8")) if raw[:1] == b"{" else None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise fail(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise fail("header is not a JSON object")
    header.pop("__metadata__", None)
    data_start = 8 + n
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{filename}: malformed header entry for tensor {name!r}: {info}") from None
        if not 0 <= begin <= end:
            raise CheckpointError(f"{filename}: tensor {name!r} has data_offsets {[begin, end]}")
        if dtype in _ITEMSIZE and end - begin != math.prod(shape) * _ITEMSIZE[dtype]:
            raise CheckpointError(
                f"{filename}: tensor {name!r} {dtype}{list(shape)} spans {end - begin} bytes, "
                f"expected {math.prod(shape) * _ITEMSIZE[dtype]}"
            )
        if data_start + end > size:
            raise CheckpointError(
                f"{filename}: truncated: tensor {name!r} needs bytes up to {data_start + end}, file has {size}"
            )
    return header, data_start


def _checkpoint_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: has no 'weight_map'")
        files = [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
        for name in files:
            if not os.path.exists(name):
                raise CheckpointError(f"{index}: lists shard {os.path.basename(name)}, which does not exist")
        return files
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(single):
        return [single]
    present = sorted(os.listdir(path)) if os.path.isdir(path) else []
    raise CheckpointError(
        f"{path}: no model.safetensors or model.safetensors.index.json (found {present[:10]}); "
        "r1jax reads only safetensors checkpoints"
    )


# ------------------------------------------------------------------------------------------------ param layout


def _layout(cfg: ModelConfig) -> dict[str, tuple[tuple, tuple[int, ...], bool]]:
    """HF tensor name -> (r1jax param path, HF shape, whether the HF tensor is an (out, in) Linear weight)."""
    d, f, h, k, dh, v = cfg.embed_dim, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size
    out = {"model.embed_tokens.weight": (("embed",), (v, d), False)}
    for i in range(cfg.num_layers):
        hf, r = f"model.layers.{i}.", ("blocks", i)
        out.update(
            {
                hf + "input_layernorm.weight": ((*r, "attn_norm", "scale"), (d,), False),
                hf + "post_attention_layernorm.weight": ((*r, "mlp_norm", "scale"), (d,), False),
                hf + "self_attn.q_proj.weight": ((*r, "attn", "wq"), (h * dh, d), True),
                hf + "self_attn.k_proj.weight": ((*r, "attn", "wk"), (k * dh, d), True),
                hf + "self_attn.v_proj.weight": ((*r, "attn", "wv"), (k * dh, d), True),
                hf + "self_attn.o_proj.weight": ((*r, "attn", "wo"), (d, h * dh), True),
                hf + "mlp.gate_proj.weight": ((*r, "mlp", "gate"), (f, d), True),
                hf + "mlp.up_proj.weight": ((*r, "mlp", "up"), (f, d), True),
                hf + "mlp.down_proj.weight": ((*r, "mlp", "down"), (d, f), True),
            }
        )
        if cfg.qkv_bias:
            out.update(
                {
                    hf + "self_attn.q_proj.bias": ((*r, "attn", "bq"), (h * dh,), False),
                    hf + "self_attn.k_proj.bias": ((*r, "attn", "bk"), (k * dh,), False),
                    hf + "self_attn.v_proj.bias": ((*r, "attn", "bv"), (k * dh,), False),
                }
            )
    out["model.norm.weight"] = (("final_norm", "scale"), (d,), False)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = (("lm_head",), (v, d), True)
    return out


def _abstract_model(cfg: ModelConfig):
    """Graph and abstract (shape-only) param state of a Transformer: nothing is initialized."""
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))


def _shape_summary(cfg: ModelConfig) -> str:
    return (
        f"vocab_size={cfg.vocab_size}, hidden_size={cfg.embed_dim}, intermediate_size={cfg.mlp_dim}, "
        f"num_attention_heads={cfg.num_heads}, num_key_value_heads={cfg.num_kv_heads}, head_dim={cfg.head_dim}"
    )


# -------------------------------------------------------------------------------------------------- load / save


def load_hf_checkpoint(path: str, dtype=jnp.float32, **overrides) -> Transformer:
    """A Transformer with the weights of the local HF checkpoint directory `path`.

    Parameters and compute use `dtype` (checkpoint tensors of F32 / BF16 / F16 are cast to it); `overrides`
    replace ModelConfig fields (e.g. `remat=True`, `max_seq_len=...`). Raises CheckpointError, before any
    model is built, if a tensor is missing, unexpected, of the wrong shape or of a non-float dtype.
    """
    path = os.fspath(path)
    config_file = os.path.join(path, "config.json")
    if not os.path.exists(config_file):
        raise CheckpointError(f"{path}: no config.json")
    with open(config_file) as f:
        hf_config = json.load(f)
    dtype_name = str(np.dtype(dtype))
    cfg = config_from_hf(hf_config, **{"param_dtype": dtype_name, "dtype": dtype_name, **overrides})
    layout = _layout(cfg)

    # Every header first: names, shapes and dtypes are all checked before any data is read.
    entries = {}  # HF name -> (file, data_start, header entry)
    for filename in _checkpoint_files(path):
        header, data_start = _read_header(filename)
        for name, info in header.items():
            if name in entries:
                raise CheckpointError(f"{filename}: tensor {name!r} also appears in {entries[name][0]}")
            entries[name] = (filename, data_start, info)
    missing = [name for name in layout if name not in entries]
    if missing:
        raise CheckpointError(
            f"{path}: missing tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    # A tied checkpoint may still carry lm_head.weight; transformers overwrites it with the embedding, as we do.
    ignored = ("lm_head.weight",) if cfg.tie_embeddings else ()
    unexpected = [n for n in entries if n not in layout and n not in ignored and not n.endswith(_IGNORED_SUFFIXES)]
    if unexpected:
        raise CheckpointError(
            f"{path}: unexpected tensors {sorted(unexpected)[:5]} for config.json ({_shape_summary(cfg)}, "
            f"num_hidden_layers={cfg.num_layers}, tie_word_embeddings={cfg.tie_embeddings})"
        )
    for name, (_, hf_shape, _) in layout.items():
        filename, _, info = entries[name]
        if tuple(info["shape"]) != hf_shape:
            raise CheckpointError(
                f"{filename}: tensor {name!r} has shape {tuple(info['shape'])}, but config.json "
                f"({_shape_summary(cfg)}) implies {hf_shape}"
            )
        if info["dtype"] not in _FLOAT_DTYPES:
            raise CheckpointError(
                f"{filename}: tensor {name!r} has dtype {info['dtype']}; expected one of {sorted(_FLOAT_DTYPES)}"
            )

    graphdef, abstract = _abstract_model(cfg)
    abstract_params = dict(nnx.to_flat_state(abstract))
    flat = {}
    maps = {}
    for name, (param_path, hf_shape, is_linear) in layout.items():
        filename, data_start, info = entries[name]
        if filename not in maps:
            maps[filename] = np.memmap(filename, dtype=np.uint8, mode="r")
        begin, end = info["data_offsets"]
        x = maps[filename][data_start + begin : data_start + end].view(_FLOAT_DTYPES[info["dtype"]]).reshape(hf_shape)
        target = abstract_params[param_path].get_value()
        if is_linear:
            x = x.T
        flat[param_path] = np.asarray(x.reshape(target.shape), dtype=target.dtype)
    maps.clear()
    if set(flat) != set(abstract_params):  # the layout table and the module must agree on every parameter
        raise AssertionError(f"hf_io layout out of sync with Transformer: {set(flat) ^ set(abstract_params)}")

    nested = {}
    for param_path, x in flat.items():
        node = nested
        for key in param_path[:-1]:
            node = node.setdefault(key, {})
        node[param_path[-1]] = jnp.asarray(x)
    nnx.replace_by_pure_dict(abstract, nested)
    return nnx.merge(graphdef, abstract)


def save_hf_checkpoint(model: Transformer, path: str) -> None:
    """Write `config.json` + `model.safetensors` (params in their own dtype) that transformers loads exactly."""
    import safetensors.numpy

    cfg = model.cfg
    hf_config = config_to_hf(cfg)
    params = {p: jax.device_get(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    tensors = {}
    for name, (param_path, hf_shape, is_linear) in _layout(cfg).items():
        x = np.asarray(params[param_path])
        if x.dtype not in _DTYPE_CODES:
            raise CheckpointError(f"param {'.'.join(map(str, param_path))} has dtype {x.dtype}: cannot export")
        if is_linear:
            x = x.reshape(hf_shape[1], hf_shape[0]).T
        tensors[name] = np.ascontiguousarray(x.reshape(hf_shape))
    os.makedirs(path, exist_ok=True)
    # transformers refuses safetensors files whose metadata does not say which framework wrote them.
    safetensors.numpy.save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
        f.write("\n")
