"""SyncNet: MFCC against python_speech_features, the Flax network against a PyTorch
re-implementation of the reference `SyncNetModel.S` (random weights, loaded through the weight
loader), the reference's offset search on constructed embeddings, and the metric end to end
with a SyncNet trained for a few seconds on SynthTalk."""

import numpy as np
import pytest

from vasa_jax.errors import ConfigError
from vasa_jax.eval import syncnet


def test_mfcc_matches_python_speech_features():
    psf = pytest.importorskip("python_speech_features")
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal(16000 + 123)).astype(np.float32)
    ref = psf.mfcc((audio * 32768.0).astype(np.float64), 16000).T
    got = syncnet.mfcc(audio)
    assert got.shape == ref.shape == (13, 1 + int(np.ceil((len(audio) - 400) / 160)))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


def _torch_reference():
    """SyncNetModel.S from joonson/syncnet_python, verbatim layer for layer."""
    import torch.nn as nn

    class S(nn.Module):
        def __init__(self, num_layers_in_fc_layers=1024):
            super().__init__()
            self.netcnnaud = nn.Sequential(
                nn.Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
                nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
                nn.Conv2d(64, 192, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
                nn.BatchNorm2d(192), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
                nn.Conv2d(192, 384, kernel_size=(3, 3), padding=(1, 1)),
                nn.BatchNorm2d(384), nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, kernel_size=(3, 3), padding=(1, 1)),
                nn.BatchNorm2d(256), nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, kernel_size=(3, 3), padding=(1, 1)),
                nn.BatchNorm2d(256), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
                nn.Conv2d(256, 512, kernel_size=(5, 4), padding=(0, 0)),
                nn.BatchNorm2d(512), nn.ReLU())
            self.netfcaud = nn.Sequential(
                nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                nn.Linear(512, num_layers_in_fc_layers))
            self.netfclip = nn.Sequential(
                nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                nn.Linear(512, num_layers_in_fc_layers))
            self.netcnnlip = nn.Sequential(
                nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),
                nn.BatchNorm3d(96), nn.ReLU(inplace=True),
                nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
                nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
                nn.BatchNorm3d(256), nn.ReLU(inplace=True),
                nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
                nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
                nn.BatchNorm3d(256), nn.ReLU(inplace=True),
                nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
                nn.BatchNorm3d(256), nn.ReLU(inplace=True),
                nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
                nn.BatchNorm3d(256), nn.ReLU(inplace=True),
                nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
                nn.Conv3d(256, 512, kernel_size=(1, 6, 6), padding=0),
                nn.BatchNorm3d(512), nn.ReLU(inplace=True))

        def forward_aud(self, x):
            mid = self.netcnnaud(x)
            return self.netfcaud(mid.view((mid.size()[0], -1)))

        def forward_lip(self, x):
            mid = self.netcnnlip(x)
            return self.netfclip(mid.view((mid.size()[0], -1)))

    return S()


def test_reference_weights_load_and_match_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ref = _torch_reference().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in ref.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    path = tmp_path / "syncnet_v2.model"
    torch.save(ref.state_dict(), path)
    net = syncnet.load_syncnet(path)

    rng = np.random.default_rng(1)
    aud = rng.standard_normal((2, 13, 20)).astype(np.float32) * 10
    lips = rng.uniform(0, 255, (2, 5, 224, 224, 3)).astype(np.float32)
    with torch.no_grad():
        ref_a = ref.forward_aud(torch.from_numpy(aud[:, None])).numpy()
        ref_v = ref.forward_lip(torch.from_numpy(lips.transpose(0, 4, 1, 2, 3).copy())).numpy()
    got_a = np.asarray(net.audio(aud))
    got_v = np.asarray(net.lips(lips))
    assert got_a.shape == got_v.shape == (2, 1024)
    np.testing.assert_allclose(got_a, ref_a, rtol=1e-3, atol=1e-3 * np.abs(ref_a).max())
    np.testing.assert_allclose(got_v, ref_v, rtol=1e-3, atol=1e-3 * np.abs(ref_v).max())

    # A state dict of another shape is refused in one line, naming the key.
    sd = ref.state_dict()
    sd["netfcaud.3.weight"] = sd["netfcaud.3.weight"][:10]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="netfcaud.3.weight"):
        syncnet.load_syncnet(tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="not found"):
        syncnet.load_syncnet(tmp_path / "missing.model")


def test_offset_search_on_constructed_embeddings():
    rng = np.random.default_rng(0)
    t, d, lag = 60, 16, 4
    base = rng.standard_normal((t + 40, d))
    video = base[20:20 + t]
    audio = base[20 - lag:20 - lag + t]        # audio[t] = video[t - lag]: audio lags by `lag`
    r = syncnet.offset_search(video, audio)
    assert r["offset"] == -lag
    curve = np.asarray(r["mean_dist"])
    # Only the first `lag` frames (matched against zero padding) add to the minimum.
    assert r["min_dist"] == pytest.approx(curve.min())
    assert r["min_dist"] < 0.2 * np.median(curve)
    assert r["confidence"] == pytest.approx(np.median(curve) - curve.min())
    assert syncnet.offset_search(video, video)["offset"] == 0
    # The reference pads with zero features: distances at the edge are to zero vectors.
    dists = syncnet.pairwise_offset_distances(video, audio, vshift=2)
    assert dists.shape == (t, 5)
    np.testing.assert_allclose(dists[0, 0], np.linalg.norm(video[0] + 1e-6))


def test_shift_audio():
    a = np.arange(640 * 4, dtype=np.float32)
    np.testing.assert_array_equal(syncnet.shift_audio(a, 1)[640:], a[:-640])
    np.testing.assert_array_equal(syncnet.shift_audio(a, -1)[:-640], a[640:])
    assert not syncnet.shift_audio(a, 1)[:640].any()
