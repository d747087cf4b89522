"""Face framing and quality scores for real-video preprocessing (`vasa_jax.data.preprocess`).

A clip's frames go through an *aligner*, optionally helped by a *detector*:

    detector(frame: uint8 [H, W, 3]) -> float [N, 5]      one row per face: x0, y0, x1, y1, score
    aligner(frames: uint8 [T, H, W, 3], faces, resolution) -> uint8 [T, R, R, 3]
        faces: one [N, 5] array per frame in `detect_frames` (dict index -> boxes), or None

Both are named in the preprocessing config as `"module:attribute"` (a callable, or a class that
is instantiated with no arguments), so users plug in the face detector and aligner they have
(RetinaFace, MediaPipe, dlib, ...); none ships here, since no model weights can be downloaded.

Built in:
  aligner "center"  the centre square of each frame, resized to R² (area filter). VoxCeleb2's
                    clips are already face tracks (the face centred, about half the frame), so
                    this keeps the published framing; use it for any pre-cropped talking heads.
  aligner "box"     one square crop per clip around the median detected face box, enlarged by
                    `box_scale` (1.8: forehead to chin plus hair and neck, like VoxCeleb2),
                    padded with edge pixels where it leaves the frame. Needs a detector.

Quality scores (thresholds in the config's `quality` block; 0 turns a check off):
  sharpness   median over scored frames of the variance of the 4-neighbour Laplacian of the
              grey output frame (0..255 scale). Blurry or upsampled low-resolution video
              scores low. The score depends on resolution and content (SynthTalk renders,
              H.264, centre-cropped to 64²: 680–7800), so set the threshold from the scores
              of your own data, stored per record as `sharpness`.
  face_size   the side, in source pixels, of the square that was cropped (low-resolution
              faces give small crops).
  faces       the largest number of faces the detector found on a scored frame.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import numpy as np
from PIL import Image

from vasa_jax.errors import ConfigError

ALIGNERS = ("center", "box")


def load_callable(spec: str, what: str) -> Callable:
    """`"module:attribute"` → the callable (a class is instantiated without arguments)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what}={spec!r} is not 'module:attribute': name an importable "
                          "callable, e.g. my_faces.detect:RetinaFaceDetector")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{what}={spec!r} cannot be imported ({err}): check the module is on "
                          "PYTHONPATH and names the attribute") from None
    if isinstance(obj, type):
        obj = obj()
    if not callable(obj):
        raise ConfigError(f"{what}={spec!r} is not callable: name a function or a class")
    return obj


def resize(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 [h, w, 3] → uint8 [size, size, 3] (box filter when shrinking, bicubic otherwise)."""
    img = Image.fromarray(np.ascontiguousarray(frame))
    if img.size == (size, size):
        return np.asarray(img)
    shrink = img.size[0] > size
    return np.asarray(img.resize((size, size), Image.BOX if shrink else Image.BICUBIC))


def center_square(height: int, width: int) -> tuple[int, int, int]:
    """(top, left, side) of the centred square of an h×w frame."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def crop_square(frame: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    """The side×side square at (top, left), padded with edge pixels where it leaves the frame."""
    h, w = frame.shape[:2]
    pad = max(0, -top, -left, top + side - h, left + side - w)
    if pad:
        frame = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        top, left = top + pad, left + pad
    return frame[top:top + side, left:left + side]


class CenterAligner:
    """The centre square of every frame, resized (VoxCeleb2's face-track framing)."""

    needs_detector = False

    def __call__(self, frames: np.ndarray, faces, resolution: int) -> tuple[np.ndarray, int]:
        del faces
        top, left, side = center_square(*frames.shape[1:3])
        out = np.stack([resize(f[top:top + side, left:left + side], resolution) for f in frames])
        return out, side


class BoxAligner:
    """One square crop per clip around the median detected face (largest face per frame)."""

    needs_detector = True

    def __init__(self, box_scale: float = 1.8):
        self.box_scale = float(box_scale)

    def __call__(self, frames: np.ndarray, faces, resolution: int) -> tuple[np.ndarray, int]:
        boxes = []
        for rows in (faces or {}).values():
            rows = np.asarray(rows, np.float64).reshape(-1, 5)
            if len(rows):
                areas = (rows[:, 2] - rows[:, 0]) * (rows[:, 3] - rows[:, 1])
                boxes.append(rows[int(np.argmax(areas)), :4])
        if not boxes:
            raise ValueError("no face detected")
        x0, y0, x1, y1 = np.median(np.stack(boxes), axis=0)
        side = int(round(max(x1 - x0, y1 - y0) * self.box_scale))
        side = max(side, 2)
        top = int(round((y0 + y1) / 2 - side / 2))
        left = int(round((x0 + x1) / 2 - side / 2))
        out = np.stack([resize(crop_square(f, top, left, side), resolution) for f in frames])
        return out, side


def make_aligner(spec: str, box_scale: float = 1.8):
    if spec == "center":
        return CenterAligner()
    if spec == "box":
        return BoxAligner(box_scale)
    return load_callable(spec, "aligner")


def sharpness(frames: np.ndarray) -> float:
    """Median variance of the grey 4-neighbour Laplacian over frames (uint8 [n, R, R, 3])."""
    grey = frames.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
    lap = (grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:]
           - 4.0 * grey[:, 1:-1, 1:-1])
    return float(np.median(lap.reshape(len(frames), -1).var(axis=1)))


def detect_faces(detector: Callable | None, frames: np.ndarray,
                 every: int) -> dict[int, np.ndarray] | None:
    """Detector output on every `every`-th frame: {frame index: float [N, 5]}; None without one."""
    if detector is None:
        return None
    out = {}
    for i in range(0, len(frames), max(1, every)):
        rows = np.asarray(detector(frames[i]), np.float64)
        out[i] = rows.reshape(-1, 5) if rows.size else np.zeros((0, 5))
    return out


def quality_reason(scores: dict[str, Any], quality) -> str | None:
    """Why a clip fails the quality thresholds (None: it passes). `quality` has min_sharpness,
    min_face_size and max_faces (0 = check off)."""
    if quality.min_sharpness > 0 and scores["sharpness"] < quality.min_sharpness:
        return f"blurry (sharpness {scores['sharpness']:.1f} < {quality.min_sharpness:g})"
    if quality.min_face_size > 0 and scores["face_size"] < quality.min_face_size:
        return f"low resolution (face crop {scores['face_size']} px < {quality.min_face_size})"
    if quality.max_faces > 0 and scores.get("faces", 0) > quality.max_faces:
        return f"multiple faces ({scores['faces']} > {quality.max_faces})"
    if scores.get("faces", None) == 0:
        return "no face detected"
    return None
