"""Real mp4 trees for the preprocessing and multi-process tests: SynthTalk clips rendered at 64²,
padded to 96×64 (so the centre-square aligner has something to crop), encoded as H.264 + AAC
with `vasa_jax.data.media`, laid out like a VoxCeleb2 download or a plain folder of videos."""

from __future__ import annotations

import os

import numpy as np

from vasa_jax.data import media, synthtalk

PAD = 16  # columns of edge padding left and right: 64² → 96 wide, 64 high

# The smallest stage-1 model (configs/face_latent.py:tiny + these fields) that still builds at
# 64², trained on reconstruction alone: cheap to compile for the tests that train or extract.
TINIEST_STAGE1 = {
    "model.base_channels": 8, "model.max_channels": 16, "model.volume_size": 8,
    "model.volume_channels": 4, "model.encoder_channels": 8, "model.encoder_max_channels": 16,
    "model.id_dim": 8, "model.dyn_dim": 8, "model.warp_channels": 8,
    "model.decoder_channels": 16, "disc.num_scales": 1, "disc.base_channels": 8,
    "disc.max_channels": 8, "disc.num_layers": 1, "loss.gan": 0.0,
    "loss.feature_matching": 0.0, "loss.consist": 0.0,
}


def render(path: str, identity: int, seed: int, frames: int = 25, audio: bool = True) -> dict:
    """Writes one clip; returns its SynthTalk truth {"frames": [T, 64, 64, 3], "audio"}."""
    clip = synthtalk.generate_clip(identity=identity, seed=seed, num_frames=frames, resolution=64)
    padded = np.pad(clip.frames, ((0, 0), (0, 0), (PAD, PAD), (0, 0)), mode="edge")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    media.write_video(path, padded, fps=25, audio=clip.audio if audio else None)
    return {"frames": clip.frames, "audio": clip.audio}


def vox_tree(root: str, train_speakers: int = 4, clips_per_speaker: int = 2,
             test_speakers: int = 1, bad_files: bool = True) -> dict:
    """A VoxCeleb2-layout tree (vox2_dev_mp4/dev/mp4/idNNNNN/<yt>/NNNNN.mp4, vox2_test_mp4/mp4/...).

    Returns {"good": {clip_id: (split, identity, truth)}, "bad": {path: reason word}}.
    Speaker k of dev is id0010k, of test id0090k; clip c of a speaker is <yt c>/00001.mp4.
    """
    good, bad = {}, {}
    for split, part, sub, n, base in (("train", "dev", "dev/mp4", train_speakers, 100),
                                      ("test", "test", "mp4", test_speakers, 900)):
        for k in range(n):
            spk = f"id{base + k:05d}"
            for c in range(clips_per_speaker):
                rel = f"{spk}/yt{k}x{c}/00001.mp4"
                path = os.path.join(root, f"vox2_{part}_mp4", sub, rel)
                truth = render(path, identity=base + k, seed=c)
                good[rel] = (split, base + k, truth)
    if bad_files:
        dev = os.path.join(root, "vox2_dev_mp4", "dev", "mp4")
        corrupt = os.path.join(dev, "id00100", "ytcorrupt", "00001.mp4")
        os.makedirs(os.path.dirname(corrupt))
        with open(corrupt, "wb") as f:
            f.write(np.random.default_rng(0).bytes(6000))
        bad[corrupt] = "unreadable"
        silent = os.path.join(dev, "id00101", "ytsilent", "00001.mp4")
        render(silent, identity=101, seed=9, audio=False)
        bad[silent] = "no audio stream"
        whole = os.path.join(dev, "id00101", "ytcut", "00001.mp4")
        render(whole, identity=101, seed=8, frames=50)
        with open(whole, "rb") as f:
            data = f.read()
        with open(whole, "wb") as f:  # a download cut off halfway
            f.write(data[:len(data) // 2])
        bad[whole] = "truncated"
    return {"good": good, "bad": bad}
