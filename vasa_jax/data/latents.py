"""Stage-2 latent data sets: per-clip motion latents, audio features and conditions.

Written by `python -m vasa_jax.train.extract_latents`, read by the stage-2 trainer:

    DIR/info.json                       what was extracted (face checkpoint, step, audio front end,
                                        dims, splits and their shard files)
    DIR/stats.json                      normalisation statistics over the train split
    DIR/<split>-NNNNN.array_record      shards of records (one record per clip)

Record (T = frames of the clip; one record = one `np.savez` blob, loaded with
allow_pickle=False — no pickle anywhere):
  motion      float32 [T, 7 + dyn_dim]   [z_pose, z_dyn] from the frozen stage-1 motion encoder
  audio_feat  float32 [T, Da]            audio features at 25 fps (log-mel or Wav2Vec2)
  gaze        float32 [T, 2]             camera-frame gaze (θ, φ; degrees)
  distance    float32 [T]                head-to-camera distance (raw; normalise with stats)
  mouth       float32 [T, 3]             ground-truth mouth (SynthTalk; NaN when unknown)
  rotation    float32 [T, 3]             ground-truth head rotation (SynthTalk; NaN when unknown)
  identity, emotion, clip_seed           int64 scalars
`LatentSource` is a random-access source (len, [i]) for `grain.MapDataset` and
`pipelines.stage2_dataset(..., fields=("motion", "audio_feat"), audio_field=None)`.
"""

from __future__ import annotations

import io
import json
import os
import threading
from typing import Any

import numpy as np

from vasa_jax.errors import ConfigError

INFO_JSON = "info.json"
STATS_JSON = "stats.json"


def encode_record(record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in record.items()})
    return buf.getvalue()


# np.load parses each member's .npy header with ast.literal_eval, and CPython 3.11's AST
# constructor is not safe across threads (python/cpython#106905: a spurious "SystemError: AST
# constructor recursion depth mismatch" when grain's read threads decode records at once; seen
# here in a stage-2 run). Decoding is a small part of a read: one at a time.
_DECODE_LOCK = threading.Lock()


def decode_record(blob: bytes) -> dict[str, np.ndarray]:
    with _DECODE_LOCK, np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.array_record"


def write_shard(path: str, records: list[dict]) -> None:
    """Writes records to `path` atomically (a temporary file renamed when complete)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    tmp = path + ".tmp"
    writer = ArrayRecordWriter(tmp, "group_size:1")
    try:
        for rec in records:
            writer.write(encode_record(rec))
    finally:
        writer.close()
    os.replace(tmp, path)


def read_info(directory: str) -> dict:
    path = os.path.join(directory, INFO_JSON)
    if not os.path.isfile(path):
        raise ConfigError(f"{directory!r} is not a latent data set ({INFO_JSON} missing): run "
                          "`python -m vasa_jax.train.extract_latents` first")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_stats(directory: str) -> dict[str, np.ndarray]:
    with open(os.path.join(directory, STATS_JSON), encoding="utf-8") as f:
        return {k: np.asarray(v, np.float32) for k, v in json.load(f).items()}


class Normalizer:
    """(x − mean) / std per named field of the stage-2 statistics (stats.json), and back for
    motion. Shared by the stage-2 trainer and the generator (numpy only, usable under jit)."""

    FIELDS = ("motion", "audio_feat", "gaze", "distance")

    def __init__(self, stats: dict):
        self.stats = {k: np.asarray(v, np.float32) for k, v in stats.items()}
        missing = [f"{n}_{s}" for n in self.FIELDS for s in ("mean", "std")
                   if f"{n}_{s}" not in self.stats]
        if missing:
            raise ConfigError(f"normalisation statistics lack {missing}: re-run extract_latents "
                              "(or re-export the bundle)")

    def __call__(self, name: str, x):
        return (x - self.stats[f"{name}_mean"]) / self.stats[f"{name}_std"]

    def motion_to_raw(self, x):
        return x * self.stats["motion_std"] + self.stats["motion_mean"]


class LatentSource:
    """Random access to one split of a latent data set: len() and [i] → record dict."""

    def __init__(self, directory: str, split: str):
        info = read_info(directory)
        if split not in info["splits"]:
            raise ConfigError(f"latent data set {directory!r} has no split {split!r} "
                              f"(has {sorted(info['splits'])})")
        self.directory = os.path.abspath(directory)
        self.split = split
        self.paths = [os.path.join(self.directory, s) for s in info["splits"][split]["shards"]]
        self._source = None

    def _open(self):
        if self._source is None:
            from array_record.python.array_record_data_source import ArrayRecordDataSource

            self._source = ArrayRecordDataSource(self.paths)
        return self._source

    def __len__(self) -> int:
        return len(self._open())

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return decode_record(self._open()[int(i)])

    def __getstate__(self):  # picklable for grain workers: reopen lazily
        return dict(directory=self.directory, split=self.split, paths=self.paths, _source=None)

    def __setstate__(self, state):
        self.__dict__.update(state)
