"""A small analytic ray caster for SynthTalk heads.

The head is a set of ellipsoids in a head frame (cranium, nose, ears, hair volumes) plus a neck
and torso in the camera frame. Every pixel's ray is intersected with each ellipsoid in closed
form, so perspective, foreshortening and self-occlusion are exact: a yaw turn shortens the far
cheek and hides the far ear. Facial features (eyes with eyeballs that rotate independently of
the head, lids, brows, mouth, hair line, glasses) are signed-distance fields on the cranium's
surface, evaluated at the hit point.

Anti-aliasing is analytic: silhouettes get fractional coverage from the ray's closest distance
to each ellipsoid in units of the pixel footprint, and surface features from their screen-space
derivative (like GLSL's fwidth); layers are composited front to back by depth. A supersampling
factor renders at s× and box-filters for still smoother edges.

Frames: head frame x right, y up, z out of the face; camera at the origin looking down -z.
"""

from __future__ import annotations

import functools

import numpy as np

from vasa_jax.data.synthtalk.identity import Identity, sample_identity
from vasa_jax.data.synthtalk.motion import FOCAL, angles_to_direction, rotation_matrix
from vasa_jax.data.synthtalk.spec import EMOTIONS

# Emotion → (smile, brow height, inner-brow raise, eye openness, jaw drop).
EMOTION_FACE = {
    "neutral": (0.0, 0.125, 0.0, 1.0, 0.0),
    "happy": (1.0, 0.135, 0.01, 0.85, 0.03),
    "sad": (-0.8, 0.125, 0.035, 0.8, 0.0),
    "angry": (-0.35, 0.095, -0.04, 0.8, 0.0),
    "surprised": (0.0, 0.18, 0.015, 1.3, 0.12),
}

_SCLERA = np.asarray([0.95, 0.93, 0.90], np.float32)
_PUPIL = np.asarray([0.04, 0.03, 0.03], np.float32)
_MOUTH_IN = np.asarray([0.22, 0.04, 0.05], np.float32)
_TEETH = np.asarray([0.93, 0.91, 0.86], np.float32)


def _coverage(f: np.ndarray) -> np.ndarray:
    """Pixel coverage of the region f < 0, with the edge width taken from f's screen gradient."""
    if f.shape[0] < 2 or f.shape[1] < 2:
        return (f < 0).astype(np.float32)
    gy, gx = np.gradient(f)
    width = np.abs(gx) + np.abs(gy)
    # Across discontinuities of f the gradient explodes; cap the blur at about 1.5 pixels.
    width = np.clip(width, 1e-6, None)
    return np.clip(0.5 - f / width, 0.0, 1.0).astype(np.float32)


def _mix(base: np.ndarray, color, alpha: np.ndarray) -> np.ndarray:
    return base + (np.asarray(color, np.float32) - base) * alpha[..., None]


def background_image(identity: Identity, size: int) -> np.ndarray:
    """The static backdrop [size, size, 3] in [0, 1]."""
    c0, c1 = identity.bg_colors
    p = identity.bg_params
    y, x = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    kind = identity.background
    if kind == "solid":
        w = np.zeros_like(x) + 0.15 * (1 - y)
    elif kind == "gradient":
        ang = p[0] * 2 * np.pi
        w = np.clip(0.5 + (np.cos(ang) * (x - 0.5) + np.sin(ang) * (y - 0.5)), 0, 1)
    elif kind == "stripes":
        ang = p[0] * np.pi
        freq = 4 + 10 * p[1]
        w = 0.5 + 0.5 * np.tanh(4 * np.sin(2 * np.pi * freq * (np.cos(ang) * x + np.sin(ang) * y)))
    elif kind == "checker":
        freq = 3 + 6 * p[1]
        w = 0.5 + 0.5 * np.tanh(4 * np.sin(2 * np.pi * freq * x) * np.sin(2 * np.pi * freq * y))
    else:  # blobs: a few random sinusoids
        w = np.zeros_like(x)
        for i in range(3):
            fx, fy, ph = 1 + 4 * p[2 + i], 1 + 4 * p[(5 + i) % 8], 6.28 * p[(i + 1) % 8]
            w += np.sin(2 * np.pi * (fx * x + fy * y) + ph)
        w = 0.5 + w / 6
    img = c0[None, None] * (1 - w[..., None]) + c1[None, None] * w[..., None]
    vignette = 1 - 0.25 * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    return (img * vignette[..., None]).astype(np.float32)


def _nose_center(identity: Identity) -> tuple:
    """Head-frame centre of the nose ellipsoid: below the eyes, sunk slightly into the face."""
    _, ry, rz = identity.head_radii
    ny = identity.eye_height * ry - 0.22 * identity.nose_length
    nz = rz * np.sqrt(max(1 - (ny / ry) ** 2, 0.05)) - 0.06
    return (0.0, ny, nz)


class _Ellipsoid:
    """An ellipsoid primitive in the head frame (rigid with the head) or the camera frame."""

    def __init__(self, name, center, radii, head_frame=True, tilt_deg=0.0):
        self.name = name
        self.center = np.asarray(center, np.float64)
        self.radii = np.asarray(radii, np.float64)
        self.head_frame = head_frame
        c, s = np.cos(np.deg2rad(tilt_deg)), np.sin(np.deg2rad(tilt_deg))
        self.q = np.asarray([[1, 0, 0], [0, c, -s], [0, s, c]], np.float64)  # tilt about x


class Renderer:
    """Renders frames of one identity at one resolution; caches what does not change."""

    def __init__(self, identity: Identity, resolution: int, supersample: int = 1):
        self.identity = identity
        self.resolution = resolution
        self.ss = supersample
        self.size = resolution * supersample
        n = self.size
        coords = (np.arange(n) + 0.5) / n * 2 - 1
        u = np.broadcast_to(coords[None, :], (n, n))
        v = np.broadcast_to(-coords[:, None], (n, n))
        self.dirs = np.stack([u, v, -FOCAL * np.ones((n, n))], -1)  # [n, n, 3]
        self.pix = 2.0 / n
        self.background = background_image(identity, n)
        self.prims = self._primitives()

    # -- scene ------------------------------------------------------------------------------
    def _primitives(self):
        idn = self.identity
        rx, ry, rz = idn.head_radii
        prims = [_Ellipsoid("head", (0, 0, 0), (rx, ry, rz))]
        prims.append(_Ellipsoid("nose", _nose_center(idn),
                                (0.085 * idn.nose_size, 0.2 * idn.nose_length, 0.12 * idn.nose_size),
                                tilt_deg=-18))
        ey = idn.eye_height * ry - 0.12
        for side in (-1, 1):
            prims.append(_Ellipsoid("ear", (side * rx * 0.96, ey, -0.08 * rz),
                                    (0.07, 0.17 * idn.ear_size, 0.11 * idn.ear_size)))
        if idn.hair_style == "long":
            prims.append(_Ellipsoid("hair", (0, 0.03 * ry, -0.42 * rz),
                                    (rx * 1.13, ry * 0.98, rz * 0.72)))
        elif idn.hair_style == "bun":
            prims.append(_Ellipsoid("hair", (0, 0.72 * ry, -0.62 * rz), (0.3, 0.28, 0.28)))
        prims.append(_Ellipsoid("neck", (0, -0.95, -0.15), (0.36, 0.75, 0.36), head_frame=False))
        prims.append(_Ellipsoid("torso", (0, -2.15, -0.35), (1.7, 0.95, 0.85), head_frame=False))
        return prims

    # -- one frame --------------------------------------------------------------------------
    def render(self, rotation, shift, distance, eye_gaze, blink, mouth, emotion: str) -> np.ndarray:
        """One frame, uint8 [resolution, resolution, 3].

        rotation: (yaw, pitch, roll) deg; shift: (x, y) head-centre offset in head units;
        distance: head centre to camera; eye_gaze: eye-in-head (θ, φ) deg; blink: 0 open .. 1
        shut; mouth: (open, width, round) in [0, 1]; emotion: a name from EMOTIONS.
        """
        rot = rotation_matrix(*rotation)
        center = np.asarray([shift[0], shift[1], -distance], np.float64)
        layers = []
        for prim in self.prims:
            layer = self._cast(prim, rot, center, eye_gaze, blink, mouth, emotion)
            if layer is not None:
                layers.append(layer)
        img = self._composite(layers)
        if self.ss > 1:
            s, r = self.ss, self.resolution
            img = img.reshape(r, s, r, s, 3).mean((1, 3))
        return (np.clip(img, 0, 1) ** (1 / 1.1) * 255 + 0.5).astype(np.uint8)

    def _box(self, prim, rot, center):
        """Pixel bounding box of a primitive's projection (conservative), or None if off screen."""
        if prim.head_frame:
            c = rot @ prim.center + center
        else:
            c = prim.center + np.asarray([center[0], center[1], center[2]])
        depth = -c[2]
        rad = prim.radii.max() * 1.05
        if depth - rad <= 0.05:
            return (0, self.size, 0, self.size)
        cu, cv = c[0] * FOCAL / depth, c[1] * FOCAL / depth
        half = rad * FOCAL / np.sqrt(max(depth * depth - rad * rad, 1e-6)) + 3 * self.pix
        n = self.size
        j0 = int(np.floor((cu - half + 1) / 2 * n))
        j1 = int(np.ceil((cu + half + 1) / 2 * n))
        i0 = int(np.floor((1 - (cv + half)) / 2 * n))
        i1 = int(np.ceil((1 - (cv - half)) / 2 * n))
        i0, j0 = max(i0, 0), max(j0, 0)
        i1, j1 = min(i1, n), min(j1, n)
        if i1 - i0 < 1 or j1 - j0 < 1:
            return None
        return (i0, i1, j0, j1)

    def _cast(self, prim, rot, center, eye_gaze, blink, mouth, emotion):
        box = self._box(prim, rot, center)
        if box is None:
            return None
        i0, i1, j0, j1 = box
        dirs = self.dirs[i0:i1, j0:j1]
        # Ray in the primitive's local unit-sphere coordinates.
        frame = rot if prim.head_frame else np.eye(3)
        origin = frame.T @ (-center if prim.head_frame else -(center + prim.center))
        if prim.head_frame:
            origin = origin - prim.center
        to_local = (prim.q.T / prim.radii[:, None]) @ frame.T  # [3, 3]
        o = (prim.q.T @ origin) / prim.radii
        d = dirs @ to_local.T
        a = (d * d).sum(-1)
        b = d @ o
        oo = float(o @ o)
        t_star = -b / a
        dist2 = np.maximum(oo - b * b / a, 0.0)
        dist = np.sqrt(dist2)
        disc = np.maximum(1.0 - dist2, 0.0) * a  # = b² - a(oo - 1)
        hit = dist < 1.0
        t = np.where(hit, t_star - np.sqrt(disc) / a, t_star)
        r_eff = np.sqrt(prim.radii[0] * prim.radii[1])
        footprint = t_star * self.pix / r_eff
        alpha = np.clip(0.5 + (1.0 - dist) / footprint, 0.0, 1.0).astype(np.float32)
        if not alpha.any():
            return None
        q = o + t[..., None] * d  # local point on (or, at the fringe, projected to) the sphere
        q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-9)
        p_prim = q * prim.radii  # point in the primitive's tilted frame
        normal = q / prim.radii
        normal = normal @ prim.q.T
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
        point = p_prim @ prim.q.T + prim.center  # head frame (or camera frame offset)
        color = self._material(prim, point, eye_gaze, blink, mouth, emotion)
        world_normal = normal @ frame.T
        color = self._shade(color, world_normal)
        return box, alpha, t.astype(np.float32), color

    def _shade(self, color, normal):
        idn = self.identity
        diffuse = np.clip(normal @ idn.light_dir.astype(np.float64), 0, 1)[..., None]
        rim = np.clip(normal[..., 2:3], 0, 1)  # faces toward the camera read brighter
        return color * (idn.ambient + (1 - idn.ambient) * diffuse) * (0.85 + 0.15 * rim)

    def _composite(self, layers) -> np.ndarray:
        n = self.size
        k = len(layers)
        alpha = np.zeros((k, n, n), np.float32)
        depth = np.full((k, n, n), np.inf, np.float32)
        color = np.zeros((k, n, n, 3), np.float32)
        for i, ((i0, i1, j0, j1), a, t, c) in enumerate(layers):
            alpha[i, i0:i1, j0:j1] = a
            depth[i, i0:i1, j0:j1] = np.where(a > 0, t, np.inf)
            color[i, i0:i1, j0:j1] = c
        order = np.argsort(depth, axis=0)
        alpha = np.take_along_axis(alpha, order, 0)
        color = np.take_along_axis(color, order[..., None], 0)
        out = np.zeros((n, n, 3), np.float32)
        remaining = np.ones((n, n), np.float32)
        for i in range(k):
            w = remaining * alpha[i]
            out += w[..., None] * color[i]
            remaining -= w
        return out + remaining[..., None] * self.background

    # -- materials --------------------------------------------------------------------------
    def _material(self, prim, point, eye_gaze, blink, mouth, emotion):
        idn = self.identity
        shape = point.shape[:2]
        if prim.name in ("nose", "ear"):
            tint = 0.97 if prim.name == "nose" else 0.9
            return np.broadcast_to(idn.skin * np.asarray([1.0, tint, tint]), shape + (3,)).copy()
        if prim.name == "neck":
            return np.broadcast_to(idn.skin * 0.85, shape + (3,)).copy()
        if prim.name == "torso":
            return np.broadcast_to(idn.clothes, shape + (3,)).copy()
        if prim.name == "hair":
            return self._hair_color(point)
        return self._face(point, eye_gaze, blink, mouth, emotion)

    def _hair_color(self, point):
        x, y, z = point[..., 0], point[..., 1], point[..., 2]
        strands = 0.88 + 0.12 * np.sin(45 * x + 7 * np.sin(6 * y) + 3 * z)
        return self.identity.hair_color * strands[..., None]

    def _face(self, point, eye_gaze, blink, mouth, emotion):
        idn = self.identity
        rx, ry, rz = idn.head_radii
        xn, yn, zn = point[..., 0] / rx, point[..., 1] / ry, point[..., 2] / rz
        u, v = xn, yn
        smile, brow_h, brow_raise, eye_open, _ = EMOTION_FACE[emotion]  # jaw: mouth_shape
        front = np.clip((zn - 0.05) / 0.1, 0, 1)  # features live on the front only
        color = np.broadcast_to(idn.skin, point.shape).astype(np.float32).copy()
        # Cheeks a touch redder, chin a touch darker.
        cheeks = np.exp(-(((np.abs(u) - 0.45) / 0.15) ** 2 + ((v + 0.12) / 0.12) ** 2)) * front
        color = _mix(color, idn.skin * np.asarray([1.05, 0.82, 0.8]), cheeks * (0.25 + 0.25 * (smile > 0)))

        # Hair cap: above a hair line that is high on the forehead and low at the back.
        if idn.hair_style != "bald":
            h_front = idn.hair_line - (0.22 if idn.hair_style == "fringe" else 0.0)
            wave = 0.03 * np.sin(18 * u) if idn.hair_style == "fringe" else 0.0
            threshold = h_front * (0.5 + 0.5 * zn) + (-0.45) * (0.5 - 0.5 * zn) + wave
            f_hair = threshold - yn
            hair = _coverage(f_hair * ry)
            color = _mix(color, self._hair_color(point), hair)
            if idn.accessory == "headband":
                band = np.abs(yn - (threshold + 0.06)) - 0.05
                color = _mix(color, idn.accessory_color, _coverage(band * ry))

        # Eyes: almond openings; irises from eyeballs that rotate with the gaze.
        gaze = angles_to_direction(*eye_gaze)
        openness = (1.0 - float(blink)) * eye_open
        for side in (-1.0, 1.0):
            cx, cy = side * idn.eye_spacing, idn.eye_height
            ew, eh, el = 0.14 * idn.eye_size, 0.07 * idn.eye_size, 0.045 * idn.eye_size
            du = (u - cx) / ew
            dv = v - cy
            para = 1.0 - du * du
            lower = -el * para
            upper = lower + (eh + el) * openness * para
            f_eye = np.maximum(dv - upper, lower - dv)
            # A lid gap thinner than a pixel must fade out, not leave half a pixel of eyeball.
            eye = _coverage(f_eye * ry) * front * min(1.0, openness / 0.15)
            # Eyeball centre: behind the surface point at the eye centre.
            sx, sy = cx * rx, cy * ry
            sz = rz * np.sqrt(max(1 - cx * cx - cy * cy, 0.05))
            nrm = np.asarray([sx / rx ** 2, sy / ry ** 2, sz / rz ** 2])
            nrm /= np.linalg.norm(nrm)
            ball_r = 0.11 * idn.eye_size
            ball = np.asarray([sx, sy, sz]) - ball_r * nrm
            w = point - ball
            w = w / np.maximum(np.linalg.norm(w, axis=-1, keepdims=True), 1e-9)
            cosang = w @ gaze
            iris = _coverage((np.cos(0.62) - cosang) * 10)
            pupil = _coverage((np.cos(0.26) - cosang) * 10)
            glint_dir = np.asarray([0.35, 0.45, 0.82]) * 0.3 + 0.7 * gaze
            glint = _coverage((np.cos(0.12) - w @ (glint_dir / np.linalg.norm(glint_dir))) * 10)
            radial = np.clip((1 - cosang) / (1 - np.cos(0.62)), 0, 1)[..., None]
            eye_col = _mix(np.broadcast_to(_SCLERA, point.shape).copy(),
                           idn.iris_color * (0.7 + 0.5 * radial), iris)
            eye_col = _mix(eye_col, _PUPIL, pupil)
            eye_col = _mix(eye_col, (1.0, 1.0, 1.0), glint * 0.9)
            # Upper lid casts a shadow on the eyeball.
            eye_col *= (0.75 + 0.25 * np.clip((upper - dv) / (0.04 * idn.eye_size), 0, 1))[..., None]
            color = _mix(color, eye_col, eye)
            lash = np.maximum(np.abs(dv - upper) - 0.012 * np.clip(para, 0, 1) - 0.004, -para * 0.1)
            color = _mix(color, idn.brow_color * 0.5, _coverage(lash * ry) * front)

            # Brows: emotion sets height and the inner end.
            bw = 0.17
            bu = (u - cx) / bw
            inner = -side * bu  # 1 at the inner end
            brow_y = cy + brow_h + 0.03 * (1 - bu * bu) + brow_raise * inner
            f_brow = np.maximum(np.abs(v - brow_y) - 0.022 * (1.1 - 0.4 * bu * bu),
                                (np.abs(bu) - 1) * bw)
            color = _mix(color, idn.brow_color, _coverage(f_brow * ry) * front)

        # Mouth: opening, width, rounding from speech; corners from emotion.
        a, half_open = (float(x) for x in mouth_shape(idn, mouth, emotion))
        mu = u / a
        para = np.clip(1 - mu * mu, 0, None)
        sq = np.sqrt(para)
        dv = v - idn.mouth_height - smile * 0.05 * mu * mu
        inner = np.maximum(np.abs(dv) - half_open * sq, np.abs(mu) - 0.92)
        top = half_open * sq + 0.028 * (0.35 + 0.65 * sq)
        bottom = -(half_open * sq + 0.036 * (0.35 + 0.65 * sq))
        lips = np.maximum(np.maximum(dv - top, bottom - dv), (np.abs(mu) - 1.0) * a)
        color = _mix(color, idn.lips, _coverage(lips * ry) * front)
        teeth = np.maximum(inner, half_open * sq - 0.035 - dv)
        mouth_col = _mix(np.broadcast_to(_MOUTH_IN, point.shape).copy(), _TEETH,
                         _coverage(teeth * ry))
        color = _mix(color, mouth_col, _coverage(inner * ry) * front)

        # Glasses ride on the face surface around both eyes.
        if idn.accessory in ("round_glasses", "square_glasses"):
            gu, gv, th = 0.17, 0.13, 0.014
            f_glass = None
            for side in (-1.0, 1.0):
                cx, cy = side * idn.eye_spacing, idn.eye_height
                pu, pv = (u - cx) / gu, (v - cy) / gv
                if idn.accessory == "round_glasses":
                    rr = np.sqrt(pu * pu + pv * pv)
                else:
                    rr = (np.abs(pu) ** 6 + np.abs(pv) ** 6) ** (1 / 6)
                ring = np.abs(rr - 1) * gv - th
                f_glass = ring if f_glass is None else np.minimum(f_glass, ring)
            bridge = np.maximum(np.abs(v - idn.eye_height - 0.03) - th,
                                np.abs(u) - (idn.eye_spacing - gu * 0.95))
            arms = np.maximum(np.abs(v - idn.eye_height - 0.03) - th,
                              (idn.eye_spacing + gu * 0.97) - np.abs(u))
            f_glass = np.minimum(np.minimum(f_glass, bridge), np.where(zn > -0.3, arms, 1.0))
            color = _mix(color, idn.accessory_color, _coverage(f_glass * ry) * np.clip(zn + 0.3, 0, 1) / 1.0)
        return color


def mouth_shape(identity: Identity, mouth, emotion: str) -> tuple[np.ndarray, np.ndarray]:
    """(half-width, half-opening) of the drawn mouth in face-surface units (x / rx, y / ry) for
    mouth factors [..., 3] = (open, width, round) and an emotion name: the one place the
    renderer and the mouth landmarks take the mouth's geometry from."""
    smile, _, _, _, jaw = EMOTION_FACE[emotion]
    m = np.asarray(mouth, np.float64)
    opening = np.minimum(1.0, m[..., 0] + jaw)
    half_width = (0.19 * identity.mouth_width * (0.72 + 0.45 * m[..., 1]) * (1 - 0.35 * m[..., 2])
                  * (1 + 0.08 * max(smile, 0.0)))
    return half_width, 0.12 * opening * (1 + 0.2 * m[..., 2])


@functools.lru_cache(maxsize=16384)
def _identity(index: int) -> Identity:
    return sample_identity(index)


def mouth_geometry(identity: int, mouth, emotion: int) -> np.ndarray:
    """float32 [..., 2]: (log half-width, half-opening) of the drawn mouth in face-surface units
    (`mouth_shape`) for identity number `identity`, mouth factors [..., 3] and emotion index
    `emotion`: what one frame shows of the mouth, in head units, as a 3D face tracker would
    report it. Identities are cached, so a call per training example costs microseconds."""
    half_width, half_open = mouth_shape(_identity(int(identity)), mouth, EMOTIONS[int(emotion)])
    return np.stack([np.log(half_width), half_open], -1).astype(np.float32)


def landmark_points(identity: Identity, mouth=(0.0, 0.5, 0.0), emotion: str = "neutral") -> dict:
    """Head-frame 3D positions of the facial landmarks (surface points), in `LANDMARKS` order
    once stacked. The mouth's corners and inner lip edges follow `mouth` [..., 3] and the
    emotion (a smile lifts the corners), so with per-frame factors those entries are [..., 3]."""
    rx, ry, rz = identity.head_radii
    smile = EMOTION_FACE[emotion][0]
    half_width, half_open = mouth_shape(identity, mouth, emotion)

    def surface(u, v):
        u, v = np.broadcast_arrays(np.asarray(u, np.float64), np.asarray(v, np.float64))
        return np.stack([u * rx, v * ry, rz * np.sqrt(np.maximum(1 - u * u - v * v, 0.0))], -1)

    _, ny, nz = _nose_center(identity)
    tilt = np.deg2rad(-18)
    depth = 0.12 * identity.nose_size  # the nose ellipsoid's z radius, tilted about x
    tip = np.asarray([0.0, ny - depth * np.sin(tilt), nz + depth * np.cos(tilt)])
    return {
        "left_eye": surface(-identity.eye_spacing, identity.eye_height),
        "right_eye": surface(identity.eye_spacing, identity.eye_height),
        "nose_tip": tip,
        "mouth": surface(0.0, identity.mouth_height),
        "mouth_left": surface(-half_width, identity.mouth_height + smile * 0.05),
        "mouth_right": surface(half_width, identity.mouth_height + smile * 0.05),
        "upper_lip": surface(np.zeros_like(half_open), identity.mouth_height + half_open),
        "lower_lip": surface(np.zeros_like(half_open), identity.mouth_height - half_open),
    }


def project(points_head: np.ndarray, rotation, shift, distance, resolution: int) -> np.ndarray:
    """Head-frame points [..., 3] → pixel coordinates [..., 2] as (column, row)."""
    rot = rotation_matrix(*rotation)
    p = points_head @ rot.T + np.asarray([shift[0], shift[1], -distance])
    u = p[..., 0] * FOCAL / -p[..., 2]
    v = p[..., 1] * FOCAL / -p[..., 2]
    return np.stack([(u + 1) / 2 * resolution, (1 - v) / 2 * resolution], -1)
