"""Tokenizers and prompt templates.

Two back ends behind one small interface (`encode`, `decode`, `bos_id`, `eos_id`, `pad_id`, `vocab_size`):
a sentencepiece model trained on the built-in task corpus (the default) or loaded from a `.model` file, and a
Hugging Face `tokenizer.json` (optional `tokenizers` extra) for real Qwen / Llama checkpoints.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable

import sentencepiece as spm

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
SPECIAL_TOKENS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

# Table 1 of the paper: the template of DeepSeek-R1-Zero. `{prompt}` is replaced by the question.
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: {prompt}. Assistant:"
)
# A short template for the tiny built-in model: same tags, fewer prompt tokens to prefill on a CPU.
SHORT_TEMPLATE = "User: {prompt} Assistant:"
# The Qwen2.5-Math chat template with its chain-of-thought system prompt: the answer goes in \\boxed{}. Dr. GRPO
# ("Understanding R1-Zero-Like Training") and SimpleRL-Zoo train Qwen base models from this kind of prompt.
QWEN_MATH_TEMPLATE = (
    "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
    "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
)
TEMPLATES = {"r1_zero": R1_ZERO_TEMPLATE, "short": SHORT_TEMPLATE, "plain": "{prompt}", "qwen_math": QWEN_MATH_TEMPLATE}


def apply_template(question: str, template: str = "r1_zero") -> str:
    if template not in TEMPLATES:
        raise ValueError(f"template={template!r}: unknown; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[template].format(prompt=question)


def strip_template(prompt: str, template: str) -> str:
    """The question inside a prompt that `apply_template(question, template)` made; other text is returned as is
    (a file whose prompts were templated some other way)."""
    if template not in TEMPLATES:
        raise ValueError(f"template={template!r}: unknown; choose one of {sorted(TEMPLATES)}")
    head, _, tail = TEMPLATES[template].partition("{prompt}")
    head, tail = head.replace("{{", "{").replace("}}", "}"), tail.replace("{{", "{").replace("}}", "}")
    if prompt.startswith(head) and prompt.endswith(tail) and len(prompt) >= len(head) + len(tail):
        return prompt[len(head) : len(prompt) - len(tail)]
    return prompt


class SentencePieceTokenizer:
    """A sentencepiece model whose pad/bos/eos ids are fixed at training time (0/1/2)."""

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.pad_id, self.bos_id, self.eos_id = self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id()
        self.vocab_size = self.sp.get_piece_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 512, **kwargs) -> SentencePieceTokenizer:
        """Train a BPE model; digits are split so that numbers tokenize one digit at a time.

        `texts` are read in the order given (no sampling of sentences), so the model is a function of the list.
        """
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=buf,
            vocab_size=vocab_size,
            model_type="bpe",
            character_coverage=1.0,
            split_digits=True,
            byte_fallback=True,
            user_defined_symbols=list(SPECIAL_TOKENS),
            pad_id=0, bos_id=1, eos_id=2, unk_id=3,
            max_sentence_length=16384,
            minloglevel=2,
            # The vocabulary does not depend on the thread count (checked: 1, 2 and 8 threads give the same pieces
            # and scores), but the model file records every trainer option, so none is read from the host: the
            # same corpus gives the same tokenizer.model bytes on every machine with this sentencepiece version.
            num_threads=2,
            hard_vocab_limit=False,  # a small corpus may hold fewer pieces than asked for
            **kwargs,
        )
        return cls(buf.getvalue())

    @classmethod
    def load(cls, path: str) -> SentencePieceTokenizer:
        with open(path, "rb") as f:
            return cls(f.read())

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(self.model_proto)
        os.replace(tmp, path)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    def decode_batch(self, ids_list) -> list[str]:
        return self.sp.decode([[int(i) for i in ids] for ids in ids_list])

    def token_id(self, piece: str) -> int:
        return self.sp.piece_to_id(piece)


class HFTokenizer:
    """A Hugging Face `tokenizer.json` (Qwen / Llama checkpoints ship one), through the `tokenizers` package."""

    def __init__(self, path: str):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:  # optional extra
            raise ImportError("loading tokenizer.json needs `pip install 'r1jax[hf]'` (the tokenizers package)") from e
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.exists(file):
            raise FileNotFoundError(f"tokenizer: no tokenizer.json at {file}")
        self.tok = Tokenizer.from_file(file)
        cfg_file = os.path.join(os.path.dirname(file), "tokenizer_config.json")
        cfg = json.load(open(cfg_file)) if os.path.exists(cfg_file) else {}

        def special(name, fallback=None):
            tok = cfg.get(name)
            tok = tok.get("content") if isinstance(tok, dict) else tok
            return self.tok.token_to_id(tok) if tok else fallback

        self.eos_id = special("eos_token")
        self.bos_id = special("bos_token")
        self.pad_id = special("pad_token", self.eos_id if self.eos_id is not None else 0)
        self.vocab_size = self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def decode_batch(self, ids_list) -> list[str]:
        return [self.decode(ids) for ids in ids_list]

    def token_id(self, piece: str) -> int | None:
        return self.tok.token_to_id(piece)


def load_tokenizer(path: str):
    """A `.model` file → sentencepiece; a directory or `tokenizer.json` → Hugging Face tokenizers."""
    if path.endswith(".model"):
        return SentencePieceTokenizer.load(path)
    return HFTokenizer(path)
