"""The `vasa-jax preview` command end to end: real mp4 + audio + contact sheet, and bad input."""

import subprocess
import sys

import numpy as np
import pytest

from vasa_jax.data import media


def _run(*args):
    return subprocess.run([sys.executable, "-m", "vasa_jax.cli", "preview", *args],
                          capture_output=True, text=True)


def test_preview_writes_video_with_audio_and_contact_sheet(tmp_path):
    out = tmp_path / "clip.mp4"
    res = _run("--out", str(out), "--seconds", "1.2", "--resolution", "64", "--identity", "4",
               "--emotion", "happy")
    assert res.returncode == 0, res.stderr
    info = media.probe_duration(out)
    assert info["num_frames"] == 30 and info["fps"] == pytest.approx(25.0)
    assert abs(info["audio_duration"] - 1.2) < 0.04
    frames, _ = media.read_video(out)
    assert frames.shape == (30, 64, 64, 3) and frames.std() > 10
    audio = media.read_audio(out)
    assert np.sqrt((audio ** 2).mean()) > 1e-3  # the speech is there
    sheet = media.read_image(tmp_path / "clip.png")
    assert sheet.shape[1] == 6 * 64 and sheet.shape[0] > 2 * 64


@pytest.mark.parametrize("args, needle", [
    (["--resolution", "100"], "resolution"),
    (["--emotion", "bored"], "emotion"),
    (["--seconds", "0"], "seconds"),
])
def test_preview_bad_input_one_line_error_no_output(tmp_path, args, needle):
    out = tmp_path / "bad.mp4"
    res = _run("--out", str(out), *args)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert list(tmp_path.iterdir()) == []


def test_preview_missing_output_folder(tmp_path):
    res = _run("--out", str(tmp_path / "nope" / "x.mp4"), "--resolution", "64", "--seconds", "0.2")
    assert res.returncode != 0 and "does not exist" in res.stderr


def test_synthtalk_build_command(tmp_path):
    root = str(__import__("pathlib").Path(__file__).resolve().parent.parent)
    cmd = [sys.executable, "-m", "vasa_jax.cli", "synthtalk-build", "--config",
           f"{root}/configs/synthtalk.py:tiny", "--data-dir", str(tmp_path / "d"),
           "--config.num_frames=4", "--config.num_train_identities=2",
           "--config.num_test_identities=1", "--config.clips_per_identity=1"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "train: 2 clips" in res.stdout and "test: 1 clips" in res.stdout
    bad = subprocess.run(cmd[:-4] + ["--config.num_frames=-1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "num_frames" in bad.stderr
