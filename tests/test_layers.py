"""layers.conv3d_as_2d: 3D convolutions computed as one 2D convolution on the CPU backend must
equal XLA's own 3D convolution and torch's conv3d, values and gradients, on fresh random inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from vasa_jax.models.layers import conv, conv3d_as_2d

_DN = ("NDHWC", "DHWIO", "NDHWC")


def _lax(x, k, strides, padding):
    return jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=_DN)


def _conv_ranks(fn, *args):
    """Ranks of the inputs of every convolution in fn's jaxpr (5: a 3D conv, 4: a 2D one)."""
    eqns = jax.make_jaxpr(fn)(*args).jaxpr.eqns
    return [e.invars[0].aval.ndim for e in eqns if e.primitive.name == "conv_general_dilated"]


def _folded(x, k, strides, padding):
    dn = jax.lax.conv_dimension_numbers(x.shape, k.shape, _DN)
    return conv3d_as_2d(x, k, strides, padding, dimension_numbers=dn)


CASES = [  # kernel, strides, padding
    ((3, 3, 3), (1, 1, 1), "SAME"),
    ((1, 1, 1), (1, 1, 1), "SAME"),
    ((3, 1, 3), (1, 1, 1), "SAME"),
    ((3, 3, 3), (1, 2, 2), "SAME"),
    ((3, 3, 3), (1, 1, 1), "VALID"),
    ((3, 3, 3), (1, 1, 1), ((2, 0), (1, 1), (0, 2))),
    ((2, 3, 3), (1, 1, 1), "SAME"),  # even depth kernel: SAME pads (0, 1)
]


@pytest.mark.parametrize("kernel,strides,padding", CASES)
def test_conv3d_as_2d_equals_xla_3d_conv(kernel, strides, padding):
    rng = np.random.default_rng(sum(kernel) + strides[1])
    x = jnp.asarray(rng.standard_normal((2, 4, 6, 5, 3)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((*kernel, 3, 4)), jnp.float32)
    ref = _lax(x, k, strides, padding)
    out = _folded(x, k, strides, padding)
    assert _conv_ranks(lambda x, k: _folded(x, k, strides, padding), x, k) == [4]  # folded
    assert out.shape == ref.shape
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=1e-5)
    w = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
    g_ref = jax.grad(lambda x, k: jnp.sum(_lax(x, k, strides, padding) * w), (0, 1))(x, k)
    g_out = jax.grad(lambda x, k: jnp.sum(_folded(x, k, strides, padding) * w), (0, 1))(x, k)
    for a, b in zip(g_out, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-5)


def test_conv_layer_matches_torch_conv3d_and_keeps_nnx_parameters():
    rng = np.random.default_rng(5)
    layer = conv(3, 4, (3, 3, 3), rngs=nnx.Rngs(0))
    plain = nnx.Conv(3, 4, (3, 3, 3), rngs=nnx.Rngs(0))
    assert layer.conv_general_dilated is conv3d_as_2d
    assert layer.kernel.shape == plain.kernel.shape and layer.bias.shape == plain.bias.shape
    x = rng.standard_normal((2, 4, 6, 5, 3)).astype(np.float32)
    out = np.asarray(jax.jit(lambda x: layer(x))(jnp.asarray(x)))
    np.testing.assert_allclose(out, np.asarray(plain(jnp.asarray(x))), atol=1e-5, rtol=1e-5)
    # torch: NCDHW input, OIDHW weight; padding 1 is SAME for a 3-wide kernel.
    kt = torch.from_numpy(np.asarray(layer.kernel[...]).transpose(4, 3, 0, 1, 2).copy())
    ref = torch.nn.functional.conv3d(torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy()), kt,
                                     torch.from_numpy(np.array(layer.bias[...])), padding=1)
    np.testing.assert_allclose(out, ref.numpy().transpose(0, 2, 3, 4, 1), atol=1e-5, rtol=1e-5)
    # 2D kernels keep nnx's own convolution.
    assert conv(3, 4, (3, 3), rngs=nnx.Rngs(0)).conv_general_dilated is not conv3d_as_2d


def test_cases_it_does_not_fold_go_to_xla_unchanged():
    """Depth stride 2 and a dilated kernel take lax's own path: same result as lax."""
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.standard_normal((1, 6, 5, 5, 2)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 3, 2, 3)), jnp.float32)
    dn = jax.lax.conv_dimension_numbers(x.shape, k.shape, _DN)
    assert _conv_ranks(lambda x, k: conv3d_as_2d(x, k, (2, 1, 1), "SAME",
                                                 dimension_numbers=dn), x, k) == [5]
    np.testing.assert_allclose(np.asarray(conv3d_as_2d(x, k, (2, 1, 1), "SAME",
                                                       dimension_numbers=dn)),
                               np.asarray(_lax(x, k, (2, 1, 1), "SAME")), atol=1e-5)
    dil = conv3d_as_2d(x, k, (1, 1, 1), "SAME", rhs_dilation=(2, 1, 1), dimension_numbers=dn)
    ref = jax.lax.conv_general_dilated(x, k, (1, 1, 1), "SAME", rhs_dilation=(2, 1, 1),
                                       dimension_numbers=_DN)
    np.testing.assert_allclose(np.asarray(dil), np.asarray(ref), atol=1e-5)
