"""Pose and control metrics of VASA-1's evaluation, on numbers a pose/gaze/emotion estimator read
from video frames (`PoseEstimator`: on SynthTalk the oracle, `eval.oracle`; on real video any
head-pose / gaze / emotion network with the same call signature).

- ΔP (`delta_p`): mean absolute change of the head angles (yaw, pitch, roll; degrees) between
  adjacent frames — averaged over frames and the three angles.
- gaze error (`gaze_error_deg`): angle in degrees between the requested main gaze direction and
  each frame's measured gaze direction (both given as (θ, φ) in degrees: θ > 0 right, φ > 0 up).
- distance error (`distance_error`): |requested − measured| head-to-camera distance, per frame.
- emotion accuracy (`emotion_accuracy`): a clip counts as correct when the emotion the estimator
  reads most often over its frames is the requested one.
- identity similarity (`identity_similarity`): cosine between the mean identity embedding of the
  source frame(s) and of the generated frames.
- lip-sync correlation (`pearson`): the mouth opening read from the video against the mouth
  opening that goes with the audio (SynthTalk's ground truth).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from vasa_jax.errors import ConfigError


class PoseEstimator(Protocol):
    def __call__(self, frames: np.ndarray) -> dict:
        """uint8 frames [T, H, W, 3] → at least {"rotation": [T, 3] degrees}; the oracle adds
        gaze [T, 2], distance [T], mouth [T, 3], blink [T], emotion_logits [T, E],
        identity [T, D]."""
        ...


def _angles(x, name: str, width: int) -> np.ndarray:
    a = np.asarray(x, np.float64)
    if a.ndim != 2 or a.shape[1] != width or not np.all(np.isfinite(a)):
        raise ConfigError(f"{name} has shape {a.shape}: expected finite [T, {width}] degrees")
    return a


def delta_p(rotation: np.ndarray) -> float:
    """ΔP: mean |angle_{t+1} − angle_t| over frames and (yaw, pitch, roll), in degrees."""
    r = _angles(rotation, "rotation", 3)
    if len(r) < 2:
        raise ConfigError("ΔP needs at least 2 frames of head angles")
    return float(np.mean(np.abs(np.diff(r, axis=0))))


def gaze_vector(theta_phi: np.ndarray) -> np.ndarray:
    """(θ, φ) in degrees [..., 2] → unit direction [..., 3] (x right, y up, z towards camera)."""
    t = np.deg2rad(np.asarray(theta_phi, np.float64))
    th, ph = t[..., 0], t[..., 1]
    return np.stack([np.sin(th) * np.cos(ph), np.sin(ph), np.cos(th) * np.cos(ph)], -1)


def gaze_error_deg(requested: np.ndarray, measured: np.ndarray) -> float:
    """Mean angle (degrees) between the requested gaze (θ, φ) [2] (or per frame [T, 2]) and the
    measured gaze [T, 2]."""
    m = _angles(measured, "measured gaze", 2)
    r = np.broadcast_to(np.asarray(requested, np.float64), m.shape)
    cos = np.clip(np.sum(gaze_vector(r) * gaze_vector(m), -1), -1.0, 1.0)
    return float(np.mean(np.rad2deg(np.arccos(cos))))


def distance_error(requested: float | np.ndarray, measured: np.ndarray) -> float:
    """Mean |requested − measured| head distance (the data's units)."""
    m = np.asarray(measured, np.float64).reshape(-1)
    return float(np.mean(np.abs(np.asarray(requested, np.float64) - m)))


def majority_emotion(emotion_logits: np.ndarray) -> int:
    """The class read most often over the frames (ties: the lowest index)."""
    votes = np.asarray(emotion_logits).argmax(-1)
    return int(np.bincount(votes, minlength=np.shape(emotion_logits)[-1]).argmax())


def emotion_accuracy(requested: list[int], emotion_logits: list[np.ndarray]) -> float:
    """Fraction of clips whose majority emotion is the requested one."""
    if not requested:
        raise ConfigError("emotion_accuracy: no clips")
    return float(np.mean([majority_emotion(lg) == int(r)
                          for r, lg in zip(requested, emotion_logits)]))


def identity_similarity(source_emb: np.ndarray, generated_emb: np.ndarray) -> float:
    """Cosine of the mean (unit-normalised) identity embeddings of source and generated frames."""
    def mean_unit(e):
        e = np.asarray(e, np.float64).reshape(-1, np.shape(e)[-1])
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        m = e.mean(0)
        return m / max(np.linalg.norm(m), 1e-12)

    return float(np.dot(mean_unit(source_emb), mean_unit(generated_emb)))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / den) if den > 0 else 0.0
