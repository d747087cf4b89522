"""VGG19 features against a plain-torch torchvision-layout reference; perceptual and MS-SSIM losses."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
import torch
from flax import nnx
from safetensors.torch import save_file

from vasa_jax.models import vgg as V

# torchvision's vgg19 cfg "E": ints are conv widths, "M" a 2x2 max-pool.
_CFG_E = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"]


def _torch_vgg19_features(seed: int) -> torch.nn.Sequential:
    """torchvision.models.vgg19().features written out, same nn.Sequential indices."""
    torch.manual_seed(seed)
    layers, cin = [], 3
    for v in _CFG_E:
        if v == "M":
            layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = torch.nn.Conv2d(cin, v, kernel_size=3, padding=1)
            torch.nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.normal_(conv.bias, std=0.1)
            layers += [conv, torch.nn.ReLU(inplace=True)]
            cin = v
    return torch.nn.Sequential(*layers).eval()


def _torch_features(net, images_nhwc: np.ndarray) -> list[np.ndarray]:
    mean = torch.tensor(V.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(V.IMAGENET_STD).view(1, 3, 1, 1)
    h = (torch.from_numpy(images_nhwc).permute(0, 3, 1, 2) + 1.0) * 0.5
    h = (h - mean) / std
    out = []
    with torch.no_grad():
        for i, layer in enumerate(net):
            h = layer(h)
            if i in (1, 6, 11, 20, 29):
                out.append(h.permute(0, 2, 3, 1).numpy().copy())
            if i == 29:
                return out
    return out


def _state_dict_numpy(net) -> dict[str, np.ndarray]:
    return {f"features.{k}": v.numpy() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def torch_net():
    return _torch_vgg19_features(seed=0)


@pytest.fixture(scope="module")
def weight_files(torch_net, tmp_path_factory):
    d = tmp_path_factory.mktemp("vgg")
    sd = {f"features.{k}": v.contiguous() for k, v in torch_net.state_dict().items()}
    save_file(sd, str(d / "vgg19.safetensors"))
    np.savez(d / "vgg19.npz", **_state_dict_numpy(torch_net))
    return {"safetensors": d / "vgg19.safetensors", "npz": d / "vgg19.npz"}


def _images(seed, shape=(2, 64, 64, 3)):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_features_match_torch(fmt, torch_net, weight_files):
    model = V.load_torchvision_vgg19(V.VGG19(nnx.Rngs(1)), str(weight_files[fmt]))
    x = _images(seed=2)
    ours = model.features(jnp.asarray(x))
    ref = _torch_features(torch_net, x)
    assert len(ours) == 5
    for name, a, b in zip(V.FEATURE_NAMES, ours, ref):
        assert a.shape == b.shape, name
        rel = float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))
        print(f"{fmt} {name}: relative error {rel:.2e}")
        assert rel < 1e-4, f"{name}: relative error {rel:.2e}"


def _write_npz(path, tensors):
    np.savez(path, **tensors)
    return str(path)


def test_loader_missing_key(torch_net, tmp_path):
    sd = _state_dict_numpy(torch_net)
    del sd["features.21.bias"]
    with pytest.raises(ValueError, match=r"features\.21\.bias") as e:
        V.load_torchvision_vgg19(V.VGG19(nnx.Rngs(0)), _write_npz(tmp_path / "w.npz", sd))
    assert "\n" not in str(e.value)


def test_loader_wrong_shape(torch_net, tmp_path):
    sd = _state_dict_numpy(torch_net)
    sd["features.5.weight"] = sd["features.5.weight"][:, :32]
    with pytest.raises(ValueError, match=r"features\.5\.weight.*shape") as e:
        V.load_torchvision_vgg19(V.VGG19(nnx.Rngs(0)), _write_npz(tmp_path / "w.npz", sd))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["absent.safetensors", "absent.npz"])
def test_loader_missing_file(tmp_path, name):
    path = str(tmp_path / name)
    with pytest.raises(ValueError, match="not found") as e:
        V.load_torchvision_vgg19(V.VGG19(nnx.Rngs(0)), path)
    assert path in str(e.value) and "\n" not in str(e.value)


def test_loader_unsupported_format(tmp_path):
    path = tmp_path / "vgg19.pth"
    path.write_bytes(b"\x80\x02")
    with pytest.raises(ValueError, match=r"\.safetensors or \.npz"):
        V.load_torchvision_vgg19(V.VGG19(nnx.Rngs(0)), str(path))


def test_perceptual_loss_jit_zero_positive_differentiable():
    graphdef, state = nnx.split(V.VGG19(nnx.Rngs(3)))
    x, y = jnp.asarray(_images(4, (1, 64, 64, 3))), jnp.asarray(_images(5, (1, 64, 64, 3)))

    @jax.jit
    def loss_and_grad(state, x, y):
        return jax.value_and_grad(lambda x: V.perceptual_loss((graphdef, state), x, y))(x)

    same, _ = loss_and_grad(state, x, x)
    assert float(same) == 0.0
    loss, grad = loss_and_grad(state, x, y)
    assert float(loss) > 0
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    # frozen VGG: no gradient flows into its parameters
    g_state = jax.grad(lambda s: V.perceptual_loss((graphdef, s), x, y, scales=(1,)))(state)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(g_state))


def test_make_perceptual_with_weights(weight_files):
    loss = V.make_perceptual(str(weight_files["npz"]), scales=(1, 0.5))
    x, y = jnp.asarray(_images(6, (1, 32, 32, 3))), jnp.asarray(_images(7, (1, 32, 32, 3)))
    assert float(loss(x, x)) == 0.0
    assert float(jax.jit(loss)(x, y)) > 0


def test_make_perceptual_falls_back_to_ms_ssim(caplog):
    with caplog.at_level(logging.INFO, logger=V.__name__):
        loss = V.make_perceptual(None)
    assert loss is V.ms_ssim_loss
    assert sum("MS-SSIM" in r.getMessage() for r in caplog.records) == 1


def test_ms_ssim_scales_shrink_for_small_images():
    assert V.ms_ssim_scales(64) == 3
    assert V.ms_ssim_scales(256) == 5
    assert V.ms_ssim_scales(16) == 1


def test_ms_ssim_loss_monotone_in_noise():
    rng = np.random.default_rng(8)
    # smooth image so SSIM is far from its floor
    base = jax.image.resize(jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32),
                            (2, 64, 64, 3), "linear")
    noise = jnp.asarray(rng.standard_normal(base.shape), jnp.float32)
    assert float(V.ms_ssim_loss(base, base)) == pytest.approx(0.0, abs=1e-6)
    losses = [float(V.ms_ssim_loss(base, jnp.clip(base + s * noise, -1, 1))) for s in (0.05, 0.2, 0.6)]
    assert 0 < losses[0] < losses[1] < losses[2] <= 1.0, losses
    grad = jax.jit(jax.grad(lambda a: V.ms_ssim_loss(a, base)))(base + 0.2 * noise)
    assert np.all(np.isfinite(np.asarray(grad)))


def _ssim_reference(x, y, size=11, sigma=1.5):
    """Wang et al. SSIM in float64 with scipy 'valid' 2D correlation; x, y: [H, W, C] in [0, 1]."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-r ** 2 / (2 * sigma ** 2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    maps = []
    for c in range(x.shape[-1]):
        a, b = x[..., c].astype(np.float64), y[..., c].astype(np.float64)
        f = lambda im: scipy.signal.correlate2d(im, win, mode="valid")  # noqa: E731
        ma, mb = f(a), f(b)
        va, vb, cov = f(a * a) - ma ** 2, f(b * b) - mb ** 2, f(a * b) - ma * mb
        maps.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(maps))


def test_ssim_matches_scipy_reference():
    rng = np.random.default_rng(9)
    x = rng.uniform(-1, 1, (2, 40, 48, 3)).astype(np.float32)
    y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
    ours = np.asarray(V.ssim(jnp.asarray(x), jnp.asarray(y)))
    ref = [_ssim_reference((x[i] + 1) / 2, (y[i] + 1) / 2) for i in range(2)]
    np.testing.assert_allclose(ours, ref, atol=1e-4)
