"""r1jax: the DeepSeek-R1 training pipeline (arXiv 2501.12948) in JAX."""

__version__ = "0.1.0"
