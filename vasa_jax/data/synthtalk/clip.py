"""One SynthTalk clip: identity + speech + motion + rendered frames, with all ground truth."""

from __future__ import annotations

import dataclasses

import numpy as np

from vasa_jax.data.synthtalk.identity import Identity, sample_identity, stream
from vasa_jax.data.synthtalk.motion import FOCAL, frame_mean, sample_motion
from vasa_jax.data.synthtalk.render import Renderer, landmark_points, project
from vasa_jax.data.synthtalk.spec import (
    CTRL_PER_FRAME,
    EMOTIONS,
    LANDMARKS,
    SAMPLES_PER_FRAME,
    ClipSpec,
    emotion_index,
)
from vasa_jax.data.synthtalk.speech import synthesize


@dataclasses.dataclass
class Clip:
    """A talking-head clip with exact ground truth.

    frames: uint8 [T, R, R, 3]; audio: float32 [T * 640] at 16 kHz.
    factors: float32 arrays with a leading T axis —
      rotation [T, 3] (yaw, pitch, roll; degrees), translation [T, 2] (projected head centre in
      normalised image coordinates, x right / y down, [-1, 1]), distance [T] (head centre to
      camera, head units), scale [T] (focal / distance), gaze [T, 2] (camera-frame θ, φ in
      degrees; θ > 0 towards image right, φ > 0 up), eye_gaze [T, 2] (eye-in-head θ, φ), blink [T]
      (0 open, 1 shut), mouth [T, 3] (opening, width, rounding in [0, 1]), f0 [T] (Hz),
      loudness [T] (articulatory loudness), viseme [T] (int32 index into VISEMES), landmarks
      [T, 8, 2] (the LANDMARKS surface points — eyes, nose tip, mouth centre, the mouth's
      corners and inner lip edges — projected to normalised image coordinates like
      translation; what a face-landmark detector gives on real video).
    """

    spec: ClipSpec
    identity: Identity
    emotion: int
    frames: np.ndarray
    audio: np.ndarray
    factors: dict

    @property
    def emotion_name(self) -> str:
        return EMOTIONS[self.emotion]


def _frame_mode(x: np.ndarray) -> np.ndarray:
    blocks = x.reshape(-1, CTRL_PER_FRAME)
    return np.asarray([np.bincount(b).argmax() for b in blocks], np.int32)


def project_landmarks(identity: Identity, rotation, shift, distance, mouth, emotion: str
                      ) -> np.ndarray:
    """float32 [T, len(LANDMARKS), 2]: the identity's landmarks in normalised image coordinates
    (x right, y down, [-1, 1] across the frame) for per-frame rotation, shift, distance and
    mouth factors [T, 3] (the mouth's corners and lips move with them) and the clip's emotion."""
    t = len(distance)
    points = landmark_points(identity, np.asarray(mouth).reshape(t, 3), emotion)
    head = np.stack([np.broadcast_to(points[name], (t, 3)) for name in LANDMARKS], 1)  # [T, L, 3]
    out = np.stack([project(head[i], rotation[i], shift[i], distance[i], 2) - 1.0
                    for i in range(t)])
    return out.astype(np.float32)


def sample_factors(spec: ClipSpec) -> tuple[Identity, int, np.ndarray, dict]:
    """Everything except the pixels: (identity, emotion index, audio, per-frame factors)."""
    identity = sample_identity(spec.identity)
    rng_emotion = stream(spec.identity, spec.seed, "emotion")
    emotion = (emotion_index(spec.emotion) if spec.emotion is not None
               else int(rng_emotion.integers(len(EMOTIONS))))
    name = EMOTIONS[emotion]
    speech = synthesize(stream(spec.identity, spec.seed, "speech"), spec.num_frames,
                        identity.f0, identity.formant_scale, identity.speech_rate, name)
    # Motion has its own stream: the same speech can come with many head motions.
    motion_seed = spec.seed if spec.motion_seed is None else spec.motion_seed
    motion = sample_motion(stream(spec.identity, motion_seed, "motion"), speech, name)
    dist = motion["distance"]
    shift = motion["shift"]
    translation = np.stack([shift[:, 0] * FOCAL / dist, -shift[:, 1] * FOCAL / dist], -1)
    mouth = np.stack([frame_mean(speech.open), frame_mean(speech.width),
                      frame_mean(speech.round)], -1)
    factors = dict(
        rotation=motion["rotation"],
        translation=translation.astype(np.float32),
        distance=dist,
        scale=(FOCAL / dist).astype(np.float32),
        gaze=motion["gaze"],
        eye_gaze=motion["eye_gaze"],
        blink=motion["blink"],
        mouth=mouth,
        f0=frame_mean(speech.f0),
        loudness=frame_mean(speech.loudness),
        viseme=_frame_mode(speech.viseme),
        landmarks=project_landmarks(identity, motion["rotation"], shift, dist, mouth, name),
        _shift=shift,
    )
    assert speech.audio.shape[0] == spec.num_frames * SAMPLES_PER_FRAME
    return identity, emotion, speech.audio, factors


def render_frames(identity: Identity, factors: dict, emotion: str | int, resolution: int,
                  supersample: int = 1) -> np.ndarray:
    """Renders uint8 [T, R, R, 3] frames from per-frame factors (as in Clip.factors).

    `factors` needs rotation, distance, eye_gaze, blink, mouth and either `_shift` (head units)
    or translation (normalised image coordinates).
    """
    name = EMOTIONS[emotion_index(emotion)]
    renderer = Renderer(identity, resolution, supersample)
    dist = np.asarray(factors["distance"], np.float64)
    if "_shift" in factors:
        shift = np.asarray(factors["_shift"], np.float64)
    else:
        tr = np.asarray(factors["translation"], np.float64)
        shift = np.stack([tr[:, 0] * dist / FOCAL, -tr[:, 1] * dist / FOCAL], -1)
    frames = [
        renderer.render(factors["rotation"][i], shift[i], dist[i], factors["eye_gaze"][i],
                        factors["blink"][i], factors["mouth"][i], name)
        for i in range(dist.shape[0])
    ]
    return np.stack(frames)


def generate_clip(identity: int, seed: int, num_frames: int = 50, resolution: int = 128,
                  emotion: str | int | None = None, supersample: int = 1,
                  motion_seed: int | None = None) -> Clip:
    """Generates one clip; the same arguments always give the same clip, bit for bit."""
    spec = ClipSpec(identity=identity, seed=seed, num_frames=num_frames, resolution=resolution,
                    emotion=emotion, supersample=supersample, motion_seed=motion_seed)
    idn, emo, audio, factors = sample_factors(spec)
    frames = render_frames(idn, factors, emo, resolution, supersample)
    factors = {k: v for k, v in factors.items() if not k.startswith("_")}
    return Clip(spec=spec, identity=idn, emotion=emo, frames=frames, audio=audio, factors=factors)
