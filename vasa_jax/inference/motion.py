"""Motion sampling with the stage-2 DiT: one jitted window sampler, and whole sequences.

    sampler = WindowSampler(model, schedule, num_steps=10, scales={"audio": 0.5, "gaze": 1.0})
    x = sampler(rng, conds)                 # [B, W, Dx], normalised motion
    seq = sample_sequence(sampler, audio, gaze, distance, emotion, rng)   # [B, T, Dx]

`WindowSampler` splits the model once and jits one function with static shapes (batch, W, K,
step count, which conditions are guided); its DDIM loop is a `lax.scan`, guidance evaluates all
variants in one batched call, and the guidance scales are traced values, so changing them does
not recompile. `sample_sequence` walks a long audio track window by window, feeding the last K
generated frames (and their audio) as the next window's history; the first window has none.
Imports only jax, flax and numpy.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vasa_jax import diffusion
from vasa_jax.models import motion_dit


class WindowSampler:
    """Jitted DDIM + multi-condition CFG for one window: (rng, conds) → x̂₀ [B, W, Dx]."""

    def __init__(self, model: motion_dit.MotionDiT, schedule: diffusion.Schedule, *,
                 num_steps: int = 10, scales: Mapping[str, float] | None = None,
                 eta: float = 0.0):
        self.graphdef, self.state = nnx.split(model)
        self.window, self.history = model.window, model.history
        self.motion_dim = model.motion_dim
        self.schedule = schedule
        self.num_steps = int(num_steps)
        self.eta = float(eta)
        self.guided = tuple(c for c in motion_dit.CONDITIONS if c in (scales or {}))
        self.scales = {c: float(scales[c]) for c in self.guided}
        self._fn = jax.jit(self._sample)
        self.num_traces = 0

    def _sample(self, state, rng, conds, scales):
        self.num_traces += 1  # Python side effect: counts traces, not calls
        model = nnx.merge(self.graphdef, state)
        b = conds["audio"].shape[0]
        k_init, k_eta = jax.random.split(rng)
        x_T = jax.random.normal(k_init, (b, self.window, self.motion_dim))

        def denoise(x_t, t):
            return motion_dit.guided_x0(model, x_t, t, conds, scales)

        return diffusion.ddim_sample(denoise, self.schedule, x_T, self.num_steps, eta=self.eta,
                                     rng=k_eta if self.eta else None)

    def __call__(self, rng, conds: Mapping, scales: Mapping[str, float] | None = None):
        """conds: audio [B,W,Da], x_pre [B,K,Dx], a_pre [B,K,Da], gaze [B,2], distance [B,1],
        emotion [B,E], optionally history_valid [B] / [B,K], audio_valid [B,W]."""
        scales = dict(self.scales if scales is None else scales)
        if set(scales) != set(self.guided):
            raise ValueError(f"guided conditions are fixed at construction ({self.guided}); "
                             f"got {sorted(scales)}")
        traced = {c: jnp.asarray(v, jnp.float32) for c, v in scales.items()}
        return self._fn(self.state, rng, dict(conds), traced)


def sample_sequence(sampler: WindowSampler, audio, gaze, distance, emotion, rng,
                    scales: Mapping[str, float] | None = None):
    """Motion for a whole track, window by window with K frames of history.

    audio [B, T, Da] (normalised features), gaze [B, 2], distance [B, 1], emotion [B, E] →
    normalised motion [B, T, Dx]. The last window is padded with null audio (audio_valid) and
    cropped, so every window has the same static shape and one compile serves any length.
    """
    audio = jnp.asarray(audio)
    b, t, da = audio.shape
    w, k, dx = sampler.window, sampler.history, sampler.motion_dim
    out = []
    x_hist = jnp.zeros((b, k, dx))
    a_hist = jnp.zeros((b, k, da))
    real = 0  # generated frames so far; the history is valid once there are K of them
    for i, start in enumerate(range(0, t, w)):
        n = min(w, t - start)
        a_win = jnp.zeros((b, w, da)).at[:, :n].set(audio[:, start:start + n])
        valid = jnp.broadcast_to(jnp.arange(w) < n, (b, w))
        conds = dict(audio=a_win, x_pre=x_hist, a_pre=a_hist, gaze=gaze, distance=distance,
                     emotion=emotion, audio_valid=valid,
                     history_valid=jnp.full((b,), real >= k))
        x = sampler(jax.random.fold_in(rng, i), conds, scales)[:, :n]
        out.append(x)
        if k > 0:  # the last K generated frames (spanning earlier windows when W < K)
            x_hist = jnp.concatenate([x_hist, x], axis=1)[:, -k:]
            a_hist = jnp.concatenate([a_hist, audio[:, start:start + n]], axis=1)[:, -k:]
        real += n
    return jnp.concatenate(out, axis=1)


__all__ = ["WindowSampler", "sample_sequence"]
