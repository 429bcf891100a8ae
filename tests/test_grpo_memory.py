"""`benchmarks/grpo_memory.py` reads XLA's buffer assignment of the compiled GRPO step: at a small shape with a
vocabulary large enough to tell them apart, the fused log-prob pass holds less than the (B·Tc, V) f32 logits and
the 'xla' oracle at least that much."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_grpo_memory_sees_the_logits_only_in_the_oracle(tmp_path):
    out = tmp_path / "mem.json"
    rows, tc, vocab = 8, 64, 8192
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "grpo_memory.py"),
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
    logits = rows * tc * vocab * 4
    assert r["base"]["logps_pass"]["temp_bytes"] < logits <= r["xla_logprob"]["logps_pass"]["temp_bytes"]
    for variant in ("base", "xla_logprob"):
        m = r[variant]["train_step"]
        assert m["alias_bytes"] > 0  # the state is donated
        assert m["peak_bytes"] == m["argument_bytes"] + m["output_bytes"] - m["alias_bytes"] + m["temp_bytes"]
