"""Stage-2 MotionDiT: shapes, zero-init output, null-embedding dropout, CFG in one batched call,
dropout/audio-cut statistics, functional jit + gradients, full-size parameter count."""
import importlib.util
import itertools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vasa_jax.errors import ConfigError
from vasa_jax.models.motion_dit import (CONDITIONS, DEFAULT_DROP_PROBS, MotionDiT, build_model,
                                        count_params, guided_x0, sample_audio_cut,
                                        sample_drop_masks, timestep_embedding)

_CONFIG_PATH = pathlib.Path(__file__).resolve().parents[1] / "configs" / "motion.py"
B = 4


def _load_config(arg="tiny"):
    spec = importlib.util.spec_from_file_location("motion_config", _CONFIG_PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def _make_test_model(**overrides):
    cfg = _load_config("tiny").model
    cfg.update(overrides)
    return cfg, build_model(cfg, nnx.Rngs(0))


def _with_random_head(model, seed=7):
    """A copy whose (zero-initialised) head has random weights, so outputs depend on inputs."""
    model = nnx.clone(model)
    k = model.head.kernel
    k[...] = np.random.default_rng(seed).normal(size=k.shape).astype(np.float32) / math.sqrt(
        k.shape[0])
    return model


_ARG_NAMES = ("x_t", "t", "audio", "x_pre", "a_pre", "gaze", "distance", "emotion")


def _jitted(model):
    """The model's call signature, run as jax.jit over (graphdef, state): one compile per input
    structure instead of op-by-op eager dispatch (much faster on 2 CPU cores); numpy out, so
    the checks compile nothing either. Drop dicts are completed with all-False masks so that
    different dropped conditions share one trace."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, args, drop, audio_valid, history_valid):
        return nnx.merge(graphdef, state)(**args, drop=drop, audio_valid=audio_valid,
                                          history_valid=history_valid)

    def call(*args, drop=None, audio_valid=None, history_valid=None, **kwargs):
        kwargs.update(zip(_ARG_NAMES, args))
        b = kwargs["x_t"].shape[0]
        full = {c: np.zeros((b,), bool) for c in CONDITIONS}
        full.update(drop or {})
        return np.asarray(forward(state, kwargs, full, audio_valid, history_valid))

    return call


@pytest.fixture(scope="module")
def fresh():
    """(cfg, freshly initialised tiny model)."""
    return _make_test_model()


@pytest.fixture(scope="module")
def tiny(fresh):
    """(cfg, jitted call of the model with a random head, that model)."""
    cfg, model = fresh
    model = _with_random_head(model)
    return cfg, _jitted(model), model


def _inputs(cfg, seed, b=B):
    """Random model inputs (numpy RNG: no eager JAX ops to compile)."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    return dict(
        x_t=normal(b, cfg.window, cfg.motion_dim),
        t=jnp.asarray(rng.integers(0, 1000, b), jnp.int32),
        audio=normal(b, cfg.window, cfg.audio_dim),
        x_pre=normal(b, cfg.history, cfg.motion_dim),
        a_pre=normal(b, cfg.history, cfg.audio_dim),
        gaze=normal(b, 2),
        distance=normal(b, 1),
        emotion=jnp.asarray(np.eye(cfg.emotion_dim, dtype=np.float32)[
            rng.integers(0, cfg.emotion_dim, b)]),
    )


# Which inputs carry each condition (history covers x_pre and a_pre).
_COND_INPUTS = {"audio": ("audio",), "gaze": ("gaze",), "distance": ("distance",),
                "emotion": ("emotion",), "history": ("x_pre", "a_pre")}


def _allclose(a, b, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=0)


def test_shape_and_zero_init(fresh):
    cfg, model = fresh
    inp = _inputs(cfg, 0)
    out = _jitted(model)(**inp)
    assert out.shape == (B, cfg.window, cfg.motion_dim) and out.dtype == jnp.float32
    # Zero-initialised head: a fresh model predicts x̂₀ = 0 exactly.
    assert np.all(np.asarray(out) == 0.0)


def test_timestep_embedding():
    emb = timestep_embedding(jnp.array([0, 3, 999]), 16)
    assert emb.shape == (3, 16)
    _allclose(emb[0], jnp.concatenate([jnp.ones(8), jnp.zeros(8)]))
    # Float and integer steps agree.
    _allclose(timestep_embedding(jnp.array([3.0]), 16), emb[1:2])


@pytest.mark.parametrize("cond", CONDITIONS)
def test_drop_replaces_condition_by_null(tiny, cond):
    cfg, model, _ = tiny
    inp = _inputs(cfg, 1)
    base = model(**inp)
    drop = {cond: np.array([False, True, False, False])}
    dropped = model(**inp, drop=drop)
    rows = np.array([0, 2, 3])
    _allclose(dropped[rows], base[rows])          # other rows untouched
    assert np.abs(dropped[1] - base[1]).max() > 1e-3   # the condition mattered
    # With the drop mask, the condition's value no longer matters: same as feeding the null.
    other = dict(inp)
    for name in _COND_INPUTS[cond]:
        other[name] = inp[name] + 3.0 * _inputs(cfg, 9)[name]
    changed = model(**other, drop=drop)
    _allclose(changed[1], dropped[1])
    assert np.abs(changed[0] - dropped[0]).max() > 1e-3


def test_history_absent_equals_history_null(tiny):
    cfg, model, _ = tiny
    inp = _inputs(cfg, 2)
    all_dropped = model(**inp, drop={"history": np.ones((B,), bool)})
    _allclose(model(**{**inp, "x_pre": None, "a_pre": None}), all_dropped)
    _allclose(model(**inp, history_valid=np.zeros((B,), bool)), all_dropped)
    _allclose(model(**inp, history_valid=np.zeros((B, cfg.history), bool)), all_dropped)
    # Per-position validity (the pipeline's history_mask): padded positions' values don't matter.
    hv = np.arange(cfg.history)[None, :] >= np.array([0, 1, 2, 3])[:, None]
    out = model(**inp, history_valid=hv)
    noisy = {**inp, "x_pre": np.where(hv[..., None], inp["x_pre"], 9.0),
             "a_pre": np.where(hv[..., None], inp["a_pre"], -9.0)}
    _allclose(model(**noisy, history_valid=hv), out)


def test_audio_frame_masks(tiny):
    cfg, model, _ = tiny
    inp = _inputs(cfg, 3)
    valid = np.asarray(sample_audio_cut(jax.random.key(4), B, cfg.window, prob=1.0))
    out = model(**inp, audio_valid=valid)
    # Audio in cut frames does not matter; a per-frame drop mask is the same thing.
    noisy = {**inp, "audio": np.where(valid[..., None], inp["audio"], 5.0)}
    _allclose(model(**noisy, audio_valid=valid), out)
    _allclose(model(**inp, drop={"audio": ~valid}), out)
    assert np.abs(out - model(**inp)).max() > 1e-4


def test_drop_mask_rates_and_independence():
    n = 20_000
    masks = {c: np.asarray(m) for c, m in sample_drop_masks(jax.random.key(5), n).items()}
    assert set(masks) == set(CONDITIONS)
    rates = {}
    for c, m in masks.items():
        assert m.shape == (n,) and m.dtype == bool
        p = DEFAULT_DROP_PROBS[c]
        rates[c] = m.mean()
        assert abs(rates[c] - p) < 4 * math.sqrt(p * (1 - p) / n), (c, rates[c], p)
    for a, b in itertools.combinations(CONDITIONS, 2):
        pab = DEFAULT_DROP_PROBS[a] * DEFAULT_DROP_PROBS[b]
        joint = (masks[a] & masks[b]).mean()
        assert abs(joint - pab) < 4 * math.sqrt(pab * (1 - pab) / n), (a, b, joint, pab)
    # Overrides apply per condition; the rest keep their defaults.
    custom = sample_drop_masks(jax.random.key(6), n, {"gaze": 0.3, "history": 0.0})
    assert abs(np.asarray(custom["gaze"]).mean() - 0.3) < 4 * math.sqrt(0.21 / n)
    assert not np.asarray(custom["history"]).any()
    with pytest.raises(ConfigError, match="unknown condition"):
        sample_drop_masks(jax.random.key(0), 4, {"pose": 0.1})


def test_audio_cut_masks():
    n, w, prob = 20_000, 8, 0.3
    valid = np.asarray(sample_audio_cut(jax.random.key(7), n, w, prob))
    assert valid.shape == (n, w) and valid.dtype == bool
    assert valid[:, 0].all()                             # at least one frame keeps its audio
    assert (np.diff(valid.astype(int), axis=1) <= 0).all()  # a valid prefix, then cut frames
    cut_rows = ~valid[:, -1]
    assert abs(cut_rows.mean() - prob) < 4 * math.sqrt(prob * (1 - prob) / n)
    positions = valid[cut_rows].sum(axis=1)
    assert set(np.unique(positions)) == set(range(1, w))  # cut uniform over 1..W-1
    assert np.asarray(sample_audio_cut(jax.random.key(8), 16, w, 0.0)).all()
    assert np.asarray(sample_audio_cut(jax.random.key(8), 16, 1, 1.0)).all()


def _conds(inp):
    return {k: v for k, v in inp.items() if k not in ("x_t", "t")}


def test_cfg_zero_scales_equal_conditional(tiny):
    cfg, model, _ = tiny
    inp = _inputs(cfg, 10)
    cond = model(**inp)
    # Python zeros are left out statically: exactly the conditional call.
    guided = guided_x0(model, inp["x_t"], inp["t"], _conds(inp),
                       {c: 0.0 for c in CONDITIONS})
    np.testing.assert_array_equal(np.asarray(guided), np.asarray(cond))
    np.testing.assert_array_equal(
        np.asarray(guided_x0(model, inp["x_t"], inp["t"], _conds(inp), {})), np.asarray(cond))
    # Array zeros (e.g. traced scales) keep all 1 + 5 variants in the batch: equal up to
    # float rounding of the larger batch.
    guided = guided_x0(model, inp["x_t"], inp["t"], _conds(inp),
                       {c: jnp.float32(0.0) for c in CONDITIONS})
    np.testing.assert_allclose(np.asarray(guided), np.asarray(cond), rtol=1e-6, atol=1e-6)


def test_cfg_matches_separate_calls(tiny):
    cfg, model, module = tiny
    inp = _inputs(cfg, 11)
    ones = np.ones((B,), bool)
    cond = model(**inp)
    lam = 0.5
    guided = guided_x0(model, inp["x_t"], inp["t"], _conds(inp), {"audio": lam})
    _allclose(guided, (1 + lam) * cond - lam * model(**inp, drop={"audio": ones}), atol=1e-5)
    # Two conditions (VASA-1's λ_A = 0.5, λ_g = 1), with a base history mask carried through
    # every variant, through a functional apply under jit.
    hv = np.array([False, True, True, True])
    graphdef, state = nnx.split(module)

    @jax.jit
    def sample(state, x_t, t, conds):   # guided_x0 given the NNX module itself
        return guided_x0(nnx.merge(graphdef, state), x_t, t, conds, {"audio": 0.5, "gaze": 1.0})

    guided = sample(state, inp["x_t"], inp["t"], {**_conds(inp), "history_valid": hv})
    c = model(**inp, history_valid=hv)
    ua = model(**inp, history_valid=hv, drop={"audio": ones})
    ug = model(**inp, history_valid=hv, drop={"gaze": ones})
    _allclose(guided, 2.5 * c - 0.5 * ua - 1.0 * ug, atol=1e-5)


def test_cfg_single_batched_call(tiny):
    cfg, model, _ = tiny
    inp = _inputs(cfg, 12)
    batch_sizes = []

    def apply(*args, **kwargs):
        batch_sizes.append(args[0].shape[0])
        return model(*args, **kwargs)

    guided_x0(apply, inp["x_t"], inp["t"], _conds(inp), {"audio": 0.5, "gaze": 1.0,
                                                         "emotion": 0.2})
    assert batch_sizes == [4 * B]


def test_functional_jit_and_gradient(fresh):
    cfg, model = fresh
    inp = _inputs(cfg, 13)
    drop = sample_drop_masks(jax.random.key(14), B)
    valid = sample_audio_cut(jax.random.key(15), B, cfg.window, 0.5)
    graphdef, state = nnx.split(model)
    target = _inputs(cfg, 16)["x_t"]

    def loss_fn(state, inp, drop, valid):
        pred = nnx.merge(graphdef, state)(**inp, drop=drop, audio_valid=valid)
        return jnp.mean((pred - target) ** 2)

    @jax.jit
    def sgd_step(state, inp, drop, valid):
        loss, grads = jax.value_and_grad(loss_fn)(state, inp, drop, valid)
        return loss, grads, jax.tree.map(lambda p, g: p - 0.5 * g, state, grads)

    loss, grads, stepped = sgd_step(state, inp, drop, valid)
    _allclose(loss, np.mean(np.asarray(target) ** 2))   # zero prediction at init
    grads = jax.tree.map(np.asarray, grads)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert np.abs(grads["head"]["kernel"][...]).max() > 0
    # After one step on the (zero-init) head the trunk gets gradient too.
    loss2, grads2, _ = sgd_step(stepped, inp, drop, valid)
    grads2 = jax.tree.map(np.asarray, grads2)
    assert float(loss2) < float(loss)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads2))
    assert np.abs(grads2["blocks"][0]["attn"]["qkv"]["kernel"][...]).max() > 0


def _expected_params(m):
    w, h = m.width, int(m.width * m.mlp_ratio)
    lin = lambda i, o: i * o + o  # noqa: E731
    block = 2 * 2 * w + lin(w, 3 * w) + lin(w, w) + lin(w, h) + lin(h, w)
    return (lin(m.time_freq_dim, w) + lin(w, w)
            + lin(2, w) + lin(1, w) + lin(m.emotion_dim, w)
            + 2 * lin(m.motion_dim, w) + 2 * lin(m.audio_dim, w)
            + 5 * w + (4 + m.history + m.window) * w
            + m.depth * block + 2 * w + lin(w, m.motion_dim))


def test_parameter_counts(fresh):
    tiny_cfg, model = fresh
    built = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count_params(tiny_cfg) == built == _expected_params(tiny_cfg)
    full = _load_config("full")
    n = count_params(full)   # nnx.eval_shape inside: nothing allocated
    assert n == _expected_params(full.model)
    assert 25e6 < n < 30e6, n   # VASA-1 reports ≈29M with its feature sizes
    assert (full.model.depth, full.model.width, full.model.heads) == (8, 512, 8)


def test_config_errors(fresh):
    with pytest.raises(ConfigError, match="heads"):
        _make_test_model(heads=3)
    with pytest.raises(ConfigError, match="model.depth"):
        _make_test_model(depth=0)
    with pytest.raises(ValueError, match="unknown motion variant"):
        _load_config("huge")
    cfg, model = fresh
    with pytest.raises(ConfigError, match="unknown drop"):
        model(**_inputs(cfg, 0), drop={"pose": jnp.ones((B,), bool)})


def test_no_history_config():
    cfg, model = _make_test_model(history=0)
    assert isinstance(model, MotionDiT)
    model = _with_random_head(model)
    inp = _inputs(cfg, 17)
    out = _jitted(model)(**{**inp, "x_pre": None, "a_pre": None})
    assert out.shape == (B, cfg.window, cfg.motion_dim)
