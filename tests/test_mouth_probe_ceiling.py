"""benchmarks/mouth_probe_ceiling.py: the measurement-noise sweep and the pixel scale it reports."""

import importlib.util
import pathlib

import numpy as np

from vasa_jax.data import synthtalk

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "mouth_probe_ceiling.py"
_spec = importlib.util.spec_from_file_location("mouth_probe_ceiling", _PATH)
ceiling_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ceiling_mod)


def _problem(n, seed):
    """Features (2 measured values + a constant one-hot) and three targets that are smooth
    functions of the two measurements, so a perfect measurement reads them almost exactly."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(size=(n, 2)), np.ones((n, 1))], 1)
    y = np.stack([x[:, 0], np.tanh(x[:, 1]), x[:, 0] * 0.5 + x[:, 1] ** 2], 1)
    return x, y


def test_noise_sweep_degrades_the_reading_as_the_measurement_loses_precision():
    x_tr, y_tr = _problem(3000, 0)
    x_te, y_te = _problem(500, 1)
    rows = ceiling_mod.noise_sweep(x_tr, y_tr, x_te, y_te, [0.0, 0.3, 1.0], pixels=7.0)
    exact = ceiling_mod.ceiling(x_tr, y_tr, x_te, y_te)
    assert rows[0]["mouth_r2"] == exact["r2"] > 0.95
    assert rows[0]["half_width_r2"] == 1.0 and rows[0]["half_width_error_px"] == 0.0
    # The measurement, scored against the truth as an encoder's reading is, has R² 1 − noise²,
    # and the mouth's reading falls with it.
    assert abs(rows[1]["half_width_r2"] - 0.91) < 0.03
    assert abs(rows[2]["half_opening_r2"] - 0.0) < 0.15
    assert rows[0]["mouth_r2"] > rows[1]["mouth_r2"] > rows[2]["mouth_r2"]
    spread = x_tr[:, 0].std()
    assert np.isclose(rows[2]["half_width_error_px"], 1.0 * spread * 7.0)


def test_half_width_pixels_is_half_the_corner_distance_at_the_resolution():
    left, right = synthtalk.LANDMARKS.index("mouth_left"), synthtalk.LANDMARKS.index("mouth_right")
    lm = np.zeros((2, len(synthtalk.LANDMARKS), 2), np.float32)
    lm[:, left] = [[-0.1, 0.2], [-0.2, 0.2]]
    lm[:, right] = [[0.1, 0.2], [0.2, 0.2]]
    px = ceiling_mod.half_width_pixels([{"landmarks": lm}], resolution=128)
    # 0.2 of the -1..1 frame is 0.1 × 128 = 12.8 px corner to corner, 6.4 px half-width.
    np.testing.assert_allclose(px, [6.4, 12.8], rtol=1e-6)
