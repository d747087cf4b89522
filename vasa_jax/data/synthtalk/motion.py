"""Head motion, gaze, blinks and distance for a SynthTalk clip.

Head rotation = a per-clip rest pose + prosody-driven motion (nods on stressed, loud syllables,
turns that follow the pitch contour) + independent Ornstein-Uhlenbeck wander with its own random
stream, so one audio track is compatible with many head motions, as in real speech. Gaze is
drawn in the camera frame, independently of the head, then expressed as an eye-in-head rotation
clamped to what eyes can do; the achieved camera-frame gaze is reported as ground truth.
"""

from __future__ import annotations

import numpy as np

from vasa_jax.data.synthtalk.speech import CTRL_RATE, Speech, _smooth
from vasa_jax.data.synthtalk.spec import CTRL_PER_FRAME, MAX_ANGLE_DEG

FOCAL = 2.0  # camera focal length in normalised image units (≈53° field of view)
DISTANCE_RANGE = (2.7, 3.9)  # head-centre to camera, in head units
MAX_EYE_YAW, MAX_EYE_PITCH = 35.0, 25.0

# Emotion → (rest pitch offset deg, motion amplitude factor, speed factor, blink rate factor).
EMOTION_MOTION = {
    "neutral": (0.0, 1.0, 1.0, 1.0),
    "happy": (2.0, 1.2, 1.1, 1.0),
    "sad": (-7.0, 0.55, 0.7, 1.2),
    "angry": (-2.0, 1.4, 1.4, 0.7),
    "surprised": (4.0, 1.1, 1.2, 0.4),
}


def _ou(rng: np.random.Generator, n: int, tau_s: float, std: float) -> np.ndarray:
    """Stationary Ornstein-Uhlenbeck process on the control grid."""
    a = np.exp(-1.0 / (tau_s * CTRL_RATE))
    noise = rng.normal(0, std * np.sqrt(1 - a * a), n)
    x = np.empty(n, np.float64)
    x[0] = rng.normal(0, std)
    for i in range(1, n):
        x[i] = a * x[i - 1] + noise[i]
    return x


def frame_mean(x: np.ndarray) -> np.ndarray:
    """Control-rate values [T * 8, ...] → per-frame means [T, ...] (the frame's 40 ms window)."""
    return x.reshape(-1, CTRL_PER_FRAME, *x.shape[1:]).mean(1).astype(np.float32)


def rotation_matrix(yaw, pitch, roll) -> np.ndarray:
    """Head-to-camera rotation for angles in degrees; [..., 3, 3].

    Conventions (camera frame: x right, y up, z towards the viewer): yaw > 0 turns the nose
    to the image right, pitch > 0 lifts the nose up, roll > 0 tilts the head counter-clockwise.
    """
    y, p, r = (np.deg2rad(np.asarray(a, np.float64)) for a in (yaw, pitch, roll))
    cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(p), np.sin(p), np.cos(r), np.sin(r)
    one, zero = np.ones_like(cy), np.zeros_like(cy)
    ry = np.stack([np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1),
                   np.stack([-sy, zero, cy], -1)], -2)
    rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cp, sp], -1),
                   np.stack([zero, -sp, cp], -1)], -2)
    rz = np.stack([np.stack([cr, -sr, zero], -1), np.stack([sr, cr, zero], -1),
                   np.stack([zero, zero, one], -1)], -2)
    return rz @ ry @ rx


def angles_to_direction(theta, phi) -> np.ndarray:
    """Gaze angles (deg; θ > 0 looks to image right, φ > 0 up) → unit vector, camera frame."""
    t, p = np.deg2rad(theta), np.deg2rad(phi)
    return np.stack([np.sin(t) * np.cos(p), np.sin(p), np.cos(t) * np.cos(p)], -1)


def direction_to_angles(d: np.ndarray):
    theta = np.rad2deg(np.arctan2(d[..., 0], d[..., 2]))
    phi = np.rad2deg(np.arcsin(np.clip(d[..., 1], -1, 1)))
    return theta, phi


def sample_motion(rng: np.random.Generator, speech: Speech, emotion: str) -> dict:
    """Per-frame motion ground truth (float32 arrays with a leading frame axis)."""
    n = speech.open.shape[0]
    pitch_off, amp, speed, blink_f = EMOTION_MOTION[emotion]

    # Rest pose of the clip.
    rest = np.asarray([rng.normal(0, 9), rng.normal(pitch_off, 5), rng.normal(0, 3)])
    # Prosody: loud, stressed syllables nod the head; pitch excursions turn and tilt it.
    loud = speech.loudness / max(speech.loudness.max(), 1e-6)
    emph = _smooth((loud * (0.4 + speech.stress))[None], sigma=12.0)[0]
    emph = emph - emph.mean()
    logf0 = np.log(speech.f0)
    pitch_dev = _smooth((logf0 - logf0.mean())[None], sigma=20.0)[0]
    lag = int(0.08 * CTRL_RATE)  # the head follows emphasis slightly later
    emph = np.concatenate([np.full(lag, emph[0]), emph])[:n]
    sign = rng.choice([-1.0, 1.0], size=2)
    prosody = np.stack([
        sign[0] * 25.0 * pitch_dev,  # yaw
        -14.0 * emph,  # pitch: a nod goes down
        sign[1] * 12.0 * pitch_dev,  # roll
    ], -1) * amp
    # Independent wander: the audio does not determine it.
    wander = np.stack([
        _ou(rng, n, rng.uniform(0.6, 2.0) / speed, 7.0 * amp),
        _ou(rng, n, rng.uniform(0.4, 1.5) / speed, 4.0 * amp),
        _ou(rng, n, rng.uniform(0.6, 2.0) / speed, 3.0 * amp),
    ], -1)
    angles = np.clip(rest + prosody + wander, -MAX_ANGLE_DEG, MAX_ANGLE_DEG)

    # Translation (world units, x right / y up) and distance.
    shift = np.stack([_ou(rng, n, 1.5, 0.10) + rng.normal(0, 0.08),
                      _ou(rng, n, 1.5, 0.06) + rng.normal(0, 0.05) + 0.05 * emph], -1)
    dist0 = rng.uniform(*DISTANCE_RANGE)
    distance = np.clip(dist0 + _ou(rng, n, 3.0, 0.12), DISTANCE_RANGE[0] - 0.3,
                       DISTANCE_RANGE[1] + 0.3)

    # Gaze in the camera frame: a main direction, fixations with saccades, tiny jitter.
    at_camera = rng.uniform() < 0.4
    main = np.zeros(2) if at_camera else np.asarray([rng.uniform(-20, 20), rng.uniform(-12, 12)])
    gaze = np.zeros((n, 2))
    i = 0
    while i < n:
        dur = int(rng.uniform(0.5, 3.0) * CTRL_RATE)
        offset = rng.normal(0, [5.0, 3.0]) if rng.uniform() < 0.6 else np.zeros(2)
        gaze[i:i + dur] = main + offset
        i += dur
    gaze = gaze + rng.normal(0, 0.3, gaze.shape)
    # Eyes turn in the head: express the target in the head frame and clamp the eye rotation.
    rot = rotation_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    g_cam = angles_to_direction(gaze[:, 0], gaze[:, 1])
    g_head = np.einsum("nji,nj->ni", rot, g_cam)
    eye_theta, eye_phi = direction_to_angles(g_head)
    eye_theta = np.clip(eye_theta, -MAX_EYE_YAW, MAX_EYE_YAW)
    eye_phi = np.clip(eye_phi, -MAX_EYE_PITCH, MAX_EYE_PITCH)

    # Blinks: Poisson onsets, fast closing and slower opening.
    blink = np.zeros(n)
    rate = rng.uniform(0.15, 0.45) * blink_f
    t = rng.exponential(1.0 / rate)
    while t * CTRL_RATE < n:
        close, hold, reopen = (rng.uniform(0.05, 0.08), rng.uniform(0.0, 0.06),
                               rng.uniform(0.08, 0.16))
        k = np.arange(n) / CTRL_RATE - t
        shape = np.where(k < 0, 0.0, np.where(k < close, k / close, np.where(
            k < close + hold, 1.0, np.clip(1 - (k - close - hold) / reopen, 0, 1))))
        blink = np.maximum(blink, shape)
        t += close + hold + reopen + rng.exponential(1.0 / rate)

    # Frame means of the control-rate values. Gaze is recomputed from the averaged eye
    # rotation and head rotation so that it is exactly what is rendered.
    f_angles = frame_mean(angles)
    f_eye = np.stack([frame_mean(eye_theta), frame_mean(eye_phi)], -1)
    f_rot = rotation_matrix(f_angles[:, 0], f_angles[:, 1], f_angles[:, 2])
    f_gaze_cam = np.einsum("nij,nj->ni", f_rot, angles_to_direction(f_eye[:, 0], f_eye[:, 1]))
    g_theta, g_phi = direction_to_angles(f_gaze_cam)
    return dict(
        rotation=f_angles,
        shift=frame_mean(shift),
        distance=frame_mean(distance),
        eye_gaze=f_eye,
        gaze=np.stack([g_theta, g_phi], -1).astype(np.float32),
        blink=frame_mean(blink),
    )
