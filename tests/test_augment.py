"""Camera-roll and mirror augmentation (vasa_jax/train/augment.py) against SynthTalk's own geometry:
turning a frame and its readings by δ must equal rendering the scene with the camera rolled by δ,
and mirroring them must equal rendering the mirror-image scene."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vasa_jax.data import synthtalk
from vasa_jax.data.synthtalk import render_frames, sample_factors
from vasa_jax.data.synthtalk.clip import FOCAL, ClipSpec, project_landmarks
from vasa_jax.train import augment


def _scene(seed: int, num_frames: int = 3):
    spec = ClipSpec(identity=1000 + seed, seed=seed, num_frames=num_frames, resolution=64)
    identity, emotion, _, factors = sample_factors(spec)
    return identity, emotion, factors


def _camera_rolled(factors: dict, delta_deg: float) -> dict:
    """SynthTalk's factors of the same scene seen by a camera turned by δ about its axis: the
    head's roll + δ, its centre (camera x right, y up) turned by δ."""
    a = np.deg2rad(delta_deg)
    shift = factors["_shift"]
    rotated = dict(factors)
    rotated["rotation"] = factors["rotation"] + np.asarray([0.0, 0.0, delta_deg])
    rotated["_shift"] = np.stack([shift[:, 0] * np.cos(a) - shift[:, 1] * np.sin(a),
                                  shift[:, 0] * np.sin(a) + shift[:, 1] * np.cos(a)], -1)
    return rotated


@pytest.mark.parametrize("delta", [-9.0, 6.5])
def test_turned_points_equal_the_rolled_cameras_projection(delta):
    identity, emotion, factors = _scene(seed=3)
    rolled = _camera_rolled(factors, delta)
    truth = project_landmarks(identity, rolled["rotation"], rolled["_shift"], rolled["distance"],
                              rolled["mouth"], synthtalk.EMOTIONS[emotion])
    d = jnp.full((len(truth),), delta)
    np.testing.assert_allclose(augment.rotate_points(jnp.asarray(factors["landmarks"]), d), truth,
                               atol=2e-5)
    # The head centre: SynthTalk's translation is the projected centre of the head.
    f = (FOCAL / factors["distance"])[:, None]
    np.testing.assert_allclose(augment.rotate_points(jnp.asarray(factors["translation"]), d),
                               rolled["_shift"] * f * np.asarray([1.0, -1.0]), atol=2e-5)


def test_turned_frame_matches_the_rolled_cameras_render_on_the_face():
    identity, emotion, factors = _scene(seed=5, num_frames=1)
    delta = 10.0
    still = render_frames(identity, factors, emotion, 64).astype(np.float32)
    truth = render_frames(identity, _camera_rolled(factors, delta), emotion, 64).astype(np.float32)
    # The face: within 0.25 of the frame around the centre of the fixed landmarks (eyes, nose,
    # mouth; SynthTalk's background does not turn with the camera, so it is left out).
    centre = (factors["landmarks"][0][:4].mean(0) + 1.0) / 2.0 * 64
    yy, xx = np.mgrid[:64, :64] + 0.5
    face = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 < 16.0 ** 2

    def err(img):
        return float(np.abs(np.asarray(img) - truth[0])[face].mean())

    turned = augment.rotate_images(jnp.asarray(still), jnp.asarray([delta]))[0]
    wrong_way = augment.rotate_images(jnp.asarray(still), jnp.asarray([-delta]))[0]
    assert err(turned) < 0.5 * err(still[0]) and err(turned) < 0.5 * err(wrong_way)


def test_rotate_images_zero_angle_is_the_identity_and_keeps_the_border():
    img = jax.random.uniform(jax.random.key(0), (2, 16, 12, 3)) * 255
    np.testing.assert_allclose(augment.rotate_images(img, jnp.zeros(2)), img, atol=1e-4)
    flat = jnp.full((1, 16, 16, 3), 77.0)
    np.testing.assert_allclose(augment.rotate_images(flat, jnp.asarray([30.0])), flat, atol=1e-4)
    # A quarter turn of a square image moves pixels exactly (counter-clockwise on screen: the
    # top row becomes the left column, read upwards).
    sq = jax.random.uniform(jax.random.key(1), (1, 8, 8, 1))
    np.testing.assert_allclose(augment.rotate_images(sq, jnp.asarray([90.0]))[0, :, :, 0],
                               np.rot90(np.asarray(sq[0, :, :, 0]), 1), atol=1e-5)


def test_camera_roll_turns_each_pair_together_and_its_readings():
    key = jax.random.key(7)
    b = 6
    frames = jax.random.randint(key, (b, 16, 16, 3), 0, 256).astype(jnp.uint8)
    rng = np.random.default_rng(0)
    batch = {
        "source": frames, "driver": frames, "other": frames,
        "source_rotation": rng.normal(0, 10, (b, 3)).astype(np.float32),
        "driver_rotation": rng.normal(0, 10, (b, 3)).astype(np.float32),
        "source_translation": rng.normal(0, 0.1, (b, 2)).astype(np.float32),
        "driver_translation": rng.normal(0, 0.1, (b, 2)).astype(np.float32),
        "driver_landmarks": rng.uniform(-1, 1, (b, 5, 2)).astype(np.float32),
        "source_mouth": rng.uniform(0, 1, (b, 3)).astype(np.float32),
        "driver_blink": rng.uniform(0, 1, (b,)).astype(np.float32),
        "source_scale": rng.uniform(0.5, 0.7, (b,)).astype(np.float32),
        "driver_frame": np.arange(b, dtype=np.int32),
    }
    out = jax.jit(augment.camera_roll, static_argnums=2)(batch, jax.random.key(3), 12.0)
    delta = np.asarray(out["roll_delta"])
    assert np.all(np.abs(delta) <= 12.0) and np.std(delta) > 1.0
    # One angle per pair: equal frames stay equal; "other" is not touched.
    np.testing.assert_array_equal(out["source"], out["driver"])
    assert np.abs(np.asarray(out["source"]) - np.asarray(frames, np.float32)).mean() > 1.0
    np.testing.assert_array_equal(out["other"], frames)
    for role in ("source", "driver"):
        rot = np.asarray(out[f"{role}_rotation"])
        np.testing.assert_allclose(rot[:, :2], batch[f"{role}_rotation"][:, :2])
        np.testing.assert_allclose(rot[:, 2], batch[f"{role}_rotation"][:, 2] + delta, atol=1e-5)
        tr = np.asarray(out[f"{role}_translation"])
        np.testing.assert_allclose(np.linalg.norm(tr, axis=-1),
                                   np.linalg.norm(batch[f"{role}_translation"], axis=-1),
                                   rtol=1e-5)
        a = np.deg2rad(delta)
        x, y = batch[f"{role}_translation"].T
        np.testing.assert_allclose(tr, np.stack([x * np.cos(a) + y * np.sin(a),
                                                 -x * np.sin(a) + y * np.cos(a)], -1), atol=1e-6)
    lm = np.asarray(out["driver_landmarks"])
    np.testing.assert_allclose(np.linalg.norm(lm, axis=-1),
                               np.linalg.norm(batch["driver_landmarks"], axis=-1), rtol=1e-5)
    for k in ("source_mouth", "driver_blink", "source_scale", "driver_frame"):
        np.testing.assert_array_equal(out[k], batch[k])


def test_camera_roll_refuses_a_reading_it_cannot_turn():
    batch = {"source": jnp.zeros((2, 8, 8, 3)), "driver": jnp.zeros((2, 8, 8, 3)),
             "driver_eye_gaze": jnp.zeros((2, 2))}
    with pytest.raises(ValueError, match="driver_eye_gaze.*augment_roll_deg=0"):
        augment.camera_roll(batch, jax.random.key(0), 5.0)


def _mirrored(factors: dict) -> dict:
    """SynthTalk's factors of the mirror-image scene (camera x axis flipped): yaw and roll
    negated, the head centre's x negated, the gaze's horizontal angle negated."""
    out = dict(factors)
    out["rotation"] = factors["rotation"] * np.asarray([-1.0, 1.0, -1.0])
    out["_shift"] = factors["_shift"] * np.asarray([-1.0, 1.0])
    out["eye_gaze"] = factors["eye_gaze"] * np.asarray([-1.0, 1.0])
    return out


def _one_example(factors: dict, frames) -> dict:
    return {"source": jnp.asarray(frames), "driver": jnp.asarray(frames),
            "source_rotation": jnp.asarray(factors["rotation"], jnp.float32),
            "source_translation": jnp.asarray(factors["translation"]),
            "source_landmarks": jnp.asarray(factors["landmarks"])}


def test_mirrored_readings_equal_the_mirror_scenes_projection():
    identity, emotion, factors = _scene(seed=3)
    mirrored = _mirrored(factors)
    frames = np.zeros((len(factors["rotation"]), 8, 8, 3), np.uint8)
    out = augment.mirror(_one_example(factors, frames), jax.random.key(0), 1.0)
    assert bool(np.all(out["mirrored"]))
    # The landmarks of the mirror scene, projected by SynthTalk: left and right swapped.
    truth = project_landmarks(identity, mirrored["rotation"], mirrored["_shift"],
                              mirrored["distance"], mirrored["mouth"],
                              synthtalk.EMOTIONS[emotion])
    np.testing.assert_allclose(out["source_landmarks"], truth, atol=2e-5)
    # Not the identity: the unswapped, unflipped points are far off.
    assert np.abs(factors["landmarks"] - truth).max() > 0.05
    f = (FOCAL / factors["distance"])[:, None]
    np.testing.assert_allclose(out["source_translation"],
                               mirrored["_shift"] * f * np.asarray([1.0, -1.0]), atol=2e-5)
    np.testing.assert_allclose(out["source_rotation"], mirrored["rotation"], atol=1e-5)


def test_mirrored_frame_matches_the_mirror_scenes_render_on_the_face():
    identity, emotion, factors = _scene(seed=5, num_frames=1)
    factors = dict(factors, rotation=np.asarray([[14.0, 4.0, 6.0]]))  # clearly turned and tilted
    # The light and the eyes' glints are not mirror symmetric: a frontal light for this check.
    light = np.asarray([0.0, 0.4, 1.0], np.float32)
    identity = dataclasses.replace(identity, light_dir=light / np.linalg.norm(light))
    still = render_frames(identity, factors, emotion, 64).astype(np.float32)
    truth = render_frames(identity, _mirrored(factors), emotion, 64).astype(np.float32)
    centre = (factors["landmarks"][0][:4].mean(0) * np.asarray([-1.0, 1.0]) + 1.0) / 2.0 * 64
    yy, xx = np.mgrid[:64, :64] + 0.5
    face = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 < 14.0 ** 2

    def err(img):
        return float(np.abs(np.asarray(img) - truth[0])[face].mean())

    out = augment.mirror(_one_example(factors, still), jax.random.key(0), 1.0)
    flipped = np.asarray(out["source"][0])
    upside_down = still[0, ::-1]  # the wrong axis
    # Exact but for the eyes' glints: 0.18 grey levels against 6.5 unflipped (seed 5).
    assert err(flipped) < 0.05 * err(still[0]) and err(flipped) < 0.05 * err(upside_down)


def test_mirror_flips_whole_examples_and_leaves_other_readings():
    b = 64
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (b, 6, 10, 3)).astype(np.uint8)
    other = rng.integers(0, 256, (b, 6, 10, 3)).astype(np.uint8)
    batch = {
        "source": frames, "driver": frames[::-1], "other": other,
        "source_rotation": rng.normal(0, 10, (b, 3)).astype(np.float32),
        "other_rotation": rng.normal(0, 10, (b, 3)).astype(np.float32),
        "driver_translation": rng.normal(0, 0.1, (b, 2)).astype(np.float32),
        "driver_landmarks": rng.uniform(-1, 1, (b, 8, 2)).astype(np.float32),
        "source_mouth": rng.uniform(0, 1, (b, 3)).astype(np.float32),
        "driver_blink": rng.uniform(0, 1, (b,)).astype(np.float32),
        "other_scale": rng.uniform(0.5, 0.7, (b,)).astype(np.float32),
        "driver_frame": np.arange(b, dtype=np.int32),
    }
    out = jax.jit(augment.mirror, static_argnums=2)(batch, jax.random.key(3), 0.5)
    flip = np.asarray(out["mirrored"])
    assert 10 < flip.sum() < b - 10
    for role, src in (("source", frames), ("driver", frames[::-1]), ("other", other)):
        got = np.asarray(out[role])
        np.testing.assert_array_equal(got[flip], src[flip][:, :, ::-1])  # one coin per example
        np.testing.assert_array_equal(got[~flip], src[~flip])
    for key in ("source_rotation", "other_rotation"):
        sign = np.where(flip[:, None], np.asarray([-1.0, 1.0, -1.0]), 1.0)
        np.testing.assert_allclose(out[key], batch[key] * sign)
    np.testing.assert_allclose(out["driver_translation"][:, 0],
                               np.where(flip, -1.0, 1.0) * batch["driver_translation"][:, 0])
    lm, lm0 = np.asarray(out["driver_landmarks"]), batch["driver_landmarks"]
    order = [1, 0, 2, 3, 5, 4, 6, 7]  # eyes and mouth corners swap sides
    np.testing.assert_allclose(lm[flip], lm0[flip][:, order] * np.asarray([-1.0, 1.0]))
    np.testing.assert_allclose(lm[~flip], lm0[~flip])
    for k in ("source_mouth", "driver_blink", "other_scale", "driver_frame"):
        np.testing.assert_array_equal(out[k], batch[k])
    # prob 0 changes nothing; two mirrors with the same key are the identity.
    none = augment.mirror(batch, jax.random.key(3), 0.0)
    np.testing.assert_array_equal(none["source"], frames)
    twice = augment.mirror(out, jax.random.key(3), 0.5)
    np.testing.assert_array_equal(twice["other"], other)
    np.testing.assert_allclose(twice["driver_landmarks"], lm0, atol=1e-6)


def test_mirror_refuses_what_it_cannot_flip():
    batch = {"source": jnp.zeros((2, 8, 8, 3)), "driver": jnp.zeros((2, 8, 8, 3)),
             "driver_eye_gaze": jnp.zeros((2, 2))}
    with pytest.raises(ValueError, match="driver_eye_gaze.*augment_mirror_prob=0"):
        augment.mirror(batch, jax.random.key(0), 0.5)
    batch = {"source": jnp.zeros((2, 8, 8, 3)), "source_landmarks": jnp.zeros((2, 5, 2))}
    with pytest.raises(ValueError, match="cannot reorder 5 landmarks"):
        augment.mirror(batch, jax.random.key(0), 0.5)
