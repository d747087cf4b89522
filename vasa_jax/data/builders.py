"""tfds builder for SynthTalk clips, written as array_record (no TensorFlow needed).

    from vasa_jax.data import builders
    sources = builders.prepare_synthtalk("/tmp/tfds", resolution=64, num_frames=12,
                                         num_train_identities=4, num_test_identities=2,
                                         clips_per_identity=2)
    record = sources["train"][0]                       # dict of numpy arrays
    frames = builders.decode_frames(record["frames"])  # uint8 [T, R, R, 3]

Record layout (one clip per record, T = num_frames, R = resolution):
  frames       object [T]        PNG bytes per frame (lossless: decodes to exactly the rendered frame)
  audio        float32 [T*640]   16 kHz speech, frame t owns samples [640 t, 640 (t+1))
  rotation     float32 [T, 3]    yaw, pitch, roll (degrees)
  translation  float32 [T, 2]    projected head centre, normalised image coordinates
  distance     float32 [T]       head-to-camera distance (head units)
  scale        float32 [T]       focal / distance
  gaze         float32 [T, 2]    camera-frame gaze (θ, φ; degrees)
  eye_gaze     float32 [T, 2]    eye-in-head gaze (θ, φ; degrees)
  blink        float32 [T]       0 open … 1 shut
  mouth        float32 [T, 3]    opening, width, rounding
  f0           float32 [T]       pitch (Hz)
  loudness     float32 [T]       articulatory loudness
  viseme       int32 [T]         index into synthtalk.VISEMES
  landmarks    float32 [T, 8, 2] synthtalk.LANDMARKS (eyes, nose tip, mouth centre, mouth
                                 corners, inner lip edges) in normalised image coordinates
                                 (x right, y down)
  identity     int64 []          SynthTalk identity id
  emotion      int64 []          index into synthtalk.EMOTIONS
  clip_seed    int64 []          `generate_clip(identity, clip_seed, T, R)` regenerates the clip

Identities. Train and test identities are disjoint by construction: with P = 999_999_937 (a
prime) and (a, b) drawn from the config seed (a ≠ 0 mod P), train identity k is (a·k + b) mod P,
which lies in [0, P) and is distinct for distinct k (an affine bijection of Z/P); test identity k is
10**9 + ((a·k + b) mod P), which lies in [10**9, 10**9 + P). `train_identity_ids(config)` and
`test_identity_ids(config)` list them. Clip c of identity i gets
clip_seed = SeedSequence([seed, i, c]) → 31 bits. Every integer field fits int32.

Once prepared, `tfds.data_source("synthtalk/<config name>", data_dir=..., split="train")` reads
it too (with this module imported).

Different sizes never collide on disk: the config name (hence the directory
`data_dir/synthtalk/<name>/<version>`) is derived from every field.

Imports tensorflow_datasets (but never TensorFlow): keep it off the inference path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from vasa_jax.data import synthtalk
from vasa_jax.errors import check

SPLITS = ("train", "test")
# Per-frame ground-truth factors stored in every record, with their trailing shapes and dtypes.
FACTOR_SPECS: dict[str, tuple[tuple[int, ...], Any]] = {
    "rotation": ((3,), np.float32),
    "translation": ((2,), np.float32),
    "distance": ((), np.float32),
    "scale": ((), np.float32),
    "gaze": ((2,), np.float32),
    "eye_gaze": ((2,), np.float32),
    "blink": ((), np.float32),
    "mouth": ((3,), np.float32),
    "f0": ((), np.float32),
    "loudness": ((), np.float32),
    "viseme": ((), np.int32),
    "landmarks": ((len(synthtalk.LANDMARKS), 2), np.float32),
}
FACTORS = tuple(FACTOR_SPECS)

_PRIME = 999_999_937
_TEST_OFFSET = 10**9


def _check_count(value: Any, field: str, minimum: int = 1) -> int:
    check(
        isinstance(value, (int, np.integer)) and not isinstance(value, bool),
        f"{field} must be an integer, got {value!r}",
    )
    check(int(value) >= minimum, f"{field}={value} is invalid: use an integer >= {minimum}")
    return int(value)


@dataclasses.dataclass(eq=False)
class SynthTalkConfig(tfds.core.BuilderConfig):
    """Size of a prepared SynthTalk data set; the name is derived from the fields.

    Fields: resolution (multiple of 8 in [64, 512]), num_frames (frames per clip, >= 1),
    num_train_identities / num_test_identities (>= 1), clips_per_identity (>= 1), seed (>= 0).
    Bad values raise ConfigError naming the field, before anything is written.
    """

    name: str = ""
    resolution: int = 128
    num_frames: int = 50
    num_train_identities: int = 8
    num_test_identities: int = 2
    clips_per_identity: int = 2
    seed: int = 0

    def __post_init__(self):
        synthtalk.check_resolution(self.resolution)
        _check_count(self.num_frames, "num_frames")
        _check_count(self.num_train_identities, "num_train_identities")
        _check_count(self.num_test_identities, "num_test_identities")
        _check_count(self.clips_per_identity, "clips_per_identity")
        _check_count(self.seed, "seed", minimum=0)
        check(self.num_train_identities < _PRIME and self.num_test_identities < _PRIME,
              f"num_train_identities / num_test_identities must be < {_PRIME}")
        derived = config_name(self.resolution, self.num_frames, self.num_train_identities,
                              self.num_test_identities, self.clips_per_identity, self.seed)
        check(not self.name or self.name == derived,
              f"name={self.name!r} does not match the fields: leave it empty (derived: {derived!r})")
        self.name = derived
        if self.description is None:
            self.description = (
                f"SynthTalk {self.resolution}² clips of {self.num_frames} frames; "
                f"{self.num_train_identities} train / {self.num_test_identities} test identities "
                f"× {self.clips_per_identity} clips; seed {self.seed}")


def config_name(resolution: int, num_frames: int, num_train_identities: int,
                num_test_identities: int, clips_per_identity: int, seed: int) -> str:
    """Deterministic config name, e.g. 'r64_t12_train4_test2_c2_s0'."""
    return (f"r{resolution}_t{num_frames}_train{num_train_identities}_"
            f"test{num_test_identities}_c{clips_per_identity}_s{seed}")


def _affine(seed: int) -> tuple[int, int]:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED1D]))
    a = int(rng.integers(1, _PRIME))
    b = int(rng.integers(0, _PRIME))
    return a, b


def train_identity_ids(config: SynthTalkConfig) -> list[int]:
    """Train identities: (a·k + b) mod P for k < num_train_identities (distinct, all < 10**9)."""
    a, b = _affine(config.seed)
    return [(a * k + b) % _PRIME for k in range(config.num_train_identities)]


def test_identity_ids(config: SynthTalkConfig) -> list[int]:
    """Test identities: 10**9 + ((a·k + b) mod P); never equal to a train identity."""
    a, b = _affine(config.seed)
    return [_TEST_OFFSET + (a * k + b) % _PRIME for k in range(config.num_test_identities)]


def clip_seed(seed: int, identity: int, clip: int) -> int:
    """Seed of clip `clip` of `identity` in a data set with config seed `seed`, in [0, 2**31).

    31 bits so that it survives JAX's default int32 (like the identities, all < 2**31).
    """
    words = [int(seed) & 0xFFFFFFFF, int(seed) >> 32, int(identity) & 0xFFFFFFFF,
             int(identity) >> 32, int(clip)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint32)[0]) & 0x7FFFFFFF


def encode_png(frame: np.ndarray) -> bytes:
    """Lossless PNG bytes of one uint8 [R, R, 3] frame."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_frames(png_bytes: Sequence[bytes] | np.ndarray,
                  indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Decodes PNG frames → uint8 [n, R, R, 3]; only `indices` (default: all) are decoded."""
    if indices is None:
        indices = range(len(png_bytes))
    out = []
    for i in np.asarray(indices, np.int64).reshape(-1):
        with Image.open(io.BytesIO(png_bytes[int(i)])) as img:
            out.append(np.asarray(img.convert("RGB"), np.uint8))
    if not out:
        raise ValueError("decode_frames: no frames requested (indices is empty)")
    return np.stack(out)


def make_example(identity: int, seed: int, num_frames: int, resolution: int) -> dict:
    """One record (see module doc) for clip (identity, seed). Module-level so it can run in workers."""
    clip = synthtalk.generate_clip(identity=int(identity), seed=int(seed), num_frames=num_frames,
                                   resolution=resolution)
    example = {
        "frames": np.asarray([encode_png(f) for f in clip.frames], dtype=object),
        "audio": np.asarray(clip.audio, np.float32),
        "identity": np.int64(identity),
        "emotion": np.int64(clip.emotion),
        "clip_seed": np.int64(seed),
    }
    for name, (_, dtype) in FACTOR_SPECS.items():
        example[name] = np.asarray(clip.factors[name], dtype)
    return example


class LocalDatasetInfo(tfds.core.DatasetInfo):
    """DatasetInfo of a data set built on this machine. tfds calls `initialize_from_bucket`
    whenever a builder is made for data that does not exist yet; it makes an empty temp dir
    (`/tmp/tmp*tfds`) for GCS metadata each time and never removes it (GCS lookups are off, so
    nothing is ever read). Our data sets are never on GCS: skip it."""

    def initialize_from_bucket(self) -> None:
        return None


class _PlainFiles:
    """The names tfds's shuffler reaches through `tf` (`tf.io.gfile.GFile / exists / remove`,
    `tf.errors.ResourceExhaustedError`), served by `etils.epath` on plain files."""

    class io:  # noqa: N801 - mirrors `tf.io`
        class gfile:  # noqa: N801 - mirrors `tf.io.gfile`
            @staticmethod
            def GFile(path, mode="r"):  # noqa: N802 - mirrors tf.io.gfile.GFile
                return epath.Path(path).open(mode)

            @staticmethod
            def exists(path) -> bool:
                return epath.Path(path).exists()

            @staticmethod
            def remove(path) -> None:
                epath.Path(path).unlink()

    class errors:  # noqa: N801 - mirrors `tf.errors`
        class ResourceExhaustedError(Exception):
            """Never raised here: running out of file handles is an OSError."""


@contextlib.contextmanager
def _shuffle_spill_on_plain_files():
    """tfds sorts a split's serialized records in memory up to `shuffle.MAX_MEM_BUFFER_SIZE`
    (1 GB) and past that spills them to 1,000 bucket files through `tf.io.gfile`, which needs
    TensorFlow — not a dependency here. SynthTalk at 128² passes 1 GB at about 1,000 train
    identities (1,536 failed with "No module named 'tensorflow'"). While a split is written,
    the shuffler module's `tf` is `_PlainFiles`; with TensorFlow installed nothing changes.
    The soft limit on open files is raised to fit the 1,000 buckets, as tfds does on its own
    path."""
    import importlib.util
    import resource

    from tensorflow_datasets.core import shuffle

    if importlib.util.find_spec("tensorflow") is not None or not hasattr(shuffle, "tf"):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * shuffle.BUCKETS_NUMBER
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (
            want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    saved = shuffle.tf
    shuffle.tf = _PlainFiles
    try:
        yield
    finally:
        shuffle.tf = saved


class SynthTalk(tfds.core.GeneratorBasedBuilder):
    """SynthTalk talking-head clips with exact per-frame ground truth (see module doc)."""

    name = "synthtalk"
    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {"1.0.0": "PNG frames, 16 kHz audio and all SynthTalk factors per clip.",
                     "1.1.0": "Adds per-frame 2D landmarks (eyes, nose tip, mouth).",
                     "1.2.0": "Adds the mouth's corners and inner lip edges to the landmarks; "
                              "they move with the mouth factors and the emotion."}
    BUILDER_CONFIG_CLASS = SynthTalkConfig
    BUILDER_CONFIGS = [SynthTalkConfig()]

    # Nothing is downloaded, so there are no checksums to locate next to the code. tfds's own
    # lookup of the code path needs the `importlib_resources` backport for packaged builders.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        cfg: SynthTalkConfig = self.builder_config
        t = cfg.num_frames
        feats = {
            "frames": tfds.features.Tensor(shape=(t,), dtype=np.object_),
            "audio": tfds.features.Tensor(shape=(t * synthtalk.SAMPLES_PER_FRAME,),
                                          dtype=np.float32),
            "identity": tfds.features.Tensor(shape=(), dtype=np.int64),
            "emotion": tfds.features.Tensor(shape=(), dtype=np.int64),
            "clip_seed": tfds.features.Tensor(shape=(), dtype=np.int64),
        }
        for name, (shape, dtype) in FACTOR_SPECS.items():
            feats[name] = tfds.features.Tensor(shape=(t, *shape), dtype=dtype)
        return LocalDatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(feats),
            homepage="https://arxiv.org/abs/2404.10667",
        )

    def download_and_prepare(self, *args, **kwargs):
        with _shuffle_spill_on_plain_files():
            return super().download_and_prepare(*args, **kwargs)

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is procedural
        cfg: SynthTalkConfig = self.builder_config
        return {"train": self._generate_examples(train_identity_ids(cfg)),
                "test": self._generate_examples(test_identity_ids(cfg))}

    def _generate_examples(self, identities: list[int]):
        cfg: SynthTalkConfig = self.builder_config
        jobs = [(f"{identity}_{c}", (identity, clip_seed(cfg.seed, identity, c), cfg.num_frames,
                                     cfg.resolution))
                for identity in identities for c in range(cfg.clips_per_identity)]
        workers = render_workers(len(jobs))
        if workers <= 1:
            for key, args in jobs:
                yield key, make_example(*args)
            return
        # Rendering is numpy on one core per clip: spread clips over processes ("spawn": the
        # caller may already run JAX's threads, which fork would copy mid-flight). At most
        # 4 clips per worker are in flight, so memory stays bounded at any data-set size.
        import collections
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            pending = collections.deque()
            for key, args in jobs:
                pending.append((key, pool.submit(make_example, *args)))
                if len(pending) >= 4 * workers:
                    done_key, future = pending.popleft()
                    yield done_key, future.result()
            while pending:
                done_key, future = pending.popleft()
                yield done_key, future.result()


RENDER_WORKERS_ENV = "VASA_JAX_RENDER_WORKERS"


def render_workers(num_clips: int) -> int:
    """Processes that render a SynthTalk build: ${VASA_JAX_RENDER_WORKERS} if set, else one per
    available core once there are at least 32 clips (below that, starting the processes costs
    more than it saves). The records are the same whatever the count."""
    import os

    env = os.environ.get(RENDER_WORKERS_ENV, "")
    if env:
        check(env.isdigit() and int(env) >= 1,
              f"{RENDER_WORKERS_ENV}={env!r} is invalid: set a whole number ≥ 1 or unset it")
        return min(int(env), max(num_clips, 1))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, num_clips // 16)) if num_clips >= 32 else 1


def make_builder(data_dir: str, **config_fields) -> SynthTalk:
    """A SynthTalk builder for the config given by `config_fields` (array_record files)."""
    config = SynthTalkConfig(**config_fields)
    return SynthTalk(config=config, data_dir=str(data_dir), file_format="array_record")


def prepare_synthtalk(data_dir: str, **config_fields) -> dict[str, Any]:
    """Generates the data set if missing and returns {split: random-access data source}.

    Each data source supports len() and [i] → record dict (see module doc) and plugs into
    `grain.MapDataset.source`.
    """
    builder = make_builder(data_dir, **config_fields)
    builder.download_and_prepare()
    return {split: builder.as_data_source(split=split) for split in SPLITS}


def open_sources(data_config, data_dir: str, image_size: int | None = None) -> dict[str, Any]:
    """The trainers' {"train", "test"} sources from `config.data`, on one host or many.

    `data_config.dataset` empty (the default): SynthTalk sized by `data_config.synthtalk`,
    built under `data_dir` if missing — in a multi-process run by process 0 while the others
    wait, then opened by all. Otherwise a data set prepared by `vasa-jax preprocess`, named
    "voxceleb2/<config name>" or "video_folder/<config name>" under `data_dir` (a local or a
    bucket path), or given as a full path. `image_size`: the model's, checked against the
    stored frames.
    """
    import jax

    dataset = str(data_config.get("dataset", "") or "")
    if not dataset:
        fields = data_config.synthtalk.to_dict()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            if jax.process_index() == 0:
                make_builder(data_dir, **fields).download_and_prepare()
            multihost_utils.sync_global_devices("vasa_jax: SynthTalk prepared")
        return prepare_synthtalk(data_dir, **fields)

    from vasa_jax.data import preprocess

    path = dataset if ("://" in dataset or dataset.startswith("/")) else \
        f"{str(data_dir).rstrip('/')}/{dataset}"
    sources = preprocess.open_prepared(path)
    check("train" in sources and len(sources["train"]) > 0,
          f"the data set at {path} has no train clips: check the preprocessing summary.json")
    if image_size is not None:
        size = decode_frames(sources["train"][0]["frames"], [0]).shape[1]
        check(size == int(image_size),
              f"the data set at {path} holds {size}² frames but the model's image_size is "
              f"{image_size}: preprocess with --config.resolution={image_size} or train a "
              f"model of that size")
    return sources
