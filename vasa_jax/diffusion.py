"""Diffusion math for the motion DiT: noise schedules, training targets/losses, DDIM and DDPM steps.

Pure `jax.numpy`, no Flax state. VASA-1's motion generator predicts the clean sequence X0
(`prediction_type="sample"`); "epsilon" and "v_prediction" are supported too so that the math can
be checked against `diffusers` schedulers for every parameterisation.

Shapes: motion sequences are `[B, W, D]` (batch, window frames, motion dims), but every function
here works for any `x` of shape `[B, ...]`. Timesteps `t` are integers in `[0, T)` where
`T = schedule.num_train_timesteps`; they are either a scalar (one timestep for the whole batch) or
a `[B]` vector (one per sample), and are broadcast against `x` from the leading axis.

Conventions follow `diffusers` (DDIMScheduler / DDPMScheduler) so that results agree with it:

* `make_schedule` gives the same betas for "linear", "scaled_linear" and "squaredcos_cap_v2"
  (computed in float64, stored as float32).
* `ddim_timesteps(schedule, n, spacing, steps_offset)` equals `DDIMScheduler.set_timesteps(n)`.
* `ddim_step` equals `DDIMScheduler.step(...).prev_sample`; a negative `prev_t` means "the end of
  the chain" and uses `schedule.final_alpha_cumprod` (1.0 with `set_alpha_to_one=True`).
* `ddim_prev_timesteps(..., rule="diffusers")` reproduces diffusers' `prev_t = t - T // n`, which
  for "trailing"/"linspace" spacing need not be the next entry of the timestep list;
  `rule="next"` uses the next listed timestep instead.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vasa_jax.errors import ConfigError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("sample", "epsilon", "v_prediction")
PREV_RULES = ("diffusers", "next")


# --------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------
class Schedule(NamedTuple):
    """A discrete noise schedule (a pytree of float32 arrays; `T` is static via the shapes).

    betas:               [T]  beta_t
    alphas:              [T]  1 - beta_t
    alphas_cumprod:      [T]  abar_t = prod_{s<=t} alpha_s
    final_alpha_cumprod: []   abar used when a step lands before t=0 (prev_t < 0): 1.0 with
                              `set_alpha_to_one=True` (diffusers' default), else abar_0.
    """

    betas: jax.Array
    alphas: jax.Array
    alphas_cumprod: jax.Array
    final_alpha_cumprod: jax.Array

    @property
    def num_train_timesteps(self) -> int:
        """T, the number of training timesteps (a static Python int, also under jit)."""
        return int(self.betas.shape[0])


def _cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    """Betas of the "squaredcos_cap_v2" (Nichol & Dhariwal) schedule, float64 [T]."""

    def abar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    out = np.empty(num_steps, np.float64)
    for i in range(num_steps):
        out[i] = min(1.0 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta)
    return out


def make_schedule(num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                  beta_start: float = 1e-4, beta_end: float = 0.02, *,
                  set_alpha_to_one: bool = True,
                  trained_betas: np.ndarray | None = None) -> Schedule:
    """Builds a `Schedule` with T = num_train_timesteps.

    beta_schedule: "linear" (betas linear in [beta_start, beta_end]), "scaled_linear" (sqrt of
    betas linear, as in latent diffusion) or "squaredcos_cap_v2" (cosine abar, betas capped at
    0.999; beta_start/beta_end unused). `trained_betas` ([T] array) overrides all of these.
    Computed in float64 on the host and stored as float32 `jnp` arrays.
    """
    if trained_betas is not None:
        betas = np.asarray(trained_betas, np.float64).reshape(-1)
        num_train_timesteps = betas.shape[0]
    else:
        if not isinstance(num_train_timesteps, (int, np.integer)) or num_train_timesteps < 1:
            raise ConfigError(f"num_train_timesteps must be a positive int, got {num_train_timesteps!r}")
        if beta_schedule == "linear":
            betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
        elif beta_schedule == "scaled_linear":
            betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps,
                                dtype=np.float64) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            betas = _cosine_betas(num_train_timesteps)
        else:
            raise ConfigError(f"beta_schedule {beta_schedule!r} is unknown; use one of {BETA_SCHEDULES}")
    if not np.all((betas > 0) & (betas < 1)):
        raise ConfigError("betas must lie in (0, 1); check beta_start/beta_end or trained_betas")
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    final = 1.0 if set_alpha_to_one else alphas_cumprod[0]
    return Schedule(
        betas=jnp.asarray(betas, jnp.float32),
        alphas=jnp.asarray(alphas, jnp.float32),
        alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32),
        final_alpha_cumprod=jnp.asarray(final, jnp.float32),
    )


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes a scalar or [B] vector v to broadcast against x [B, ...]."""
    v = jnp.asarray(v)
    if v.ndim == 0:
        return v
    if v.ndim != 1 or v.shape[0] != x.shape[0]:
        raise ValueError(f"timesteps of shape {v.shape} do not match a batch of shape {x.shape}; "
                         "pass a scalar or one timestep per sample")
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


def _abar(schedule: Schedule, t: jax.Array) -> jax.Array:
    """abar_t for integer t (scalar or [B]), t in [0, T)."""
    return schedule.alphas_cumprod[jnp.asarray(t, jnp.int32)]


def _abar_prev(schedule: Schedule, prev_t: jax.Array, final: jax.Array) -> jax.Array:
    """abar at prev_t, or `final` where prev_t < 0 (the step past t=0)."""
    prev_t = jnp.asarray(prev_t, jnp.int32)
    return jnp.where(prev_t >= 0, schedule.alphas_cumprod[jnp.maximum(prev_t, 0)], final)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

    x0, noise: [B, ...] of one shape; t: scalar or [B] int. Returns x_t [B, ...] in x0's dtype.
    """
    a = _bcast(_abar(schedule, t), x0)
    return (jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise).astype(x0.dtype)


def velocity_target(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """v-prediction target v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0; shapes as `q_sample`."""
    a = _bcast(_abar(schedule, t), x0)
    return (jnp.sqrt(a) * noise - jnp.sqrt(1.0 - a) * x0).astype(x0.dtype)


def sample_timesteps(rng: jax.Array, batch: int,
                     num_train_timesteps: int | Schedule = 1000) -> jax.Array:
    """Uniform training timesteps: int32 [batch] in [0, T). T may be given as a `Schedule`."""
    if isinstance(num_train_timesteps, Schedule):
        num_train_timesteps = num_train_timesteps.num_train_timesteps
    return jax.random.randint(rng, (batch,), 0, num_train_timesteps, dtype=jnp.int32)


def _masked_mean_sq(diff: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of diff**2 over valid frames. diff [B, W, ...]; mask [B, W] (1 = valid) or None."""
    sq = jnp.square(diff.astype(jnp.float32))
    if mask is None:
        return jnp.mean(sq)
    m = mask.astype(jnp.float32).reshape(mask.shape + (1,) * (diff.ndim - 2))
    per_frame = math.prod(diff.shape[2:])
    denom = jnp.maximum(jnp.sum(m) * per_frame, 1.0)
    return jnp.sum(sq * m) / denom


def x0_loss(pred_x0: jax.Array, x0: jax.Array, mask: jax.Array | None = None,
            velocity_weight: float = 0.0, *, return_terms: bool = False):
    """Reconstruction loss of the X0-predicting DiT, float32 scalar.

    pred_x0, x0: [B, W, D] (or [B, W, ...]); mask: [B, W], nonzero for valid frames (None = all).
    loss = mean over valid frames/elements of (pred_x0 - x0)^2
         + velocity_weight * mean over valid frame pairs of ((Δpred_x0) - (Δx0))^2,
    where Δy = y[:, 1:] - y[:, :-1] along the frame axis, and a pair (i, i+1) is valid when both
    frames are. A fully masked batch gives 0 (no NaN). With return_terms=True returns
    (loss, {"x0_mse": ..., "velocity_mse": ...}).
    """
    if pred_x0.shape != x0.shape:
        raise ValueError(f"x0_loss shapes differ: {pred_x0.shape} vs {x0.shape}")
    if x0.ndim < 2:
        raise ValueError(f"x0_loss needs [B, W, ...] sequences, got shape {x0.shape}")
    if mask is not None and mask.shape != x0.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} must be [B, W] = {x0.shape[:2]}")
    mse = _masked_mean_sq(pred_x0 - x0, mask)
    if isinstance(velocity_weight, (int, float)) and velocity_weight == 0:
        vel = jnp.zeros((), jnp.float32)
        total = mse
    else:
        dp = pred_x0[:, 1:] - pred_x0[:, :-1]
        dx = x0[:, 1:] - x0[:, :-1]
        pair_mask = None if mask is None else (mask[:, 1:] != 0) & (mask[:, :-1] != 0)
        vel = _masked_mean_sq(dp - dx, pair_mask)
        total = mse + velocity_weight * vel
    if return_terms:
        return total, {"x0_mse": mse, "velocity_mse": vel}
    return total


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------
def _num_T(schedule_or_T: int | Schedule) -> int:
    return schedule_or_T.num_train_timesteps if isinstance(schedule_or_T, Schedule) else int(schedule_or_T)


def ddim_timesteps(schedule: int | Schedule, num_steps: int, spacing: str = "leading",
                   steps_offset: int = 0) -> np.ndarray:
    """Inference timesteps, descending, as a host int64 array [num_steps].

    Equals diffusers `DDIMScheduler(timestep_spacing=spacing, steps_offset=...).set_timesteps(n)`:
      leading:  (arange(n) * (T // n))[::-1] + steps_offset
      trailing: round(arange(T, 0, -T / n)) - 1
      linspace: round(linspace(0, T - 1, n))[::-1]
    `schedule` may be a `Schedule` or T itself.
    """
    T = _num_T(schedule)
    if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= T:
        raise ConfigError(f"num_steps must be an int in [1, {T}] (the training timesteps), got {num_steps!r}")
    if spacing == "leading":
        ratio = T // num_steps
        ts = (np.arange(num_steps) * ratio)[::-1] + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, num_steps))[::-1]
    else:
        raise ConfigError(f"timestep spacing {spacing!r} is unknown; use one of {SPACINGS}")
    return np.ascontiguousarray(ts).astype(np.int64)


def ddim_prev_timesteps(schedule: int | Schedule, timesteps: np.ndarray,
                        rule: str = "diffusers") -> np.ndarray:
    """The timestep each DDIM step lands on, host int64 [n]; negative = past t=0 (final alpha).

    rule="diffusers": t - T // n (what `DDIMScheduler.step` does, whatever the spacing).
    rule="next":      the next entry of `timesteps`, and -1 after the last one.
    """
    ts = np.asarray(timesteps, np.int64)
    if rule == "diffusers":
        return ts - _num_T(schedule) // ts.shape[0]
    if rule == "next":
        return np.concatenate([ts[1:], np.array([-1], np.int64)])
    raise ConfigError(f"prev-timestep rule {rule!r} is unknown; use one of {PREV_RULES}")


def predict_x0_eps(schedule: Schedule, model_output: jax.Array, t: jax.Array, x_t: jax.Array,
                   prediction_type: str = "sample") -> tuple[jax.Array, jax.Array]:
    """Converts a model output to (pred_x0, pred_eps), both [B, ...] like x_t.

    prediction_type: "sample" (output is x0), "epsilon" (output is noise) or "v_prediction".
    t: scalar or [B] int in [0, T).
    """
    a = _bcast(_abar(schedule, t), x_t)
    sa, sb = jnp.sqrt(a), jnp.sqrt(1.0 - a)
    if prediction_type == "sample":
        x0 = model_output
        eps = (x_t - sa * x0) / sb
    elif prediction_type == "epsilon":
        eps = model_output
        x0 = (x_t - sb * eps) / sa
    elif prediction_type == "v_prediction":
        x0 = sa * x_t - sb * model_output
        eps = sa * model_output + sb * x_t
    else:
        raise ConfigError(f"prediction_type {prediction_type!r} is unknown; use one of {PREDICTION_TYPES}")
    return x0, eps


def _clip_range(clip_sample) -> float | None:
    """None/False -> no clipping; True -> 1.0 (diffusers' default range); a number -> that range."""
    if clip_sample is None or clip_sample is False:
        return None
    if clip_sample is True:
        return 1.0
    return float(clip_sample)


def _is_zero(v) -> bool:
    return isinstance(v, (int, float)) and v == 0


def ddim_step(schedule: Schedule, pred: jax.Array, t: jax.Array, prev_t: jax.Array,
              x_t: jax.Array, eta: float | jax.Array = 0.0, noise: jax.Array | None = None,
              clip_sample: bool | float | None = None, *, prediction_type: str = "sample",
              use_clipped_model_output: bool = False) -> jax.Array:
    """One DDIM update x_t -> x_{prev_t} (DDIM paper eq. 12/16), returns [B, ...] like x_t.

    pred: model output [B, ...] (x0 for prediction_type="sample", VASA-1's case).
    t, prev_t: scalar or [B] ints; prev_t < 0 means the step past t=0, where
      abar_prev = schedule.final_alpha_cumprod (diffusers' `set_alpha_to_one` semantics).
    eta: 0 = deterministic DDIM, 1 = DDPM-like variance; when not a literal 0, `noise` [B, ...]
      (standard normal) is required and sigma_t * noise is added.
    clip_sample: None/False, True (clip pred x0 to [-1, 1]) or a float range.
    use_clipped_model_output: re-derive eps from the clipped x0 (as diffusers' flag).
    """
    x0, eps = predict_x0_eps(schedule, pred, t, x_t, prediction_type)
    rng_ = _clip_range(clip_sample)
    if rng_ is not None:
        x0 = jnp.clip(x0, -rng_, rng_)
    a_t = _bcast(_abar(schedule, t), x_t)
    a_prev = _bcast(_abar_prev(schedule, prev_t, schedule.final_alpha_cumprod), x_t)
    if use_clipped_model_output:
        eps = (x_t - jnp.sqrt(a_t) * x0) / jnp.sqrt(1.0 - a_t)
    deterministic = _is_zero(eta)
    if deterministic:
        std2 = jnp.zeros((), jnp.float32)
    else:
        if noise is None:
            raise ValueError("ddim_step with eta != 0 needs `noise` "
                             "(a standard normal array shaped like x_t)")
        var = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
        std2 = jnp.square(eta) * var
    # max(., 0): with eta = 1 the direction term is ~0 and rounding must not make it NaN.
    x_prev = jnp.sqrt(a_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - a_prev - std2, 0.0)) * eps
    if not deterministic:
        x_prev = x_prev + jnp.sqrt(std2) * noise
    return x_prev.astype(x_t.dtype)


def ddpm_step(schedule: Schedule, pred: jax.Array, t: jax.Array, prev_t: jax.Array,
              x_t: jax.Array, noise: jax.Array | None = None,
              clip_sample: bool | float | None = None, *,
              prediction_type: str = "sample") -> jax.Array:
    """One DDPM ancestral update x_t -> x_{prev_t} ("fixed_small" variance), [B, ...] like x_t.

    Posterior mean of q(x_prev | x_t, x0) with the predicted x0, plus sigma * noise where t > 0
    (noise None = the mean only). prev_t < 0 means abar_prev = 1. Matches diffusers
    `DDPMScheduler.step` with variance_type="fixed_small" given the same noise.
    """
    x0, _ = predict_x0_eps(schedule, pred, t, x_t, prediction_type)
    rng_ = _clip_range(clip_sample)
    if rng_ is not None:
        x0 = jnp.clip(x0, -rng_, rng_)
    a_t = _bcast(_abar(schedule, t), x_t)
    a_prev = _bcast(_abar_prev(schedule, prev_t, jnp.ones((), jnp.float32)), x_t)
    alpha_t = a_t / a_prev
    beta_t = 1.0 - alpha_t
    mean = ((jnp.sqrt(a_prev) * beta_t / (1.0 - a_t)) * x0
            + (jnp.sqrt(alpha_t) * (1.0 - a_prev) / (1.0 - a_t)) * x_t)
    if noise is None:
        return mean.astype(x_t.dtype)
    var = jnp.maximum((1.0 - a_prev) / (1.0 - a_t) * beta_t, 1e-20)
    live = _bcast(jnp.asarray(t) > 0, x_t)
    return (mean + jnp.where(live, jnp.sqrt(var), 0.0) * noise).astype(x_t.dtype)


DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
"""denoise_fn(x_t [B, ...], t: int32 scalar) -> model output [B, ...] (x0 for "sample")."""


def ddim_sample(denoise_fn: DenoiseFn, schedule: Schedule, x_T: jax.Array, num_steps: int, *,
                eta: float | jax.Array = 0.0, rng: jax.Array | None = None,
                spacing: str = "leading", steps_offset: int = 0,
                prediction_type: str = "sample", clip_sample: bool | float | None = None,
                prev_rule: str = "diffusers", return_pred_x0: bool = False):
    """Runs `num_steps` DDIM steps from x_T [B, ...] in one `jax.lax.scan`; returns x_0 [B, ...].

    denoise_fn(x_t, t) -> prediction, with t an int32 scalar (broadcast it yourself if the model
    wants [B]); close over parameters/conditions (classifier-free guidance lives there too).
    num_steps, spacing, steps_offset, prediction_type, prev_rule are static; eta may be traced.
    eta != 0 needs `rng`: step i adds sigma_i * normal(split(rng, num_steps)[i], x_T.shape).
    Matches a diffusers loop `for t in scheduler.timesteps: x = scheduler.step(f(x, t), t, x)`.
    With return_pred_x0=True returns (x_0, pred_x0 of the last step).
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(f"prediction_type {prediction_type!r} is unknown; use one of {PREDICTION_TYPES}")
    ts = ddim_timesteps(schedule, num_steps, spacing, steps_offset)
    if ts.max() >= schedule.num_train_timesteps:
        raise ConfigError(f"steps_offset={steps_offset} pushes timestep {ts.max()} past "
                          f"T-1={schedule.num_train_timesteps - 1}; lower steps_offset")
    prev = ddim_prev_timesteps(schedule, ts, prev_rule)
    stochastic = not _is_zero(eta)
    if stochastic and rng is None:
        raise ValueError("ddim_sample with eta != 0 needs `rng` (a jax.random key)")
    keys = jax.random.split(rng, num_steps) if stochastic else None

    def body(carry, inp):
        x, _ = carry
        t, p, key = inp
        out = denoise_fn(x, t)
        noise = jax.random.normal(key, x.shape, x.dtype) if stochastic else None
        x_new = ddim_step(schedule, out, t, p, x, eta, noise, clip_sample,
                          prediction_type=prediction_type)
        if return_pred_x0:
            x0, _ = predict_x0_eps(schedule, out, t, x, prediction_type)
            clip = _clip_range(clip_sample)
            x0 = (x0 if clip is None else jnp.clip(x0, -clip, clip)).astype(x.dtype)
        else:
            x0 = None
        return (x_new, x0), None

    xs = (jnp.asarray(ts, jnp.int32), jnp.asarray(prev, jnp.int32), keys)
    init = (x_T, jnp.zeros_like(x_T) if return_pred_x0 else None)
    (x_0, last_x0), _ = jax.lax.scan(body, init, xs)
    return (x_0, last_x0) if return_pred_x0 else x_0
