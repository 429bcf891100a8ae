"""r1jax: the DeepSeek-R1 training pipeline (arXiv 2501.12948) in JAX."""

from r1jax import host

__version__ = "0.1.0"

HOST_MALLOC_TUNED = host.MALLOC_TUNED  # glibc's malloc keeps freed large blocks (r1jax.host.keep_freed_host_memory)
