"""SynthTalk: a procedural talking-head world with exact ground truth for every factor.

    from vasa_jax.data import synthtalk
    clip = synthtalk.generate_clip(identity=3, seed=7, num_frames=50, resolution=128)
    clip.frames   # uint8 [50, 128, 128, 3]
    clip.audio    # float32 [50 * 640], 16 kHz
    clip.factors  # rotation, translation, distance, scale, gaze, eye_gaze, blink, mouth, ...
"""

from vasa_jax.data.synthtalk.clip import Clip, generate_clip, render_frames, sample_factors
from vasa_jax.data.synthtalk.identity import Identity, sample_identity
from vasa_jax.data.synthtalk.spec import (
    ACCESSORIES,
    BACKGROUNDS,
    EMOTIONS,
    FPS,
    HAIR_STYLES,
    LANDMARKS,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    VISEMES,
    ClipSpec,
    check_resolution,
    emotion_index,
)

__all__ = [
    "ACCESSORIES", "BACKGROUNDS", "EMOTIONS", "FPS", "HAIR_STYLES", "LANDMARKS", "SAMPLE_RATE",
    "SAMPLES_PER_FRAME", "VISEMES", "Clip", "ClipSpec", "Identity", "check_resolution",
    "emotion_index", "generate_clip", "render_frames", "sample_factors", "sample_identity",
]
