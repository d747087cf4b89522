"""`vasa-jax demo`'s mouth sheet: the most shut and most open frames' mouths, enlarged."""
import numpy as np

from vasa_jax.demo import mouth_strip, mouth_window_luminance


def test_mouth_strip_picks_the_extremes_around_the_mouth():
    rng = np.random.default_rng(0)
    n, size = 10, 64
    frames = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    for i in range(n):   # frame i's mouth window holds the value 20·i
        frames[i, 36:52, 20:44] = 20 * i
    opening = np.array([5, 1, 9, 3, 0, 8, 2, 7, 6, 4], float)
    # Mouth landmark at pixel (32, 44): window 24×16 from (20, 36).
    strip = mouth_strip(frames, opening, ((32 + 0.5) / 32 - 1, 44 / 32 - 1), k=2, zoom=3)
    h, w = 16 * 3, (24 * 4 + 1 + 3 + 1) * 3   # 4 tiles; 1-px gaps, 3 px between shut and open
    assert strip.shape == (h, w, 3)
    tiles = [strip[:, 0:72], strip[:, 75:147], strip[:, 156:228], strip[:, 231:303]]
    # The two smallest openings (frames 4, 1) then the two largest (frames 5, 2).
    assert [int(t[0, 0, 0]) for t in tiles] == [80, 20, 100, 40]
    assert all((t == t[0, 0]).all() for t in tiles)   # the crop sits inside the mouth window


def test_mouth_window_luminance_reads_the_window_only():
    frames = np.full((3, 64, 64, 3), 200, np.uint8)
    frames[1, 36:45, 26:39] = 50      # frame 1: the 13×9 window on (32, 40) goes dark
    frames[2, :, :20] = 0             # frame 2: a change away from the mouth
    lum = mouth_window_luminance(frames, (32 / 32 - 1, 40 / 32 - 1))
    np.testing.assert_allclose(lum, [200.0, 50.0, 200.0])
