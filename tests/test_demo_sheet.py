"""`vasa-jax demo`'s mouth sheet: the most shut and most open frames' mouths, enlarged."""
import numpy as np

from vasa_jax.demo import mouth_strip


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
