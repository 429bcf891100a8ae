"""Exact per-token KL(π_p ‖ π_q) between two LM heads, blockwise over the vocabulary."""
