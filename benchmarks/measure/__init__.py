"""Measurements: how fast, how much memory, how close to the hardware's ceiling, against which reference."""
