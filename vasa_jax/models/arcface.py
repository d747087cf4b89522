"""ArcFace "IResNet" face-identity backbone (the insightface arcface_torch layout) and its loader.

This is the identity network for the cross-identity loss on real faces. Nothing is downloaded:
`load_arcface` reads a backbone state dict the user already has (e.g. arcface_torch's
`backbone.pth`), as a PyTorch `.pth`/`.pt` file (needs torch), `.safetensors` or `.npz` with the
same key names, and `arcface_identity_fn` turns the loaded network into an
`identity_net.IdentityFeatureFn` (images `[B, H, W, 3]` in [-1, 1] -> unit-norm `[B, 512]`).

Layout (torch key names in brackets; all convs without bias, every BatchNorm eps 1e-5):

    stem     conv3x3(3 -> 64) [conv1], BN [bn1], PReLU [prelu]
    layer1-4 IBasicBlock x depth[i], widths 64/128/256/512, the first block of each stage has
             stride 2 and a shortcut conv1x1(stride 2) + BN [layerI.0.downsample.0/.1]
             block: BN [bn1] -> conv3x3 [conv1] -> BN [bn2] -> PReLU [prelu]
                    -> conv3x3(stride) [conv2] -> BN [bn3], plus the shortcut
    head     BN [bn2] -> dropout (identity at inference) -> flatten -> Linear(512*7*7 -> 512) [fc]
             -> BatchNorm1d [features]

Depths: r18 (2,2,2,2), r34 (3,4,6,3), r50 (3,4,14,3), r100 (3,13,30,3), r200 (6,26,60,6).
The input is a 112x112 RGB face aligned the ArcFace way, normalised to [-1, 1]
((pixel / 255 - 0.5) / 0.5), which is the generator's own image range. Inference only:
BatchNorm always uses the running statistics.

Tensors are NHWC here. torch flattens the final `[C, H, W]` map channels-first, so the loader
permutes the columns of `fc.weight` to match the channels-last flatten.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.errors import ConfigError
from vasa_jax.models.identity_net import IdentityFeatureFn, l2_normalize

ARCFACE_DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
STAGE_WIDTHS = (64, 128, 256, 512)
BN_EPS = 1e-5
_IGNORED_SUFFIX = ".num_batches_tracked"  # torch BatchNorm bookkeeping, no meaning at inference


def resolve_depths(arch: str | Sequence[int]) -> tuple[int, int, int, int]:
    """`"r50"` etc. or four block counts -> the four block counts (ConfigError otherwise)."""
    if isinstance(arch, str):
        if arch not in ARCFACE_DEPTHS:
            raise ConfigError(f"arcface arch {arch!r} is unknown; use one of "
                              f"{', '.join(ARCFACE_DEPTHS)} or four block counts like (2, 2, 2, 2)")
        return ARCFACE_DEPTHS[arch]
    depths = tuple(int(d) for d in arch)
    if len(depths) != 4 or min(depths) < 1:
        raise ConfigError(f"arcface arch {tuple(arch)} must be four block counts >= 1, "
                          "e.g. (3, 4, 14, 3) for r50")
    return depths  # type: ignore[return-value]


def arch_name(depths: Sequence[int]) -> str:
    """(3, 4, 14, 3) -> "r50"; unnamed depths -> their tuple as text."""
    depths = tuple(depths)
    for name, d in ARCFACE_DEPTHS.items():
        if d == depths:
            return name
    return str(depths)


def _bn(channels: int, eps: float, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, epsilon=eps, use_running_average=True, rngs=rngs)


def _conv(cin: int, cout: int, kernel: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    pad = (kernel - 1) // 2
    return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                    use_bias=False, rngs=rngs)


class PReLU(nnx.Module):
    """Per-channel PReLU over the last axis: x if x >= 0 else weight * x (torch init 0.25)."""

    def __init__(self, channels: int):
        self.weight = nnx.Param(jnp.full((channels,), 0.25, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.where(x >= 0, x, self.weight[...] * x)


class IBasicBlock(nnx.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, eps: float, *, rngs: nnx.Rngs):
        self.bn1 = _bn(cin, eps, rngs)
        self.conv1 = _conv(cin, cout, 3, 1, rngs)
        self.bn2 = _bn(cout, eps, rngs)
        self.prelu = PReLU(cout)
        self.conv2 = _conv(cout, cout, 3, stride, rngs)
        self.bn3 = _bn(cout, eps, rngs)
        if stride != 1 or cin != cout:
            self.downsample = nnx.List([_conv(cin, cout, 1, stride, rngs), _bn(cout, eps, rngs)])
        else:
            self.downsample = None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if self.downsample is not None:
            x = self.downsample[1](self.downsample[0](x))
        return h + x


class IResNet(nnx.Module):
    """ArcFace IResNet backbone. `__call__(x: [B, S, S, 3] in [-1, 1]) -> [B, num_features]`.

    The output is the raw embedding (after the final BatchNorm1d), not L2-normalised;
    `arcface_identity_fn` normalises it. S is `input_size` (112 for every released model; any
    multiple of 16 builds, the fc then has 512 * (S/16)^2 inputs).
    """

    def __init__(self, arch: str | Sequence[int] = "r50", *, num_features: int = 512,
                 input_size: int = 112, bn_eps: float = BN_EPS, rngs: nnx.Rngs):
        if input_size % 16 or input_size < 16:
            raise ConfigError(f"arcface input_size {input_size} must be a positive multiple of 16 "
                              "(released models use 112)")
        self.depths = resolve_depths(arch)
        self.input_size = input_size
        self.num_features = num_features
        self.conv1 = _conv(3, STAGE_WIDTHS[0], 3, 1, rngs)
        self.bn1 = _bn(STAGE_WIDTHS[0], bn_eps, rngs)
        self.prelu = PReLU(STAGE_WIDTHS[0])
        cin = STAGE_WIDTHS[0]
        stages = []
        for depth, width in zip(self.depths, STAGE_WIDTHS):
            blocks = []
            for j in range(depth):
                blocks.append(IBasicBlock(cin, width, 2 if j == 0 else 1, bn_eps, rngs=rngs))
                cin = width
            stages.append(nnx.List(blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = _bn(cin, bn_eps, rngs)
        side = input_size // 16
        self.fc = nnx.Linear(cin * side * side, num_features, rngs=rngs)
        self.features = _bn(num_features, bn_eps, rngs)

    @property
    def stages(self) -> tuple[nnx.List, nnx.List, nnx.List, nnx.List]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.input_size
        if x.ndim != 4 or x.shape[1:] != (s, s, 3):
            raise ValueError(f"IResNet expects images [B, {s}, {s}, 3], got {x.shape}; "
                             "arcface_identity_fn resizes for you")
        h = self.prelu(self.bn1(self.conv1(x)))
        for stage in self.stages:
            for block in stage:
                h = block(h)
        h = self.bn2(h)  # dropout: identity at inference
        h = h.reshape(h.shape[0], -1)  # channels-last flatten; fc.kernel rows are permuted to match
        return self.features(self.fc(h))


# ------------------------------------------------------------------ torch key <-> variable map

def _bn_entries(prefix: str, bn: nnx.BatchNorm):
    yield f"{prefix}.weight", bn.scale, "vec"
    yield f"{prefix}.bias", bn.bias, "vec"
    yield f"{prefix}.running_mean", bn.mean, "vec"
    yield f"{prefix}.running_var", bn.var, "vec"


def torch_entries(model: IResNet) -> Iterator[tuple[str, nnx.Variable, str]]:
    """Yields `(torch key, variable, kind)` for every tensor of the arcface_torch state dict.

    kind: "conv" (torch OIHW, here HWIO), "fc" (torch [out, C*h*w] channels-first flatten, here
    [h*w*C, out]) or "vec" (same layout). Works on an abstract model from `nnx.eval_shape`.
    """
    yield "conv1.weight", model.conv1.kernel, "conv"
    yield from _bn_entries("bn1", model.bn1)
    yield "prelu.weight", model.prelu.weight, "vec"
    for i, stage in enumerate(model.stages, start=1):
        for j, block in enumerate(stage):
            p = f"layer{i}.{j}"
            yield from _bn_entries(f"{p}.bn1", block.bn1)
            yield f"{p}.conv1.weight", block.conv1.kernel, "conv"
            yield from _bn_entries(f"{p}.bn2", block.bn2)
            yield f"{p}.prelu.weight", block.prelu.weight, "vec"
            yield f"{p}.conv2.weight", block.conv2.kernel, "conv"
            yield from _bn_entries(f"{p}.bn3", block.bn3)
            if block.downsample is not None:
                yield f"{p}.downsample.0.weight", block.downsample[0].kernel, "conv"
                yield from _bn_entries(f"{p}.downsample.1", block.downsample[1])
    yield from _bn_entries("bn2", model.bn2)
    yield "fc.weight", model.fc.kernel, "fc"
    yield "fc.bias", model.fc.bias, "vec"
    yield from _bn_entries("features", model.features)


def _torch_shape(shape: Sequence[int], kind: str) -> tuple[int, ...]:
    if kind == "conv":
        kh, kw, ci, co = shape
        return (co, ci, kh, kw)
    if kind == "fc":
        fin, fout = shape
        return (fout, fin)
    return tuple(shape)


def torch_key_shapes(model: IResNet) -> dict[str, tuple[int, ...]]:
    """The arcface_torch state-dict keys this model expects and their torch shapes (without
    `num_batches_tracked`). Cheap on `nnx.eval_shape(lambda: IResNet("r100", rngs=...))`."""
    return {k: _torch_shape(v.shape, kind) for k, v, kind in torch_entries(model)}


def _from_torch(value: np.ndarray, kind: str, channels: int) -> np.ndarray:
    if kind == "conv":
        return value.transpose(2, 3, 1, 0)
    if kind == "fc":
        fout, fin = value.shape
        side = int(round((fin // channels) ** 0.5))
        return value.reshape(fout, channels, side, side).transpose(2, 3, 1, 0).reshape(fin, fout)
    return value


# ------------------------------------------------------------------------------- file reading

def _torch_state_dict(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ConfigError(f"reading {path} needs PyTorch: pip install torch, or convert the state "
                          "dict once to .safetensors/.npz (same key names) where torch is "
                          "installed") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure gets the same advice
        raise ConfigError(f"could not read {path} as a PyTorch state dict of tensors "
                          f"({type(e).__name__}); save `backbone.state_dict()` (not the whole "
                          "module) with torch.save, or convert it to .safetensors/.npz") from e
    if isinstance(obj, Mapping):
        # training checkpoints nest the backbone weights one level down
        for key in ("state_dict_backbone", "state_dict", "backbone", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(hasattr(v, "numpy") for v in obj.values()):
        raise ConfigError(f"{path} does not hold a flat state dict of tensors; save "
                          "`backbone.state_dict()` with torch.save")
    return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
            for k, v in obj.items()}


def read_tensor_file(path: str, torch_suffixes: tuple[str, ...], unsupported: str
                     ) -> dict[str, np.ndarray]:
    """{key: numpy array} from a torch state dict (files ending in `torch_suffixes`; needs
    torch), a `.safetensors` or an `.npz` file; `unsupported` is the error for other names."""
    lower = path.lower()
    if lower.endswith(torch_suffixes):
        return _torch_state_dict(path)
    if lower.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError as e:
            raise ConfigError(f"reading {path} needs the `safetensors` package: pip install "
                              "safetensors, or convert the state dict to .npz") from e
        return dict(load_file(path))
    if lower.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    raise ConfigError(unsupported)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A `.pth`/`.pt` (torch), `.safetensors` or `.npz` state dict -> {torch key: numpy array}."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"ArcFace weights file not found: {path} (pass the path of an "
                          "arcface_torch IResNet state dict: .pth/.pt, .safetensors or .npz)")
    tensors = read_tensor_file(path, (".pth", ".pt", ".bin"),
                               f"unsupported ArcFace weights format: {path} (use .pth/.pt, "
                               ".safetensors or .npz)")
    # DistributedDataParallel checkpoints prefix every key with "module."
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def detect_depths(keys) -> tuple[int, ...] | None:
    """Blocks per stage implied by `layerI.J.` keys, e.g. (2, 2, 2, 2); None if there are none."""
    counts = [0, 0, 0, 0]
    found = False
    for key in keys:
        m = re.match(r"layer([1-4])\.(\d+)\.", key)
        if m:
            found = True
            i, j = int(m.group(1)) - 1, int(m.group(2))
            counts[i] = max(counts[i], j + 1)
    return tuple(counts) if found else None


def _arch_arg(depths: Sequence[int]) -> str:
    name = arch_name(depths)
    return repr(name) if name in ARCFACE_DEPTHS else name


def _few(keys: Sequence[str], n: int = 4) -> str:
    keys = sorted(keys)
    more = f" ... ({len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_arcface(path: str | os.PathLike, arch: str | Sequence[int] = "r50", *,
                 num_features: int = 512, input_size: int = 112,
                 bn_eps: float = BN_EPS) -> IResNet:
    """Builds an `IResNet` and fills it from the user's arcface_torch backbone state dict.

    path: `.pth`/`.pt` (read with torch, imported only here), `.safetensors` or `.npz`, with the
    torch key names (`conv1.weight`, `layer1.0.bn1.running_mean`, ..., `features.running_var`;
    `num_batches_tracked` and a DDP `module.` prefix are accepted). arch: "r18", "r34", "r50",
    "r100", "r200", four block counts, or "auto" to take the block counts from the file.
    Strict: a missing or unexpected key, or a shape mismatch, raises `ConfigError` (one line that
    names the keys and the fix). No random initialisation happens: the model is built abstractly
    and every variable comes from the file.
    """
    path = os.fspath(path)
    tensors = read_state_dict(path)
    found = detect_depths(tensors)
    if arch == "auto":
        if found is None or min(found) < 1:
            raise ConfigError(f"{path}: cannot infer the IResNet depth (no layer1-4 block keys "
                              f"found; keys start {_few(list(tensors))}); pass arch='r50' etc.")
        arch = found
    depths = resolve_depths(arch)
    if found is not None and found != depths:
        raise ConfigError(f"{path} holds an IResNet with blocks {found} ({arch_name(found)}) but "
                          f"arch={arch_name(depths)!r} {depths} was requested; pass "
                          f"arch={_arch_arg(found)}")
    model = nnx.eval_shape(lambda: IResNet(depths, num_features=num_features,
                                           input_size=input_size, bn_eps=bn_eps,
                                           rngs=nnx.Rngs(0)))
    entries = list(torch_entries(model))
    expected = {k for k, _, _ in entries}
    given = {k for k in tensors if not k.endswith(_IGNORED_SUFFIX)}
    missing, unexpected = expected - given, given - expected
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(list(missing))}")
        if unexpected:
            parts.append(f"unexpected keys {_few(list(unexpected))}")
        raise ConfigError(f"{path}: not an arcface_torch IResNet {arch_name(depths)} backbone "
                          f"state dict: {'; '.join(parts)}; pass the backbone's own state_dict "
                          "(without the margin/partial-fc head) and the matching arch")
    for key, var, kind in entries:
        value = np.asarray(tensors[key])
        want = _torch_shape(var.shape, kind)
        if value.shape != want:
            hint = ""
            if key in ("fc.weight", "fc.bias") or key.startswith("features."):
                hint = (f" (num_features={value.shape[0]} and input_size must match the file; "
                        f"input_size={input_size} gives fc inputs {512 * (input_size // 16) ** 2})")
            raise ConfigError(f"{path}: key {key!r} has shape {tuple(value.shape)}, expected "
                              f"{want} for arcface {arch_name(depths)}{hint}")
        var.set_value(jnp.asarray(_from_torch(value.astype(np.float32), kind, STAGE_WIDTHS[-1])))
    return model


# ------------------------------------------------------------------------- identity features

def _split(model: Any) -> tuple[nnx.GraphDef, nnx.State]:
    if isinstance(model, IResNet):
        return nnx.split(model)
    if isinstance(model, tuple) and len(model) == 2:
        return model
    raise TypeError("arcface_identity_fn expects an IResNet or (graphdef, state) from "
                    f"nnx.split(IResNet); got {type(model).__name__}")


def prepare_faces(images: jax.Array, size: int = 112, crop_fraction: float = 1.0,
                  bgr: bool = False) -> jax.Array:
    """[B, H, W, 3] in [-1, 1] -> [B, size, size, 3]: optional centre crop keeping
    `crop_fraction` of each side, then an antialiased bilinear resize. Differentiable."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"ArcFace expects images [B, H, W, 3], got {images.shape}")
    if not 0.0 < crop_fraction <= 1.0:
        raise ConfigError(f"crop_fraction {crop_fraction} must be in (0, 1]")
    x = images.astype(jnp.float32)
    b, h, w, _ = x.shape
    if crop_fraction < 1.0:
        ch, cw = max(1, round(h * crop_fraction)), max(1, round(w * crop_fraction))
        top, left = (h - ch) // 2, (w - cw) // 2
        x = x[:, top:top + ch, left:left + cw]
    if x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (b, size, size, 3), method="linear", antialias=True)
    if bgr:
        x = x[..., ::-1]
    return x


def arcface_identity_fn(model: IResNet | tuple[nnx.GraphDef, nnx.State],
                        input_size: int | None = None, *, crop_fraction: float = 1.0,
                        bgr: bool = False) -> IdentityFeatureFn:
    """A frozen `IdentityFeatureFn` from a loaded IResNet (or its `nnx.split`).

    `fn(images)`: images `[B, H, W, 3]` in [-1, 1], any size -> unit-norm `[B, num_features]`.
    Images are centre-cropped to `crop_fraction` of each side (ArcFace expects tightly aligned
    faces; talking-head frames show more than the face, e.g. 0.8) and resized to `input_size`
    (default: the model's, 112); non-square inputs are stretched, so crop them square first.
    `bgr=True` flips channels for models trained on BGR input (arcface_torch's are RGB).
    Differentiable w.r.t. the images; no gradient reaches the network (stop_gradient).

    In a jitted step pass the weights as an argument, `fn(images, state=fn.state)`, rather than
    closing over them (which bakes ~100-250 MB of constants into the compiled program);
    `fn.graphdef` and `fn.state` are exposed for that.
    """
    graphdef, state = _split(model)
    size = nnx.merge(graphdef, state).input_size if input_size is None else int(input_size)
    if not 0.0 < crop_fraction <= 1.0:
        raise ConfigError(f"crop_fraction {crop_fraction} must be in (0, 1]")

    def id_fn(images: jax.Array, state: nnx.State | None = None) -> jax.Array:
        st = jax.lax.stop_gradient(id_fn.state if state is None else state)
        net = nnx.merge(graphdef, st)
        return l2_normalize(net(prepare_faces(images, size, crop_fraction, bgr)))

    id_fn.graphdef = graphdef
    id_fn.state = state
    return id_fn


__all__ = ["ARCFACE_DEPTHS", "IResNet", "IBasicBlock", "PReLU", "load_arcface", "read_state_dict",
           "torch_entries", "torch_key_shapes", "detect_depths", "resolve_depths",
           "arcface_identity_fn", "prepare_faces"]
