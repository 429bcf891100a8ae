"""A toy Hugging Face checkpoint directory: a randomly initialised tiny model of a real family and a tokenizer.json.

Real runs load a downloaded Qwen2.5 / Llama 3 directory (config.json, *.safetensors, tokenizer.json,
tokenizer_config.json). Nothing can be downloaded here, so the recipes' tests, the real-checkpoint notebook and
the guide's smoke commands use a directory of the same layout, written by the same code paths
(`save_hf_checkpoint`, a byte-level BPE `tokenizer.json` as Qwen and Llama ship): the loading, templating and
training code that a real checkpoint goes through runs unchanged, at a size a CPU trains in seconds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from r1jax.models.config import get_preset
from r1jax.models.hf_io import save_hf_checkpoint
from r1jax.models.transformer import init_model

# The special tokens each family's tokenizer_config.json names (Qwen2.5 base models end text with <|endoftext|>).
FAMILY_TOKENS = {
    "qwen2": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "extra": ["<|im_start|>", "<|im_end|>"]},
    "llama": {"eos_token": "<|end_of_text|>", "bos_token": "<|begin_of_text|>", "extra": []},
}


def write_tokenizer(path: str, texts: Iterable[str], *, family: str = "qwen2", vocab_size: int = 512) -> int:
    """Trains a byte-level BPE on `texts` and writes tokenizer.json + tokenizer_config.json; returns the vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if family not in FAMILY_TOKENS:
        raise ValueError(f"family={family!r}: expected one of {sorted(FAMILY_TOKENS)}")
    tokens = FAMILY_TOKENS[family]
    specials = [t for t in (tokens.get("bos_token"), tokens["eos_token"]) if t] + tokens["extra"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    config = {k: v for k, v in tokens.items() if k != "extra"}
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)
    return tok.get_vocab_size()


def write_toy_checkpoint(path: str, texts: Iterable[str], *, family: str = "qwen2", seed: int = 0) -> str:
    """A random `tiny`-shaped model of `family` ('qwen2': qkv bias, tied head; 'llama': no bias, untied) saved as
    a Hugging Face checkpoint directory with its tokenizer. Returns `path`."""
    vocab = write_tokenizer(path, texts, family=family)
    shape = {"qwen2": dict(qkv_bias=True, tie_embeddings=True), "llama": dict(qkv_bias=False, tie_embeddings=False)}
    cfg = get_preset("tiny", vocab_size=vocab, family=family, **shape[family])
    save_hf_checkpoint(init_model(cfg, seed), path)
    return path
