"""vasa_jax: an open, scalable JAX/Flax reimplementation of VASA-1.

Kept import-light on purpose: the inference path must import without grain or
tensorflow-datasets, so nothing heavy is pulled in here.
"""

__version__ = "0.1.0"
