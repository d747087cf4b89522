"""Identities: appearance and voice drawn from independent factors, deterministic per id.

Each factor group has its own random stream (seeded by the id and the group name), so
changing how one group is drawn never shifts another, and the groups are independent.
Continuous factors make the number of distinct identities effectively unbounded.
"""

from __future__ import annotations

import colorsys
import dataclasses
import zlib

import numpy as np

from vasa_jax.data.synthtalk.spec import ACCESSORIES, BACKGROUNDS, HAIR_STYLES


def stream(*keys) -> np.random.Generator:
    """A random generator keyed by integers and strings (stable across runs and platforms)."""
    words = []
    for k in keys:
        if isinstance(k, str):
            words.append(zlib.crc32(k.encode()))
        else:
            k = int(k)
            words.extend([k & 0xFFFFFFFF, (k >> 32) & 0xFFFFFFFF])
    return np.random.default_rng(np.random.SeedSequence(words))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


@dataclasses.dataclass(frozen=True, eq=False)  # numpy fields: compare factor_vector()
class Identity:
    """Appearance and voice of one SynthTalk person (all lengths in head units)."""

    id: int
    # face shape
    head_radii: tuple  # (rx, ry, rz) of the head ellipsoid
    eye_spacing: float  # eye centre |u| on the front parametrisation
    eye_height: float  # eye centre v
    eye_size: float
    nose_size: float
    nose_length: float
    mouth_height: float
    mouth_width: float
    ear_size: float
    # colours (RGB in [0, 1])
    skin: np.ndarray
    lips: np.ndarray
    hair_color: np.ndarray
    iris_color: np.ndarray
    clothes: np.ndarray
    brow_color: np.ndarray
    # categorical looks
    hair_style: str
    hair_line: float
    accessory: str
    accessory_color: np.ndarray
    background: str
    bg_colors: tuple
    bg_params: tuple
    light_dir: np.ndarray
    ambient: float
    # voice
    f0: float  # mean pitch, Hz
    formant_scale: float  # vocal tract length factor
    speech_rate: float

    def factor_vector(self) -> np.ndarray:
        """Continuous summary of the appearance factors (for identity-level analyses)."""
        return np.concatenate([
            np.asarray(self.head_radii, np.float32),
            np.asarray([self.eye_spacing, self.eye_height, self.eye_size, self.nose_size,
                        self.nose_length, self.mouth_height, self.mouth_width, self.ear_size],
                       np.float32),
            self.skin, self.hair_color, self.iris_color, self.clothes,
            np.asarray([HAIR_STYLES.index(self.hair_style), ACCESSORIES.index(self.accessory),
                        BACKGROUNDS.index(self.background), self.f0 / 100.0], np.float32),
        ]).astype(np.float32)


def sample_identity(identity_id: int) -> Identity:
    """Draws the identity with this id; the same id always gives the same person."""
    identity_id = int(identity_id)

    shape = stream(identity_id, "shape")
    rx = shape.uniform(0.70, 0.86)
    ry = shape.uniform(0.95, 1.10)
    rz = shape.uniform(0.80, 0.95)
    face = dict(
        head_radii=(float(rx), float(ry), float(rz)),
        eye_spacing=float(shape.uniform(0.30, 0.40)),
        eye_height=float(shape.uniform(0.12, 0.22)),
        eye_size=float(shape.uniform(0.85, 1.2)),
        nose_size=float(shape.uniform(0.8, 1.25)),
        nose_length=float(shape.uniform(0.85, 1.25)),
        mouth_height=float(shape.uniform(-0.50, -0.40)),
        mouth_width=float(shape.uniform(0.85, 1.2)),
        ear_size=float(shape.uniform(0.8, 1.2)),
    )

    tone = stream(identity_id, "skin")
    # A continuum from light to deep skin tones, with a small hue/saturation spread.
    t = tone.uniform()
    skin = _hsv(tone.uniform(0.03, 0.09), 0.25 + 0.35 * t + tone.uniform(-0.05, 0.05),
                0.95 - 0.55 * t)
    lips = np.clip(skin * np.asarray([0.85, 0.55, 0.55]) + np.asarray([0.12, 0.0, 0.02]), 0, 1)
    brow_base = tone.uniform(0.15, 0.45)

    hair = stream(identity_id, "hair")
    hair_style = HAIR_STYLES[hair.integers(len(HAIR_STYLES))]
    kind = hair.uniform()
    if kind < 0.55:  # browns and blacks
        hair_color = _hsv(hair.uniform(0.04, 0.10), hair.uniform(0.4, 0.8), hair.uniform(0.08, 0.45))
    elif kind < 0.75:  # blond
        hair_color = _hsv(hair.uniform(0.10, 0.14), hair.uniform(0.4, 0.7), hair.uniform(0.6, 0.9))
    elif kind < 0.85:  # red
        hair_color = _hsv(hair.uniform(0.01, 0.05), hair.uniform(0.6, 0.9), hair.uniform(0.45, 0.75))
    elif kind < 0.93:  # grey / white
        hair_color = _hsv(0.0, 0.0, hair.uniform(0.55, 0.9))
    else:  # dyed
        hair_color = _hsv(hair.uniform(), hair.uniform(0.5, 0.9), hair.uniform(0.4, 0.9))
    hair_line = float(hair.uniform(0.45, 0.65))

    eyes = stream(identity_id, "eyes")
    iris_kind = eyes.uniform()
    if iris_kind < 0.5:
        iris_color = _hsv(eyes.uniform(0.05, 0.09), eyes.uniform(0.5, 0.9), eyes.uniform(0.2, 0.5))
    elif iris_kind < 0.8:
        iris_color = _hsv(eyes.uniform(0.52, 0.62), eyes.uniform(0.4, 0.8), eyes.uniform(0.5, 0.85))
    else:
        iris_color = _hsv(eyes.uniform(0.22, 0.38), eyes.uniform(0.4, 0.8), eyes.uniform(0.35, 0.7))

    acc = stream(identity_id, "accessory")
    accessory = ACCESSORIES[acc.choice(len(ACCESSORIES), p=[0.45, 0.2, 0.2, 0.15])]
    accessory_color = _hsv(acc.uniform(), acc.uniform(0.0, 0.9), acc.uniform(0.1, 0.8))

    bg = stream(identity_id, "background")
    background = BACKGROUNDS[bg.integers(len(BACKGROUNDS))]
    bg_colors = (_hsv(bg.uniform(), bg.uniform(0.1, 0.7), bg.uniform(0.3, 0.95)),
                 _hsv(bg.uniform(), bg.uniform(0.1, 0.7), bg.uniform(0.3, 0.95)))
    bg_params = tuple(float(x) for x in bg.uniform(0, 1, size=8))

    look = stream(identity_id, "scene")
    clothes = _hsv(look.uniform(), look.uniform(0.1, 0.8), look.uniform(0.15, 0.85))
    light = np.asarray([look.uniform(-0.6, 0.6), look.uniform(0.1, 0.7), 1.0], np.float32)

    voice = stream(identity_id, "voice")
    low = voice.uniform() < 0.5  # two broad voice registers
    f0 = voice.uniform(90, 140) if low else voice.uniform(170, 240)
    formant_scale = voice.uniform(0.92, 1.0) if low else voice.uniform(1.05, 1.18)

    return Identity(
        id=identity_id,
        **face,
        skin=skin.astype(np.float32),
        lips=lips.astype(np.float32),
        hair_color=hair_color,
        iris_color=iris_color,
        clothes=clothes,
        brow_color=np.clip(hair_color * 0.6 + brow_base * 0.2, 0, 1).astype(np.float32),
        hair_style=hair_style,
        hair_line=hair_line,
        accessory=accessory,
        accessory_color=accessory_color,
        background=background,
        bg_colors=bg_colors,
        bg_params=bg_params,
        light_dir=(light / np.linalg.norm(light)).astype(np.float32),
        ambient=float(look.uniform(0.35, 0.55)),
        f0=float(f0),
        formant_scale=float(formant_scale),
        speech_rate=float(voice.uniform(0.85, 1.15)),
    )
