"""SynthTalk: determinism, ground truth consistent with pixels and audio, bad config values."""

import dataclasses

import numpy as np
import pytest

from vasa_jax.data import synthtalk
from vasa_jax.data.synthtalk.render import Renderer, landmark_points, project
from vasa_jax.errors import ConfigError

RES = 96


def _render(identity, *, yaw=0.0, pitch=0.0, gaze=(0.0, 0.0), blink=0.0, mouth=(0.0, 0.5, 0.1),
            emotion="neutral", distance=3.2, res=RES):
    r = Renderer(identity, res)
    return r.render((yaw, pitch, 0.0), (0.0, 0.0), distance, gaze, blink, mouth, emotion)


def _luma(img):
    return img.astype(np.float64) @ np.asarray([0.299, 0.587, 0.114])


def _identity(i, **overrides):
    # Plain look for pixel tests: no glasses over the eyes, no hair volume; others vary.
    idn = synthtalk.sample_identity(i)
    base = dict(accessory="none", hair_style="short")
    base.update(overrides)
    return dataclasses.replace(idn, **base)


def test_same_seed_same_clip_and_seeds_differ():
    a = synthtalk.generate_clip(identity=5, seed=11, num_frames=12, resolution=64)
    b = synthtalk.generate_clip(identity=5, seed=11, num_frames=12, resolution=64)
    c = synthtalk.generate_clip(identity=5, seed=12, num_frames=12, resolution=64)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.audio, b.audio)
    for k in a.factors:
        np.testing.assert_array_equal(a.factors[k], b.factors[k])
    assert not np.array_equal(a.audio, c.audio)
    assert not np.array_equal(a.factors["rotation"], c.factors["rotation"])


def test_shapes_ranges_and_resolutions():
    for res, t in ((64, 1), (64, 2), (512, 3)):
        clip = synthtalk.generate_clip(identity=1, seed=2, num_frames=t, resolution=res)
        assert clip.frames.shape == (t, res, res, 3) and clip.frames.dtype == np.uint8
        assert clip.audio.shape == (t * 640,) and clip.audio.dtype == np.float32
    clip = synthtalk.generate_clip(identity=2, seed=3, num_frames=250, resolution=64)
    f = clip.factors
    assert f["rotation"].shape == (250, 3) and np.abs(f["rotation"]).max() <= 30.0
    assert f["rotation"].std(0).min() > 0.5  # the head really moves about all three axes
    assert f["gaze"].shape == (250, 2) and f["eye_gaze"].shape == (250, 2)
    assert f["translation"].shape == (250, 2) and np.abs(f["translation"]).max() < 0.5
    assert np.all((f["blink"] >= 0) & (f["blink"] <= 1))
    assert np.all((f["mouth"] >= 0) & (f["mouth"] <= 1))
    assert np.all(f["distance"] > 2) and np.allclose(f["scale"], 2.0 / f["distance"], rtol=1e-5)
    assert np.all(np.isfinite(clip.audio)) and np.abs(clip.audio).max() <= 1.0


def test_identities_vary_in_independent_factors():
    ids = [synthtalk.sample_identity(i) for i in range(400)]
    assert {i.hair_style for i in ids} == set(synthtalk.HAIR_STYLES)
    assert {i.accessory for i in ids} == set(synthtalk.ACCESSORIES)
    assert {i.background for i in ids} == set(synthtalk.BACKGROUNDS)
    vecs = np.stack([i.factor_vector() for i in ids])
    assert len({v.tobytes() for v in vecs}) == len(ids)
    # Continuous factors from different groups are uncorrelated (independent streams).
    skin = np.asarray([i.skin.sum() for i in ids])
    width = np.asarray([i.head_radii[0] for i in ids])
    eye = np.asarray([i.iris_color.sum() for i in ids])
    for a, b in ((skin, width), (skin, eye), (width, eye)):
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.2
    # Identity is a pure function of its id, even for huge ids.
    big = synthtalk.sample_identity(3_000_000_017)
    np.testing.assert_array_equal(big.factor_vector(),
                                  synthtalk.sample_identity(3_000_000_017).factor_vector())


def test_mouth_opening_follows_audio_energy():
    rs = []
    for i in range(4):
        clip = synthtalk.generate_clip(identity=i, seed=i + 100, num_frames=250, resolution=64,
                                       emotion=synthtalk.EMOTIONS[i])
        rms = np.sqrt((clip.audio.reshape(250, 640) ** 2).mean(1))
        rs.append(np.corrcoef(rms, clip.factors["mouth"][:, 0])[0, 1])
    assert min(rs) > 0.8, rs


def test_open_mouth_darkens_mouth_region():
    for i in range(3):
        idn = _identity(i)
        closed = _render(idn, mouth=(0.0, 0.5, 0.1))
        opened = _render(idn, mouth=(1.0, 0.5, 0.1))
        col, row = project(landmark_points(idn)["mouth"], (0, 0, 0), (0, 0), 3.2, RES)
        r, c = int(row), int(col)
        win = np.s_[r - 3:r + 4, c - 5:c + 6]
        assert _luma(opened[win]).mean() < _luma(closed[win]).mean() - 20


def _lip_pixels(idn, draw) -> np.ndarray:
    """[H, W] bool: the pixels that change when the identity's lips are recoloured (red against
    blue): exactly the drawn lips. draw(identity) renders one frame."""
    red, blue = (draw(dataclasses.replace(idn, lips=np.asarray(c, np.float32)))
                 for c in ([1.0, 0.0, 0.0], [0.0, 0.0, 1.0]))
    return np.abs(red.astype(np.float64) - blue).sum(-1) > 60


def _gaps_on_the_lips(lips, left, right, upper, lower, what) -> int:
    """Asserts the mouth's corners are the lip pixels' outermost columns and the inner lip edges
    bound the gap between the lips on the upper lip's column (points in pixels, within 1.5 px);
    returns how many gaps that column has."""
    ys, xs = np.nonzero(lips)
    # Pixel centres sit at +0.5; an edge pixel counts once its coverage passes ~half.
    assert abs(xs.min() - (left[0] - 0.5)) < 1.5, (what, xs.min(), left)
    assert abs(xs.max() + 1 - (right[0] + 0.5)) < 1.5, (what, xs.max(), right)
    rows = np.nonzero(lips[:, int(upper[0])])[0]
    below, above = rows[1:][np.diff(rows) > 1], rows[:-1][np.diff(rows) > 1]
    assert abs(above[0] + 1 - upper[1]) < 1.5, (what, rows, upper)
    assert abs(below[0] - lower[1]) < 1.5, (what, rows, lower)
    return len(below)


def test_mouth_landmarks_sit_on_the_drawn_corners_and_lip_edges():
    # Recolouring the lips changes exactly the lip pixels: their outermost columns are the
    # mouth's corners, and the gap between upper and lower lip on the mouth's centre column is
    # the opening, bounded by the inner lip edges. Each must follow the mouth factors and the
    # emotion's smile, frontal and turned.
    res = 128
    names = synthtalk.LANDMARKS
    cases = [(0, (1.0, 0.9, 0.0), "neutral", 0.0), (1, (0.8, 0.1, 0.8), "happy", 0.0),
             (2, (0.9, 0.6, 0.3), "sad", 12.0), (3, (0.7, 0.4, 0.2), "surprised", -15.0)]
    spans = []
    for ident, mouth, emotion, yaw in cases:
        idn = _identity(ident)
        lips = _lip_pixels(idn, lambda who: Renderer(who, res).render(
            (yaw, 0.0, 0.0), (0.0, 0.0), 3.2, (0.0, 0.0), 0.0, mouth, emotion))
        pts = landmark_points(idn, mouth, emotion)
        px = {n: project(pts[n], (yaw, 0.0, 0.0), (0.0, 0.0), 3.2, res) for n in names}
        gaps = _gaps_on_the_lips(lips, px["mouth_left"], px["mouth_right"], px["upper_lip"],
                                 px["lower_lip"], ident)
        assert gaps == 1, ident  # one opening between the two lips
        spans.append(px["mouth_right"][0] - px["mouth_left"][0])
    assert spans[0] > spans[1] * 1.3  # wide, unrounded against narrow and rounded

    # The stored per-frame landmarks of a generated clip (turned, shifted head; the clip's own
    # mouth and emotion) land on that frame's lip pixels the same way.
    from vasa_jax.data.synthtalk.clip import render_frames, sample_factors

    for ident in (4, 5):
        idn, emo, _, f = sample_factors(synthtalk.ClipSpec(identity=ident, seed=2, num_frames=25,
                                                           resolution=res))
        k = int(np.argmax(f["mouth"][:, 0]))  # the widest-open frame
        one = {name: v[k:k + 1] for name, v in f.items()}
        lips = _lip_pixels(_identity(ident), lambda who: render_frames(who, one, emo, res)[0])
        lm = (f["landmarks"][k] + 1) / 2 * res
        _gaps_on_the_lips(lips, *(lm[names.index(n)] for n in
                                  ("mouth_left", "mouth_right", "upper_lip", "lower_lip")),
                          ident)


def test_yaw_moves_nose_to_the_correct_side_and_hides_far_ear():
    idn = _identity(7, hair_style="bald")
    flat = dataclasses.replace(idn, nose_size=0.05, nose_length=0.05, ear_size=0.05)
    centre = RES / 2
    positions = {}
    for yaw in (-25.0, 0.0, 25.0):
        diff = np.abs(_luma(_render(idn, yaw=yaw)) - _luma(_render(flat, yaw=yaw)))
        ys, xs = np.nonzero(diff > 8)
        # Nose pixels: the difference near the face centre (ears sit far out to the sides).
        near = np.abs(xs - centre) < RES * 0.2
        positions[yaw] = xs[near].mean()
        if yaw != 0.0:
            far_side = xs > centre if yaw > 0 else xs < centre
            ears_far = np.sum(far_side & ~near)
            ears_near = np.sum(~far_side & ~near)
            assert ears_near > 2 * ears_far, (yaw, ears_near, ears_far)
    assert positions[25.0] > centre + 3 > positions[0.0] > centre - 3 > positions[-25.0]


def test_eyes_follow_gaze_independent_of_head_and_blinks_hide_them():
    idn = _identity(4)
    for yaw in (0.0, 15.0):
        right = _luma(_render(idn, yaw=yaw, gaze=(25.0, 0.0)))
        left = _luma(_render(idn, yaw=yaw, gaze=(-25.0, 0.0)))
        darker_right = np.nonzero(right < left - 30)
        darker_left = np.nonzero(left < right - 30)
        assert len(darker_right[1]) > 4 and len(darker_left[1]) > 4
        # The pupils sit further right when looking right, for any head yaw.
        assert darker_right[1].mean() > darker_left[1].mean() + 2
    shut_a = _render(idn, gaze=(25.0, 0.0), blink=1.0)
    shut_b = _render(idn, gaze=(-25.0, 10.0), blink=1.0)
    assert np.abs(shut_a.astype(int) - shut_b.astype(int)).max() <= 2
    assert np.abs(shut_a.astype(int) - _render(idn, blink=0.0).astype(int)).max() > 50


def test_perspective_nearer_head_is_larger():
    idn = _identity(2)
    bg = _render(dataclasses.replace(idn, head_radii=(1e-3, 1e-3, 1e-3)), distance=100.0)

    def head_width(distance):
        img = _render(idn, distance=distance)
        # Rows through the eyes: count pixels that differ from the empty background.
        mask = np.abs(_luma(img) - _luma(bg)) > 10
        return mask[RES // 2 - 8:RES // 2 - 4].sum(1).mean()

    near, far = head_width(2.8), head_width(3.8)
    assert near / far == pytest.approx(3.8 / 2.8, rel=0.12)


def test_emotion_shifts_voice_and_face():
    kw = dict(identity=9, seed=4, num_frames=100, resolution=64)
    happy = synthtalk.generate_clip(emotion="happy", **kw)
    sad = synthtalk.generate_clip(emotion="sad", **kw)
    angry = synthtalk.generate_clip(emotion="angry", **kw)
    assert happy.factors["f0"].mean() > 1.15 * sad.factors["f0"].mean()
    assert np.sqrt((angry.audio ** 2).mean()) > 1.3 * np.sqrt((sad.audio ** 2).mean())
    idn = _identity(9)
    smiles = {e: _render(idn, emotion=e) for e in synthtalk.EMOTIONS}
    for e in synthtalk.EMOTIONS[1:]:
        assert np.abs(smiles[e].astype(int) - smiles["neutral"].astype(int)).max() > 40, e


def test_motion_is_one_to_many_but_follows_prosody():
    a = synthtalk.generate_clip(identity=3, seed=8, num_frames=200, resolution=64, motion_seed=1)
    b = synthtalk.generate_clip(identity=3, seed=8, num_frames=200, resolution=64, motion_seed=2)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert np.abs(a.factors["rotation"] - b.factors["rotation"]).mean() > 1.0
    # Prosody: loud stretches nod the head down, on average over many clips.
    corrs = []
    for s in range(12):
        c = synthtalk.sample_factors(synthtalk.ClipSpec(identity=s, seed=s, num_frames=250,
                                                        resolution=64))[3]
        pitch = c["rotation"][:, 1]
        corrs.append(np.corrcoef(c["loudness"], pitch - pitch.mean())[0, 1])
    assert np.mean(corrs) < -0.1, corrs


@pytest.mark.parametrize("kwargs, field", [
    (dict(resolution=100), "resolution"),
    (dict(resolution=32), "resolution"),
    (dict(resolution=1024), "resolution"),
    (dict(num_frames=-3), "num_frames"),
    (dict(num_frames=0), "num_frames"),
    (dict(emotion="bored"), "emotion"),
    (dict(supersample=7), "supersample"),
])
def test_bad_config_values_name_the_field(kwargs, field):
    base = dict(identity=1, seed=1)
    base.update(kwargs)
    with pytest.raises(ConfigError, match=field) as err:
        synthtalk.ClipSpec(**base)
    assert "\n" not in str(err.value)


def test_landmarks_sit_where_the_mouth_and_eyes_change_under_pose():
    # The stored landmarks (a stand-in for a landmark detector) must land on the pixels that
    # opening the mouth / shutting the eyes changes, for turned and shifted heads.
    from vasa_jax.data.synthtalk.clip import render_frames, sample_factors

    res = 128
    for ident in range(3):
        spec = synthtalk.ClipSpec(identity=ident, seed=5, num_frames=30, resolution=res)
        idn, emo, _, f = sample_factors(spec)
        k = int(np.argmax(np.abs(f["rotation"][:, 0])))  # the most turned frame
        assert abs(f["rotation"][k, 0]) > 5.0
        g = {name: np.repeat(v[k:k + 1], 3, 0) for name, v in f.items()}
        g["mouth"] = np.asarray([[0, 0.5, 0], [1, 0.5, 0], [0, 0.5, 0]], np.float32)
        g["blink"] = np.asarray([0, 0, 1], np.float32)
        frames = render_frames(idn, g, emo, res).astype(np.float64)
        lm = (f["landmarks"][k] + 1) / 2 * res  # pixels (column, row)
        assert f["landmarks"].shape == (30, len(synthtalk.LANDMARKS), 2)
        ys, xs = np.nonzero(np.abs(frames[1] - frames[0]).sum(-1) > 30)
        np.testing.assert_allclose([xs.mean(), ys.mean()], lm[3], atol=1.5)
        ys, xs = np.nonzero(np.abs(frames[2] - frames[0]).sum(-1) > 30)
        left = xs < xs.mean()  # the lids close from above: their centroid sits a little high
        np.testing.assert_allclose([xs[left].mean(), ys[left].mean()], lm[0], atol=2.0)
        np.testing.assert_allclose([xs[~left].mean(), ys[~left].mean()], lm[1], atol=2.0)
