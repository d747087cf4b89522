"""Real talking-face video → tfds/array_record clip records that the training pipelines read.

    vasa-jax preprocess --input ~/voxceleb2 --data-dir ~/vasa_data \
        --config configs/preprocess.py:voxceleb2 [--workers 16] [--config.resolution=512]
    # then train with --config.data.data_dir=~/vasa_data --config.data.dataset=voxceleb2/<name>

    from vasa_jax.data import preprocess
    summary = preprocess.preprocess(config, "~/voxceleb2", "~/vasa_data", num_workers=16)
    sources = preprocess.open_prepared(f"~/vasa_data/{summary['dataset']}")  # {split: source}

Input layouts (`config.layout`):
  voxceleb2  the manual download as published: ROOT/vox2_dev_mp4 and/or ROOT/vox2_test_mp4,
             each holding idNNNNN/<youtube id>/NNNNN.mp4 (directly, or under dev/mp4, test/mp4
             or mp4/ as the zip files unpack). With `audio="aac"` the audio comes from the
             separate tree ROOT/vox2_dev_aac / vox2_test_aac (same relative paths, .m4a).
             dev → train, test → test (VoxCeleb2's own speaker-disjoint split); without
             vox2_test_mp4, `test_fraction` of the dev speakers are held out instead.
  folder     any folder of videos PyAV reads (mp4, mov, mkv, webm, avi, ...): ROOT/<speaker>/
             .../<clip>.<ext>, the first folder level naming the speaker (files directly in
             ROOT are each their own speaker). `test_fraction` of the speakers go to test,
             chosen by a hash of the speaker name and `split_seed` (stable as folders grow).

Each clip: PyAV decode → nearest-timestamp resampling to 25 fps → the aligner's square crop
(`vasa_jax.data.face_crop`; default: VoxCeleb2's framing, the centre square) resized to
`resolution`² → JPEG (4:4:4) or PNG bytes per frame; audio → 16 kHz mono, exactly 640 samples
per frame (zero-padded at the end if the audio stream is shorter). `clip_seconds` > 0 cuts long
videos into records of that length; otherwise a file is one record of at most `max_seconds`.

Record layout: SynthTalk's (`vasa_jax.data.builders`) without the ground-truth factors, so
`pipelines.stage1_dataset` / `stage2_dataset` read it unchanged:
  frames     object [T]       encoded frames (`builders.decode_frames` reads JPEG and PNG)
  audio      float32 [T*640]  16 kHz mono
  identity   int64 []         VoxCeleb2: NNNNN of idNNNNN; folder: the speaker's index in the
                              sorted list of all speakers
  emotion    int64 []         -1 (unknown)
  clip_seed  int64 []         CRC-32 of clip_id (31 bits): a stable per-clip integer
  speaker    bytes []         idNNNNN / the speaker folder name
  clip_id    bytes []         path of the file under its split root (+ "#k" for segment k)
  sharpness  float32 []       the quality score (face_crop.sharpness)

Output: DATA_DIR/<voxceleb2|video_folder>/<config name>/1.0.0/ — tfds shards
`<name>-<split>.array_record-NNNNN-of-MMMMM`, dataset_info.json, features.json (readable with
`tfds.builder_from_directory(...).as_data_source(split)` or `open_prepared`), `plan.json` (which
input files went to which shard) and `summary.json` (clips written and skipped, with reasons).

Scale. Files are planned into shards of `shard_size` files; worker processes (spawned, so this
may run from a process that has started JAX) each write whole shards, atomically (a temporary
file renamed into place, then a `.done.json` sidecar). A killed run, rerun with the same
command, skips every finished shard. A corrupt, truncated, too-short or audio-less file is
logged with its path and reason and skipped. DATA_DIR may be a local path or a bucket path
(etils epath); shards are written to a local temporary file first, then moved or copied.
"""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import tempfile
import time
import zlib
from typing import Any

import numpy as np

from vasa_jax.errors import ConfigError, check

log = logging.getLogger(__name__)

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
LAYOUTS = {"voxceleb2": "voxceleb2", "folder": "video_folder"}  # layout → tfds data set name
IMAGE_FORMATS = ("jpeg", "png")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".flv",
                  ".ts", ".wmv", ".3gp")
DATA_VERSION = "1.0.0"
PLAN_JSON = "plan.json"
SUMMARY_JSON = "summary.json"
_VOX_ID = re.compile(r"^id(\d{5})$")


# ----------------------------------------------------------------------------------------------
# Config.


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated preprocessing settings (from configs/preprocess.py); see the module doc."""

    layout: str = "voxceleb2"
    resolution: int = 224
    image_format: str = "jpeg"
    jpeg_quality: int = 95
    audio: str = "mp4"
    clip_seconds: float = 0.0
    min_seconds: float = 1.0
    max_seconds: float = 20.0
    test_fraction: float = 0.02
    split_seed: int = 0
    shard_size: int = 32
    aligner: str = "center"
    detector: str = ""
    detect_every: int = 5
    box_scale: float = 1.8
    min_sharpness: float = 0.0
    min_face_size: int = 0
    max_faces: int = 0

    @classmethod
    def from_config(cls, config) -> "Settings":
        c = dict(config.to_dict() if hasattr(config, "to_dict") else config)
        quality = c.pop("quality", {}) or {}
        c.update(quality)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(c) - known)
        check(not unknown, f"unknown preprocessing config field(s) {unknown}: see "
              "configs/preprocess.py for the fields")
        s = cls(**c)
        s.validate()
        # 2 and 2.0 must give the same config name.
        floats = {f.name: float(getattr(s, f.name)) for f in dataclasses.fields(cls)
                  if f.type == "float"}
        return dataclasses.replace(s, **floats)

    def validate(self) -> None:
        def integer(name, lo, hi=None):
            v = getattr(self, name)
            ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            check(ok and v >= lo and (hi is None or v <= hi),
                  f"{name}={v!r} is invalid: use an integer "
                  + (f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"))

        def number(name, lo, hi=None, open_lo=False):
            v = getattr(self, name)
            ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            ok = ok and math.isfinite(v) and (v > lo if open_lo else v >= lo)
            ok = ok and (hi is None or v <= hi)
            check(ok, f"{name}={v!r} is invalid: use a number "
                  + (f"in [{lo}, {hi}]" if hi is not None else f"{'>' if open_lo else '>='} {lo}"))

        check(self.layout in LAYOUTS, f"layout={self.layout!r} is invalid: use one of "
              f"{', '.join(LAYOUTS)}")
        integer("resolution", 16, 2048)
        check(self.resolution % 2 == 0, f"resolution={self.resolution} is invalid: use an even "
              "size (e.g. 64, 224, 256, 512)")
        check(self.image_format in IMAGE_FORMATS,
              f"image_format={self.image_format!r} is invalid: use jpeg or png")
        integer("jpeg_quality", 1, 100)
        check(self.audio in ("mp4", "aac"), f"audio={self.audio!r} is invalid: use 'mp4' (the "
              "video's own audio stream) or 'aac' (VoxCeleb2's separate aac tree)")
        check(self.audio == "mp4" or self.layout == "voxceleb2",
              "audio='aac' needs layout='voxceleb2' (the folder layout reads each video's audio)")
        number("clip_seconds", 0.0)
        number("min_seconds", 0.04)
        number("max_seconds", 0.04)
        check(self.clip_seconds == 0 or self.clip_seconds >= self.min_seconds,
              f"clip_seconds={self.clip_seconds} is below min_seconds={self.min_seconds}: "
              "every segment would be skipped; raise clip_seconds or lower min_seconds")
        number("test_fraction", 0.0, 0.5)
        integer("split_seed", 0)
        integer("shard_size", 1)
        check(isinstance(self.aligner, str) and bool(self.aligner),
              "aligner is empty: use 'center', 'box' or 'module:callable'")
        check(isinstance(self.detector, str), "detector must be a string ('' or module:callable)")
        check(self.aligner != "box" or bool(self.detector),
              "aligner='box' needs a face detector: set detector='module:callable'")
        integer("detect_every", 1)
        number("box_scale", 1.0)
        number("min_sharpness", 0.0)
        integer("min_face_size", 0)
        integer("max_faces", 0)
        check(self.max_faces == 0 or bool(self.detector),
              f"quality.max_faces={self.max_faces} needs a face detector: set "
              "detector='module:callable' or quality.max_faces=0")

    @property
    def dataset_name(self) -> str:
        return LAYOUTS[self.layout]

    @property
    def config_name(self) -> str:
        """'r224_jpeg_<8 hex>': resolution, format and a digest of every other field."""
        fields = json.dumps(dataclasses.asdict(self), sort_keys=True)
        digest = hashlib.sha1(fields.encode()).hexdigest()[:8]
        return f"r{self.resolution}_{self.image_format}_{digest}"


# ----------------------------------------------------------------------------------------------
# Input layouts and speaker-disjoint splits.


@dataclasses.dataclass(frozen=True)
class Item:
    """One input video: `path` (absolute), `clip_id` (path under its split root), speaker."""

    path: str
    clip_id: str
    speaker: str
    audio_path: str = ""  # a separate audio file (VoxCeleb2 aac tree); "" = the video's own


def _speaker_root(top: str) -> str | None:
    """The folder under `top` that holds idNNNNN folders (top itself, or up to 2 levels down)."""
    frontier = [top]
    for _ in range(3):
        nxt = []
        for d in frontier:
            try:
                names = sorted(os.listdir(d))
            except OSError:
                continue
            if any(_VOX_ID.match(n) and os.path.isdir(os.path.join(d, n)) for n in names):
                return d
            nxt += [os.path.join(d, n) for n in names if os.path.isdir(os.path.join(d, n))]
        frontier = nxt
    return None


def _vox_items(root: str, part: str, audio: str) -> list[Item]:
    top = os.path.join(root, f"vox2_{part}_mp4")
    speakers_dir = _speaker_root(top)
    if speakers_dir is None:
        raise ConfigError(f"{top} holds no idNNNNN/<youtube id>/NNNNN.mp4 folders: point --input "
                          "at the folder that contains vox2_dev_mp4 / vox2_test_mp4 as unzipped")
    aac_dir = None
    if audio == "aac":
        aac_top = os.path.join(root, f"vox2_{part}_aac")
        aac_dir = _speaker_root(aac_top) if os.path.isdir(aac_top) else None
        if aac_dir is None:
            raise ConfigError(f"audio='aac' but {aac_top} holds no idNNNNN folders: unzip "
                              f"vox2_{part}_aac there, or use --config.audio=mp4")
    items = []
    for spk in sorted(os.listdir(speakers_dir)):
        if not _VOX_ID.match(spk):
            continue
        for dirpath, dirnames, filenames in os.walk(os.path.join(speakers_dir, spk)):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(".") or not name.lower().endswith(".mp4"):
                    continue  # hidden files: e.g. a download or copy still in progress
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, speakers_dir).replace(os.sep, "/")
                audio_path = ""
                if aac_dir is not None:
                    audio_path = os.path.join(aac_dir, os.path.splitext(rel)[0] + ".m4a")
                items.append(Item(path, rel, spk, audio_path))
    return items


def _folder_items(root: str) -> list[Item]:
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(VIDEO_SUFFIXES):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            speaker = rel.split("/")[0] if "/" in rel else os.path.splitext(rel)[0]
            items.append(Item(path, rel, speaker))
    return items


def _held_out(speakers: list[str], fraction: float, seed: int) -> set[str]:
    """Speakers whose hash falls below `fraction` (at least one when fraction > 0 and there are
    two or more speakers; never all of them)."""
    if fraction <= 0 or len(speakers) < 2:
        return set()

    def h(s):
        d = hashlib.sha1(f"{seed}:{s}".encode()).digest()
        return int.from_bytes(d[:8], "big") / 2.0**64

    held = {s for s in speakers if h(s) < fraction}
    if not held:
        held = {min(speakers, key=h)}
    if len(held) == len(speakers):
        held.discard(max(held, key=h))
    return held


def scan(settings: Settings, root: str) -> dict[str, list[Item]]:
    """{split: [Item]} for the input tree, speakers disjoint between splits. ConfigError (one
    line, with the fix) when the tree does not have the layout's shape."""
    check(os.path.isdir(root), f"input folder not found: {root} (pass --input the folder "
          "holding your videos)")
    if settings.layout == "voxceleb2":
        parts = [p for p in ("dev", "test") if os.path.isdir(os.path.join(root, f"vox2_{p}_mp4"))]
        check(bool(parts), f"{root} has neither vox2_dev_mp4 nor vox2_test_mp4: point --input at "
              "the VoxCeleb2 download folder, or use --config configs/preprocess.py:folder")
        found = {p: _vox_items(root, p, settings.audio) for p in parts}
        train, test = found.get("dev", []), found.get("test", [])
        if "test" not in found:
            held = _held_out(sorted({i.speaker for i in train}), settings.test_fraction,
                             settings.split_seed)
            train, test = ([i for i in train if i.speaker not in held],
                           [i for i in train if i.speaker in held])
        both = {i.speaker for i in train} & {i.speaker for i in test}
        check(not both, f"speakers {sorted(both)[:3]} appear in both vox2_dev_mp4 and "
              "vox2_test_mp4: the splits must be speaker-disjoint; remove them from one")
    else:
        items = _folder_items(root)
        held = _held_out(sorted({i.speaker for i in items}), settings.test_fraction,
                         settings.split_seed)
        train = [i for i in items if i.speaker not in held]
        test = [i for i in items if i.speaker in held]
    check(bool(train) or bool(test), f"no video files found under {root} (expected "
          + ("idNNNNN/<youtube id>/NNNNN.mp4" if settings.layout == "voxceleb2"
             else f"files ending in {', '.join(VIDEO_SUFFIXES[:5])}, ...") + ")")
    return {"train": train, "test": test}


def identity_table(settings: Settings, splits: dict[str, list[Item]]) -> dict[str, int]:
    """speaker → identity int (VoxCeleb2: the id number; folder: index in the sorted speakers)."""
    speakers = sorted({i.speaker for items in splits.values() for i in items})
    if settings.layout == "voxceleb2":
        return {s: int(_VOX_ID.match(s).group(1)) for s in speakers}
    return {s: k for k, s in enumerate(speakers)}


# ----------------------------------------------------------------------------------------------
# One file → records.


class SkipClip(Exception):
    """This input cannot become a record; the message is the reason logged in the summary."""


def _one_line(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return " ".join(str(text).split())[:200]


def _decode_frames(path: str, max_frames: int) -> tuple[list[np.ndarray], float, float]:
    """First video stream → frames at 25 fps (nearest timestamp), the stream's stated duration
    (0 if unknown) and the decoded duration, both in seconds."""
    import av

    try:
        container = av.open(path)
    except Exception as err:  # noqa: BLE001 - any FFmpeg failure means an unreadable file
        raise SkipClip(f"unreadable ({_one_line(err)})") from None
    try:
        if not container.streams.video:
            raise SkipClip("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stated = 0.0
        if stream.duration and stream.time_base:
            stated = float(stream.duration * stream.time_base)
        elif container.duration:
            stated = container.duration / 1e6
        rate = stream.average_rate or stream.guessed_rate
        src_dt = 1.0 / float(rate) if rate else 1.0 / FPS
        out: list[np.ndarray] = []
        prev, prev_t, t0 = None, 0.0, None
        k = 0
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else (prev_t + src_dt if prev is not None
                                                                else 0.0)
                t0 = t if t0 is None else t0
                t -= t0
                arr = frame.to_ndarray(format="rgb24")
                if prev is not None:
                    mid = 0.5 * (prev_t + t)  # output times before mid take the previous frame
                    while k / FPS < mid and len(out) < max_frames:
                        out.append(prev)
                        k += 1
                prev, prev_t = arr, t
                if len(out) >= max_frames:
                    break
        except Exception as err:  # noqa: BLE001 - truncated / corrupt packets
            raise SkipClip(f"decode error after {len(out)} frames ({_one_line(err)})") from None
        if prev is None:
            raise SkipClip("no decodable video frames")
        end = prev_t + src_dt
        while k / FPS < end - 1e-6 and len(out) < max_frames:
            out.append(prev)
            k += 1
        return out, stated, end
    finally:
        container.close()


def _has_stream(path: str, kind: str) -> bool:
    """Whether PyAV opens `path` and finds a `kind` ("audio" / "video") stream in it."""
    import av

    try:
        with av.open(path) as c:
            return bool(getattr(c.streams, kind))
    except Exception:  # noqa: BLE001
        return False


def encode_frame(frame: np.ndarray, image_format: str, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(frame))
    if image_format == "png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        img.save(buf, format="JPEG", quality=int(quality), subsampling=0)
    return buf.getvalue()


class ClipProcessor:
    """Turns one input file into records (or raises SkipClip). Built once per worker."""

    def __init__(self, settings: Settings):
        from vasa_jax.data import face_crop

        self.s = settings
        self.detector = (face_crop.load_callable(settings.detector, "detector")
                         if settings.detector else None)
        self.aligner = face_crop.make_aligner(settings.aligner, settings.box_scale)

    def __call__(self, item: Item, identity: int) -> list[dict]:
        from vasa_jax.data import face_crop, media

        s = self.s
        audio_file = item.audio_path or item.path
        if item.audio_path and not os.path.isfile(item.audio_path):
            raise SkipClip(f"no audio file {item.audio_path}")
        if not item.audio_path and not _has_stream(item.path, "audio"):
            # Checked first: it is cheap, and an unreadable file is reported by the decoder.
            if not _has_stream(item.path, "video"):
                _decode_frames(item.path, 1)  # raises SkipClip with the decoder's reason
            raise SkipClip("no audio stream")
        limit = s.max_seconds if s.clip_seconds == 0 else 1e9
        frames, stated, decoded = _decode_frames(item.path, int(round(limit * FPS)))
        truncated_to = min(stated, limit)
        if stated > 0 and decoded < 0.9 * truncated_to - 2.0 / FPS:
            raise SkipClip(f"truncated (decoded {decoded:.2f} s of the stated {stated:.2f} s)")
        try:
            audio = media.read_audio(audio_file, SAMPLE_RATE)
        except media.MediaError as err:
            raise SkipClip(f"audio unreadable ({_one_line(err)})") from None
        seg = len(frames) if s.clip_seconds == 0 else int(round(s.clip_seconds * FPS))
        min_frames = int(math.ceil(s.min_seconds * FPS - 1e-6))
        if len(frames) < min_frames:
            raise SkipClip(f"too short ({len(frames) / FPS:.2f} s < min_seconds={s.min_seconds:g})")
        records, reasons = [], []
        for k, lo in enumerate(range(0, len(frames), seg)):
            part = np.stack(frames[lo:lo + seg])
            if len(part) < min_frames:
                break  # the tail of a long video
            wav = audio[lo * SAMPLES_PER_FRAME:(lo + len(part)) * SAMPLES_PER_FRAME]
            if len(wav) < 0.5 * len(part) * SAMPLES_PER_FRAME:
                reasons.append(f"audio shorter than the video ({len(audio) / SAMPLE_RATE:.2f} s "
                               f"for {len(frames) / FPS:.2f} s)")
                continue
            wav = np.pad(wav, (0, len(part) * SAMPLES_PER_FRAME - len(wav)))
            faces = face_crop.detect_faces(self.detector, part, s.detect_every)
            try:
                crops, side = self.aligner(part, faces, s.resolution)
            except ValueError as err:
                reasons.append(f"aligner failed ({_one_line(err)})")
                continue
            crops = np.asarray(crops, np.uint8)
            scores = {"sharpness": face_crop.sharpness(crops[::max(1, len(crops) // 8)]),
                      "face_size": int(side)}
            if faces is not None:
                scores["faces"] = max((len(v) for v in faces.values()), default=0)
            why = face_crop.quality_reason(scores, s)
            if why is not None:
                reasons.append(why)
                continue
            clip_id = item.clip_id if s.clip_seconds == 0 else f"{item.clip_id}#{k}"
            records.append({
                "frames": np.asarray([encode_frame(f, s.image_format, s.jpeg_quality)
                                      for f in crops], dtype=object),
                "audio": wav.astype(np.float32),
                "identity": np.int64(identity),
                "emotion": np.int64(-1),
                "clip_seed": np.int64(zlib.crc32(clip_id.encode()) & 0x7FFFFFFF),
                "speaker": item.speaker.encode(),
                "clip_id": clip_id.encode(),
                "sharpness": np.float32(scores["sharpness"]),
            })
        if not records:
            raise SkipClip(reasons[0] if reasons else "no segment long enough")
        return records


# ----------------------------------------------------------------------------------------------
# tfds builders.


def _tfds():
    import tensorflow_datasets as tfds  # imported lazily: workers and readers only

    return tfds


def features_dict():
    tfds = _tfds()
    t = tfds.features.Tensor
    return tfds.features.FeaturesDict({
        "frames": t(shape=(None,), dtype=np.object_),
        "audio": t(shape=(None,), dtype=np.float32),
        "identity": t(shape=(), dtype=np.int64),
        "emotion": t(shape=(), dtype=np.int64),
        "clip_seed": t(shape=(), dtype=np.int64),
        "speaker": t(shape=(), dtype=np.object_),
        "clip_id": t(shape=(), dtype=np.object_),
        "sharpness": t(shape=(), dtype=np.float32),
    })


def _builder_classes():
    """(VoxCeleb2, VideoFolder) tfds builder classes, defined on first use (tfds is heavy)."""
    global _BUILDERS
    if _BUILDERS is not None:
        return _BUILDERS
    tfds = _tfds()

    @dataclasses.dataclass(eq=False)
    class VideoBuilderConfig(tfds.core.BuilderConfig):
        settings: Settings = dataclasses.field(default_factory=Settings)

    class _VideoBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(DATA_VERSION)
        RELEASE_NOTES = {DATA_VERSION: "Encoded frames, 16 kHz audio, speaker identity per clip."}
        BUILDER_CONFIG_CLASS = VideoBuilderConfig

        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):
            return None

        def _info(self):
            from vasa_jax.data.builders import LocalDatasetInfo

            return LocalDatasetInfo(builder=self, description=__doc__.split("\n\n")[0],
                                    features=features_dict(),
                                    homepage="https://arxiv.org/abs/2404.10667")

        def download_and_prepare(self, *args, **kwargs):
            # Splits past tfds's 1 GB shuffle buffer spill to disk without TensorFlow.
            from vasa_jax.data.builders import _shuffle_spill_on_plain_files

            with _shuffle_spill_on_plain_files():
                return super().download_and_prepare(*args, **kwargs)

        def _split_generators(self, dl_manager):
            # Serial tfds path (`download_and_prepare(download_config=DownloadConfig(
            # manual_dir=ROOT))`); `preprocess()` is the parallel, resumable one.
            settings = self.builder_config.settings
            splits = scan(settings, os.fspath(dl_manager.manual_dir))
            ids = identity_table(settings, splits)
            return {k: self._generate_examples(v, ids) for k, v in splits.items()}

        def _generate_examples(self, items, ids):
            proc = ClipProcessor(self.builder_config.settings)
            for item in items:
                try:
                    for rec in proc(item, ids[item.speaker]):
                        yield rec["clip_id"].decode(), rec
                except SkipClip as why:
                    log.warning("skipped %s: %s", item.path, why)

    class VoxCeleb2(_VideoBuilder, skip_registration=True):
        """VoxCeleb2 talking-face clips from the user's manual download."""

        name = "voxceleb2"
        MANUAL_DOWNLOAD_INSTRUCTIONS = (
            "Download vox2_dev_mp4 / vox2_test_mp4 (and optionally the aac zips) from the "
            "VoxCeleb2 site and unzip them into one folder; pass it as the manual dir.")
        BUILDER_CONFIGS = [VideoBuilderConfig(name="default")]

    class VideoFolder(_VideoBuilder, skip_registration=True):
        """Any folder of talking-face videos, one sub-folder per speaker."""

        name = "video_folder"
        MANUAL_DOWNLOAD_INSTRUCTIONS = "Put videos under ROOT/<speaker>/...; pass ROOT."
        BUILDER_CONFIGS = [VideoBuilderConfig(name="default")]

    _BUILDERS = (VoxCeleb2, VideoFolder, VideoBuilderConfig)
    return _BUILDERS


_BUILDERS = None


def make_builder(settings: Settings, data_dir: str):
    """The tfds builder (array_record) of `settings`'s data set under `data_dir`."""
    vox, folder, config_cls = _builder_classes()
    cls = vox if settings.layout == "voxceleb2" else folder
    config = config_cls(name=settings.config_name, settings=settings,
                        description=f"{settings.layout} at {settings.resolution}²")
    return cls(config=config, data_dir=str(data_dir), file_format="array_record")


def shard_filename(dataset: str, split: str, index: int, count: int) -> str:
    return f"{dataset}-{split}.array_record-{index:05d}-of-{count:05d}"


def open_prepared(path: str) -> dict[str, Any]:
    """{split: random-access source} of a prepared data set: `path` is its version folder
    (DATA_DIR/voxceleb2/<config>/1.0.0) or the config folder above it."""
    from etils import epath

    p = epath.Path(path)
    if not (p / "dataset_info.json").exists() and p.is_dir():
        versions = sorted(c for c in p.iterdir() if (c / "dataset_info.json").exists())
        if versions:
            p = versions[-1]
    if not (p / "dataset_info.json").exists():
        if (p / PLAN_JSON).exists() or any((c / PLAN_JSON).exists()
                                            for c in (p.iterdir() if p.is_dir() else [])):
            raise ConfigError(f"the data set at {path} is unfinished: rerun the same "
                              "`vasa-jax preprocess` command (it resumes)")
        raise ConfigError(f"no prepared data set at {path}: run `vasa-jax preprocess` first, "
                          "or fix --config.data.data_dir / --config.data.dataset")
    builder = _tfds().builder_from_directory(os.fspath(p))
    return {split: builder.as_data_source(split=split) for split in builder.info.splits}


# ----------------------------------------------------------------------------------------------
# Workers.


def _is_remote(path: str) -> bool:
    return "://" in str(path)


def _publish(local_tmp: str, dst) -> None:
    """Moves a finished local file to `dst` (an epath.Path): a rename on local disk, a copy
    (then delete) to a bucket."""
    if _is_remote(os.fspath(dst)):
        from etils import epath

        epath.Path(local_tmp).copy(dst, overwrite=True)
        os.remove(local_tmp)
    else:
        os.replace(local_tmp, os.fspath(dst))


def _write_json(dst, payload: dict) -> None:
    """Writes JSON atomically (temporary sibling, then rename; a plain write on buckets)."""
    from etils import epath

    dst = epath.Path(dst)
    text = json.dumps(payload, indent=1)
    if _is_remote(os.fspath(dst)):
        dst.write_text(text)
        return
    tmp = f"{os.fspath(dst)}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, os.fspath(dst))


_WORKER: dict = {}


def _run_shard(task: dict) -> dict:
    """Writes one shard (module-level: runs in spawned workers). Returns its sidecar."""
    from array_record.python.array_record_module import ArrayRecordWriter
    from etils import epath

    start, cpu_start = time.perf_counter(), time.process_time()
    settings = Settings(**task["settings"])
    key = json.dumps(task["settings"], sort_keys=True)
    if _WORKER.get("key") != key:
        _WORKER.update(key=key, proc=ClipProcessor(settings), features=features_dict())
    proc, features = _WORKER["proc"], _WORKER["features"]
    out_dir = epath.Path(task["out_dir"])
    dst = out_dir / task["filename"]
    tmp_dir = None if not _is_remote(task["out_dir"]) else tempfile.mkdtemp(prefix="vasa_pre_")
    tmp = (os.path.join(tmp_dir, task["filename"]) if tmp_dir
           else f"{os.fspath(dst)}.tmp{os.getpid()}")
    written, frames, skipped, nbytes = 0, 0, [], 0
    writer = ArrayRecordWriter(tmp, "group_size:1")
    try:
        for raw in task["items"]:
            item = Item(**raw)
            try:
                records = proc(item, task["identities"][item.speaker])
            except SkipClip as why:
                skipped.append([item.path, str(why)])
                continue
            except Exception as err:  # noqa: BLE001 - never abort the run on one bad file
                skipped.append([item.path, f"{type(err).__name__}: {_one_line(err)}"])
                continue
            for rec in records:
                blob = features.serialize_example(rec)
                writer.write(blob)
                nbytes += len(blob)
                written += 1
                frames += len(rec["frames"])
    except BaseException:
        writer.close()
        os.remove(tmp)
        raise
    writer.close()
    _publish(tmp, dst)
    if tmp_dir:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    sidecar = dict(filename=task["filename"], split=task["split"], index=task["index"],
                   files=len(task["items"]), records=written, frames=frames, num_bytes=nbytes,
                   skipped=skipped, seconds=time.perf_counter() - start,
                   cpu_seconds=time.process_time() - cpu_start)
    _write_json(out_dir / (task["filename"] + ".done.json"), sidecar)
    return sidecar


# ----------------------------------------------------------------------------------------------
# The driver.


def _plan(settings: Settings, root: str) -> dict:
    splits = scan(settings, root)
    ids = identity_table(settings, splits)
    shards = {}
    for split, items in splits.items():
        n = math.ceil(len(items) / settings.shard_size)
        shards[split] = [[dataclasses.asdict(i) for i in
                          items[k * settings.shard_size:(k + 1) * settings.shard_size]]
                         for k in range(n)]
    return dict(root=os.path.abspath(root), settings=dataclasses.asdict(settings),
                identities=ids, shards=shards)


def preprocess(config, input_root: str, data_dir: str, *, num_workers: int = 0,
               progress: bool = True) -> dict:
    """Prepares (or finishes) the data set of `config` from `input_root` under `data_dir`.

    Returns the summary (also written to summary.json): dataset ('voxceleb2/<config name>'),
    path, clips written per split, files skipped with their reasons, timings and clips/s.
    num_workers: 0 = one per CPU core; 1 = in this process. Bad input raises ConfigError before
    anything is written.
    """
    from etils import epath
    from tqdm import tqdm

    settings = config if isinstance(config, Settings) else Settings.from_config(config)
    check(isinstance(num_workers, int) and num_workers >= 0,
          f"num_workers={num_workers!r} is invalid: use 0 (one per core) or a positive count")
    plan = _plan(settings, os.path.expanduser(input_root))  # validates the input first
    builder = make_builder(settings, os.path.expanduser(str(data_dir)))
    out_dir = epath.Path(os.fspath(builder.data_path))
    dataset = f"{settings.dataset_name}/{settings.config_name}"
    plan_path = out_dir / PLAN_JSON
    if plan_path.exists():
        old = json.loads(plan_path.read_text())
        if old != json.loads(json.dumps(plan)):
            raise ConfigError(f"{out_dir} was started from another input tree ({old['root']}) "
                              "or file list: rerun with that input, or delete the folder")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(plan_path, plan)
    if not _is_remote(os.fspath(out_dir)):  # leftovers of a killed run
        for name in os.listdir(os.fspath(out_dir)):
            if ".tmp" in name:
                os.remove(os.path.join(os.fspath(out_dir), name))

    tasks, done = [], {}
    for split, shard_items in plan["shards"].items():
        for k, items in enumerate(shard_items):
            name = shard_filename(settings.dataset_name, split, k, len(shard_items))
            side = out_dir / (name + ".done.json")
            if side.exists() and (out_dir / name).exists():
                done[name] = json.loads(side.read_text())
                continue
            tasks.append(dict(settings=dataclasses.asdict(settings), out_dir=os.fspath(out_dir),
                              filename=name, split=split, index=k, items=items,
                              identities=plan["identities"]))
    total_files = sum(len(s) for shards in plan["shards"].values() for s in shards)
    resumed_files = sum(d["files"] for d in done.values())
    start = time.perf_counter()
    workers = num_workers or (os.cpu_count() or 1)
    workers = max(1, min(workers, len(tasks)))
    bar = tqdm(total=total_files, initial=resumed_files, unit="file", desc="preprocess",
               disable=not progress, dynamic_ncols=True)

    def finished(side: dict) -> None:
        done[side["filename"]] = side
        for path, why in side["skipped"]:
            bar.write(f"skipped {path}: {why}") if progress else log.warning("skipped %s: %s",
                                                                             path, why)
        bar.update(side["files"])

    try:
        if workers == 1:
            for t in tasks:
                finished(_run_shard(t))
        elif tasks:
            ctx = multiprocessing.get_context("spawn")
            with futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                for fut in futures.as_completed([pool.submit(_run_shard, t) for t in tasks]):
                    finished(fut.result())
    finally:
        bar.close()
    elapsed = time.perf_counter() - start

    # dataset_info.json + features.json: the data set becomes readable by tfds.
    tfds = _tfds()
    split_infos = []
    for split, shard_items in plan["shards"].items():
        names = [shard_filename(settings.dataset_name, split, k, len(shard_items))
                 for k in range(len(shard_items))]
        if not names:
            continue
        split_infos.append(tfds.core.SplitInfo(
            name=split, shard_lengths=[done[n]["records"] for n in names],
            num_bytes=sum(done[n]["num_bytes"] for n in names)))
    builder.info.set_splits(tfds.core.SplitDict(split_infos))
    builder.info.write_to_directory(out_dir)

    skipped = [s for d in done.values() for s in d["skipped"]]
    reasons: dict[str, int] = {}
    for _, why in skipped:
        kind = why.split(" (")[0]
        reasons[kind] = reasons.get(kind, 0) + 1
    new = [done[t["filename"]] for t in tasks]
    new_files = sum(d["files"] for d in new)
    summary = dict(
        dataset=dataset, path=os.fspath(out_dir), input=plan["root"],
        files=total_files,
        clips={s: sum(d["records"] for d in done.values() if d["split"] == s)
               for s in plan["shards"]},
        frames=sum(d["frames"] for d in done.values()),
        speakers={s: len({i["speaker"] for sh in v for i in sh}) for s, v in
                  plan["shards"].items()},
        skipped=len(skipped), skipped_by_reason=reasons, skipped_files=skipped,
        shards=len(done), shards_resumed=len(done) - len(tasks), workers=workers,
        seconds=elapsed, files_per_s=new_files / elapsed if elapsed > 0 and new_files else 0.0,
        # CPU seconds the workers spent on this run's shards (a load-independent cost figure).
        worker_cpu_seconds=sum(d.get("cpu_seconds", 0.0) for d in new),
        clips_per_s=(sum(d["records"] for d in new) / elapsed if elapsed > 0 and new else 0.0))
    _write_json(out_dir / SUMMARY_JSON, summary)
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"{summary['dataset']}: " + ", ".join(f"{n} {s} clips" for s, n in
                                                   summary["clips"].items())
             + f" from {summary['files']} files ({summary['shards_resumed']} of "
             f"{summary['shards']} shards done by an earlier run)"]
    if summary["skipped"]:
        why = ", ".join(f"{n} {k}" for k, n in sorted(summary["skipped_by_reason"].items()))
        lines.append(f"skipped {summary['skipped']} files: {why} (paths in summary.json)")
    lines.append(f"{summary['seconds']:.1f} s, {summary['clips_per_s']:.2f} clips/s with "
                 f"{summary['workers']} worker(s); written to {summary['path']}")
    return "\n".join(lines)


__all__ = ["Item", "Settings", "SkipClip", "ClipProcessor", "format_summary", "make_builder",
           "open_prepared", "preprocess", "scan"]
