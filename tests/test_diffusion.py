"""Diffusion math (vasa_jax.diffusion) against diffusers' DDIM/DDPM schedulers (torch, CPU)."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from vasa_jax import diffusion as D
from vasa_jax.errors import ConfigError

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402

SHAPE = (2, 16, 8)  # [B, W, D]
SCHEDULE_ARGS = {
    "linear": dict(beta_start=1e-4, beta_end=0.02),
    "scaled_linear": dict(beta_start=8.5e-4, beta_end=0.012),
    "squaredcos_cap_v2": dict(beta_start=1e-4, beta_end=0.02),
}


def _rel(ours, ref):
    """Max abs error relative to the reference's max magnitude."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30)


def _pair(beta_schedule, inject=False, **ddim_kw):
    """(our Schedule, diffusers DDIMScheduler) with the same config.

    inject=True replaces diffusers' float32-cumprod alphas_cumprod by ours (computed in float64),
    which isolates the step math from the 1.3e-5 float32 rounding of diffusers' cosine alpha at t=999.
    """
    args = SCHEDULE_ARGS[beta_schedule]
    ours = D.make_schedule(1000, beta_schedule, **args)
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, **args, **ddim_kw)
    if inject:
        ref.alphas_cumprod = torch.tensor(np.asarray(ours.alphas_cumprod))
    return ours, ref


_ddim_step = jax.jit(D.ddim_step, static_argnames=("eta", "clip_sample", "prediction_type"))


def _randn(rng, shape=SHAPE):
    return rng.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------- (a) schedule
@pytest.mark.parametrize("beta_schedule", list(SCHEDULE_ARGS))
def test_schedule_matches_diffusers(beta_schedule):
    ours, ref = _pair(beta_schedule)
    assert ours.num_train_timesteps == 1000
    assert ours.betas.dtype == jnp.float32 and ours.alphas_cumprod.shape == (1000,)
    np.testing.assert_allclose(np.asarray(ours.betas), ref.betas.numpy(), rtol=1e-6)
    # Ours are 1 - beta and cumprod in float64; diffusers' float32 `1 - 0.999` at the capped cosine
    # tail (t = 999) is off by 1.3e-5 relative, elsewhere the two agree to ~1e-6.
    np.testing.assert_allclose(np.asarray(ours.alphas), ref.alphas.numpy(), rtol=2e-5)
    np.testing.assert_allclose(np.asarray(ours.alphas_cumprod), ref.alphas_cumprod.numpy(), rtol=3e-5)
    assert float(ours.final_alpha_cumprod) == float(ref.final_alpha_cumprod) == 1.0
    no_one = D.make_schedule(1000, beta_schedule, **SCHEDULE_ARGS[beta_schedule], set_alpha_to_one=False)
    assert float(no_one.final_alpha_cumprod) == pytest.approx(float(ref.alphas_cumprod[0]), rel=1e-6)


def test_schedule_is_pytree_and_bad_config():
    s = D.make_schedule(100)
    leaves, treedef = jax.tree_util.tree_flatten(s)
    assert len(leaves) == 4
    s2 = jax.tree_util.tree_unflatten(treedef, leaves)
    assert jax.jit(lambda sch: sch.num_train_timesteps + 0 * sch.betas.sum())(s2) == 100
    with pytest.raises(ConfigError, match="beta_schedule"):
        D.make_schedule(1000, "cosine")
    with pytest.raises(ConfigError, match="num_steps"):
        D.ddim_timesteps(s, 101)
    with pytest.raises(ConfigError, match="spacing"):
        D.ddim_timesteps(s, 10, spacing="uniform")


# --------------------------------------------------------------------------------- (b) timesteps
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_ddim_timesteps_match_diffusers(spacing, steps_offset):
    for n in (1, 3, 7, 10, 25, 50, 999, 1000):
        ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=steps_offset)
        ref.set_timesteps(n)
        ours = D.ddim_timesteps(1000, n, spacing, steps_offset)
        assert ours.dtype == np.int64 and ours.shape == (n,)
        np.testing.assert_array_equal(ours, ref.timesteps.numpy(), err_msg=f"{spacing} n={n}")


def test_prev_timestep_rules():
    ts = D.ddim_timesteps(1000, 10, "leading")
    np.testing.assert_array_equal(D.ddim_prev_timesteps(1000, ts, "diffusers"),
                                  D.ddim_prev_timesteps(1000, ts, "next") - np.r_[[0] * 9, 99])
    np.testing.assert_array_equal(D.ddim_prev_timesteps(1000, ts, "next"), np.r_[ts[1:], -1])
    # trailing/linspace: diffusers' t - T//n is not the next listed timestep.
    ts = D.ddim_timesteps(1000, 10, "linspace")
    assert D.ddim_prev_timesteps(1000, ts, "diffusers")[0] == 899 and ts[1] == 888


# ------------------------------------------------------------------------------- (c) single step
@pytest.mark.parametrize("beta_schedule", list(SCHEDULE_ARGS))
@pytest.mark.parametrize("prediction_type,clip", [("sample", False), ("sample", True),
                                                  ("epsilon", False), ("v_prediction", False),
                                                  ("epsilon", True)])
@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_ddim_step_matches_diffusers(beta_schedule, prediction_type, clip, eta):
    inject = beta_schedule == "squaredcos_cap_v2"
    ours, ref = _pair(beta_schedule, inject=inject, prediction_type=prediction_type, clip_sample=clip)
    ref.set_timesteps(50)  # diffusers then steps t -> t - 20
    rng = np.random.default_rng(0)
    worst = 0.0
    for t in (999, 980, 501, 260, 40, 19, 0):  # 19 and 0 land at prev < 0 -> final alpha = 1
        out, x, nz = _randn(rng), _randn(rng), _randn(rng)
        want = ref.step(torch.from_numpy(out), t, torch.from_numpy(x), eta=eta,
                        variance_noise=torch.from_numpy(nz) if eta else None).prev_sample.numpy()
        got = _ddim_step(ours, jnp.asarray(out), t, t - 20, jnp.asarray(x), eta=eta,
                         noise=jnp.asarray(nz) if eta else None, clip_sample=clip,
                         prediction_type=prediction_type)
        assert got.shape == SHAPE and got.dtype == jnp.float32
        worst = max(worst, _rel(got, want))
    assert worst < 1e-5, worst


def test_ddim_step_alpha_not_one_and_clipped_output():
    """set_alpha_to_one=False (final step uses abar_0) and use_clipped_model_output, vs diffusers."""
    ours = D.make_schedule(set_alpha_to_one=False)
    ref = DDIMScheduler(num_train_timesteps=1000, set_alpha_to_one=False, clip_sample=True,
                        prediction_type="sample")
    ref.set_timesteps(10)
    rng = np.random.default_rng(3)
    for t, use_clipped in [(0, False), (99, True), (500, True)]:
        out, x, nz = 2 * _randn(rng), _randn(rng), _randn(rng)
        want = ref.step(torch.from_numpy(out), t, torch.from_numpy(x), eta=0.8,
                        use_clipped_model_output=use_clipped,
                        variance_noise=torch.from_numpy(nz)).prev_sample.numpy()
        got = D.ddim_step(ours, jnp.asarray(out), t, t - 100, jnp.asarray(x), 0.8, jnp.asarray(nz),
                          True, use_clipped_model_output=use_clipped)
        assert _rel(got, want) < 1e-5, (t, _rel(got, want))


def test_ddim_step_per_sample_timesteps():
    s = D.make_schedule()
    rng = np.random.default_rng(1)
    out, x = jnp.asarray(_randn(rng)), jnp.asarray(_randn(rng))
    t, p = jnp.array([900, 10]), jnp.array([880, -10])
    both = D.ddim_step(s, out, t, p, x)
    for i in range(2):
        one = D.ddim_step(s, out[i:i + 1], int(t[i]), int(p[i]), x[i:i + 1])
        np.testing.assert_allclose(both[i:i + 1], one, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="noise"):
        D.ddim_step(s, out, 500, 480, x, eta=1.0)


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
def test_ddpm_step_matches_diffusers(prediction_type):
    ours = D.make_schedule()
    ref = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False)
    ref.set_timesteps(50)
    ts = ref.timesteps.numpy()
    rng = np.random.default_rng(2)
    worst = 0.0
    for i in (0, 10, 30, 48, 49):
        t, prev = int(ts[i]), int(ts[i + 1]) if i + 1 < len(ts) else -1
        out, x = _randn(rng), _randn(rng)
        want = ref.step(torch.from_numpy(out), t, torch.from_numpy(x),
                        generator=torch.Generator().manual_seed(i)).prev_sample.numpy()
        nz = torch.randn(SHAPE, generator=torch.Generator().manual_seed(i)).numpy()
        got = D.ddpm_step(ours, jnp.asarray(out), t, prev, jnp.asarray(x), jnp.asarray(nz),
                          prediction_type=prediction_type)
        worst = max(worst, _rel(got, want))
    assert worst < 1e-5, worst


# -------------------------------------------------------------------------------- (d) full loop
A = np.random.default_rng(123).standard_normal((8, 8)).astype(np.float32) / np.sqrt(8)


def _toy_np(x, t):
    """Deterministic stand-in for the DiT: tanh(x A) + 0.3 cos(t / 150), on [B, W, D]."""
    return np.tanh(x @ A) + np.float32(0.3) * np.cos(np.float32(t) / np.float32(150.0))


def _toy_jax(x, t):
    return jnp.tanh(x @ jnp.asarray(A)) + 0.3 * jnp.cos(t.astype(jnp.float32) / 150.0)


@pytest.mark.parametrize("num_steps,spacing,prediction_type,eta", [
    (1, "leading", "sample", 0.0),
    (50, "leading", "sample", 0.0),
    (25, "trailing", "sample", 0.0),
    (10, "linspace", "sample", 0.0),
    (10, "trailing", "epsilon", 0.0),
    (10, "leading", "v_prediction", 0.0),
    (10, "leading", "sample", 1.0),
    (25, "trailing", "sample", 0.5),
])
def test_ddim_sample_matches_diffusers_loop(num_steps, spacing, prediction_type, eta):
    ours, ref = _pair("linear", prediction_type=prediction_type, clip_sample=False,
                      timestep_spacing=spacing)
    ref.set_timesteps(num_steps)
    x_T = np.random.default_rng(7).standard_normal(SHAPE).astype(np.float32)
    rng = jax.random.key(3)
    # The noise our sampler draws at step i (documented): normal(split(rng, n)[i], x.shape).
    noises = [np.asarray(jax.random.normal(k, SHAPE, jnp.float32)) for k in jax.random.split(rng, num_steps)]

    x = torch.from_numpy(x_T)
    for i, t in enumerate(ref.timesteps):
        out = torch.from_numpy(_toy_np(x.numpy(), int(t)))
        x = ref.step(out, t, x, eta=eta,
                     variance_noise=torch.tensor(noises[i]) if eta else None).prev_sample
    want = x.numpy()

    sample = jax.jit(lambda xt, key: D.ddim_sample(
        _toy_jax, ours, xt, num_steps, eta=eta, rng=key if eta else None, spacing=spacing,
        prediction_type=prediction_type))
    got = sample(jnp.asarray(x_T), rng)
    assert got.shape == SHAPE and np.all(np.isfinite(got))
    err = _rel(got, want)
    assert err < 1e-4, err


def test_ddim_sample_jit_with_traced_schedule_and_eta():
    s = D.make_schedule()
    x_T = jax.random.normal(jax.random.key(0), SHAPE)
    f = jax.jit(lambda sch, x, eta, key: D.ddim_sample(_toy_jax, sch, x, 5, eta=eta, rng=key,
                                                       return_pred_x0=True))
    x0, last = f(s, x_T, 0.0, jax.random.key(1))
    # Traced eta = 0 equals the deterministic path; the last step's prediction lands at alpha=1.
    det = D.ddim_sample(_toy_jax, s, x_T, 5)
    np.testing.assert_allclose(x0, det, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x0, last, rtol=1e-5, atol=1e-6)
    # One scan step per DDIM step: the jaxpr holds a single scan of length 5.
    jaxpr = jax.make_jaxpr(lambda x: D.ddim_sample(_toy_jax, s, x, 5))(x_T)
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1 and scans[0].params["length"] == 5
    with pytest.raises(ValueError, match="rng"):
        D.ddim_sample(_toy_jax, s, x_T, 5, eta=1.0)


# ---------------------------------------------------------------------------- (e) forward process
def test_q_sample_and_velocity_match_diffusers():
    ours, ref = _pair("linear")
    rng = np.random.default_rng(4)
    x0, nz = _randn(rng, (4, 16, 8)), _randn(rng, (4, 16, 8))
    t = np.array([0, 17, 500, 999])
    want = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(nz), torch.from_numpy(t)).numpy()
    got = D.q_sample(ours, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(nz))
    assert _rel(got, want) < 1e-6
    want_v = ref.get_velocity(torch.from_numpy(x0), torch.from_numpy(nz), torch.from_numpy(t)).numpy()
    assert _rel(D.velocity_target(ours, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(nz)), want_v) < 1e-6
    # Round trip: an exact x0 / eps / v prediction recovers x0 from x_t.
    x_t = D.q_sample(ours, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(nz))
    for pt, out in [("sample", x0), ("epsilon", nz), ("v_prediction", want_v)]:
        rec, _ = D.predict_x0_eps(ours, jnp.asarray(out[1:]), jnp.asarray(t[1:]), x_t[1:], pt)
        np.testing.assert_allclose(rec, x0[1:], atol=2e-3)
    ts = D.sample_timesteps(jax.random.key(0), 4096, ours)
    assert ts.dtype == jnp.int32 and ts.shape == (4096,) and 0 <= int(ts.min()) and int(ts.max()) <= 999
    assert len(np.unique(np.asarray(ts))) > 900


# ------------------------------------------------------------------------------------- (f) losses
def test_x0_loss_value_velocity_and_mask():
    loss = jax.jit(D.x0_loss, static_argnames="return_terms")  # one compile per signature
    rng = np.random.default_rng(5)
    x0 = jnp.asarray(_randn(rng))
    pred = jnp.asarray(_randn(rng))
    # Plain MSE without mask; velocity term matches a hand computation.
    np.testing.assert_allclose(loss(pred, x0), np.mean((np.asarray(pred) - np.asarray(x0)) ** 2),
                               rtol=1e-6)
    d = np.diff(np.asarray(pred), axis=1) - np.diff(np.asarray(x0), axis=1)
    total, terms = loss(pred, x0, velocity_weight=2.0, return_terms=True)
    np.testing.assert_allclose(terms["velocity_mse"], np.mean(d ** 2), rtol=1e-6)
    np.testing.assert_allclose(total, terms["x0_mse"] + 2.0 * terms["velocity_mse"], rtol=1e-6)

    # A constant offset over time has zero velocity error.
    offset = x0 + jnp.asarray(rng.standard_normal((2, 1, 8)).astype(np.float32))
    _, terms = loss(offset, x0, velocity_weight=1.0, return_terms=True)
    assert float(terms["velocity_mse"]) < 1e-10 and float(terms["x0_mse"]) > 0.1

    # Masked frames (and pairs touching them) do not count.
    mask = np.ones(SHAPE[:2], np.float32)
    mask[0, 10:] = 0
    mask[1, 3] = 0
    mask = jnp.asarray(mask)
    base = loss(pred, x0, mask, velocity_weight=0.5)
    changed = pred.at[0, 12].add(100.0).at[1, 3].add(-50.0)
    np.testing.assert_allclose(loss(changed, x0, mask, velocity_weight=0.5), base, rtol=1e-6)
    assert float(loss(changed, x0, None, velocity_weight=0.5)) > float(base) + 10
    # Masked mean is the mean over valid frames only.
    m = np.asarray(mask, bool)
    np.testing.assert_allclose(loss(pred, x0, mask),
                               np.mean((np.asarray(pred) - np.asarray(x0))[m] ** 2), rtol=1e-6)
    # Fully masked batch: zero loss and finite gradients.
    zero = jnp.zeros(SHAPE[:2])
    g = jax.grad(lambda p: loss(p, x0, zero, velocity_weight=1.0))(pred)
    assert float(loss(pred, x0, zero, velocity_weight=1.0)) == 0.0 and np.all(np.isfinite(g))
    with pytest.raises(ValueError, match="mask"):
        loss(pred, x0, jnp.ones((2, 15)))
