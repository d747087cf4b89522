"""Speech for SynthTalk: articulation targets, coarticulation and a source-filter synthesiser.

One articulatory trajectory (mouth opening/width/rounding, loudness, formants, voicing,
frication) is built on a 5 ms control grid; the same trajectory drives both the mouth that is
rendered and the sound that is synthesised, so audio and video have zero offset.

The voice is additive: each harmonic of the pitch contour is weighted by a formant envelope
(three resonances per viseme class, scaled by the speaker's vocal-tract length) and a glottal
spectral tilt; fricatives add high-passed noise; bilabials give a low nasal murmur.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vasa_jax.data.synthtalk.spec import (
    CTRL_PER_FRAME,
    EMOTIONS,
    SAMPLE_RATE,
    SAMPLES_PER_CTRL,
    VISEMES,
)

CTRL_RATE = SAMPLE_RATE // SAMPLES_PER_CTRL  # 200 Hz

# Per viseme: mouth (open, width, round), formants (F1, F2, F3) Hz, voicing, frication, loudness.
_TARGETS = {
    "silence":   dict(mouth=(0.03, 0.50, 0.10), formants=(500, 1500, 2500), voice=0.0, fric=0.0, loud=0.0),
    "open":      dict(mouth=(0.85, 0.60, 0.10), formants=(750, 1250, 2600), voice=1.0, fric=0.0, loud=1.0),
    "rounded":   dict(mouth=(0.45, 0.20, 0.90), formants=(400, 850, 2400), voice=1.0, fric=0.0, loud=0.75),
    "spread":    dict(mouth=(0.35, 0.90, 0.00), formants=(320, 2200, 2950), voice=1.0, fric=0.0, loud=0.65),
    "bilabial":  dict(mouth=(0.00, 0.50, 0.25), formants=(250, 1000, 2300), voice=0.35, fric=0.0, loud=0.12),
    "fricative": dict(mouth=(0.12, 0.70, 0.05), formants=(400, 1700, 2700), voice=0.0, fric=1.0, loud=0.10),
}
_VOWELS = ("open", "rounded", "spread")
_CONSONANTS = ("bilabial", "fricative")

# Emotion → (pitch factor, pitch range factor, loudness factor, rate factor).
EMOTION_VOICE = {
    "neutral": (1.00, 1.0, 1.00, 1.00),
    "happy": (1.12, 1.4, 1.10, 1.08),
    "sad": (0.88, 0.55, 0.70, 0.82),
    "angry": (1.05, 1.25, 1.35, 1.10),
    "surprised": (1.25, 1.6, 1.15, 1.00),
}


@dataclasses.dataclass
class Speech:
    """A synthesised utterance and the articulation that produced it.

    audio: [T * 640] float32 at 16 kHz. Control-rate arrays have T * 8 entries (5 ms steps).
    """

    audio: np.ndarray
    open: np.ndarray
    width: np.ndarray
    round: np.ndarray
    loudness: np.ndarray
    f0: np.ndarray  # Hz, including unvoiced stretches (the contour continues)
    voicing: np.ndarray
    viseme: np.ndarray  # int, the target class at each control step
    stress: np.ndarray  # syllable stress (0..1) at each control step


def _segments(rng: np.random.Generator, total_ctrl: int, rate: float):
    """Phrase / syllable layout: a list of (viseme, length in control steps, stress)."""
    segs = []
    n = 0
    lead = int(rng.uniform(0.0, 0.3) * CTRL_RATE)
    if lead:
        segs.append(("silence", lead, 0.0))
        n += lead
    while n < total_ctrl:
        phrase_len = rng.uniform(0.8, 2.6) * CTRL_RATE
        start = n
        while n - start < phrase_len and n < total_ctrl:
            stress = float(rng.uniform() < 0.35) * rng.uniform(0.6, 1.0)
            if rng.uniform() < 0.6:
                c = _CONSONANTS[rng.integers(2)] if rng.uniform() < 0.7 else "spread"
                d = int(rng.uniform(0.05, 0.10) / rate * CTRL_RATE)
                segs.append((c, max(d, 6), stress))
                n += max(d, 6)
            v = _VOWELS[rng.choice(3, p=[0.45, 0.25, 0.30])]
            d = int(rng.uniform(0.09, 0.20) * (1.0 + 0.5 * stress) / rate * CTRL_RATE)
            segs.append((v, max(d, 10), stress))
            n += max(d, 10)
        pause = int(rng.uniform(0.15, 0.55) * CTRL_RATE)
        segs.append(("silence", pause, 0.0))
        n += pause
    return segs


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Zero-phase Gaussian smoothing along the last axis (coarticulation, no delay)."""
    radius = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(radius, radius)], mode="edge")
    out = np.apply_along_axis(lambda r: np.convolve(r, k, mode="valid"), -1, pad)
    return out.astype(np.float32)


def synthesize(rng: np.random.Generator, num_frames: int, f0_mean: float, formant_scale: float,
               speech_rate: float, emotion: str) -> Speech:
    """Draws an utterance of exactly num_frames * 40 ms and synthesises it."""
    assert emotion in EMOTIONS
    pitch_f, range_f, loud_f, rate_f = EMOTION_VOICE[emotion]
    n_ctrl = num_frames * CTRL_PER_FRAME
    segs = _segments(rng, n_ctrl, speech_rate * rate_f)

    # Piecewise-constant targets on the control grid.
    vis = np.zeros(n_ctrl, np.int32)
    stress = np.zeros(n_ctrl, np.float32)
    tgt = np.zeros((10, n_ctrl), np.float32)  # open,width,round,F1,F2,F3,voice,fric,loud,jitter
    n = 0
    for name, length, s in segs:
        if n >= n_ctrl:
            break
        m = min(length, n_ctrl - n)
        t = _TARGETS[name]
        vary = rng.normal(0, 1, size=3) * 0.06
        open_ = np.clip(t["mouth"][0] * (0.8 + 0.35 * s) + vary[0] * (t["mouth"][0] > 0.2), 0, 1)
        width = np.clip(t["mouth"][1] + vary[1], 0, 1)
        rnd = np.clip(t["mouth"][2] + vary[2], 0, 1)
        loud = t["loud"] * (0.75 + 0.45 * s) * rng.uniform(0.85, 1.1)
        tgt[:, n:n + m] = np.asarray(
            [open_, width, rnd, *t["formants"], t["voice"], t["fric"], loud, 0.0], np.float32)[:, None]
        vis[n:n + m] = VISEMES.index(name)
        stress[n:n + m] = s
        n += m

    # Coarticulation: articulators move smoothly (~20 ms), loudness a bit faster.
    art = _smooth(tgt[:8], sigma=4.0)
    loud = _smooth(tgt[8:9], sigma=3.0)[0] * loud_f
    open_, width, rnd = art[0], art[1], art[2]
    formants = art[3:6] * formant_scale
    voice, fric = np.clip(art[6], 0, 1), np.clip(art[7], 0, 1)
    # Loudness of the voiced part follows the mouth opening: wider jaw, more sound radiated.
    voiced_amp = loud * (0.2 + 0.8 * open_ / 0.85)

    # Pitch: phrase declination, accents on stressed syllables, slow wander; emotion scales it.
    t_sec = np.arange(n_ctrl) / CTRL_RATE
    wander = _smooth(rng.normal(0, 1, (1, n_ctrl)), sigma=40.0)[0] * 6.0
    accent = _smooth(stress[None], sigma=10.0)[0]
    phrase_pos = np.zeros(n_ctrl, np.float32)
    sil = vis == 0
    count = 0.0
    for i in range(n_ctrl):  # time since the phrase started, resets in silences
        count = 0.0 if sil[i] and count > 0.1 * CTRL_RATE else count + 1.0
        phrase_pos[i] = count
    declination = 1.08 - 0.18 * np.clip(phrase_pos / (2.5 * CTRL_RATE), 0, 1)
    semitones = range_f * (3.0 * accent + wander * 0.3) + 0.2 * rng.normal(size=n_ctrl)
    f0 = f0_mean * pitch_f * declination * 2.0 ** (semitones / 12.0)
    f0 = np.clip(_smooth(f0[None], sigma=2.0)[0], 60.0, 400.0)

    # Sample-rate synthesis.
    n_samp = num_frames * CTRL_PER_FRAME * SAMPLES_PER_CTRL
    t_ctrl = (np.arange(n_ctrl) + 0.5) * SAMPLES_PER_CTRL
    t_samp = np.arange(n_samp) + 0.5

    def up(x):
        return np.interp(t_samp, t_ctrl, x).astype(np.float32)

    f0_s = up(f0)
    phase = 2 * np.pi * np.cumsum(f0_s) / SAMPLE_RATE
    phase += rng.uniform(0, 2 * np.pi)
    num_harm = int(7600 / f0.min())
    audio = np.zeros(n_samp, np.float64)
    bandwidths = np.asarray([90.0, 120.0, 170.0])[:, None]
    gains = np.asarray([1.0, 0.6, 0.35])[:, None]
    amp_ctrl = voiced_amp * voice
    for k in range(1, num_harm + 1):
        fk = k * f0  # [n_ctrl]
        env = (gains / (1.0 + ((fk[None] - formants) / bandwidths) ** 2)).sum(0) + 0.01
        a = env * amp_ctrl / k ** 0.6
        a[fk > 7600] = 0.0
        if not a.any():
            continue
        audio += up(a) * np.sin(k * phase)

    # Frication: high-passed noise; a little breath noise in voiced speech.
    noise = rng.normal(0, 1, n_samp)
    spec = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(n_samp, 1.0 / SAMPLE_RATE)
    hiss = np.fft.irfft(spec * (freqs > 3000) * np.minimum(1.0, freqs / 5000.0), n_samp)
    breath = np.fft.irfft(spec * ((freqs > 500) & (freqs < 4000)), n_samp)
    audio += up(fric * loud * 0.9) * hiss * 0.25
    audio += up(amp_ctrl) * breath * 0.01
    audio *= 0.35
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)

    return Speech(audio=audio, open=open_, width=width, round=rnd, loudness=loud,
                  f0=f0.astype(np.float32), voicing=voice, viseme=vis, stress=stress)
