"""Shared test setup: 8 fake CPU devices (set before JAX starts) and absl flags parsed once."""
import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
# The suite compiles far more than it computes (most tests run a step or two of a fresh jitted
# function), so LLVM gets no optimisation passes: -O0 code is slower to run and much quicker to
# build (the suite on 2 cores: 18:22 -> 13:07, session 24). XLA's own HLO passes, fusion
# included, still run, and nothing here relies on fast-math, so the numbers do not change
# beyond the tests' tolerances. Subprocesses (CLI tests, notebook kernels, the multi-process
# trainer via launch/local.py) inherit the flag.
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

# A persistent compilation cache for this test session only: the trainer tests build the same
# jitted steps many times (each `train()` call jits afresh, as a new process would), and XLA's
# CPU compiles dominate the suite's time. A fresh directory per session, nothing stale: the
# first process (pytest itself, or the controller under `-n 2`) makes it and removes it at the
# end; pytest-xdist workers inherit it through the environment and share it.
import shutil  # noqa: E402
import tempfile  # noqa: E402

_CACHE_ENV = "VASA_JAX_TEST_XLA_CACHE"
_OWN_CACHE = not os.environ.get(_CACHE_ENV)
if _OWN_CACHE:
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="vasa_jax_xla_cache_")
jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ.pop(_CACHE_ENV), ignore_errors=True)

from absl import flags  # noqa: E402

# grain's multiprocessing prefetch reads absl flags; under pytest nobody parses them.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def devices():
    devs = jax.devices()
    assert len(devs) == 8, f"expected 8 fake CPU devices, got {len(devs)}"
    return devs


# ----------------------------------------------------------------------------------------------
# Stage-1 / stage-2 fixtures shared by the stage-2 and evaluation tests.

from pathlib import Path  # noqa: E402

_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
STAGE_SYNTH = dict(resolution=64, num_frames=20, num_train_identities=4, num_test_identities=2,
                   clips_per_identity=2, seed=0)


def make_face_workdir(workdir: str, **model) -> str:
    """A stage-1 workdir holding a real (untrained, freshly initialised, random pose head) orbax
    checkpoint of the tiny config, with `model` fields overridden (and, for model.input_size,
    SynthTalk rendered at that size)."""
    from vasa_jax import sharding
    from vasa_jax.checkpoint import Checkpointer
    from vasa_jax.config_util import load_config
    from vasa_jax.train import face_latent, loop

    cfg = load_config(f"{_CONFIGS / 'face_latent.py'}:tiny")
    cfg.data.data_dir = os.path.join(workdir, "data")
    cfg.data.synthtalk.update(STAGE_SYNTH)
    cfg.model.update(model)
    if model.get("input_size"):
        cfg.data.synthtalk.resolution = int(model["input_size"])
    loop.save_config(cfg, workdir)
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    _, init, _, shardings = face_latent.build_state_fns(cfg, mesh)
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    # A fresh pose head is zero (every frame gets pose 0, by design); give it small random
    # weights, as any training would, so that poses and their stage-2 statistics vary.
    for tree in ("gen", "ema"):
        head = state[tree]["motion"]["pose_head"]
        head["kernel"] = 0.05 * jax.random.normal(jax.random.key(1), head["kernel"].shape)
    with Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False) as ckpt:
        ckpt.save(0, state, force=True)
    return workdir


@pytest.fixture(scope="session")
def face_workdir(tmp_path_factory):
    """A stage-1 workdir holding a real (untrained, freshly initialised, random pose head) orbax
    checkpoint."""
    return make_face_workdir(str(tmp_path_factory.mktemp("face")))




@pytest.fixture(scope="session")
def latent_dir(face_workdir, tmp_path_factory):
    """The stage-2 latent data set extracted from `face_workdir` (3 clips per shard)."""
    from vasa_jax.train import extract_latents

    out = str(tmp_path_factory.mktemp("latents"))
    extract_latents.extract(face_workdir, out, shard_size=3, progress=False)
    return out


def make_motion_workdir(latents_dir: str, workdir: str, steps: int = 2) -> str:
    """A stage-2 workdir: the tiny MotionDiT trained for `steps` steps on `latents_dir`."""
    from vasa_jax.config_util import load_config
    from vasa_jax.train import motion as motion_train

    cfg = load_config(f"{_CONFIGS / 'motion.py'}:tiny")
    cfg.latents_dir = latents_dir
    cfg.batch_size, cfg.steps, cfg.log_every, cfg.ckpt_every = 8, steps, 1, steps
    cfg.mesh.num_devices, cfg.mesh.data = 1, 1
    motion_train.train(cfg, workdir)
    return workdir


@pytest.fixture(scope="session")
def motion_workdir(latent_dir, tmp_path_factory):
    """A stage-2 workdir: the tiny MotionDiT trained for 2 steps on `latent_dir` (1 device)."""
    return make_motion_workdir(latent_dir, str(tmp_path_factory.mktemp("motion")))


@pytest.fixture(scope="session")
def bundle_dir(face_workdir, motion_workdir, tmp_path_factory):
    """An inference bundle exported from the two fixture workdirs."""
    from vasa_jax.train.export import export_bundle

    out = str(tmp_path_factory.mktemp("bundle"))
    export_bundle(face_workdir, motion_workdir, out)
    return out


@pytest.fixture(scope="session")
def stack_in128(tmp_path_factory):
    """The fixture chain for a stage 1 with model.input_size 128 (reads 128² frames, draws
    64²): its workdir, the latents extracted from its 128² frames, a stage 2 trained on them for
    1 step and the bundle of the two. A dict with keys face, latents, motion, bundle."""
    from vasa_jax.train import extract_latents
    from vasa_jax.train.export import export_bundle

    face = make_face_workdir(str(tmp_path_factory.mktemp("face128")), input_size=128,
                             motion_stem_stride=2)
    lat = str(tmp_path_factory.mktemp("latents128"))
    extract_latents.extract(face, lat, shard_size=3, progress=False)
    motion = make_motion_workdir(lat, str(tmp_path_factory.mktemp("motion128")), steps=1)
    bundle = str(tmp_path_factory.mktemp("bundle128"))
    export_bundle(face, motion, bundle)
    return dict(face=face, latents=lat, motion=motion, bundle=bundle)
