"""On-device augmentation of stage-1 training pairs.

`camera_roll` turns the camera about its optical axis by a random angle per pair: both frames of
a (source, driver) pair rotate by the same angle about the image centre, and every reading that
lives in the image plane follows exactly. With SynthTalk's rotation R = Rz(roll) Ry(yaw)
Rx(pitch) (roll outermost, in the camera frame; `models.face.rotation_from_angles`), rotating the
camera by δ about its axis adds δ to the head's roll and rotates every projected point (the head
centre, the landmarks) by δ about the principal point, the image centre. Yaw, pitch, distance,
scale and the expression values do not change. On real video the same holds for a pose
estimator's angles in this convention, a tracker's head centre and a detector's landmarks.

Why: a clip's roll is nearly constant (its rest pose), so with a few hundred identities the
motion encoder can learn "this face, this tilt" instead of measuring the tilt; seeing each face
at many tilts takes that shortcut away. Both frames turn together, so a background that stays
put between them (SynthTalk's, a fixed camera's) still does; the turned frame's corners repeat
the border pixels.

Runs inside the jitted train step: per-example gathers and elementwise maths, so it shards with
the batch; the angles come from a key folded with the step, so a resumed run and any mesh draw
the same ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vasa_jax.models.face import sample_2d
from vasa_jax.models.warp import identity_grid

ROLES = ("source", "driver")
# Per-role batch keys (by suffix) that a camera roll leaves alone: readings off the image plane
# and the pipeline's indices.
INVARIANT = ("mouth", "blink", "scale", "frame", "record_index")


def rotate_points(xy: jax.Array, angle_deg: jax.Array) -> jax.Array:
    """Normalised image points (x right, y down) [B, ..., 2] turned counter-clockwise on screen
    by angle_deg [B] about the image centre."""
    a = jnp.deg2rad(angle_deg).reshape(angle_deg.shape + (1,) * (xy.ndim - 2))
    c, s = jnp.cos(a), jnp.sin(a)
    x, y = xy[..., 0], xy[..., 1]
    return jnp.stack([x * c + y * s, -x * s + y * c], axis=-1)


def rotate_images(images: jax.Array, angle_deg: jax.Array) -> jax.Array:
    """images [B, H, W, C] (any dtype) turned counter-clockwise on screen by angle_deg [B] about
    the centre: bilinear, border pixels repeated outside; float32 on the input's scale."""
    b, h, w, _ = images.shape
    out_xy = jnp.broadcast_to(identity_grid(1, h, w)[0, ..., :2], (b, h, w, 2))
    src_xy = rotate_points(out_xy, -angle_deg)  # where each output pixel comes from
    return sample_2d(images.astype(jnp.float32), src_xy, padding_mode="border")


def camera_roll(batch: dict, key: jax.Array, max_deg: float) -> dict:
    """The batch with each (source, driver) pair seen by a camera rolled by δ ~ U(−max_deg,
    max_deg) (one δ per pair): frames turned, `{role}_rotation` roll + δ, `{role}_translation`
    and `{role}_landmarks` turned. Other keys pass through unchanged ("other", indices, and the
    readings in INVARIANT); a per-role key this function cannot transform is refused, so that a
    new reading is not silently left in the unturned frame."""
    first = batch["source"]
    delta = jax.random.uniform(key, (first.shape[0],), jnp.float32, -max_deg, max_deg)
    out = dict(batch)
    for role in ROLES:
        out[role] = rotate_images(batch[role], delta)
        for name, value in batch.items():
            if not name.startswith(role + "_"):
                continue
            field = name[len(role) + 1:]
            if field == "rotation":
                out[name] = value.astype(jnp.float32).at[:, 2].add(delta)
            elif field in ("translation", "landmarks"):
                out[name] = rotate_points(value.astype(jnp.float32), delta)
            elif field not in INVARIANT:
                raise ValueError(f"camera_roll cannot turn batch key {name!r}: add how a camera "
                                 "roll changes it (vasa_jax/train/augment.py) or set "
                                 "--config.augment_roll_deg=0")
    out["roll_delta"] = delta
    return out
