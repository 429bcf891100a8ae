"""Grouped log-prob: log π(target) and entropy from hidden states and the LM head, blockwise."""
