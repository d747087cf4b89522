"""Preview a SynthTalk clip: an mp4 with its audio and a contact-sheet PNG.

    vasa-jax preview --out clip.mp4 --identity 3 --seed 0 --seconds 4 --resolution 256
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vasa_jax.data import media
from vasa_jax.data.synthtalk.clip import Clip, generate_clip
from vasa_jax.data.synthtalk.spec import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from vasa_jax.errors import ConfigError, check


def contact_sheet(clip: Clip, columns: int = 6, rows: int = 2) -> np.ndarray:
    """A grid of evenly spaced frames, each labelled with its factors, over a plot of audio
    energy against mouth opening for the whole clip. uint8 [H, W, 3]."""
    t = clip.frames.shape[0]
    r = clip.frames.shape[1]
    picks = np.linspace(0, t - 1, columns * rows).round().astype(int)
    label_h = 34
    tile_h = r + label_h
    width = columns * r
    plot_h = 120
    sheet = Image.new("RGB", (width, rows * tile_h + plot_h + 18), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    f = clip.factors
    for k, i in enumerate(picks):
        x, y = (k % columns) * r, (k // columns) * tile_h
        sheet.paste(Image.fromarray(clip.frames[i]), (x, y))
        yaw, pitch, roll = f["rotation"][i]
        draw.text((x + 2, y + r + 1),
                  f"#{i} y{yaw:+.0f} p{pitch:+.0f} r{roll:+.0f} d{f['distance'][i]:.1f}",
                  fill=(0, 0, 0))
        draw.text((x + 2, y + r + 12),
                  f"g{f['gaze'][i][0]:+.0f},{f['gaze'][i][1]:+.0f} b{f['blink'][i]:.1f} "
                  f"m{f['mouth'][i][0]:.2f}", fill=(0, 0, 0))
    # Plot: per-frame audio RMS (blue) and mouth opening (red), each scaled to its maximum.
    top = rows * tile_h + 14
    rms = np.sqrt((clip.audio.reshape(t, SAMPLES_PER_FRAME) ** 2).mean(1))
    for series, color in ((rms, (40, 80, 220)), (f["mouth"][:, 0], (220, 40, 40))):
        s = series / max(float(series.max()), 1e-9)
        xs = np.linspace(2, width - 3, t)
        pts = [(float(xs[i]), float(top + plot_h - 4 - s[i] * (plot_h - 10))) for i in range(t)]
        draw.line(pts, fill=color, width=1)
    corr = float(np.corrcoef(rms, f["mouth"][:, 0])[0, 1]) if t > 2 else float("nan")
    draw.text((2, top - 13), f"identity {clip.identity.id}, {clip.emotion_name}; audio energy "
              f"(blue) vs mouth opening (red), r = {corr:.2f}", fill=(0, 0, 0))
    return np.asarray(sheet)


def curves_sheet(frames: np.ndarray, curves: dict[str, np.ndarray], title: str = "",
                 columns: int = 6, rows: int = 2, plot_h: int = 120) -> np.ndarray:
    """Evenly spaced frames over a plot of per-frame curves (each scaled to its own range).

    frames uint8 [T, R, R, 3]; curves {label: [T]} drawn in blue, red, green, … → uint8 sheet.
    """
    frames = np.asarray(frames)
    t, r = frames.shape[0], frames.shape[1]
    picks = np.linspace(0, t - 1, min(columns * rows, t)).round().astype(int)
    label_h = 14
    tile_h = r + label_h
    width = max(columns * r, 360)
    n_rows = int(np.ceil(len(picks) / columns))
    sheet = Image.new("RGB", (width, n_rows * tile_h + plot_h + 32), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(picks):
        x, y = (k % columns) * r, (k // columns) * tile_h
        sheet.paste(Image.fromarray(frames[i]), (x, y))
        draw.text((x + 2, y + r + 1), f"#{i}", fill=(0, 0, 0))
    top = n_rows * tile_h + 28
    colors = [(40, 80, 220), (220, 40, 40), (30, 150, 60), (150, 60, 160)]
    names = []
    for (label, series), color in zip(curves.items(), colors):
        s = np.asarray(series, np.float64)[:t]
        lo, hi = float(s.min()), float(s.max())
        s = (s - lo) / max(hi - lo, 1e-9)
        xs = np.linspace(2, width - 3, len(s))
        pts = [(float(xs[i]), float(top + plot_h - 4 - s[i] * (plot_h - 10)))
               for i in range(len(s))]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=1)
        names.append(f"{label} ({['blue', 'red', 'green', 'purple'][colors.index(color)]})")
    if title:
        draw.text((2, top - 27), title, fill=(0, 0, 0))
    draw.text((2, top - 13), ", ".join(names), fill=(0, 0, 0))
    return np.asarray(sheet)


def write_preview(out: str | os.PathLike, identity: int = 3, seed: int = 0, seconds: float = 4.0,
                  resolution: int = 256, emotion: str | None = None,
                  watermark: bool = True) -> tuple[Path, Path]:
    """Generates a clip and writes OUT (mp4 with audio) and OUT with .png (contact sheet).

    The video is labelled a SynthTalk render (`vasa_jax.provenance`): container metadata and,
    unless watermark=False (then the metadata says `watermark off`), the invisible watermark.
    """
    from vasa_jax import provenance

    check(seconds > 0, f"seconds={seconds} must be positive")
    out = Path(out)
    check(out.suffix.lower() in (".mp4", ".mov", ".mkv"),
          f"output {out} must end in .mp4, .mov or .mkv")
    if not out.parent.exists():
        raise ConfigError(f"output folder {out.parent} does not exist (create it first)")
    num_frames = max(1, int(round(seconds * FPS)))
    clip = generate_clip(identity=identity, seed=seed, num_frames=num_frames,
                         resolution=resolution, emotion=emotion)
    sheet_path = out.with_suffix(".png")
    label = provenance.Provenance(kind=provenance.KIND_SYNTHTALK, watermark=watermark)
    media.write_video(out, label.mark(clip.frames), fps=FPS, audio=clip.audio,
                      sample_rate=SAMPLE_RATE, metadata=label.metadata())
    try:
        media.write_png(sheet_path, contact_sheet(clip))
    except BaseException:
        out.unlink(missing_ok=True)  # no half-finished preview
        raise
    return out, sheet_path
