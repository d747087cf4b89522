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


class HistoryWindows:
    """Window-by-window sampling with K frames of history, one window per `step` call.

    Window i uses `fold_in(rng, i)`; its history is the last K frames pushed (spanning earlier
    windows when W < K) and their audio, marked valid once K frames exist; a window with n < W
    valid frames gets null audio (audio_valid) after them. `step` samples a window and `push`
    appends frames to the history: `push` may be given other frames than `step` returned (the
    generator's head-pose override feeds the history the overridden motion). `sample_sequence`
    and the streaming generator both walk audio with it, so they cannot drift apart.
    """

    def __init__(self, sampler: WindowSampler, gaze, distance, emotion, rng, *,
                 audio_dim: int, scales: Mapping[str, float] | None = None):
        self.sampler, self.rng, self.scales = sampler, rng, scales
        self.gaze, self.distance, self.emotion = gaze, distance, emotion
        b = jnp.shape(gaze)[0]
        k, dx = sampler.history, sampler.motion_dim
        self.x_hist = jnp.zeros((b, k, dx))
        self.a_hist = jnp.zeros((b, k, audio_dim))
        self.index = 0     # windows sampled so far
        self.frames = 0    # frames pushed so far; the history is valid once there are K

    def step(self, audio_win, n: int):
        """audio_win [B, W, Da] with n valid frames (the rest may hold anything) → normalised
        motion [B, n, Dx]."""
        w = self.sampler.window
        b = audio_win.shape[0]
        valid = jnp.broadcast_to(jnp.arange(w) < n, (b, w))
        audio = audio_win if n == w else jnp.where(valid[:, :, None], audio_win, 0.0)
        conds = dict(audio=audio, x_pre=self.x_hist, a_pre=self.a_hist, gaze=self.gaze,
                     distance=self.distance, emotion=self.emotion, audio_valid=valid,
                     history_valid=jnp.full((b,), self.frames >= self.sampler.history))
        x = self.sampler(jax.random.fold_in(self.rng, self.index), conds, self.scales)
        self.index += 1
        return x[:, :n]

    def push(self, x, audio) -> None:
        """Appends motion [B, n, Dx] and its audio features [B, n, Da] to the history."""
        k = self.sampler.history
        if k > 0:
            self.x_hist = jnp.concatenate([self.x_hist, jnp.asarray(x)], axis=1)[:, -k:]
            self.a_hist = jnp.concatenate([self.a_hist, jnp.asarray(audio)], axis=1)[:, -k:]
        self.frames += jnp.shape(x)[1]


def sample_sequence(sampler: WindowSampler, audio, gaze, distance, emotion, rng,
                    scales: Mapping[str, float] | None = None):
    """Motion for a whole track, window by window with K frames of history (`HistoryWindows`).

    audio [B, T, Da] (normalised features), gaze [B, 2], distance [B, 1], emotion [B, E] →
    normalised motion [B, T, Dx]. The last window is padded with null audio (audio_valid) and
    cropped, so every window has the same static shape and one compile serves any length.
    """
    audio = jnp.asarray(audio)
    _, t, da = audio.shape
    w = sampler.window
    walker = HistoryWindows(sampler, gaze, distance, emotion, rng, audio_dim=da, scales=scales)
    out = []
    for start in range(0, t, w):
        n = min(w, t - start)
        seg = audio[:, start:start + n]
        x = walker.step(jnp.pad(seg, ((0, 0), (0, w - n), (0, 0))), n)
        walker.push(x, seg)
        out.append(x)
    return jnp.concatenate(out, axis=1)


__all__ = ["HistoryWindows", "WindowSampler", "sample_sequence"]
