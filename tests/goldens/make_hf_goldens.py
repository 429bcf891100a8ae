"""Make the Hugging Face parity goldens under tests/goldens/hf/ (a dev script, run by hand, never by the tests).

Builds tiny random Qwen2 and Llama models with transformers (torch, CPU, f32), saves each as an HF checkpoint
(config.json + model.safetensors, written by transformers itself) with goldens.npz:

    logits_tokens_bt (2, 12) int32     fixed token ids
    logits_btv       (2, 12, V) f32    transformers' logits on them
    prompt_ids_pt    (2, 9) int32      two prompts of lengths 5 and 9, left-padded with 0
    prompt_lens_p    (2,) int32
    generate_ids_pn  (2, 12) int32     greedy `generate` continuations (do_sample=False, no EOS), each prompt
                                       run alone (no padding), for the sampler's tests
    min_margin_p     (2,) f32          smallest top-1 minus top-2 logit gap over the greedy steps: how much
                                       numerical slack a reimplementation has before its argmax may flip
    seed             ()  int32         the torch seed of the weights: the first seed (from 100 * case index)
                                       whose continuations hold >= 3 distinct tokens per prompt, margins > 1e-2

Weights are re-drawn with O(1) scales (transformers' std-0.02 init gives near-uniform logits, so greedy ties
would be decided by rounding); norms and biases are random too, so a loader that drops them fails.

Cases: qwen2_tied (GQA 2:1, q/k/v biases, tied embeddings), qwen2_untied (rope_theta 1e6), llama3 (GQA 4:2,
head_dim * heads != hidden_size, llama3 RoPE scaling with original_max_position_embeddings=16, so every
frequency band is rescaled or smoothed at the tested positions).

It then checks r1jax's export: r1jax loads each checkpoint through r1jax.models.hf_io and writes it back with
save_hf_checkpoint (a subprocess in the JAX env); transformers reloads that, and every tensor and the logits
must equal the original exactly.

Run from the repository root, in the torch env (torch CPU + transformers), with the JAX env's python for r1jax:

    .venv-torch/bin/python tests/goldens/make_hf_goldens.py --r1jax-python .venv/bin/python

The outputs are committed; rerun only when a case changes (the values depend on the torch version's RNG).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile

import numpy as np
import torch
import transformers

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf")
NEW_TOKENS = 12
PROMPTS = [[3, 17, 5, 40, 22], [11, 2, 29, 8, 33, 47, 1, 19, 26]]

_COMMON = dict(
    vocab_size=48,
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)
CASES = {
    "qwen2_tied": (
        transformers.Qwen2Config,
        dict(num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True, rope_theta=10_000.0),
    ),
    "qwen2_untied": (
        transformers.Qwen2Config,
        dict(num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False, rope_theta=1e6),
    ),
    "llama3": (
        transformers.LlamaConfig,
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            tie_word_embeddings=False,
            rms_norm_eps=1e-5,
            rope_theta=10_000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
}


def build(name: str, seed: int):
    config_cls, kw = CASES[name]
    config = config_cls(**{**_COMMON, **kw})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif pname.endswith(".bias"):
                p.copy_(0.3 * torch.randn_like(p))
            elif "embed_tokens" in pname:  # small next to the blocks' outputs, so a tied head does not echo its input
                p.copy_(0.5 * torch.randn_like(p))
            elif "lm_head" in pname:
                p.copy_(torch.randn_like(p))
            else:  # (out, in) Linear weights; the residual branches' outputs as large as the embedding
                gain = 3.0 if pname.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
                p.copy_(gain * torch.randn_like(p) / p.shape[1] ** 0.5)
    model.generation_config.update(bos_token_id=None, eos_token_id=None, pad_token_id=0, do_sample=False)
    return model


@torch.no_grad()
def goldens(model, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tokens_bt = rng.integers(0, vocab, size=(2, 12)).astype(np.int32)
    logits_btv = model(torch.from_numpy(tokens_bt).long()).logits.float().numpy()
    width = max(map(len, PROMPTS))
    prompt_ids_pt = np.zeros((len(PROMPTS), width), np.int32)
    generated, margins = [], []
    for p, prompt in enumerate(PROMPTS):
        prompt_ids_pt[p, width - len(prompt) :] = prompt
        ids = torch.tensor([prompt])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
        new = out.sequences[0, len(prompt) :].numpy()
        assert len(new) == NEW_TOKENS, (len(new), NEW_TOKENS)
        top2 = torch.stack(out.logits).float().topk(2, dim=-1).values  # (steps, 1, 2)
        margins.append(float((top2[..., 0] - top2[..., 1]).min()))
        generated.append(new)
    return dict(
        logits_tokens_bt=tokens_bt,
        logits_btv=logits_btv.astype(np.float32),
        prompt_ids_pt=prompt_ids_pt,
        prompt_lens_p=np.array([len(p) for p in PROMPTS], np.int32),
        generate_ids_pn=np.stack(generated).astype(np.int32),
        min_margin_p=np.array(margins, np.float32),
    )


_ROUNDTRIP = """
import sys
from r1jax.models.hf_io import load_hf_checkpoint, save_hf_checkpoint
save_hf_checkpoint(load_hf_checkpoint(sys.argv[1]), sys.argv[2])
"""


@torch.no_grad()
def check_export_roundtrip(case_dir: str, model, tokens_bt: np.ndarray, r1jax_python: str) -> None:
    """HF checkpoint -> r1jax (hf_io) -> save_hf_checkpoint -> transformers: tensors and logits bit-equal."""
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "export")
        subprocess.run([r1jax_python, "-c", _ROUNDTRIP, case_dir, out], check=True, cwd=repo_root)
        with open(os.path.join(out, "config.json")) as f:
            exported = json.load(f)
        assert "rope_theta" in exported and "rope_parameters" not in exported, "export must be the transformers-4 form"
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(reloaded) is type(model), (type(reloaded), type(model))
    head_dim = lambda c: getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    assert head_dim(reloaded.config) == head_dim(model.config)
    for key in ("rope_parameters", "tie_word_embeddings", "num_key_value_heads", "rms_norm_eps"):
        assert getattr(reloaded.config, key) == getattr(model.config, key), (
            key,
            getattr(reloaded.config, key),
            getattr(model.config, key),
        )
    want, got = model.state_dict(), reloaded.state_dict()
    assert want.keys() == got.keys(), set(want) ^ set(got)
    for key in want:
        assert torch.equal(want[key], got[key]), key
    ids = torch.from_numpy(tokens_bt).long()
    assert torch.equal(model(ids).logits, reloaded(ids).logits)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--r1jax-python", default=".venv/bin/python", help="python of the env with r1jax")
    parser.add_argument("--seed", type=int, default=0, help="offset of the seeds tried for each case")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    for i, name in enumerate(CASES):
        # Random 2-layer models often fall into repeating one token under greedy decoding, which would not show
        # a sampler that mishandles the KV cache; take the first seed whose continuations vary and whose argmax
        # margins leave room for a different summation order (deterministic: same seeds, same choice).
        for seed in range(100 * i + args.seed, 100 * i + args.seed + 50):
            model = build(name, seed)
            g = goldens(model, model.config.vocab_size)
            if g["min_margin_p"].min() > 1e-2 and all(len(set(r)) >= 3 for r in g["generate_ids_pn"].tolist()):
                break
        else:
            raise RuntimeError(f"{name}: no seed gave varied continuations with argmax margins > 1e-2")
        g["seed"] = np.array(seed, np.int32)
        case_dir = os.path.join(OUT_DIR, name)
        os.makedirs(case_dir, exist_ok=True)
        model.save_pretrained(case_dir, safe_serialization=True)
        gen_config = os.path.join(case_dir, "generation_config.json")
        if os.path.exists(gen_config):  # not part of the golden: r1jax reads only config.json
            os.remove(gen_config)
        np.savez(os.path.join(case_dir, "goldens.npz"), **g)
        check_export_roundtrip(case_dir, model, g["logits_tokens_bt"], args.r1jax_python)
        size = sum(os.path.getsize(os.path.join(case_dir, f)) for f in os.listdir(case_dir))
        print(
            f"{name}: seed {seed}, {size / 1024:.1f} KiB, min greedy margin {g['min_margin_p'].min():.4f}, "
            f"generate {g['generate_ids_pn'].tolist()}; export round trip exact"
        )


if __name__ == "__main__":
    main()
