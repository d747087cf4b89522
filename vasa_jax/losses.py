"""Training losses for the face latent stage: GAN (hinge + feature matching) and VASA-1's terms.

All functions are pure `jnp` and return float32 scalars. Images are `[B, H, W, 3]` in [-1, 1].
Discriminator outputs follow `models.discriminator.MultiScaleDiscriminator`: `logits[s]` is the
patch-logit map of scale s, `feats[s][k]` the k-th hidden feature map of scale s.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

Encoding = Mapping[str, jax.Array]  # keys: v_app, z_id, z_pose, z_dyn


def l1_loss(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean absolute error over all elements; x, y of one shape."""
    if x.shape != y.shape:
        raise ValueError(f"l1_loss shapes differ: {x.shape} vs {y.shape}")
    return jnp.mean(jnp.abs(x - y))


def hinge_d_loss(real_logits: Sequence[jax.Array], fake_logits: Sequence[jax.Array]) -> jax.Array:
    """Discriminator hinge loss, mean over scales of mean(relu(1 - real)) + mean(relu(1 + fake))."""
    if len(real_logits) != len(fake_logits) or not real_logits:
        raise ValueError("hinge_d_loss needs one real and one fake logit map per scale")
    per_scale = [jnp.mean(jax.nn.relu(1.0 - r)) + jnp.mean(jax.nn.relu(1.0 + f))
                 for r, f in zip(real_logits, fake_logits)]
    return jnp.mean(jnp.stack(per_scale))


def hinge_g_loss(fake_logits: Sequence[jax.Array]) -> jax.Array:
    """Generator hinge loss, mean over scales of -mean(fake)."""
    return jnp.mean(jnp.stack([-jnp.mean(f) for f in fake_logits]))


def feature_matching_loss(real_feats: Sequence[Sequence[jax.Array]],
                          fake_feats: Sequence[Sequence[jax.Array]]) -> jax.Array:
    """L1 between discriminator features of real and fake, averaged over layers then scales.

    real_feats[s][k], fake_feats[s][k]: [B, h, w, C] of one shape; real ones are stop-gradient.
    (pix2pixHD sums with weight 4 / (n_layers + 1) / num_D instead; this is that up to a constant.)
    """
    if len(real_feats) != len(fake_feats) or not real_feats:
        raise ValueError("feature_matching_loss needs one feature list per scale for each side")
    per_scale = []
    for real, fake in zip(real_feats, fake_feats):
        if len(real) != len(fake):
            raise ValueError("feature lists of one scale differ in length")
        per_scale.append(jnp.mean(jnp.stack(
            [l1_loss(jax.lax.stop_gradient(r), f) for r, f in zip(real, fake)])))
    return jnp.mean(jnp.stack(per_scale))


DecodeFn = Callable[..., jax.Array]
"""decode_fn(v_app, z_id, z_pose_src, z_dyn_src, z_pose_drv, z_dyn_drv) -> image [B, H, W, 3].

The `_src` motion is that of the frame `v_app`/`z_id` came from; `_drv` is the target motion.
"""


def consistency_loss(decode_fn: DecodeFn, enc_i: Encoding, enc_j: Encoding) -> jax.Array:
    """VASA-1's l_consist for two frames i, j of one video.

    Decodes D(V_app^j, z_id^j, z_pose^i, z_dyn^j) and D(V_app^i, z_id^i, z_pose^i, z_dyn^j) —
    the same target motion from each frame's own appearance — and returns their mean L1.
    enc_*: dicts with `v_app`, `z_id`, `z_pose`, `z_dyn` (batched, any shapes decode_fn takes).
    """
    def skip(enc):  # a model with a source skip also takes its f_src
        return {"f_src": enc["f_src"]} if "f_src" in enc else {}

    from_j = decode_fn(enc_j["v_app"], enc_j["z_id"], enc_j["z_pose"], enc_j["z_dyn"],
                       enc_i["z_pose"], enc_j["z_dyn"], **skip(enc_j))
    from_i = decode_fn(enc_i["v_app"], enc_i["z_id"], enc_i["z_pose"], enc_i["z_dyn"],
                       enc_i["z_pose"], enc_j["z_dyn"], **skip(enc_i))
    return l1_loss(from_j, from_i)


def _normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    x = x.reshape(x.shape[0], -1).astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def cross_identity_loss(id_fn: Callable[[jax.Array], jax.Array], source_image: jax.Array,
                        cross_image: jax.Array) -> jax.Array:
    """VASA-1's l_cross-id: mean over the batch of 1 - cos(id_fn(source), id_fn(cross)).

    source_image: [B, H, W, 3]; cross_image: the source reenacted by another person's motion,
    same shape. id_fn: an `IdentityFeatureFn` ([B, H, W, 3] -> [B, dim]); it must be frozen by
    the caller (e.g. `identity_net.make_identity_fn`, which stop-gradients its parameters).
    The source embedding is stop-gradient: only the generated image is pushed.
    """
    a = _normalize(jax.lax.stop_gradient(id_fn(source_image)))
    b = _normalize(id_fn(cross_image))
    return jnp.mean(1.0 - jnp.sum(a * b, axis=-1))


def head_pose_loss(z_pose: jax.Array, rotation_deg: jax.Array,
                   scale_deg: float | tuple[float, float, float] = 30.0) -> jax.Array:
    """Head-pose supervision of the motion encoder (face-vid2vid's pose loss, which uses a
    pretrained estimator): mean over angles of |yaw, pitch, roll of z_pose − the estimator's| /
    scale_deg.

    z_pose: [B, 7] (angles in degrees first, in `models.face.rotation_from_angles` order and
    convention); rotation_deg: [B, 3] (yaw, pitch, roll; on SynthTalk the ground truth, which
    uses the same convention; on real data a pluggable head-pose estimator's output).
    scale_deg: one scale for all three angles, or one per angle (yaw, pitch, roll): scales
    proportional to each angle's spread in the data weigh a narrow angle (roll) as much, relative
    to its range, as a wide one (yaw).
    """
    if z_pose.shape[0] != rotation_deg.shape[0] or rotation_deg.shape[-1] != 3:
        raise ValueError(f"head_pose_loss: z_pose {z_pose.shape} vs rotation {rotation_deg.shape}")
    scale = jnp.broadcast_to(jnp.asarray(scale_deg, jnp.float32), (3,))
    return jnp.mean(jnp.abs(z_pose[:, :3] - rotation_deg) / scale)


def keypoint_loss(keypoints: jax.Array, landmarks: jax.Array, unit: float = 0.02) -> jax.Array:
    """Landmark guidance of the motion encoder's keypoints: mean |keypoints[:, :L] − landmarks|
    / unit over the L landmarks (x, y in the same normalised image coordinates, x right, y down,
    [-1, 1]); unit 0.02 is ~1.3 px of a 128² frame. The remaining keypoints stay free.

    keypoints: [B, K, 2] with K >= L; landmarks: [B, L, 2] (SynthTalk's truth; on real video
    a landmark detector's)."""
    if (keypoints.ndim != 3 or landmarks.ndim != 3 or keypoints.shape[0] != landmarks.shape[0]
            or keypoints.shape[1] < landmarks.shape[1] or keypoints.shape[2] != 2
            or landmarks.shape[2] != 2):
        raise ValueError(f"keypoint_loss: keypoints {keypoints.shape} vs landmarks "
                         f"{landmarks.shape}: need [B, K, 2] and [B, L, 2] with K >= L")
    return jnp.mean(jnp.abs(keypoints[:, :landmarks.shape[1]] - landmarks)) / unit


# The image scale (focal / distance) that z_pose's log-scale 0 stands for: SynthTalk's
# mid-range head (distance 3.3 at focal 2); any constant works, it only sets the canonical size.
HEAD_SCALE_REF = 0.6


def head_position_loss(z_pose: jax.Array, translation: jax.Array, scale: jax.Array,
                       unit: float = 0.1) -> jax.Array:
    """Supervision of z_pose's image-plane translation and log-scale (the rest of the head
    pose; `head_pose_loss` covers the angles): mean |(t_x, t_y, log s) − truth| / unit.

    z_pose: [B, 7] = (angles, t_x, t_y, t_z, log s), where the source → canonical warp samples
    the source at s·R·p + t (models.face.pose_to_similarity), so (t_x, t_y) is where the head
    centre lies in the image and s how large the head is. translation: [B, 2], the projected head
    centre in normalised image coordinates (x right, y down, [-1, 1]); scale: [B], focal /
    distance. On SynthTalk both are its truth; on real video a face tracker's head centre and
    size (a 3DMM fit, or a face box) stand in. The depth t_z stays free.
    """
    if (z_pose.shape[0] != translation.shape[0] or translation.shape[-1] != 2
            or scale.shape != (z_pose.shape[0],)):
        raise ValueError(f"head_position_loss: z_pose {z_pose.shape} vs translation "
                         f"{translation.shape} and scale {scale.shape}")
    target = jnp.concatenate([translation, jnp.log(scale / HEAD_SCALE_REF)[:, None]], axis=-1)
    pred = jnp.concatenate([z_pose[:, 3:5], z_pose[:, 6:7]], axis=-1)
    return jnp.mean(jnp.abs(pred - target)) / unit


def expression_loss(z_dyn: jax.Array, target: jax.Array, squared: bool = False,
                    unit: float = 0.1) -> jax.Array:
    """Anchors the first K components of z_dyn to measured expression values (mouth opening,
    eye closure, …; each 0…1): mean |z_dyn[:, :K] − target|, or with `squared` mean (z_dyn[:,
    :K] − target)² / unit. L1 regresses to the median, which for a rare event such as a blink
    (the eyes are open in most frames) is "never": the squared form regresses to the mean. On
    SynthTalk the values are its ground truth; on real video they would come from a landmark
    detector's lip and eyelid distances (LivePortrait's retargeting ratios). The other
    components stay free. target: [B, K]."""
    if target.ndim != 2 or z_dyn.shape[0] != target.shape[0] or target.shape[1] > z_dyn.shape[1]:
        raise ValueError(f"expression_loss: z_dyn {z_dyn.shape} vs target {target.shape}")
    diff = z_dyn[:, :target.shape[1]] - target
    return jnp.mean(jnp.square(diff)) / unit if squared else jnp.mean(jnp.abs(diff))


def landmark_weight_map(landmarks: jax.Array, height: int, width: int, sigma: jax.Array
                        ) -> jax.Array:
    """[B, H, W] weights: the max over K Gaussian bumps centred on `landmarks` [B, K, 2]
    (normalised image coordinates, x right / y down, [-1, 1] across the frame), with standard
    deviation `sigma` [B] in the same units."""
    xs = (jnp.arange(width, dtype=jnp.float32) + 0.5) / width * 2.0 - 1.0
    ys = (jnp.arange(height, dtype=jnp.float32) + 0.5) / height * 2.0 - 1.0
    dx = xs[None, None, None, :] - landmarks[:, :, 0, None, None]
    dy = ys[None, None, :, None] - landmarks[:, :, 1, None, None]
    s2 = 2.0 * jnp.square(sigma)[:, None, None, None]
    return jnp.max(jnp.exp(-(dx * dx + dy * dy) / s2), axis=1)


def region_l1_loss(pred: jax.Array, target: jax.Array, landmarks: jax.Array, sigma: jax.Array
                   ) -> jax.Array:
    """L1 averaged under a Gaussian window around facial landmarks (mouth, eyes): the local
    loss that keeps small, fast-moving parts from drowning in a whole-image average (at 64² an
    opening mouth changes about 1% of the pixels).

    pred, target: [B, H, W, C]; landmarks [B, K, 2] normalised (x, y); sigma [B] (normalised
    units; e.g. a fraction of the inter-ocular distance, so the window scales with the face).
    Each image's weighted mean, then the batch mean.
    """
    if landmarks.ndim != 3 or landmarks.shape[0] != pred.shape[0] or landmarks.shape[-1] != 2:
        raise ValueError(f"region_l1_loss: landmarks {landmarks.shape} vs images {pred.shape}")
    w = jax.lax.stop_gradient(
        landmark_weight_map(landmarks.astype(jnp.float32), pred.shape[1], pred.shape[2],
                            jnp.asarray(sigma, jnp.float32)))
    err = jnp.mean(jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)), axis=-1)
    return jnp.mean(jnp.sum(w * err, axis=(1, 2)) / (jnp.sum(w, axis=(1, 2)) + 1e-8))


def facial_region_losses(pred: jax.Array, target: jax.Array, landmarks: jax.Array,
                         sigma_fraction: float) -> dict[str, jax.Array]:
    """{"mouth": ..., "eyes": ...} region L1 terms from the target frame's landmarks
    [B, L >= 4, 2] in `synthtalk.LANDMARKS` order (left eye, right eye, nose tip, mouth, …); windows of
    sigma = sigma_fraction × the inter-ocular distance."""
    sigma = sigma_fraction * jnp.linalg.norm(landmarks[:, 0] - landmarks[:, 1], axis=-1)
    return {"mouth": region_l1_loss(pred, target, landmarks[:, 3:4], sigma),
            "eyes": region_l1_loss(pred, target, landmarks[:, 0:2], sigma)}


def motion_contrastive_loss(z_a: jax.Array, z_b: jax.Array, temperature: float = 0.1) -> jax.Array:
    """Symmetric InfoNCE between two views' motion codes; row n of z_a and z_b are positives.

    z_a, z_b: [B, ...] (flattened to [B, D] and L2-normalised); other rows are negatives.
    """
    if z_a.shape != z_b.shape:
        raise ValueError(f"motion codes differ in shape: {z_a.shape} vs {z_b.shape}")
    logits = _normalize(z_a) @ _normalize(z_b).T / temperature
    diag = jnp.arange(logits.shape[0])
    loss_ab = -jnp.mean(jax.nn.log_softmax(logits, axis=1)[diag, diag])
    loss_ba = -jnp.mean(jax.nn.log_softmax(logits, axis=0)[diag, diag])
    return 0.5 * (loss_ab + loss_ba)


def total_generator_loss(terms: Mapping[str, jax.Array], weights: Mapping[str, float]
                         ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum of loss terms -> (total, {name: weight * term}).

    Terms with a zero or missing weight are skipped (not evaluated into the total or the dict);
    a non-zero weight for a term that is absent raises KeyError.
    """
    weighted = {}
    for name, w in weights.items():
        if w == 0:
            continue
        if name not in terms:
            raise KeyError(f"loss weight given for {name!r} but no such term; have {sorted(terms)}")
        weighted[name] = w * terms[name]
    total = sum(weighted.values(), jnp.zeros((), jnp.float32))
    return total, weighted
