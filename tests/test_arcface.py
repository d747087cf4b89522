"""ArcFace IResNet: parity with an independent plain-torch IResNet, strict loader, identity fn."""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file

from vasa_jax.errors import ConfigError
from vasa_jax.models import arcface as A
from vasa_jax.models.identity_net import IdentityFeatureFn

# ----------------------------------------------------- reference (plain torch, NCHW, written here)


class _TorchBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = torch.nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = torch.nn.PReLU(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.bn3 = torch.nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                torch.nn.BatchNorm2d(cout, eps=1e-5))

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class _TorchIResNet(torch.nn.Module):
    def __init__(self, depths, num_features=512):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = torch.nn.PReLU(64)
        cin = 64
        for i, (depth, width) in enumerate(zip(depths, (64, 128, 256, 512)), start=1):
            blocks = []
            for j in range(depth):
                blocks.append(_TorchBlock(cin, width, 2 if j == 0 else 1))
                cin = width
            setattr(self, f"layer{i}", torch.nn.Sequential(*blocks))
        self.bn2 = torch.nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = torch.nn.Dropout(p=0.0)
        self.fc = torch.nn.Linear(512 * 7 * 7, num_features)
        self.features = torch.nn.BatchNorm1d(num_features, eps=1e-5)

    def forward(self, x):  # x: [B, 3, 112, 112]
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.dropout(self.bn2(x)), 1)  # channels-first flatten
        return self.features(self.fc(x))


def _randomised_torch_iresnet(depths, seed=0, num_features=512):
    torch.manual_seed(seed)
    net = _TorchIResNet(depths, num_features)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(123)
            elif isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(-0.3, 0.6)
            elif isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out")
                m.weight.mul_(0.7)
    return net.eval()


R18 = A.ARCFACE_DEPTHS["r18"]
TINY = (1, 1, 1, 1)


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    net = _randomised_torch_iresnet(R18, seed=0)
    d = tmp_path_factory.mktemp("arcface")
    sd = net.state_dict()
    torch.save(sd, d / "r18.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "r18.safetensors"))
    return net, {"pth": d / "r18.pth", "safetensors": d / "r18.safetensors"}


@pytest.fixture(scope="module")
def tiny_net():
    return _randomised_torch_iresnet(TINY, seed=1)


@pytest.fixture(scope="module")
def tiny_sd(tiny_net):
    return {k: v.numpy().copy() for k, v in tiny_net.state_dict().items()}


def _npz(path, tensors):
    np.savez(path, **tensors)
    return str(path)


@jax.jit
def _apply(graphdef, state, x):  # one compile per architecture (GraphDef is a static pytree node)
    return nnx.merge(graphdef, state)(x)


def _faces(seed, shape=(2, 112, 112, 3)):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


# ------------------------------------------------------------------------------------- parity

@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_r18_embeddings_match_torch(fmt, r18):
    net, files = r18
    t0 = time.perf_counter()
    model = A.load_arcface(files[fmt], arch="r18")
    t_load = time.perf_counter() - t0
    x = _faces(seed={"pth": 2, "safetensors": 3}[fmt])
    ours = np.asarray(_apply(*nnx.split(model), jnp.asarray(x)))
    with torch.no_grad():
        ref = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert ours.shape == ref.shape == (2, 512)
    rel = float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
    cos = np.sum(ours * ref, -1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(ref, axis=-1))
    print(f"{fmt}: load {t_load:.2f}s, max|ref| {np.max(np.abs(ref)):.3g}, "
          f"relative error {rel:.2e}, cosine {cos.min():.8f}")
    assert rel <= 1e-4, f"relative error {rel:.2e}"
    # the two images give different embeddings (the net is not degenerate)
    assert np.max(np.abs(ref[0] - ref[1])) > 1e-2 * np.max(np.abs(ref))


@pytest.mark.parametrize("arch", ["r50", "r100"])
def test_key_sets_match_torch_layout(arch):
    abstract = nnx.eval_shape(lambda: A.IResNet(arch, rngs=nnx.Rngs(0)))
    ours = A.torch_key_shapes(abstract)
    with torch.device("meta"):  # no r100 weights are allocated on either side
        ref = _TorchIResNet(A.ARCFACE_DEPTHS[arch])
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()
                  if not k.endswith("num_batches_tracked")}
    assert set(ours) == set(ref_shapes), (set(ours) ^ set(ref_shapes))
    assert ours == ref_shapes
    n = sum(int(np.prod(s)) for s in ours.values())
    print(f"{arch}: {len(ours)} tensors, {n / 1e6:.1f} M values")


def test_npz_auto_arch_and_module_prefix(tiny_sd, tmp_path):
    m1 = A.load_arcface(_npz(tmp_path / "a.npz", tiny_sd), arch=TINY)
    prefixed = {f"module.{k}": v for k, v in tiny_sd.items()}
    m2 = A.load_arcface(_npz(tmp_path / "b.npz", prefixed), arch="auto")
    assert m2.depths == TINY
    s1, s2 = nnx.state(m1), nnx.state(m2)
    assert jax.tree.structure(s1) == jax.tree.structure(s2)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------------------ loader errors

def _one_line(err):
    assert "\n" not in str(err.value), str(err.value)


def test_missing_key(tiny_sd, tmp_path):
    sd = dict(tiny_sd)
    del sd["layer3.0.downsample.1.running_var"]
    key = r"layer3\.0\.downsample\.1\.running_var"
    with pytest.raises(ConfigError, match=rf"missing keys {key}") as e:
        A.load_arcface(_npz(tmp_path / "w.npz", sd), arch=TINY)
    _one_line(e)


def test_unexpected_key(tiny_sd, tmp_path):
    sd = dict(tiny_sd, **{"margin.weight": np.zeros((10, 512), np.float32)})
    with pytest.raises(ConfigError, match=r"unexpected keys margin\.weight") as e:
        A.load_arcface(_npz(tmp_path / "w.npz", sd), arch=TINY)
    _one_line(e)


def test_shape_mismatch(tiny_sd, tmp_path):
    sd = dict(tiny_sd)
    sd["features.weight"] = sd["features.weight"][:256]
    with pytest.raises(ConfigError, match=r"features\.weight.*\(256,\).*expected \(512,\)") as e:
        A.load_arcface(_npz(tmp_path / "w.npz", sd), arch=TINY)
    _one_line(e)


def test_wrong_arch_names_mismatch(r18):
    _, files = r18
    with pytest.raises(ConfigError, match=r"\(2, 2, 2, 2\) \(r18\).*'r34'.*pass arch='r18'") as e:
        A.load_arcface(files["safetensors"], arch="r34")
    _one_line(e)


def test_unknown_arch_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="r42 .*unknown|'r42' is unknown"):
        A.IResNet("r42", rngs=nnx.Rngs(0))
    path = str(tmp_path / "absent.pth")
    with pytest.raises(ConfigError, match="not found") as e:
        A.load_arcface(path)
    assert path in str(e.value)
    _one_line(e)


def test_pth_without_torch_says_convert(r18, monkeypatch):
    _, files = r18
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ConfigError, match=r"needs PyTorch.*\.safetensors/\.npz") as e:
        A.load_arcface(files["pth"], arch="r18")
    _one_line(e)


# ----------------------------------------------------------------------------- identity fn

@pytest.fixture(scope="module")
def tiny_model(tiny_sd, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.npz"
    return A.load_arcface(_npz(path, tiny_sd), arch=TINY)


def test_identity_fn_at_native_size_is_normalised_torch_embedding(tiny_model, tiny_net):
    fn = A.arcface_identity_fn(tiny_model)
    x = _faces(5, (2, 112, 112, 3))
    with torch.no_grad():
        emb = tiny_net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(np.asarray(jax.jit(fn)(jnp.asarray(x))),
                               emb / np.linalg.norm(emb, axis=-1, keepdims=True), atol=1e-5)


def test_identity_fn_unit_norm_and_differentiable(tiny_model):
    fn: IdentityFeatureFn = A.arcface_identity_fn(nnx.split(tiny_model), crop_fraction=0.8)
    x = jnp.asarray(_faces(6, (2, 96, 96, 3)))
    y = jnp.asarray(_faces(7, (2, 96, 96, 3)))

    @jax.jit
    def embed_loss_and_grads(state, x, y):
        def loss(x, state):  # cosine distance, as in a cross-identity loss
            ex = fn(x, state=state)
            return jnp.mean(1.0 - jnp.sum(ex * fn(y, state=state), -1)), ex
        return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, state)

    (loss, out), (gx, gs) = embed_loss_and_grads(fn.state, x, y)
    out = np.asarray(out)
    assert out.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
    gx = np.asarray(gx)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(gx)) and np.abs(gx).max() > 0
    # pixels outside the 0.8 centre crop (crop 77x77 at offset 9) get no gradient
    assert np.abs(gx[:, :8]).max() == 0 and np.abs(gx[:, 30:60, 30:60]).max() > 0
    # frozen network: no gradient reaches its weights
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(gs))


def test_identity_fn_rejects_bad_crop(tiny_model):
    with pytest.raises(ConfigError, match="crop_fraction"):
        A.arcface_identity_fn(tiny_model, crop_fraction=0.0)
