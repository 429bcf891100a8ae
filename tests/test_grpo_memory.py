"""`benchmarks/measure/grpo_memory.py` reads XLA's buffer assignment of the compiled GRPO step: at a small shape with a
vocabulary large enough to tell them apart, the fused log-prob pass holds about half the (B·Tc, V) f32 logits and
the 'xla' oracle at least all of them."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_grpo_memory_sees_the_logits_only_in_the_oracle(tmp_path):
    out = tmp_path / "mem.json"
    rows, tc, vocab = 8, 64, 32768
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.measure.grpo_memory",
        "--shape",
        "tiny",
        "--vocab",
        str(vocab),
        "--rows",
        str(rows),
        "--prompt_len",
        "16",
        "--completion_len",
        str(tc),
        "--variants",
        "base,xla_logprob",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    logits = rows * tc * vocab * 4  # f32 (B·Tc, V)
    # The fused kernel holds tiles (and, with tied embeddings, the transposed head): about half the logits here.
    assert r["base"]["logps_pass"]["temp_bytes"] < 0.6 * logits
    assert r["xla_logprob"]["logps_pass"]["temp_bytes"] >= logits
    # The step's backward holds the logits and their gradient with the oracle, neither with the kernel.
    assert r["xla_logprob"]["train_step"]["temp_bytes"] - r["base"]["train_step"]["temp_bytes"] >= 2 * logits
    for variant in ("base", "xla_logprob"):
        m = r[variant]["train_step"]
        assert m["alias_bytes"] > 0  # the state is donated
        assert m["peak_bytes"] == m["argument_bytes"] + m["output_bytes"] - m["alias_bytes"] + m["temp_bytes"]
