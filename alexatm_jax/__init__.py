"""alexatm-jax: pretrain, evaluate and serve AlexaTM-style encoder-decoder LLMs in JAX.

`alexatm_jax.load(path, **config_overrides)` returns a `LoadedModel` (imported on first use).
Importing the package makes glibc keep freed host memory for reuse and JAX dispatch CPU
programs synchronously (`alexatm_jax.host`; `ALEXATM_JAX_HOST_MALLOC=system` turns that off), and
keeps TensorFlow's GPU probe lines off the terminal when it is first imported
(`alexatm_jax.tensorflow_probes`; `ALEXATM_JAX_TF_PROBES=show` turns that off).
"""

from typing import Any

from alexatm_jax import tensorflow_probes
from alexatm_jax.host import retain_freed_memory

__version__ = "0.1.0"
__all__ = ["LoadedModel", "load"]

tensorflow_probes.install()
retain_freed_memory()


def __getattr__(name: str) -> Any:
    if name in __all__:
        from alexatm_jax import api

        return getattr(api, name)
    raise AttributeError(f"module 'alexatm_jax' has no attribute {name!r}")
