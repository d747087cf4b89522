"""How much of SynthTalk's mouth factors can one frame show? An upper bound for issue 3's
mouth probe (z_dyn → mouth opening, width, rounding; R² on held-out identities).

    python benchmarks/mouth_probe_ceiling.py --data-dir /tmp/vrun/data --out ceiling.json

The renderer draws the mouth from three numbers: its half-width
    a = 0.19 · m_id · (0.72 + 0.45·width) · (1 − 0.35·round) · (1 + 0.08·max(smile, 0)),
its half-opening h = 0.12 · min(1, open + jaw) · (1 + 0.2·round), and the emotion (smile, jaw),
where m_id is the identity's own mouth width (uniform 0.85–1.2). A frame shows (a, h, emotion) at
best; it cannot tell a wide mouth from a wide-mouthed person. This script computes (a, h) exactly
from the records' truth, fits a k-nearest-neighbour regressor (features standardised, k chosen on
the held-out set, which flatters the bound) from (log a, h, emotion one-hot) to the three factors
on the train identities, and scores R² on the held-out identities, as the stage-1 evaluation
does. An encoder that measured the mouth perfectly, at any resolution, could not do better than
this from a single frame; at 64² the half-width is ~3–4 pixels.

Two further readings place an encoder's figure against the bound (session 30):
- `with_own_width`: the same fit with the identity's own mouth width m_id added as a feature,
  what a frame cannot show; the gap to the bound is the person's share of the loss.
- `noise_sweep` (`--noise`): Gaussian error added to the measured (log a, h), each with a standard
  deviation of `noise` times that feature's spread over the train frames, on train and test alike,
  as an encoder that measures the mouth imperfectly would see it. Each row gives the measurement's
  own R² on the test frames and that error in pixels of the data's resolution (the drawn
  half-width's relative error times its median size in pixels), against the mouth R² it leaves.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def mouth_geometry(records, own_width: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, 2 + emotions (+ 1)], truth [N, 3]) over every frame of `records`; with
    `own_width` the identity's log mouth width is the last feature."""
    from vasa_jax.data import synthtalk
    from vasa_jax.data.synthtalk.render import _identity
    from vasa_jax.data.synthtalk.render import mouth_geometry as drawn

    xs, ys = [], []
    for i in range(len(records)):
        rec = records[i]
        emotion = int(rec["emotion"])
        m = np.asarray(rec["mouth"], np.float64)
        log_a_h = drawn(int(rec["identity"]), m, emotion).astype(np.float64)
        onehot = np.zeros((len(m), len(synthtalk.EMOTIONS)))
        onehot[:, emotion] = 1.0
        parts = [log_a_h, onehot]
        if own_width:
            parts.append(np.full((len(m), 1), np.log(_identity(int(rec["identity"])).mouth_width)))
        xs.append(np.concatenate(parts, 1))
        ys.append(m)
    return np.concatenate(xs), np.concatenate(ys)


def half_width_pixels(records, resolution: int) -> np.ndarray:
    """The drawn mouth's half-width in pixels at `resolution`, per frame: half the distance
    between the mouth-corner landmarks (normalised coordinates, -1..1)."""
    from vasa_jax.data import synthtalk

    left = synthtalk.LANDMARKS.index("mouth_left")
    right = synthtalk.LANDMARKS.index("mouth_right")
    out = []
    for i in range(len(records)):
        lm = np.asarray(records[i]["landmarks"], np.float64)
        out.append(np.linalg.norm(lm[:, left] - lm[:, right], axis=-1) / 2 * resolution / 2)
    return np.concatenate(out)


def noise_sweep(x_train, y_train, x_test, y_test, levels, pixels: float, seed: int = 0) -> list:
    """Mouth R² left by measuring (log a, h) with error `level` × each one's train spread."""
    from vasa_jax.eval.face_latent import r2_score

    spread = x_train[:, :2].std(0)
    rows = []
    for level in levels:
        rng = np.random.default_rng(seed)
        a, b = x_train.copy(), x_test.copy()
        a[:, :2] += level * spread * rng.standard_normal((len(a), 2))
        b[:, :2] += level * spread * rng.standard_normal((len(b), 2))
        measured = r2_score(x_test[:, :2], b[:, :2])
        fit = ceiling(a, y_train, b, y_test)
        rows.append(dict(noise=float(level), half_width_r2=float(measured[0]),
                         half_opening_r2=float(measured[1]),
                         # log a's error is relative: level · spread of log a, times the size
                         half_width_error_px=float(level * spread[0] * pixels),
                         mouth_r2=fit["r2"], r2_per_dim=fit["r2_per_dim"], k=fit["k"]))
    return rows


def ceiling(x_train, y_train, x_test, y_test, ks=(5, 10, 20, 50, 100, 200, 400)) -> dict:
    from vasa_jax.eval.face_latent import r2_score

    mean, std = x_train.mean(0), x_train.std(0) + 1e-9
    a, b = (x_train - mean) / std, (x_test - mean) / std
    k_max = max(ks)
    order = np.empty((len(b), k_max), np.int64)
    for i in range(0, len(b), 256):  # 256 test frames at a time: bounded memory at any size
        d = ((b[i:i + 256, None, :] - a[None]) ** 2).sum(-1)
        near = np.argpartition(d, k_max - 1, axis=1)[:, :k_max]
        order[i:i + 256] = np.take_along_axis(
            near, np.argsort(np.take_along_axis(d, near, 1), axis=1), 1)
    per_k = {}
    for k in ks:
        per_k[k] = r2_score(y_test, y_train[order[:, :k]].mean(1))
    best = max(per_k, key=lambda k: per_k[k].mean())
    return dict(k=int(best), r2=float(per_k[best].mean()),
                r2_per_dim=dict(zip(("opening", "width", "rounding"),
                                    (float(v) for v in per_k[best]))),
                by_k={str(k): [float(v) for v in s] for k, s in per_k.items()})


def main():
    from vasa_jax.data import builders

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True, help="where SynthTalk is (or is built)")
    ap.add_argument("--config", default="configs/face_latent.py:tiny_guided",
                    help="stage-1 config whose data.synthtalk sizes to read")
    ap.add_argument("--held-out", type=int, default=0,
                    help="score on this many held-out identities, as `vasa_jax.eval.face_latent "
                         "--held_out N` does (0: the config's own test split)")
    ap.add_argument("--noise", default="",
                    help="comma-separated measurement errors, in units of each feature's spread, "
                         "for the noise sweep (e.g. 0.1,0.2,0.3,0.45); empty: no sweep")
    ap.add_argument("--out", default="mouth_probe_ceiling.json")
    args = ap.parse_args()
    if args.held_out < 0:
        ap.error(f"--held-out {args.held_out} is invalid: use 0 (the config's test split) or N > 0")
    try:
        levels = [float(v) for v in args.noise.split(",") if v.strip()]
    except ValueError:
        ap.error(f"--noise {args.noise!r} is invalid: give comma-separated numbers, e.g. 0.1,0.3")
    if any(v < 0 for v in levels):
        ap.error(f"--noise {args.noise!r} is invalid: errors must be >= 0")
    from vasa_jax.config_util import load_config

    st = load_config(args.config).data.synthtalk.to_dict()
    sources = builders.prepare_synthtalk(args.data_dir, **st)
    test = sources["test"] if not args.held_out else builders.prepare_synthtalk(
        args.data_dir, **dict(st, num_train_identities=1, num_test_identities=args.held_out))["test"]
    # One pass over the records: the own-width column is the last; the bound itself drops it.
    xo_tr, y_tr = mouth_geometry(sources["train"], own_width=True)
    xo_te, y_te = mouth_geometry(test, own_width=True)
    x_tr, x_te = xo_tr[:, :-1], xo_te[:, :-1]
    result = dict(data=dict(st, held_out_identities=args.held_out),
                  train_frames=len(x_tr), test_frames=len(x_te),
                  **ceiling(x_tr, y_tr, x_te, y_te))
    own = ceiling(xo_tr, y_tr, xo_te, y_te)
    result["with_own_width"] = dict(k=own["k"], r2=own["r2"], r2_per_dim=own["r2_per_dim"])
    if levels:
        pixels = float(np.median(half_width_pixels(test, int(st["resolution"]))))
        result["median_half_width_px"] = pixels
        result["noise_sweep"] = noise_sweep(x_tr, y_tr, x_te, y_te, levels, pixels)
        for row in result["noise_sweep"]:
            print(json.dumps(row))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("k", "r2", "r2_per_dim", "with_own_width")}))


if __name__ == "__main__":
    main()
