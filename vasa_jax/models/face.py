"""Stage-1 face latent model (MegaPortraits / VASA-1 style), Flax NNX, channels-last.

Layouts: images [B, H, W, 3] in [-1, 1]; volumes [B, D, H', W', C]; warp grids
[B, D, H', W', 3] with (x, y, z) in [-1, 1] (see `warp.py`).

Latents of one image (`FaceLatentModel.encode`):
  v_app  [B, D, H', W', C]  canonical-ish 3D appearance volume (source only; cacheable)
  z_id   [B, id_dim]        identity code (source only; cacheable)
  z_pose [B, 7]             (yaw, pitch, roll) in DEGREES, each tanh-bounded by
                            `max_angle_deg`; translation (tx, ty, tz) in normalised volume
                            units; log-scale. Angles follow `synthtalk.motion.rotation_matrix`.
  z_dyn  [B, dyn_dim]       holistic facial dynamics

Decoding (MegaPortraits): v_app is warped to the canonical frame by w_s→c (rigid part: the
inverse of the source pose applied to the content, plus a non-rigid flow from (z_dyn_src,
z_id)), then to the driver by w_c→d (driver pose plus a flow from (z_dyn_drv, z_id)), then
3D blocks → orthographic projection (depth folded into channels) → 2D decoder → tanh image.

Optional source skip (`model.skip_channels` > 0; 0 or absent: off, MegaPortraits as is): a
two-conv encoder keeps full-resolution source features `f_src` [B, S, S, c]; the decoder
composes the two warps into each driver voxel's source position, projects those to a 2D
flow with per-pixel depth weights it predicts (a softmax over D, uniform at initialisation),
samples f_src there and joins it before its last full-resolution block. It carries the
source's fine detail (eyes, lips, glasses) to the image by the same geometry as the volume,
which the 3D path at volume resolution learns only after many steps (docs/face_latent.md).
`model.skip_blend` also keeps the source image in f_src and blends its warp with what the
decoder draws through a predicted mask: out = m·warp(source) + (1 − m)·drawn.

Use functionally:
    model = build_model(config.model, nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    out = nnx.merge(graphdef, state)(source, driver)   # inside jax.jit
"""
from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.errors import check
from vasa_jax.models.layers import (AdaResBlock2D, AdaResBlock3D, ResBlock2D, ResBlock3D, conv,
                                    downsample, num_groups, upsample)
from vasa_jax.models.warp import bilinear_sample, rigid_grid, trilinear_sample

POSE_DIM = 7  # yaw, pitch, roll (deg), tx, ty, tz, log_scale

# Camera frame (x right, y up, z towards the viewer) → volume grid frame (x along W, y along H
# i.e. down the image, z along D i.e. away from the viewer): a 180° turn about x, so F R F is
# again a rotation.
_CAM_TO_VOLUME = np.diag([1.0, -1.0, -1.0]).astype(np.float32)

_INT_FIELDS = ("image_size", "base_channels", "max_channels", "volume_size", "volume_depth",
               "volume_channels", "app_blocks3d", "encoder_channels", "encoder_max_channels",
               "encoder_downsamples", "id_dim", "dyn_dim", "warp_channels", "warp_upsamples",
               "warp_blocks", "decoder_channels", "decoder_blocks3d", "decoder_blocks2d")
_ZERO_OK = ("app_blocks3d", "warp_blocks", "warp_upsamples", "decoder_blocks3d",
            "decoder_blocks2d")


# ----------------------------------------------------------------------------- config

def check_model_config(cfg: Any) -> int:
    """Raises ConfigError (one line naming the field) on a bad `model` config.

    Returns the number of 2× downsamplings from image to volume.
    """
    for f in _INT_FIELDS:
        check(f in cfg, f"model.{f} is missing: add it to the model config")
        v = cfg[f]
        ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool)
        lo = 0 if f in _ZERO_OK else 1
        check(ok and v >= lo, f"model.{f}={v!r} is invalid: use an integer >= {lo}")
    check("max_angle_deg" in cfg, "model.max_angle_deg is missing: add it to the model config")
    check(0 < float(cfg.max_angle_deg) <= 180,
          f"model.max_angle_deg={cfg.max_angle_deg!r} is invalid: use a value in (0, 180]")
    ratio = cfg.image_size // cfg.volume_size
    check(cfg.image_size % cfg.volume_size == 0 and ratio >= 2 and ratio & (ratio - 1) == 0,
          f"model.image_size={cfg.image_size} must be model.volume_size={cfg.volume_size} "
          "times a power of two >= 2 (the appearance encoder downsamples by 2)")
    f = 2 ** cfg.encoder_downsamples
    check(cfg.image_size % f == 0,
          f"model.image_size={cfg.image_size} is not divisible by 2**encoder_downsamples={f}: "
          "lower model.encoder_downsamples")
    f = 2 ** cfg.warp_upsamples
    check(cfg.volume_depth % f == 0 and cfg.volume_size % f == 0,
          f"model.warp_upsamples={cfg.warp_upsamples}: 2**warp_upsamples={f} must divide "
          f"volume_depth={cfg.volume_depth} and volume_size={cfg.volume_size}")
    stride = _stem_stride(cfg)
    check(stride in (1, 2, 4) and 2 * stride <= ratio and 2 ** cfg.encoder_downsamples >= stride,
          f"model.stem_stride={stride!r} is invalid: use 1, 2 or 4, at most half of "
          f"image_size/volume_size={ratio} and at most 2**encoder_downsamples")
    size = input_size(cfg)
    m = _motion_stem_stride(cfg)
    check(m in (1, 2, 4) and 2 ** cfg.encoder_downsamples * size // cfg.image_size >= m,
          f"model.motion_stem_stride={m!r} is invalid: use 1, 2 or 4 (at most "
          "2**encoder_downsamples · input_size/image_size), or 0 for model.stem_stride")
    skip_static(cfg)
    return int(np.log2(ratio))


def _stem_stride(cfg: Any) -> int:
    """Stride of every encoder's first conv (`model.stem_stride`, default 1). 2 runs the first
    residual stage at half resolution — 4× fewer FLOPs where the 64² encoders spend most."""
    return int(cfg.get("stem_stride", 1))


def input_size(cfg: Any) -> int:
    """`model.input_size`: the side of the frames the model takes (0 or absent: image_size).

    Larger (image_size times a power of two), only the motion encoder reads the frames at that
    size; the appearance, identity and skip encoders and every image loss see them box-filtered
    down to image_size, the size the decoder draws (`output_view`). Pose and expression are
    sub-pixel at 64² (2° of roll lifts one eye by half a pixel, a 10% wider mouth is a third of
    one), while a 64² canvas is what the 3D warp and the decoder can afford on a CPU. SynthTalk's
    128² frames box-filtered to 64² equal its 64² render at supersample 2."""
    raw = cfg.get("input_size", 0) or cfg.image_size
    ok = isinstance(raw, (int, np.integer)) and not isinstance(raw, bool)
    ratio = int(raw) // int(cfg.image_size) if ok else 0
    check(ok and raw % cfg.image_size == 0 and ratio >= 1 and ratio & (ratio - 1) == 0,
          f"model.input_size={raw!r} is invalid: use 0 (image_size) or image_size="
          f"{cfg.image_size} times a power of two, e.g. {2 * cfg.image_size}")
    return int(raw)


def box_downsample(images: jax.Array, factor: int) -> jax.Array:
    """[B, H, W, C] → [B, H/factor, W/factor, C]: the mean of each factor × factor block."""
    if factor == 1:
        return images
    b, h, w, c = images.shape
    check(h % factor == 0 and w % factor == 0,
          f"box_downsample: a {h}×{w} image does not divide into {factor}×{factor} blocks")
    return images.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def box_downsample_uint8(frames: np.ndarray, factor: int) -> np.ndarray:
    """uint8 frames [B, H, W, C] → their `box_downsample`, rounded back to uint8 (numpy): a
    model's input-size frames as it draws them, for scoring and display."""
    if factor == 1:
        return np.asarray(frames)
    small = box_downsample(np.asarray(frames, np.float32), factor)
    return np.round(np.asarray(small)).astype(np.uint8)


def output_view(cfg: Any, images: jax.Array) -> jax.Array:
    """Frames at `input_size` → the same frames at image_size (what the decoder draws and the
    losses compare against); unchanged when the two sizes are equal."""
    return box_downsample(images, input_size(cfg) // cfg.image_size)


def _motion_stem_stride(cfg: Any) -> int:
    """Stride of the motion encoder's first conv (`model.motion_stem_stride`, default
    `stem_stride`): 1 keeps the full-resolution first stage where blinks and the mouth's width
    are a pixel or two at 64², while the other encoders keep the cheaper stride."""
    return int(cfg.get("motion_stem_stride", 0) or _stem_stride(cfg))


def _stage_channels(base: int, max_ch: int, n: int) -> list[int]:
    """[base, 2·base, 4·base, ...] capped at max_ch, n+1 entries."""
    return [min(base * 2 ** i, max_ch) for i in range(n + 1)]


# ----------------------------------------------------------------------------- pose

def rotation_from_angles(yaw: jax.Array, pitch: jax.Array, roll: jax.Array) -> jax.Array:
    """Head-to-camera rotation for angles in degrees; [..., 3, 3]. R = Rz(roll) Ry(yaw) Rx(pitch),
    the convention of `vasa_jax.data.synthtalk.motion.rotation_matrix` (camera frame)."""
    y, p, r = (jnp.deg2rad(jnp.asarray(a, jnp.float32)) for a in (yaw, pitch, roll))
    cy, sy, cp, sp, cr, sr = jnp.cos(y), jnp.sin(y), jnp.cos(p), jnp.sin(p), jnp.cos(r), jnp.sin(r)
    one, zero = jnp.ones_like(cy), jnp.zeros_like(cy)
    ry = jnp.stack([jnp.stack([cy, zero, sy], -1), jnp.stack([zero, one, zero], -1),
                    jnp.stack([-sy, zero, cy], -1)], -2)
    rx = jnp.stack([jnp.stack([one, zero, zero], -1), jnp.stack([zero, cp, sp], -1),
                    jnp.stack([zero, -sp, cp], -1)], -2)
    rz = jnp.stack([jnp.stack([cr, -sr, zero], -1), jnp.stack([sr, cr, zero], -1),
                    jnp.stack([zero, zero, one], -1)], -2)
    return rz @ ry @ rx


def pose_to_similarity(z_pose: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """z_pose [B, 7] → (rotation [B, 3, 3] in volume-grid coordinates, translation [B, 3], scale [B])."""
    chex.assert_shape(z_pose, (None, POSE_DIM))
    f = jnp.asarray(_CAM_TO_VOLUME)
    rot = f @ rotation_from_angles(z_pose[:, 0], z_pose[:, 1], z_pose[:, 2]) @ f
    return rot, z_pose[:, 3:6], jnp.exp(z_pose[:, 6])


def invert_similarity(rot, trans, scale):
    """Inverse of p ↦ s·R·p + t: p ↦ (1/s)·Rᵀ·p − (1/s)·Rᵀ·t."""
    rot_t = jnp.swapaxes(rot, -1, -2)
    inv_s = 1.0 / scale
    return rot_t, -inv_s[:, None] * jnp.einsum("bij,bj->bi", rot_t, trans), inv_s


# ----------------------------------------------------------------------------- encoders

class _Trunk2D(nnx.Module):
    """Conv stem + `downsamples` stages of (ResBlock2D, avg-pool) + global average pool
    (`pool=False`: the last feature map [B, h, w, C] instead)."""

    def __init__(self, channels: int, max_channels: int, downsamples: int, *, rngs: nnx.Rngs,
                 pool: bool = True, stem_stride: int = 1):
        self.pool = pool
        blocks = downsamples - int(np.log2(stem_stride))
        chs = _stage_channels(channels, max_channels, blocks)
        self.stem = nnx.Conv(3, chs[0], (3, 3), strides=stem_stride, rngs=rngs)
        self.blocks = nnx.List([ResBlock2D(chs[i], chs[i + 1], rngs=rngs)
                                for i in range(blocks)])
        self.norm = nnx.GroupNorm(chs[-1], num_groups(chs[-1]), rngs=rngs)
        self.out_features = chs[-1]

    def __call__(self, image: jax.Array, tap: int | None = None):
        """`tap=i` also returns stage i's output map (after its downsampling)."""
        x, tapped = self.stem(image), None
        for i, block in enumerate(self.blocks):
            x = downsample(block(x))
            if i == tap:
                tapped = x
        x = nnx.silu(self.norm(x))
        out = jnp.mean(x, axis=(1, 2)) if self.pool else x  # [B, C] or [B, h, w, C]
        return out if tap is None else (out, tapped)


class AppearanceEncoder(nnx.Module):
    """image [B, S, S, 3] → V_app [B, D, S', S', C]: 2D downsampling, channels → depth, 3D blocks."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        n_down = check_model_config(cfg) - int(np.log2(_stem_stride(cfg)))
        chs = _stage_channels(cfg.base_channels, cfg.max_channels, n_down)
        self.depth, self.channels = cfg.volume_depth, cfg.volume_channels
        self.stem = nnx.Conv(3, chs[0], (3, 3), strides=_stem_stride(cfg), rngs=rngs)
        self.down = nnx.List([ResBlock2D(chs[i], chs[i + 1], rngs=rngs) for i in range(n_down)])
        self.to_volume = nnx.Conv(chs[-1], self.depth * self.channels, (1, 1), rngs=rngs)
        self.blocks = nnx.List([ResBlock3D(self.channels, self.channels, rngs=rngs)
                                for _ in range(cfg.app_blocks3d)])

    def __call__(self, image: jax.Array) -> jax.Array:
        x = self.stem(image)
        for block in self.down:
            x = downsample(block(x))
        x = self.to_volume(x)  # [B, H', W', D*C]
        b, h, w, _ = x.shape
        v = x.reshape(b, h, w, self.depth, self.channels).transpose(0, 3, 1, 2, 4)
        for block in self.blocks:
            v = block(v)
        return v


class SkipEncoder(nnx.Module):
    """image [B, S, S, 3] → full-resolution source features f_src [B, S, S, c] (two 3×3 convs);
    with `keep_image` the image itself is prepended: [B, S, S, 3 + c]."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs, keep_image: bool = False):
        self.keep_image = keep_image
        self.conv1 = nnx.Conv(3, channels, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(channels, channels, (3, 3), rngs=rngs)

    def __call__(self, image: jax.Array) -> jax.Array:
        feats = self.conv2(nnx.silu(self.conv1(image)))
        return jnp.concatenate([image, feats], axis=-1) if self.keep_image else feats


def skip_channels(cfg: Any) -> int:
    """`model.skip_channels` (0 or absent: no source skip)."""
    c = cfg.get("skip_channels", 0)
    check(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0,
          f"model.skip_channels={c!r} is invalid: use an integer >= 0 (0 turns the skip off)")
    return int(c)


def skip_blend(cfg: Any) -> bool:
    """`model.skip_blend` (needs the skip): the decoder also predicts a mask and blends the
    warped source image with what it draws — out = m·warp(source) + (1 − m)·drawn."""
    b = bool(cfg.get("skip_blend", False))
    check(not b or skip_channels(cfg) > 0,
          "model.skip_blend needs the source skip: set model.skip_channels > 0")
    return b


def skip_static(cfg: Any) -> bool:
    """`model.skip_static` (needs skip_blend): the unwarped source image is a third choice of
    the blend — out = m_w·warp(source) + m_s·source + m_d·drawn, (m_w, m_s, m_d) a per-pixel
    softmax. What does not move with the head (a fixed camera's background) is then copied
    where it is instead of being carried along by the head's rigid warp, as face-vid2vid's
    background keypoint (an identity flow in its mixture of motions) does."""
    s = bool(cfg.get("skip_static", False))
    check(not s or skip_blend(cfg),
          "model.skip_static needs the blending skip: set model.skip_blend=True (and "
          "model.skip_channels > 0)")
    return s


def source_positions(g_s2c: jax.Array, g_c2d: jax.Array) -> jax.Array:
    """Each driver voxel's position in the source volume: the source → canonical grid g_s2c
    read at the canonical → driver grid g_c2d (both [B, D, S', S', 3]; the two warps composed)."""
    return trilinear_sample(g_s2c, g_c2d, padding_mode="border")


def sample_2d(image: jax.Array, xy: jax.Array, padding_mode: str = "zeros") -> jax.Array:
    """Bilinear sampling of image [B, H, W, C] at normalised xy [B, Ho, Wo, 2] (align_corners
    False; outside reads zeros or, with "border", the nearest edge pixel, as `trilinear_sample`):
    [B, Ho, Wo, C]."""
    return bilinear_sample(image, xy, padding_mode=padding_mode)


class IdentityEncoder(nnx.Module):
    """image → z_id [B, id_dim]."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        self.trunk = _Trunk2D(cfg.encoder_channels, cfg.encoder_max_channels,
                              cfg.encoder_downsamples, rngs=rngs, stem_stride=_stem_stride(cfg))
        self.head = nnx.Linear(self.trunk.out_features, cfg.id_dim, rngs=rngs)

    def __call__(self, image: jax.Array) -> jax.Array:
        return self.head(self.trunk(image))


class MotionEncoder(nnx.Module):
    """image → (z_pose [B, 7], z_dyn [B, dyn_dim]); angles = tanh(·) × max_angle_deg (degrees).

    `motion_pool`: "mean" pools the trunk's last feature map globally (position-blind);
    "spatial" (every config in configs/face_latent.py; a config without the field, as
    written by older runs, means "mean") keeps the layout — a 1×1 conv to `_SPATIAL_CH` channels, flattened,
    then a hidden layer — so where the nose or the mouth is, which is what pose and
    expression are, reaches the heads directly. The pose head starts at zero: both warps
    begin as the identity and pose grows out of the reconstruction loss instead of starting
    from random ±40° rotations that scramble the volume.
    """

    _SPATIAL_CH = 32
    _HIDDEN = 256
    _GLIMPSE = 64

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        self.max_angle = float(cfg.max_angle_deg)
        self.pool = cfg.get("motion_pool", "mean")
        check(self.pool in ("mean", "spatial"),
              f"model.motion_pool={self.pool!r} is invalid: use 'mean' or 'spatial'")
        # A larger input_size adds downsamplings so the last map has the same side.
        extra = int(np.log2(input_size(cfg) // cfg.image_size))
        self.trunk = _Trunk2D(cfg.encoder_channels, cfg.encoder_max_channels,
                              cfg.encoder_downsamples + extra, rngs=rngs,
                              pool=self.pool == "mean", stem_stride=_motion_stem_stride(cfg))
        feats = self.trunk.out_features
        # Keypoints (`model.motion_keypoints` K > 0): K heatmaps on a finer stage of the trunk
        # (`model.motion_keypoint_stage`, counted from the stem; negative from the last), each
        # reduced by a spatial softmax to its expected (x, y) in [-1, 1]. Sub-cell positions of
        # mouth corners or eye lines are what the mouth's width and roll are; a pooled or
        # flattened coarse map carries them only implicitly. The 2K coordinates feed the
        # hidden layer and both heads directly, so a linear head can difference them.
        self.keypoints = int(cfg.get("motion_keypoints", 0))
        n_stages = len(self.trunk.blocks)
        stage = int(cfg.get("motion_keypoint_stage", -2))
        self.kp_stage = stage % n_stages if -n_stages <= stage < n_stages else None
        check(self.keypoints >= 0 and (self.keypoints == 0 or self.kp_stage is not None),
              f"model.motion_keypoints={self.keypoints!r} / motion_keypoint_stage={stage!r} "
              f"is invalid: use keypoints >= 0 and a stage in [-{n_stages}, {n_stages - 1}]")
        kp_dim = 2 * self.keypoints
        if self.keypoints:
            chs = _stage_channels(cfg.encoder_channels, cfg.encoder_max_channels, n_stages)
            self.kp_conv = nnx.Conv(chs[self.kp_stage + 1], self.keypoints, (3, 3), rngs=rngs)
        # Mouth glimpse (`model.motion_glimpse` G > 0): a G×G patch resampled from the input
        # frame around the mouth keypoint (keypoint 3; 0 and 1 are the eyes, as loss.keypoints
        # guides them), its axes along and across the eye line and its half-side
        # `motion_glimpse_span` eye distances: the mouth at the input's full resolution, with
        # the head's roll and size taken out. A small CNN reads it; its features join the
        # keypoints'. The patch's place follows the keypoints without a gradient (they learn
        # from loss.keypoints).
        self.glimpse = int(cfg.get("motion_glimpse", 0))
        check(self.glimpse == 0 or (self.glimpse >= 8 and self.glimpse % 4 == 0
                                    and self.keypoints >= 4),
              f"model.motion_glimpse={self.glimpse!r} is invalid: use 0 (off) or a multiple of "
              f"4 from 8 up, with model.motion_keypoints >= 4 (it needs the eye and mouth "
              f"keypoints; now {self.keypoints})")
        if self.glimpse:
            self.glimpse_span = float(cfg.get("motion_glimpse_span", 0.55))
            self.glimpse_align = cfg.get("motion_glimpse_align", "eyes")
            check(self.glimpse_align in ("eyes", "frame"), "model.motion_glimpse_align="
                  f"{self.glimpse_align!r} is invalid: use 'eyes' or 'frame'")
            check(self.glimpse_span > 0, f"model.motion_glimpse_span={self.glimpse_span!r} is "
                  "invalid: use a positive number of eye distances")
            c = int(cfg.get("motion_glimpse_channels", 16))
            self.glimpse_convs = nnx.List([
                nnx.Conv(3, c, (3, 3), rngs=rngs),
                nnx.Conv(c, 2 * c, (3, 3), strides=(2, 2), rngs=rngs),
                nnx.Conv(2 * c, 2 * c, (3, 3), strides=(2, 2), rngs=rngs)])
            self.glimpse_out = nnx.Linear((self.glimpse // 4) ** 2 * 2 * c, self._GLIMPSE,
                                          rngs=rngs)
            kp_dim += self._GLIMPSE
        if self.pool == "spatial":
            side = cfg.image_size // 2 ** cfg.encoder_downsamples
            self.reduce = nnx.Conv(feats, self._SPATIAL_CH, (1, 1), rngs=rngs)
            self.hidden = nnx.Linear(side * side * self._SPATIAL_CH + kp_dim, self._HIDDEN,
                                     rngs=rngs)
            feats = self._HIDDEN
        self.pose_head = nnx.Linear(feats + kp_dim, POSE_DIM,
                                    kernel_init=nnx.initializers.zeros, rngs=rngs)
        self.dyn_head = nnx.Linear(feats + kp_dim, cfg.dyn_dim, rngs=rngs)

    def keypoint_coords(self, fmap: jax.Array) -> jax.Array:
        """Spatial-softmax keypoints of a stage map [B, h, w, C] → [B, K, 2] (x, y) in [-1, 1]."""
        logits = self.kp_conv(fmap)  # [B, h, w, K]
        b, h, w, k = logits.shape
        prob = jax.nn.softmax(logits.reshape(b, h * w, k), axis=1).reshape(b, h, w, k)
        ys = (jnp.arange(h) + 0.5) / h * 2 - 1
        xs = (jnp.arange(w) + 0.5) / w * 2 - 1
        x = jnp.einsum("bhwk,w->bk", prob, xs)
        y = jnp.einsum("bhwk,h->bk", prob, ys)
        return jnp.stack([x, y], axis=-1)

    def glimpse_grid(self, coords: jax.Array) -> jax.Array:
        """[B, G, G, 2] normalised (x, y) sampling points of the mouth glimpse for keypoints
        [B, K, 2]: centred on keypoint 3, axes along and across keypoint 0 → 1."""
        kp = jax.lax.stop_gradient(coords)
        if self.glimpse_align == "eyes":
            along = kp[:, 1] - kp[:, 0]  # [B, 2]: left eye → right eye (x right, y down)
        else:  # "frame": the frame's own axes, half-side span in its normalised units
            along = jnp.broadcast_to(jnp.asarray([1.0, 0.0], kp.dtype), kp[:, 0].shape)
        across = jnp.stack([-along[:, 1], along[:, 0]], -1)  # 90° on: downwards when level
        t = ((jnp.arange(self.glimpse) + 0.5) / self.glimpse * 2 - 1) * self.glimpse_span
        return (kp[:, 3, None, None, :] + t[None, None, :, None] * along[:, None, None, :]
                + t[None, :, None, None] * across[:, None, None, :])

    def glimpse_features(self, image: jax.Array, coords: jax.Array) -> jax.Array:
        x = bilinear_sample(image, self.glimpse_grid(coords), padding_mode="border")
        for layer in self.glimpse_convs:
            x = nnx.silu(layer(x))
        return nnx.silu(self.glimpse_out(x.reshape(x.shape[0], -1)))

    def __call__(self, image: jax.Array, return_keypoints: bool = False):
        """(z_pose, z_dyn), or with `return_keypoints` (z_pose, z_dyn, keypoints [B, K, 2] or
        None when model.motion_keypoints is 0)."""
        if self.keypoints:
            h, fmap = self.trunk(image, tap=self.kp_stage)
            coords = self.keypoint_coords(fmap)
            kp = coords.reshape(coords.shape[0], -1)
            if self.glimpse:
                kp = jnp.concatenate([kp, self.glimpse_features(image, coords)], -1)
        else:
            h, coords, kp = self.trunk(image), None, None
        if self.pool == "spatial":
            h = self.reduce(h).reshape(h.shape[0], -1)
            h = nnx.silu(self.hidden(h if kp is None else jnp.concatenate([h, kp], -1)))
        if kp is not None:
            h = jnp.concatenate([h, kp], axis=-1)
        raw = self.pose_head(h)
        angles = jnp.tanh(raw[:, :3]) * self.max_angle
        z_pose, z_dyn = jnp.concatenate([angles, raw[:, 3:]], axis=-1), self.dyn_head(h)
        if not return_keypoints:
            return z_pose, z_dyn
        return z_pose, z_dyn, coords


# ----------------------------------------------------------------------------- warping

class WarpGenerator(nnx.Module):
    """(z_pose, z_dyn, z_id) → sampling grid [B, D, S', S', 3] = rigid grid + non-rigid flow.

    direction="source_to_canonical": the grid is the source pose's similarity (sampling at
      s·R·p + t moves the content by the inverse transform, undoing the source pose).
    direction="canonical_to_driver": the grid is the inverse of the driver's similarity (the
      content moves by the driver pose).
    The flow comes from a learned constant volume at 1/2**warp_upsamples resolution, refined by
    AdaGN 3D blocks conditioned on concat(z_dyn, z_id) and upsampled; its last conv is zero so
    training starts at the rigid warp.
    """

    DIRECTIONS = ("source_to_canonical", "canonical_to_driver")

    def __init__(self, cfg: Any, direction: str, *, rngs: nnx.Rngs):
        check_model_config(cfg)
        check(direction in self.DIRECTIONS,
              f"WarpGenerator direction={direction!r}: use one of {self.DIRECTIONS}")
        self.direction = direction
        self.shape = (cfg.volume_depth, cfg.volume_size, cfg.volume_size)
        up = cfg.warp_upsamples
        cond_dim = cfg.id_dim + cfg.dyn_dim
        chs = [max(cfg.warp_channels // 2 ** i, 8) for i in range(up + 1)]
        d, h, w = (n // 2 ** up for n in self.shape)
        self.seed = nnx.Param(0.1 * jax.random.normal(rngs.params(), (1, d, h, w, chs[0])))
        self.blocks = nnx.List([AdaResBlock3D(chs[0], chs[0], cond_dim, rngs=rngs)
                                for _ in range(cfg.warp_blocks)])
        self.up_blocks = nnx.List([AdaResBlock3D(chs[i], chs[i + 1], cond_dim, rngs=rngs)
                                   for i in range(up)])
        self.norm = nnx.GroupNorm(chs[-1], num_groups(chs[-1]), rngs=rngs)
        self.to_flow = conv(chs[-1], 3, (3, 3, 3), kernel_init=nnx.initializers.zeros,
                            rngs=rngs)

    def rigid(self, z_pose: jax.Array) -> jax.Array:
        """Rigid part only: [B, D, S', S', 3]."""
        rot, trans, scale = pose_to_similarity(z_pose)
        if self.direction == "canonical_to_driver":
            rot, trans, scale = invert_similarity(rot, trans, scale)
        return rigid_grid(rot, trans, scale, *self.shape)

    def flow(self, z_dyn: jax.Array, z_id: jax.Array) -> jax.Array:
        """Non-rigid residual [B, D, S', S', 3] in normalised units."""
        cond = jnp.concatenate([z_dyn, z_id], axis=-1)
        x = jnp.broadcast_to(self.seed[...], (cond.shape[0], *self.seed.shape[1:]))
        for block in self.blocks:
            x = block(x, cond)
        for block in self.up_blocks:
            x = block(upsample(x, axes=(1, 2, 3)), cond)
        return self.to_flow(nnx.silu(self.norm(x)))

    def __call__(self, z_pose: jax.Array, z_dyn: jax.Array, z_id: jax.Array) -> jax.Array:
        return self.rigid(z_pose) + self.flow(z_dyn, z_id)


# ----------------------------------------------------------------------------- decoder

class Decoder(nnx.Module):
    """warped volume [B, D, S', S', C] → image [B, S, S, 3] in (-1, 1).

    `model.decoder_cond`: "none" (MegaPortraits' G_2D: every expression reaches the image
    through the warps) or "dyn": the 2D blocks at volume resolution are adaptive-norm blocks
    conditioned on the driver's z_dyn, so expression can also change what is rendered (an
    opening mouth shows its inside, which no warp of a closed mouth's features contains).
    """

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        n_up = check_model_config(cfg)
        c = cfg.volume_channels
        chs = _stage_channels(cfg.base_channels, cfg.max_channels, n_up)
        chs[-1] = cfg.decoder_channels
        self.cond = cfg.get("decoder_cond", "none")
        check(self.cond in ("none", "dyn"),
              f"model.decoder_cond={self.cond!r} is invalid: use 'none' or 'dyn'")
        self.blocks3d = nnx.List([ResBlock3D(c, c, rngs=rngs) for _ in range(cfg.decoder_blocks3d)])
        self.project = nnx.Conv(cfg.volume_depth * c, chs[-1], (1, 1), rngs=rngs)
        if self.cond == "dyn":
            self.blocks2d = nnx.List([AdaResBlock2D(chs[-1], chs[-1], cfg.dyn_dim, rngs=rngs)
                                      for _ in range(cfg.decoder_blocks2d)])
        else:
            self.blocks2d = nnx.List([ResBlock2D(chs[-1], chs[-1], rngs=rngs)
                                      for _ in range(cfg.decoder_blocks2d)])
        self.blend = skip_blend(cfg)
        self.static = skip_static(cfg)
        self.skip = skip_channels(cfg) + (3 if self.blend else 0)  # + the source image
        if self.skip:
            # Per-pixel weights over depth for projecting the 3D source positions to a 2D flow;
            # zero kernel: the plain depth mean at initialisation.
            self.skip_depth = nnx.Conv(chs[-1], cfg.volume_depth, (1, 1),
                                       kernel_init=nnx.initializers.zeros, rngs=rngs)
        # The last block also sees the unwarped source image when it may copy it (skip_static).
        joined = self.skip + (3 if self.static else 0)
        self.up = nnx.List([ResBlock2D(chs[i + 1] + (joined if i == 0 else 0), chs[i],
                                       rngs=rngs)
                            for i in reversed(range(n_up))])
        self.norm = nnx.GroupNorm(chs[0], num_groups(chs[0]), rngs=rngs)
        # RGB, then one blend logit per copied image (warped source; unwarped source).
        self.to_rgb = nnx.Conv(chs[0], 3 + int(self.blend) + int(self.static), (3, 3),
                               rngs=rngs)

    def run3d(self, volume: jax.Array) -> jax.Array:
        """The 3D blocks on the warped volume."""
        for block in self.blocks3d:
            volume = block(volume)
        return volume

    def skip_features(self, x: jax.Array, skip: tuple[jax.Array, jax.Array]) -> jax.Array:
        """(f_src [B, S, S, c], source positions [B, D, S', S', 3]) and the projected features
        x [B, S', S', ·] → f_src sampled along the depth-weighted 2D flow: [B, S, S, c]."""
        f_src, src_xyz = skip
        b, _, h, w, _ = src_xyz.shape
        weights = jax.nn.softmax(self.skip_depth(x).astype(jnp.float32), axis=-1)  # [B,S',S',D]
        xy = jnp.einsum("bhwd,bdhwk->bhwk", weights, src_xyz[..., :2].astype(jnp.float32))
        size = f_src.shape[1]
        xy = jax.image.resize(xy, (b, size, size, 2), "linear")
        return sample_2d(f_src, xy.astype(f_src.dtype))

    def run2d(self, volume: jax.Array, z_dyn: jax.Array | None = None,
              skip: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        """Orthographic projection (depth folded into channels) and the 2D decoder. `skip`:
        (f_src, source positions of each driver voxel), needed when model.skip_channels > 0."""
        check(self.cond == "none" or z_dyn is not None,
              "this decoder is conditioned on z_dyn (model.decoder_cond='dyn'): pass z_dyn")
        check(not self.skip or skip is not None,
              "this decoder has a source skip (model.skip_channels > 0): pass f_src from "
              "encode() to decode / decode_canonical")
        b, d, h, w, c = volume.shape
        x = self.project(volume.transpose(0, 2, 3, 1, 4).reshape(b, h, w, d * c))
        for block in self.blocks2d:
            x = block(x, z_dyn.astype(x.dtype)) if self.cond == "dyn" else block(x)
        feats = self.skip_features(x, skip) if self.skip else None
        if self.static:  # f_src's first 3 channels are the source image itself (keep_image)
            feats = jnp.concatenate([feats, skip[0][..., :3].astype(feats.dtype)], axis=-1)
        for i, block in enumerate(self.up):
            x = upsample(x)
            if feats is not None and i == len(self.up) - 1:
                x = jnp.concatenate([x, feats.astype(x.dtype)], axis=-1)
            x = block(x)
        out = self.to_rgb(nnx.silu(self.norm(x)))
        if self.blend:   # the first 3 channels of the warped skip are the warped source image
            drawn = jnp.tanh(out[..., :3])
            # Softmax over (warped source, [unwarped source,] drawn) with the drawn logit at
            # 0; with the blend alone this is sigmoid(logit) and 1 − sigmoid(logit).
            logits = jnp.concatenate([out[..., 3:], jnp.zeros_like(out[..., :1])], -1)
            m = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(out.dtype)
            out = m[..., :1] * feats[..., :3].astype(out.dtype) + m[..., -1:] * drawn
            if self.static:
                out = out + m[..., 1:2] * feats[..., -3:].astype(out.dtype)
            return out
        return jnp.tanh(out)

    def __call__(self, volume: jax.Array, z_dyn: jax.Array | None = None,
                 skip: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        return self.run2d(self.run3d(volume), z_dyn, skip)


# ----------------------------------------------------------------------------- model

class FaceLatentModel(nnx.Module):
    """Encoders + two warp generators + decoder. `__call__(source, driver)` reconstructs the
    driver from the source's appearance/identity and the driver's motion.

    With a source skip (`model.skip_channels` > 0) `encode` also returns `f_src`, and
    `decode` / `decode_canonical` take it (`f_src=`); `decode_canonical` also needs the
    source → canonical grid `g_s2c` that `to_canonical(..., return_grid=True)` returns."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        check_model_config(cfg)
        self.image_size = cfg.image_size
        self.input_size = input_size(cfg)
        self.appearance = AppearanceEncoder(cfg, rngs=rngs)
        self.identity = IdentityEncoder(cfg, rngs=rngs)
        self.motion = MotionEncoder(cfg, rngs=rngs)
        self.warp_s2c = WarpGenerator(cfg, "source_to_canonical", rngs=rngs)
        self.warp_c2d = WarpGenerator(cfg, "canonical_to_driver", rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)
        self.skip = skip_channels(cfg)
        if self.skip:
            self.skip_encoder = SkipEncoder(self.skip, rngs=rngs, keep_image=skip_blend(cfg))

    def output_view(self, image: jax.Array) -> jax.Array:
        """image [B, I, I, C] at input_size → [B, S, S, C] at image_size (box filter; the
        image itself when the sizes are equal): the frame the decoder's output is compared to."""
        return box_downsample(image, self.input_size // self.image_size)

    def encode_motion(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
        """image [B, I, I, 3] (I = input_size) → (z_pose [B, 7], z_dyn [B, dyn_dim])."""
        return self.motion(image)

    def encode(self, image: jax.Array) -> dict[str, jax.Array]:
        """image [B, I, I, 3] (I = input_size) → dict(v_app, z_id, z_pose, z_dyn[, keypoints]
        [, f_src]); the motion encoder reads the frame at input_size, the others at image_size.
        `keypoints` [B, K, 2] only with model.motion_keypoints > 0."""
        chex.assert_shape(image, (None, self.input_size, self.input_size, 3))
        z_pose, z_dyn, keypoints = self.motion(image, return_keypoints=True)
        small = self.output_view(image)
        out = dict(v_app=self.appearance(small), z_id=self.identity(small),
                   z_pose=z_pose, z_dyn=z_dyn)
        if keypoints is not None:
            out["keypoints"] = keypoints
        if self.skip:
            out["f_src"] = self.skip_encoder(small)
        return out

    def to_canonical(self, v_app, z_id, z_pose_src, z_dyn_src, *, return_grid: bool = False):
        """V_app → canonical volume (w_s→c): [B, D, S', S', C]. Depends on the source only, so
        generation computes it once per portrait (`decode_canonical` then renders frames).
        return_grid: also return the grid g_s2c (which the source skip needs)."""
        grid = self.warp_s2c(z_pose_src, z_dyn_src, z_id)
        v_can = trilinear_sample(v_app, grid)
        return (v_can, grid) if return_grid else v_can

    def _render(self, v_can, g_s2c, z_id, z_pose_drv, z_dyn_drv, f_src) -> jax.Array:
        g_c2d = self.warp_c2d(z_pose_drv, z_dyn_drv, z_id)
        skip = None
        if self.skip:
            check(f_src is not None and g_s2c is not None,
                  "this model has a source skip (model.skip_channels > 0): pass f_src from "
                  "encode() (and g_s2c from to_canonical(..., return_grid=True))")
            skip = (f_src, source_positions(g_s2c, g_c2d))
        return self.decoder(trilinear_sample(v_can, g_c2d), z_dyn_drv, skip)

    def warp(self, v_app, z_id, z_pose_src, z_dyn_src, z_pose_drv, z_dyn_drv) -> jax.Array:
        """V_app → canonical (w_s→c) → driver (w_c→d): [B, D, S', S', C]."""
        v_can = self.to_canonical(v_app, z_id, z_pose_src, z_dyn_src)
        return trilinear_sample(v_can, self.warp_c2d(z_pose_drv, z_dyn_drv, z_id))

    def decode(self, v_app, z_id, z_pose_src, z_dyn_src, z_pose_drv, z_dyn_drv,
               f_src=None) -> jax.Array:
        """Source pieces + driver motion → image [B, S, S, 3] in (-1, 1)."""
        v_can, g_s2c = self.to_canonical(v_app, z_id, z_pose_src, z_dyn_src, return_grid=True)
        return self._render(v_can, g_s2c, z_id, z_pose_drv, z_dyn_drv, f_src)

    def decode_latents(self, src: dict, z_pose_drv, z_dyn_drv) -> jax.Array:
        """`decode` with the source's `encode` dict."""
        return self.decode(src["v_app"], src["z_id"], src["z_pose"], src["z_dyn"],
                           z_pose_drv, z_dyn_drv, f_src=src.get("f_src"))

    def decode_canonical(self, v_can, z_id, z_pose_drv, z_dyn_drv, f_src=None,
                         g_s2c=None) -> jax.Array:
        """Canonical volume (from `to_canonical`) + driver motion → image [B, S, S, 3];
        equal to `decode` with the same source, without redoing the source warp per frame."""
        return self._render(v_can, g_s2c, z_id, z_pose_drv, z_dyn_drv, f_src)

    def __call__(self, source: jax.Array, driver: jax.Array) -> jax.Array:
        """Frames at input_size → the driver redrawn from the source, at image_size."""
        src = self.encode(source)
        z_pose_drv, z_dyn_drv = self.encode_motion(driver)
        return self.decode_latents(src, z_pose_drv, z_dyn_drv)


def build_model(cfg: Any, rngs: nnx.Rngs) -> FaceLatentModel:
    """FaceLatentModel from a `model` config (or a full config with a `model` field)."""
    if "model" in cfg and "image_size" not in cfg:
        cfg = cfg.model
    return FaceLatentModel(cfg, rngs=rngs)


__all__ = ["AppearanceEncoder", "Decoder", "FaceLatentModel", "IdentityEncoder",
           "MotionEncoder", "POSE_DIM", "SkipEncoder", "WarpGenerator", "box_downsample",
           "box_downsample_uint8", "build_model", "check_model_config", "input_size",
           "invert_similarity", "output_view", "pose_to_similarity", "rotation_from_angles",
           "sample_2d", "skip_blend", "skip_channels", "skip_static", "source_positions"]
