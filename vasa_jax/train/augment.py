"""On-device augmentation of stage-1 training pairs: `camera_roll` and `mirror`.

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


# Mirror images of synthtalk.LANDMARKS' names (the rest map to themselves).
_MIRROR_NAMES = {"left_eye": "right_eye", "mouth_left": "mouth_right"}
MIRROR_ROLES = ("source", "driver", "other")


def landmark_mirror_order(num: int) -> jnp.ndarray:
    """Indices that reorder the first `num` landmarks of synthtalk.LANDMARKS into their mirror
    images' order (left eye <-> right eye, mouth corners swapped). Refuses a count that would
    cut a pair in two (e.g. 5: the left corner without the right)."""
    from vasa_jax.data.synthtalk.spec import LANDMARKS

    pairs = {**_MIRROR_NAMES, **{v: k for k, v in _MIRROR_NAMES.items()}}
    names = LANDMARKS[:num]
    if not 1 <= num <= len(LANDMARKS) or any(pairs.get(n, n) not in names for n in names):
        raise ValueError(f"mirror cannot reorder {num} landmarks: it needs a prefix of "
                         f"{LANDMARKS} that keeps every left/right pair whole (such as 4 or 8), or "
                         "--config.augment_mirror_prob=0")
    return jnp.asarray([names.index(pairs.get(n, n)) for n in names])


def mirror(batch: dict, key: jax.Array, prob: float) -> dict:
    """The batch with each example (its source, driver and other frame together) mirrored left to
    right with probability `prob`: the frames flipped, and every reading as the mirrored scene's.

    With SynthTalk's R = Rz(roll) Ry(yaw) Rx(pitch), mirroring the camera's x axis (M = diag(-1,
    1, 1)) gives M R M = Rz(-roll) Ry(-yaw) Rx(pitch): yaw and roll change sign, pitch does not;
    the principal point is the image centre, so projected points (the head centre, the landmarks)
    have x -> -x, and the left and right landmarks swap names. Faces are symmetric, so the mirror
    image is another plausible person, with the same mouth, blink and size; what a frame shows
    of pose must then be read from the face, not from the side a person's hair or light falls.
    Keys this function cannot mirror are refused, as in `camera_roll`."""
    first = batch["source"]
    flip = jax.random.bernoulli(key, prob, (first.shape[0],))
    out = dict(batch)

    def pick(new, old):
        f = flip.reshape(flip.shape + (1,) * (old.ndim - 1))
        return jnp.where(f, new, old)

    for role in MIRROR_ROLES:
        if role not in batch:
            continue
        out[role] = pick(batch[role][:, :, ::-1], batch[role])
        for name, value in batch.items():
            if not name.startswith(role + "_"):
                continue
            field, v = name[len(role) + 1:], value.astype(jnp.float32)
            if field == "rotation":
                out[name] = pick(v * jnp.asarray([-1.0, 1.0, -1.0]), v)
            elif field == "translation":
                out[name] = pick(v * jnp.asarray([-1.0, 1.0]), v)
            elif field == "landmarks":
                order = landmark_mirror_order(v.shape[1])
                out[name] = pick(v[:, order] * jnp.asarray([-1.0, 1.0]), v)
            elif field not in INVARIANT:
                raise ValueError(f"mirror cannot flip batch key {name!r}: add how a left-right "
                                 "mirror changes it (vasa_jax/train/augment.py) or set "
                                 "--config.augment_mirror_prob=0")
    out["mirrored"] = flip
    return out
