"""grain input pipelines for both training stages, deterministic and checkpointable.

    sources = builders.prepare_synthtalk(data_dir, resolution=64, num_frames=50, ...)
    ds = pipelines.stage1_dataset(sources["train"], batch_size=8, seed=0)
    it = iter(ds)                       # grain DatasetIterator: get_state() / set_state()
    batch = next(it)                    # dict of numpy arrays, leading axis = per-process batch
    arrays = pipelines.global_batch(batch, mesh)   # global jax.Arrays sharded over the batch axis

Determinism. Sample g of an epoch is processed by a `random_map` on the *unsharded*
`MapDataset.range(num_samples)`, so its random choices (frames, window start, the other clip)
depend only on (seed, epoch, g): not on the process count, the thread count or `mp_prefetch`.
Per epoch the order is a fresh global permutation (`shuffle`, reseeded each epoch by `repeat`),
split among processes by slicing `[shard_index::shard_count]`; each shard keeps
`(num_samples // shard_count) // batch_size * batch_size` samples so that every process yields
the same number of full batches (at most shard_count·batch_size − 1 samples per epoch are
skipped, a different set each epoch). Batches never straddle epochs.

Checkpointing. `iter(ds)` is a grain `DatasetIterator`; save its `get_state()` (JSON-able) or,
with orbax, `ocp.args.Composite(..., data_iter=grain.checkpoint.CheckpointSave(it))` and restore
with `grain.checkpoint.CheckpointRestore(it)` on a freshly built iterator of the same pipeline.

Images leave the host as uint8 (4× less host→device traffic than float32); convert on device
with `images_to_float` ([-1, 1], float32).

Stage 1 element (one frame pair of one clip plus a frame of another identity; with
`cross_clip_prob` > 0, that share of drivers come from another clip of the source's identity):
  source, driver, other             uint8 [R, R, 3]
  source_<f>, driver_<f>, other_<f> ground-truth factor f of that frame (f in `factors`; a
                                    name in DERIVED_FACTORS is computed, not stored)
  source_frame, driver_frame, other_frame   int32 frame indices in their clips
  record_index, driver_record_index, other_record_index  int64 indices into the data source
  identity, other_identity, emotion, clip_seed   int64 (identity/emotion/clip_seed of the source clip)

Stage 2 element (a window of W frames with the K frames before it; works on any record with
per-frame arrays (leading axis T) and, optionally, audio of T·samples_per_frame samples —
frames are never decoded, so extracted latent data sets plug in unchanged):
  <f>              [K+W, ...] per-frame field f (f in `fields`), zero where frame_mask is 0
  audio            float32 [(K+W)·samples_per_frame], zero-padded like the frames
  frame_mask       bool [K+W]  which of the K+W positions are real frames of the clip
  history_mask     bool [K]    = frame_mask[:K] (False: before the clip start, zero padding)
  cond_<c>         float32 mean of per-frame field c over the window's real frames (c in
                   `condition_fields`, default gaze [2] and distance [])
  <clip field>     int64 per-clip scalars (default identity, emotion)
  record_index     int64; start int32 (clip frame index of window position K); num_frames int32
A window starts uniformly in [0, T − W]; history positions before frame 0 are padded. Clips
shorter than W are padded at the end too (frame_mask tells).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any, Sequence

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vasa_jax.data import builders
from vasa_jax.data.synthtalk.spec import SAMPLES_PER_FRAME
from vasa_jax.errors import ConfigError, check

STAGE1_FACTORS = builders.FACTORS
STAGE2_FIELDS = ("rotation", "translation", "scale", "gaze", "eye_gaze", "blink", "mouth")
STAGE2_CONDITIONS = ("gaze", "distance")
STAGE2_CLIP_FIELDS = ("identity", "emotion")

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Shared pieces.


def _check_int(value: Any, field: str, minimum: int, maximum: int | None = None) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    check(ok, f"{field} must be an integer, got {value!r}")
    value = int(value)
    if maximum is None:
        check(value >= minimum, f"{field}={value} is invalid: use an integer >= {minimum}")
    else:
        check(minimum <= value <= maximum,
              f"{field}={value} is invalid: use an integer in [{minimum}, {maximum}]")
    return value


def _derived_seed(seed: int, salt: int) -> int:
    return int(np.random.SeedSequence([seed, salt]).generate_state(1, np.uint32)[0])


def _shard_args(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    shard_count = jax.process_count() if shard_count is None else shard_count
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = _check_int(shard_count, "shard_count", 1)
    _check_int(shard_index, "shard_index", 0, shard_count - 1)
    return int(shard_index), shard_count


def samples_per_shard(num_samples: int, batch_size: int, shard_count: int) -> int:
    """Samples one process consumes per epoch (a multiple of batch_size)."""
    return (num_samples // shard_count) // batch_size * batch_size


def _epoch_pipeline(num_samples: int, transform: grain.transforms.RandomMap, *, batch_size: int,
                    seed: int, num_epochs: int | None, shuffle: bool, shard_index: int | None,
                    shard_count: int | None, mp_prefetch: int, read_threads: int,
                    prefetch_buffer: int, what: str) -> grain.IterDataset:
    batch_size = _check_int(batch_size, "batch_size", 1)
    seed = _check_int(seed, "seed", 0, 2**32 - 1)
    mp_prefetch = _check_int(mp_prefetch, "mp_prefetch", 0)
    read_threads = _check_int(read_threads, "read_threads", 1)
    prefetch_buffer = _check_int(prefetch_buffer, "prefetch_buffer", 1)
    if num_epochs is not None:
        num_epochs = _check_int(num_epochs, "num_epochs", 1)
    shard_index, shard_count = _shard_args(shard_index, shard_count)
    usable = samples_per_shard(num_samples, batch_size, shard_count)
    check(usable >= batch_size,
          f"batch_size={batch_size} is too large: {what} has {num_samples} samples per epoch "
          f"over {shard_count} process(es); use batch_size <= {num_samples // shard_count}")

    ds = grain.MapDataset.range(num_samples)
    # Before shuffling and sharding: the rng of sample g in epoch e is keyed by e·n + g only.
    ds = ds.random_map(transform, seed=_derived_seed(seed, 1))
    if shuffle:
        ds = ds.shuffle(seed=_derived_seed(seed, 2))
    ds = ds[shard_index::shard_count]
    ds = ds[:usable]
    ds = ds.repeat(num_epochs)
    ds = ds.batch(batch_size, drop_remainder=True)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                 prefetch_buffer_size=prefetch_buffer))
    if mp_prefetch > 0:
        _ensure_flags_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=mp_prefetch))
    return it_ds


def _ensure_flags_parsed() -> None:
    """grain's mp_prefetch reads absl flags; outside absl.app.run nobody has parsed them
    (UnparsedFlagAccessError). Marking them parsed keeps every flag at its default."""
    from absl import flags  # pylint: disable=g-import-not-at-top

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _scalar(x) -> np.int64:
    return np.int64(np.asarray(x).reshape(()))


def images_to_float(images):
    """uint8 images → float32 in [-1, 1]; works on numpy or jax arrays (use it on device)."""
    return images.astype(np.float32) / 127.5 - 1.0


# --------------------------------------------------------------------------------------------
# Stage 1: frame pairs.


class DecodedClipCache:
    """A thread-safe LRU of decoded clips within a byte budget: record index → the record's
    fields a stage-1 example reads (its frames decoded once, uint8 [T, R, R, 3]; audio
    dropped).

    Reading a record parses the whole clip (all T PNGs and the audio) to use one or two of its
    frames, and each frame is then PNG-decoded: on 128² SynthTalk ~35 ms of host CPU per batch
    of 8, which on a 2-core machine comes out of the train step's cores. With the decoded
    training set inside the budget every record is read and decoded once per process. Over
    budget, the least recently used clips are dropped; each miss decodes its whole clip, so a
    budget far below the data set costs more than no cache (`Stage1Example` warns).
    Not pickled: an `mp_prefetch` worker starts with an empty cache of the same budget.
    """

    def __init__(self, budget_bytes: int):
        self.budget = int(budget_bytes)
        self._init()

    def _init(self):
        self._items: OrderedDict[int, dict] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __getstate__(self):
        return {"budget": self.budget}

    def __setstate__(self, state):
        self.budget = state["budget"]
        self._init()

    def __len__(self) -> int:
        return len(self._items)

    @staticmethod
    def load(rec: dict) -> dict:
        """The cached form of a record: frames decoded, audio dropped, the rest as numpy."""
        out = {k: np.asarray(v) for k, v in rec.items() if k not in ("frames", "audio")}
        out["frames"] = builders.decode_frames(rec["frames"])
        return out

    @staticmethod
    def size(item: dict) -> int:
        return int(sum(v.nbytes for v in item.values()))

    def get(self, r: int, read) -> dict:
        """Record r's cached form; on a miss `read(r)` supplies the record."""
        with self._lock:
            item = self._items.get(r)
            if item is not None:
                self._items.move_to_end(r)
                self.hits += 1
                return item
            self.misses += 1
        item = self.load(read(r))  # outside the lock: threads decode in parallel
        n = self.size(item)
        with self._lock:
            if r not in self._items and n <= self.budget:
                self._items[r] = item
                self.nbytes += n
                while self.nbytes > self.budget:
                    _, old = self._items.popitem(last=False)
                    self.nbytes -= self.size(old)
        return item




def _stored_factor(rec: dict, field: str, t: int) -> np.ndarray:
    return np.asarray(rec[field])[t]


def _mouth_geometry(rec: dict, field: str, t: int) -> np.ndarray:
    from vasa_jax.data.synthtalk.render import mouth_geometry

    return mouth_geometry(_scalar(rec["identity"]), np.asarray(rec["mouth"])[t],
                          _scalar(rec["emotion"]))


def _emotion_onehot(rec: dict, field: str, t: int) -> np.ndarray:
    from vasa_jax.data.synthtalk.spec import EMOTIONS

    code = np.zeros(len(EMOTIONS), np.float32)
    code[_scalar(rec["emotion"])] = 1.0
    return code


# Per-frame fields a stage-1 example can carry that the records do not store, computed from
# what they do: name → (the record fields it needs, (record, field, frame index) → value).
# "mouth_geometry": float32 [2], the drawn mouth's (log half-width, half-opening) in head units
# (SynthTalk records only). "emotion_onehot": float32 [5], the record's emotion (one per clip)
# as a one-hot over synthtalk.EMOTIONS, for the frame's own clip (so a driver from another
# clip carries that clip's emotion).
DERIVED_FACTORS = {"mouth_geometry": (("identity", "emotion", "mouth"), _mouth_geometry),
                   "emotion_onehot": (("emotion",), _emotion_onehot)}


class Stage1Example(grain.transforms.RandomMap):
    """Sample g → a (source, driver) frame pair of record g mod n, plus a frame of another identity.

    Module-level and picklable (mp_prefetch workers unpickle it). The other clip is found by
    rejection sampling over records (reads a record per try) unless `identities` — the identity of
    every record, in source order — is given.

    cross_clip_prob: the chance that the driver comes from another clip of the same identity
    (needs `identities`; identities with one clip keep the within-clip pair). Within one short
    clip the head barely moves; across clips its rest pose, place and distance change as much
    as they do between two people, which is what cross-identity reenactment asks of the warp.

    cache_mb > 0 keeps decoded clips in a `DecodedClipCache` of that many MiB (per process):
    the same examples, without re-reading and re-decoding a clip each time it is drawn.
    """

    def __init__(self, source, factors: Sequence[str] = STAGE1_FACTORS,
                 identities: Sequence[int] | None = None, max_other_tries: int = 64,
                 cross_clip_prob: float = 0.0, cache_mb: float = 0.0):
        self.source = source
        self.num_records = len(source)
        ok = isinstance(cache_mb, (int, float, np.integer, np.floating)) and not isinstance(
            cache_mb, bool) and np.isfinite(cache_mb) and cache_mb >= 0
        check(ok, f"cache_mb={cache_mb!r} is invalid: use a number of MiB >= 0 (0: no cache)")
        self.cache = DecodedClipCache(int(cache_mb * 2**20)) if cache_mb > 0 else None
        if self.cache is not None and self.num_records:
            need = DecodedClipCache.size(DecodedClipCache.load(source[0])) * self.num_records
            if need > self.cache.budget:
                log.warning(
                    "stage-1 clip cache: the decoded clips need ~%d MiB, the budget is %g MiB; "
                    "most reads will miss and each miss decodes a whole clip. Raise cache_mb "
                    "to %d or set it to 0", need >> 20, cache_mb, (need >> 20) + 1)
        self.factors = tuple(factors)
        for f in self.factors:
            if f in DERIVED_FACTORS and self.num_records:
                needs = DERIVED_FACTORS[f][0]
                missing = [k for k in needs if k not in source[0]]
                check(not missing, f"the {f} factor needs SynthTalk records ({', '.join(needs)}); "
                      f"these lack {', '.join(missing)}: turn off the loss that asks for it "
                      f"(loss.{f}=0)")
        self.identities = None if identities is None else np.asarray(identities, np.int64)
        self.max_other_tries = max_other_tries
        self.cross_clip_prob = float(cross_clip_prob)
        check(0.0 <= self.cross_clip_prob <= 1.0,
              f"cross_clip_prob={cross_clip_prob!r} is invalid: use a probability in [0, 1]")
        check(self.cross_clip_prob == 0.0 or self.identities is not None,
              "cross_clip_prob > 0 needs identities= (the identity of every record) to find "
              "another clip of the same person")
        if self.identities is not None:
            check(len(self.identities) == self.num_records,
                  f"identities= lists {len(self.identities)} records, the source has "
                  f"{self.num_records}")
            # Records grouped by identity (ascending within a group), so that a sample finds
            # its identity's records by binary search instead of scanning the whole table.
            self._by_identity = np.argsort(self.identities, kind="stable")
            self._sorted_ids = self.identities[self._by_identity]

    def _record(self, r: int) -> dict:
        """Record r: as the source returns it, or its cached decoded form."""
        if self.cache is None:
            return self.source[r]
        return self.cache.get(r, self.source.__getitem__)

    def _frames(self, rec: dict, indices: Sequence[int]) -> np.ndarray:
        """uint8 [n, R, R, 3]: frames `indices` of a record from `_record`."""
        if self.cache is None:
            return builders.decode_frames(rec["frames"], indices)
        return rec["frames"][np.asarray(indices, np.int64)]

    def _records_of(self, identity: int) -> np.ndarray:
        """The (ascending) record indices of `identity`."""
        lo = int(np.searchsorted(self._sorted_ids, identity, side="left"))
        hi = int(np.searchsorted(self._sorted_ids, identity, side="right"))
        return self._by_identity[lo:hi]

    def _same_identity_clip(self, r: int, rng: np.random.Generator) -> int:
        """Another record of record r's identity, or r when it has no other clip."""
        candidates = self._records_of(int(self.identities[r]))
        candidates = candidates[candidates != r]
        return int(candidates[rng.integers(candidates.size)]) if candidates.size else r

    def _other(self, r: int, identity: int, rng: np.random.Generator) -> tuple[int, dict]:
        n = self.num_records
        if self.identities is not None:
            members = self._records_of(identity)
            if members.size == n:
                raise ValueError("stage 1 needs clips of at least two identities; all records "
                                 f"have identity {identity}")
            # The k-th record (ascending) not of `identity`: k plus the members before it.
            k = int(rng.integers(n - members.size))
            j = k + int(np.searchsorted(members - np.arange(members.size), k, side="right"))
            return j, self._record(j)
        for _ in range(self.max_other_tries):
            j = int(rng.integers(n - 1)) if n > 1 else 0
            j += j >= r  # any record but r
            if j >= n:
                break
            rec = self._record(j)
            if _scalar(rec["identity"]) != identity:
                return j, rec
        raise ValueError(
            f"no clip of an identity other than {identity} found in {self.max_other_tries} "
            "draws: stage 1 needs several identities (pass identities= to skip the search)")

    def random_map(self, element, rng: np.random.Generator) -> dict:
        r = int(element) % self.num_records
        rec = self._record(r)
        identity = _scalar(rec["identity"])
        t = len(rec["frames"])
        s = int(rng.integers(t))
        d = (s + 1 + int(rng.integers(t - 1))) % t if t > 1 else s
        j, other = self._other(r, int(identity), rng)
        o = int(rng.integers(len(other["frames"])))
        dr, drv_rec = r, rec
        # Drawn only when on, so that cross_clip_prob=0 keeps the random stream unchanged.
        if self.cross_clip_prob > 0 and rng.uniform() < self.cross_clip_prob:
            dr = self._same_identity_clip(r, rng)
            if dr != r:
                drv_rec = self._record(dr)
                d = int(rng.integers(len(drv_rec["frames"])))
        if dr == r:
            pair = self._frames(rec, [s, d])
        else:
            pair = (self._frames(rec, [s])[0], self._frames(drv_rec, [d])[0])
        out = {
            "source": pair[0],
            "driver": pair[1],
            "other": self._frames(other, [o])[0],
            "source_frame": np.int32(s),
            "driver_frame": np.int32(d),
            "other_frame": np.int32(o),
            "record_index": np.int64(r),
            "driver_record_index": np.int64(dr),
            "other_record_index": np.int64(j),
            "identity": identity,
            "other_identity": _scalar(other["identity"]),
            "emotion": _scalar(rec["emotion"]),
            "clip_seed": _scalar(rec["clip_seed"]),
        }
        for f in self.factors:
            read = DERIVED_FACTORS[f][1] if f in DERIVED_FACTORS else _stored_factor
            out[f"source_{f}"] = read(rec, f, s)
            out[f"driver_{f}"] = read(drv_rec, f, d)
            out[f"other_{f}"] = read(other, f, o)
        return out


def record_identities(source) -> np.ndarray:
    """int64 [len(source)]: every record's identity, in source order (one read per record)."""
    return np.asarray([_scalar(source[i]["identity"]) for i in range(len(source))], np.int64)


def stage1_dataset(source, batch_size: int, seed: int, *, num_epochs: int | None = None,
                   pairs_per_clip: int = 1, factors: Sequence[str] | None = None,
                   identities: Sequence[int] | None = None, cross_clip_prob: float = 0.0,
                   shuffle: bool = True,
                   shard_index: int | None = None, shard_count: int | None = None,
                   mp_prefetch: int = 0, read_threads: int = 4,
                   prefetch_buffer: int = 4, cache_mb: float = 0.0) -> grain.IterDataset:
    """Batches of stage-1 frame pairs (see module doc) from SynthTalk-style clip records.

    An epoch visits every record `pairs_per_clip` times. num_epochs=None repeats forever.
    factors=None: the STAGE1_FACTORS the records carry (all of them for SynthTalk, none for
    real video from `vasa_jax.data.preprocess`).
    mp_prefetch > 0 runs that many worker processes (scripts need `if __name__ == "__main__"`).
    cross_clip_prob > 0 (needs `identities`, e.g. `record_identities(source)`): that share of
    drivers come from another clip of the source's identity (see Stage1Example).
    cache_mb > 0 keeps up to that many MiB of decoded clips per process (`DecodedClipCache`):
    the batches are the same, the host's work per batch far less once the clips are cached.
    """
    check(len(source) >= 2, f"stage 1 needs at least 2 clips, the source has {len(source)}")
    pairs_per_clip = _check_int(pairs_per_clip, "pairs_per_clip", 1)
    if factors is None:
        factors = [f for f in STAGE1_FACTORS if f in source[0]]
    transform = Stage1Example(source, factors=factors, identities=identities,
                              cross_clip_prob=cross_clip_prob, cache_mb=cache_mb)
    return _epoch_pipeline(len(source) * pairs_per_clip, transform, batch_size=batch_size,
                           seed=seed, num_epochs=num_epochs, shuffle=shuffle,
                           shard_index=shard_index, shard_count=shard_count,
                           mp_prefetch=mp_prefetch, read_threads=read_threads,
                           prefetch_buffer=prefetch_buffer, what="stage 1")


# --------------------------------------------------------------------------------------------
# Stage 2: motion windows with history.


class Stage2Window(grain.transforms.RandomMap):
    """Sample g → a window of record g mod n: K history + W frames of per-frame fields and audio."""

    def __init__(self, source, window: int, history: int, fields: Sequence[str],
                 audio_field: str | None, samples_per_frame: int,
                 condition_fields: Sequence[str], clip_fields: Sequence[str]):
        self.source = source
        self.num_records = len(source)
        self.window = window
        self.history = history
        self.fields = tuple(fields)
        self.audio_field = audio_field
        self.samples_per_frame = samples_per_frame
        self.condition_fields = tuple(condition_fields)
        self.clip_fields = tuple(clip_fields)

    @staticmethod
    def _get(rec, name: str, r: int):
        try:
            return rec[name]
        except KeyError:
            raise KeyError(f"record {r} has no field {name!r} (fields: {sorted(rec)}); "
                           "pass fields=/condition_fields=/clip_fields= that exist") from None

    def random_map(self, element, rng: np.random.Generator) -> dict:
        r = int(element) % self.num_records
        rec = self.source[r]
        k, w = self.history, self.window
        per_frame = {f: np.asarray(self._get(rec, f, r)) for f in self.fields}
        conds = {c: np.asarray(self._get(rec, c, r)) for c in self.condition_fields}
        t = len(next(iter(per_frame.values()))) if per_frame else len(next(iter(conds.values())))
        start = int(rng.integers(max(t - w, 0) + 1))
        lo, hi = start - k, start + w
        real_lo, real_hi = max(lo, 0), min(hi, t)  # real frames [real_lo, real_hi)
        a, b = real_lo - lo, real_hi - lo           # their positions in the K+W output
        mask = np.zeros(k + w, bool)
        mask[a:b] = True
        out = {}
        for f, values in per_frame.items():
            if values.shape[:1] != (t,):
                raise ValueError(f"record {r}: field {f!r} has shape {values.shape}, expected a "
                                 f"leading axis of {t} frames")
            cut = np.zeros((k + w, *values.shape[1:]), values.dtype)
            cut[a:b] = values[real_lo:real_hi]
            out[f] = cut
        if self.audio_field is not None:
            audio = np.asarray(self._get(rec, self.audio_field, r))
            spf = self.samples_per_frame
            if audio.shape[0] != t * spf:
                raise ValueError(f"record {r}: {self.audio_field!r} has {audio.shape[0]} samples, "
                                 f"expected {t} frames × {spf}")
            cut = np.zeros(((k + w) * spf, *audio.shape[1:]), audio.dtype)
            cut[a * spf:b * spf] = audio[real_lo * spf:real_hi * spf]
            out[self.audio_field] = cut
        out["frame_mask"] = mask
        out["history_mask"] = mask[:k].copy()
        win_lo, win_hi = start, min(hi, t)  # the window's real frames (not the history)
        for c, values in conds.items():
            out[f"cond_{c}"] = values[win_lo:win_hi].astype(np.float32).mean(0)
        for c in self.clip_fields:
            out[c] = _scalar(self._get(rec, c, r))
        out["record_index"] = np.int64(r)
        out["start"] = np.int32(start)
        out["num_frames"] = np.int32(t)
        return out


def stage2_dataset(source, window: int, history: int, batch_size: int, seed: int, *,
                   fields: Sequence[str] = STAGE2_FIELDS, audio_field: str | None = "audio",
                   samples_per_frame: int = SAMPLES_PER_FRAME,
                   condition_fields: Sequence[str] = STAGE2_CONDITIONS,
                   clip_fields: Sequence[str] = STAGE2_CLIP_FIELDS,
                   windows_per_clip: int = 1, num_epochs: int | None = None,
                   shuffle: bool = True, shard_index: int | None = None,
                   shard_count: int | None = None, mp_prefetch: int = 0, read_threads: int = 4,
                   prefetch_buffer: int = 4) -> grain.IterDataset:
    """Batches of stage-2 windows [B, K+W, ...] (see module doc); never decodes frames.

    An epoch draws `windows_per_clip` windows from every record. audio_field=None skips audio
    (e.g. latent data sets that carry per-frame audio features in `fields` instead).
    """
    window = _check_int(window, "window", 1)
    history = _check_int(history, "history", 0)
    samples_per_frame = _check_int(samples_per_frame, "samples_per_frame", 1)
    windows_per_clip = _check_int(windows_per_clip, "windows_per_clip", 1)
    check(len(fields) + len(condition_fields) > 0,
          "fields and condition_fields are both empty: name at least one per-frame field")
    check(len(source) >= 1, "the source is empty: prepare the data set first")
    transform = Stage2Window(source, window, history, fields, audio_field, samples_per_frame,
                             condition_fields, clip_fields)
    return _epoch_pipeline(len(source) * windows_per_clip, transform, batch_size=batch_size,
                           seed=seed, num_epochs=num_epochs, shuffle=shuffle,
                           shard_index=shard_index, shard_count=shard_count,
                           mp_prefetch=mp_prefetch, read_threads=read_threads,
                           prefetch_buffer=prefetch_buffer, what="stage 2")


# --------------------------------------------------------------------------------------------
# Host batch → global jax.Array.


def global_batch(batch: dict, mesh: jax.sharding.Mesh,
                 axes: Sequence[str] = ("data", "fsdp")) -> dict:
    """Per-process batch (dict of numpy arrays) → global jax.Arrays sharded on axis 0 over `axes`.

    64-bit integer leaves become int32/uint32 unless x64 is on (ValueError if a value does not
    fit, instead of JAX's silent wrap-around). Axes absent from the mesh are ignored. The global batch is the concatenation of all
    processes' local batches (in process order); it must divide by the product of the axes.
    """
    axes = tuple(a for a in axes if a in mesh.axis_names)
    sharding = NamedSharding(mesh, P(axes if axes else None))
    ways = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1

    def put(path, x):
        x = np.asarray(x)
        name = jax.tree_util.keystr(path)
        check(x.ndim >= 1, f"global_batch: {name} needs a leading batch axis")
        if x.dtype.kind in "iu" and x.dtype.itemsize == 8 and not jax.config.jax_enable_x64:
            # JAX would silently wrap 64-bit integers to 32 bits; refuse values that do not fit.
            target = np.dtype(np.int32 if x.dtype.kind == "i" else np.uint32)
            info = np.iinfo(target)
            if x.size and (x.min() < info.min or x.max() > info.max):
                raise ValueError(f"global_batch: {name} holds values outside {target.name} "
                                 "(JAX x64 is off): keep such fields on the host or enable x64")
            x = x.astype(target)
        global_size = x.shape[0] * jax.process_count()
        check(global_size % ways == 0,
              f"global batch size {global_size} is not divisible by the {ways} devices of mesh "
              f"axes {axes}: use a batch_size that is a multiple of {ways}")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map_with_path(put, batch)


__all__ = [
    "STAGE1_FACTORS", "STAGE2_CLIP_FIELDS", "STAGE2_CONDITIONS", "STAGE2_FIELDS",
    "ConfigError", "DecodedClipCache", "Stage1Example", "Stage2Window", "global_batch", "images_to_float",
    "samples_per_shard", "stage1_dataset", "stage2_dataset",
]
