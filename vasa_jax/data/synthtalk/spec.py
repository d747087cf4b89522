"""Constants and validated settings of the SynthTalk world.

Time base: 25 video frames per second and 16 kHz audio, so one frame owns exactly
640 audio samples; every per-frame ground-truth value is the mean over that frame's
40 ms window, which keeps audio and video with zero offset by construction.
"""

from __future__ import annotations

import dataclasses

from vasa_jax.errors import ConfigError, check

FPS = 25
SAMPLE_RATE = 16_000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
# Internal control rate for speech and motion trajectories: 8 steps per frame (5 ms).
CTRL_PER_FRAME = 8
SAMPLES_PER_CTRL = SAMPLES_PER_FRAME // CTRL_PER_FRAME  # 80

EMOTIONS = ("neutral", "happy", "sad", "angry", "surprised")
VISEMES = ("silence", "open", "rounded", "spread", "bilabial", "fricative")
HAIR_STYLES = ("bald", "short", "fringe", "long", "bun")
ACCESSORIES = ("none", "round_glasses", "square_glasses", "headband")
BACKGROUNDS = ("solid", "gradient", "stripes", "checker", "blobs")
# The per-frame `landmarks` factor lists these surface points, in this order: the first four are
# fixed on the face (the mouth's centre at rest); the mouth's corners and the inner edges of its
# lips at the centre line move with the mouth factors and the emotion.
LANDMARKS = ("left_eye", "right_eye", "nose_tip", "mouth",
             "mouth_left", "mouth_right", "upper_lip", "lower_lip")

MIN_RESOLUTION = 64
MAX_RESOLUTION = 512
MAX_ANGLE_DEG = 30.0


def emotion_index(emotion: str | int) -> int:
    """Maps an emotion name or index to its index in EMOTIONS."""
    if isinstance(emotion, str):
        name = emotion.strip().lower()
        if name not in EMOTIONS:
            raise ConfigError(f"unknown emotion {emotion!r}: choose one of {', '.join(EMOTIONS)}")
        return EMOTIONS.index(name)
    idx = int(emotion)
    check(0 <= idx < len(EMOTIONS), f"emotion index {idx} out of range: use 0..{len(EMOTIONS) - 1}")
    return idx


def check_resolution(resolution: int, field: str = "resolution") -> int:
    """Square render size: a multiple of 8 in [64, 512]."""
    check(
        isinstance(resolution, int) and not isinstance(resolution, bool),
        f"{field} must be an integer, got {resolution!r}",
    )
    check(
        MIN_RESOLUTION <= resolution <= MAX_RESOLUTION and resolution % 8 == 0,
        f"{field}={resolution} is invalid: use a multiple of 8 between "
        f"{MIN_RESOLUTION} and {MAX_RESOLUTION}",
    )
    return resolution


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """What to generate for one clip; validated on construction."""

    identity: int
    seed: int
    num_frames: int = 50
    resolution: int = 128
    emotion: str | int | None = None  # None: drawn from the clip seed
    motion_seed: int | None = None  # None: the clip seed; set it to vary motion, not speech
    supersample: int = 1  # render at s× and box-filter down (edges are already analytic-AA)

    def __post_init__(self):
        check(int(self.identity) >= 0, f"identity={self.identity} must be >= 0")
        check(int(self.seed) >= 0, f"seed={self.seed} must be >= 0")
        check(
            int(self.num_frames) >= 1,
            f"num_frames={self.num_frames} must be a positive number of frames",
        )
        check(self.motion_seed is None or int(self.motion_seed) >= 0,
              f"motion_seed={self.motion_seed} must be >= 0")
        check_resolution(self.resolution)
        check(
            self.supersample in (1, 2, 3, 4),
            f"supersample={self.supersample} must be 1, 2, 3 or 4",
        )
        if self.emotion is not None:
            emotion_index(self.emotion)
