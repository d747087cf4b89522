"""Audio features: log-mel vs independent references, Wav2Vec2 vs transformers (random weights),
the checkpoint converter, 25 fps alignment/lengths and the kind selector."""
import json
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from vasa_jax.errors import ConfigError
from vasa_jax.models import audio as A

HOP = 640
# Small Hugging Face configs: hidden 64, 2 layers, 4 heads, 32-channel convs, pos-conv kernel 16
# (even, like the published 128) in 4 groups. Conv kernels/strides are the published ones, so
# the 320-sample stride and 400-sample receptive field (and the 25 fps alignment) are real.
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
VARIANTS = {
    "group_postln": dict(SMALL),
    "layer_stableln": dict(SMALL, feat_extract_norm="layer", do_stable_layer_norm=True,
                           conv_bias=True),
}


def _audio(seed, shape, scale=0.1):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ------------------------------------------------------------------------------------ log-mel

def _ref_frames(y, n_fft, pad_mode):
    """Window t covers samples [640t + 320 - n_fft/2, 640t + 320 + n_fft/2) of y; samples outside
    y are zeros ("constant") or mirrored about the first/last sample ("reflect")."""
    t = len(y) // HOP
    frames = np.empty((t, n_fft), np.float64)
    for i in range(t):
        for j, s in enumerate(range(HOP * i + HOP // 2 - n_fft // 2, HOP * i + HOP // 2 + n_fft // 2)):
            if 0 <= s < len(y):
                frames[i, j] = y[s]
            elif pad_mode == "constant":
                frames[i, j] = 0.0
            else:
                frames[i, j] = y[-s] if s < 0 else y[2 * (len(y) - 1) - s]
    return frames


def _slaney_mel_ref(sr, n_fft, n_mels, fmin, fmax):
    """Slaney (Auditory Toolbox) mel filterbank, [n_mels, n_fft//2 + 1], float64, written from the
    formula: mel = 3f/200 below 1 kHz, 15 + 27 log(f/1000)/log(6.4) above; area-normalised."""
    def to_mel(f):
        return f * 3 / 200 if f < 1000 else 15 + 27 * np.log(f / 1000) / np.log(6.4)

    def to_hz(m):
        return m * 200 / 3 if m < 15 else 1000 * np.exp((m - 15) * np.log(6.4) / 27)

    edges = [to_hz(m) for m in np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2)]
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    fb = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        for k, f in enumerate(freqs):
            if lo < f <= c:
                fb[m, k] = (f - lo) / (c - lo)
            elif c < f < hi:
                fb[m, k] = (hi - f) / (hi - c)
        fb[m] *= 2 / (hi - lo)
    return fb


def _log_mel_numpy(y, n_fft=1024, n_mels=80, fmin=0.0, fmax=8000.0, pad_mode="constant"):
    frames = _ref_frames(np.asarray(y, np.float64), n_fft, pad_mode)
    win = scipy.signal.get_window("hann", n_fft, fftbins=True)   # periodic Hann
    power = np.abs(np.fft.rfft(frames * win, axis=-1)) ** 2
    mel = power @ _slaney_mel_ref(16000, n_fft, n_mels, fmin, fmax).T
    return np.log(np.maximum(mel, 1e-5))


# float32 STFT vs float64 references: the log-mel error is the relative error of each band's
# energy, ~1e-6 for float32 FFT/matmul of a 1024-point frame. 2e-4 (0.02 % in energy, about
# 1e-3 dB) leaves a wide margin yet catches any framing, window, scale or filter mistake, all of
# which move values by >= 1e-2.
LOGMEL_ATOL = 2e-4


def _signal(seed, n):
    """Noise plus a chirp and a silent stretch (exercises the log floor)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    y = 0.05 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * (200 + 1500 * t) * t)
    y[n // 3: n // 3 + 2000] = 0.0
    return y.astype(np.float32)


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize("n", [HOP * 25, HOP * 25 + 500])
def test_log_mel_matches_numpy_reference(pad_mode, n):
    y = _signal(0, n)
    ours = np.asarray(A.log_mel(jnp.asarray(y[None]), A.LogMelConfig(pad_mode=pad_mode)))[0]
    ref = _log_mel_numpy(y, pad_mode=pad_mode)
    assert ours.shape == (n // HOP, 80) == ref.shape
    err = float(np.max(np.abs(ours - ref)))
    print(f"log-mel vs numpy ({pad_mode}, N={n}): max abs diff {err:.2e}")
    assert err < LOGMEL_ATOL
    assert np.any(ours == np.float32(np.log(1e-5)))   # silent frames sit on the floor


@pytest.mark.parametrize("n_fft,n_mels,fmin,fmax", [(1024, 80, 0.0, 8000.0), (800, 40, 50.0, 7600.0)])
def test_log_mel_matches_librosa(n_fft, n_mels, fmin, fmax):
    librosa = pytest.importorskip("librosa")
    y = _signal(1, HOP * 20 + 123)
    cfg = A.LogMelConfig(n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    ours = np.asarray(A.log_mel(jnp.asarray(y[None]), cfg))[0]
    # Our framing, written with numpy padding: pad n_fft/2 - 320 zeros in front, then librosa's
    # uncentred STFT with hop 640 puts window t on samples 640t + 320 -/+ n_fft/2.
    t = len(y) // HOP
    left = n_fft // 2 - HOP // 2
    need = HOP * (t - 1) + HOP // 2 + n_fft // 2
    yp = np.pad(y.astype(np.float64)[:need], (left, max(0, need - len(y))))
    spec = librosa.stft(yp, n_fft=n_fft, hop_length=HOP, window="hann", center=False)[:, :t]
    fb = librosa.filters.mel(sr=16000, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                             htk=False, norm="slaney")
    np.testing.assert_allclose(A.mel_filterbank(16000, n_fft, n_mels, fmin, fmax), fb.T,
                               rtol=1e-5, atol=1e-9)
    ref = np.log(np.maximum(fb @ np.abs(spec) ** 2, 1e-5)).T
    err = float(np.max(np.abs(ours - ref)))
    print(f"log-mel vs librosa (n_fft={n_fft}): max abs diff {err:.2e}")
    assert ours.shape == ref.shape and err < LOGMEL_ATOL


def test_log_mel_windows_are_centred_on_video_frames():
    n, t = HOP * 8, 3
    centre = HOP * t + HOP // 2

    def energy(pos):
        y = np.zeros((1, n), np.float32)
        y[0, pos] = 1.0
        return np.exp(np.asarray(A.log_mel(jnp.asarray(y)))[0]).sum(-1)   # [T]

    e = energy(centre)
    assert int(np.argmax(e)) == t
    for d in (7, 100, 319):   # the periodic Hann window is symmetric about its centre
        np.testing.assert_allclose(energy(centre - d)[t], energy(centre + d)[t], rtol=1e-4)
    assert energy(centre + 320)[t] == pytest.approx(energy(centre + 320)[t + 1], rel=1e-4)


# ----------------------------------------------------------------------------------- Wav2Vec2

def _hf_model(variant, seed=0):
    torch.manual_seed(seed)
    model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**VARIANTS[variant])).eval()
    with torch.no_grad():   # perturb everything (norm scales/biases, pos-conv bias are 1/0 at init)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=list(VARIANTS))
def hf_checkpoint(request, tmp_path_factory):
    model = _hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(str(path))
    assert (path / "model.safetensors").is_file()
    return request.param, model, path


# One jitted forward for every parity test: models of one config share a graphdef, so the
# compiled function is reused across tests (same input shapes).
_forward = jax.jit(lambda m, a: m(a, output_hidden_states=True))
N_PARITY = 8000 + 77


def _hf_forward(model, x):
    with torch.no_grad():
        out = model(torch.from_numpy(x), output_hidden_states=True)
    return out.last_hidden_state.numpy(), [h.numpy() for h in out.hidden_states]


def test_wav2vec2_matches_transformers(hf_checkpoint):
    variant, model, path = hf_checkpoint
    ours = A.load_wav2vec2(str(path))
    assert ours.config.do_stable_layer_norm == (variant == "layer_stableln")
    x = _audio(3, (2, N_PARITY), scale=1.0)
    ref_last, ref_hidden = _hf_forward(model, x)
    last, hidden = _forward(ours, jnp.asarray(x))
    assert last.shape == ref_last.shape == (2, ours.config.num_frames(x.shape[1]), 64)
    rel = _rel(last, ref_last)
    print(f"{variant}: last_hidden_state relative error {rel:.2e}")
    assert rel <= 1e-4
    assert len(hidden) == len(ref_hidden) == 3
    for i, (a, b) in enumerate(zip(hidden, ref_hidden)):
        assert _rel(a, b) <= 1e-4, f"hidden_states[{i}]"


def test_wav2vec2_pytorch_bin_and_old_weight_norm_names(hf_checkpoint, tmp_path):
    variant, model, path = hf_checkpoint
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    pre = "encoder.pos_conv_embed.conv."
    sd[pre + "weight_g"] = sd.pop(pre + "parametrizations.weight.original0")
    sd[pre + "weight_v"] = sd.pop(pre + "parametrizations.weight.original1")
    # as a task model (Wav2Vec2ForCTC layout): `wav2vec2.` prefix plus a head that is skipped
    sd = {f"wav2vec2.{k}": v for k, v in sd.items()}
    sd["lm_head.weight"] = torch.zeros(32, 64)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    shutil.copy(path / "config.json", tmp_path / "config.json")
    ours = A.load_wav2vec2(str(tmp_path))
    x = _audio(4, (2, N_PARITY), scale=1.0)
    rel = _rel(_forward(ours, jnp.asarray(x))[0], _hf_forward(model, x)[0])
    print(f"{variant} (.bin, weight_g/weight_v): relative error {rel:.2e}")
    assert rel <= 1e-4


def test_wav2vec2_features_25fps_match_transformers(hf_checkpoint):
    """Our 25 fps pipeline vs transformers' feature extractor (normalisation) + model, with the
    documented alignment done by hand: 40 zero samples each side, mean of 50 Hz frame pairs."""
    variant, model, path = hf_checkpoint
    feats = A.make_audio_features("wav2vec2", wav2vec2_path=str(path))
    assert feats.normalize and feats.feature_dim == 64
    n = HOP * 13 + 300
    x = _audio(5, (2, n), scale=0.3) + 0.05   # non-zero mean: normalisation matters
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)
    inputs = extractor([row[:HOP * 13] for row in x], sampling_rate=16000, return_tensors="np")
    padded = np.pad(inputs["input_values"].astype(np.float32), ((0, 0), (40, 40)))
    ref50, _ = _hf_forward(model, padded)
    assert ref50.shape[1] == 26
    ref = ref50.reshape(2, 13, 2, 64).mean(axis=2)
    out = feats(x)
    assert out.shape == (2, 13, 64)
    rel = _rel(out, ref)
    print(f"{variant}: 25 fps features relative error {rel:.2e}")
    assert rel <= 1e-4
    np.testing.assert_allclose(jax.jit(feats.apply)(feats.params, jnp.asarray(x)), out, atol=1e-5)


def _safetensors_dir(src, dst, edit):
    tensors = load_file(str(src / "model.safetensors"))
    edit(tensors)
    dst.mkdir(exist_ok=True)
    save_file(tensors, str(dst / "model.safetensors"))
    shutil.copy(src / "config.json", dst / "config.json")
    return str(dst)


def test_loader_missing_and_unexpected_keys(hf_checkpoint, tmp_path):
    _, _, path = hf_checkpoint
    key = "encoder.layers.1.attention.k_proj.bias"

    def drop(t):
        del t[key]

    with pytest.raises(ConfigError, match=r"missing 1 keys: encoder\.layers\.1\.attention\.k_proj\.bias") as e:
        A.load_wav2vec2(_safetensors_dir(path, tmp_path / "missing", drop))
    assert "\n" not in str(e.value)

    def add(t):
        t["encoder.layers.2.layer_norm.weight"] = np.ones(64, np.float32)

    with pytest.raises(ConfigError, match=r"unexpected 1 keys: encoder\.layers\.2\.layer_norm\.weight") as e:
        A.load_wav2vec2(_safetensors_dir(path, tmp_path / "extra", add))
    assert "\n" not in str(e.value)

    def reshape(t):
        t["feature_projection.projection.weight"] = t["feature_projection.projection.weight"][:, :16]

    with pytest.raises(ConfigError, match=r"feature_projection\.projection\.weight.*\(64, 16\)") as e:
        A.load_wav2vec2(_safetensors_dir(path, tmp_path / "shape", reshape))
    assert "\n" not in str(e.value)


def test_loader_file_errors(hf_checkpoint, tmp_path, monkeypatch):
    _, model, path = hf_checkpoint
    with pytest.raises(ConfigError, match="not found") as e:
        A.load_wav2vec2(str(tmp_path / "absent"))
    assert "\n" not in str(e.value)
    (tmp_path / "noweights").mkdir()
    shutil.copy(path / "config.json", tmp_path / "noweights" / "config.json")
    with pytest.raises(ConfigError, match="no weights found"):
        A.load_wav2vec2(str(tmp_path / "noweights"))
    # the weight file's own path works too; a corrupt file gives one line
    assert isinstance(A.load_wav2vec2(str(path / "model.safetensors")), A.Wav2Vec2)
    (tmp_path / "noweights" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="could not read Wav2Vec2 weights") as e:
        A.load_wav2vec2(str(tmp_path / "noweights"))
    assert "\n" not in str(e.value)
    (tmp_path / "noweights" / "model.safetensors").unlink()
    (tmp_path / "noconfig").mkdir()
    shutil.copy(path / "model.safetensors", tmp_path / "noconfig" / "model.safetensors")
    with pytest.raises(ConfigError, match="no config.json"):
        A.load_wav2vec2(str(tmp_path / "noconfig"))
    # a .bin checkpoint without torch installed: one line naming the fix
    torch.save(model.state_dict(), tmp_path / "noweights" / "pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ConfigError, match=r"needs PyTorch \(pip install torch\)") as e:
        A.load_wav2vec2(str(tmp_path / "noweights"))
    assert "\n" not in str(e.value)


def test_config_from_hf_rejects_unsupported():
    with pytest.raises(ConfigError, match="model_type is 'hubert'"):
        A.Wav2Vec2Config.from_hf({"model_type": "hubert"})
    with pytest.raises(ConfigError, match="hidden_act"):
        A.Wav2Vec2Config.from_hf({"model_type": "wav2vec2", "hidden_act": "relu"})
    with pytest.raises(ConfigError, match="adapter"):
        A.Wav2Vec2Config.from_hf({"model_type": "wav2vec2", "add_adapter": True})
    cfg = A.Wav2Vec2Config.from_hf({"model_type": "wav2vec2", "mask_time_prob": 0.0})
    assert cfg == A.Wav2Vec2Config.base(masked_spec_embed=False)


# Parameter counts of transformers' Wav2Vec2Model for facebook/wav2vec2-base (94.4M) and
# facebook/wav2vec2-large-lv60 (315M), including the 768/1024-float masked_spec_embed. Ours
# have 128 fewer: the positional conv's weight-norm magnitudes g [1, 1, 128] are folded.
@pytest.mark.parametrize("preset,count", [("base", 94_371_712), ("large", 315_438_720)])
def test_presets_have_published_parameter_counts(preset, count):
    cfg = getattr(A.Wav2Vec2Config, preset)()
    abstract = nnx.eval_shape(lambda: A.Wav2Vec2(cfg, rngs=nnx.Rngs(0)))
    assert A.count_params(abstract) == count - cfg.num_conv_pos_embeddings
    hf_kwargs = {f: getattr(cfg, f) for f in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                              "intermediate_size", "conv_bias", "feat_extract_norm",
                                              "do_stable_layer_norm")}
    with torch.device("meta"):   # no allocation
        hf = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**hf_kwargs))
    assert sum(p.numel() for p in hf.parameters()) == count
    # every variable is covered by the converter's key map, one-to-one
    keys = A.wav2vec2_key_map(cfg)
    assert len(keys) == len(jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    hf_keys = set(hf.state_dict())
    pre = "encoder.pos_conv_embed.conv.parametrizations.weight."
    hf_keys = (hf_keys - {pre + "original0", pre + "original1"}) | {"encoder.pos_conv_embed.conv.weight"}
    assert set(keys) == hf_keys


# ------------------------------------------------------------------- 25 fps selector and lengths

@pytest.fixture(scope="module")
def small_features():
    cfg = A.Wav2Vec2Config(**VARIANTS["group_postln"])
    sd = {k: v.numpy() for k, v in _hf_model("group_postln", seed=1).state_dict().items()}
    model = A.wav2vec2_from_tensors(cfg, sd)   # (faster than an eager random NNX init)
    return {"logmel": A.make_audio_features("logmel"),
            "wav2vec2": A.make_audio_features("wav2vec2", wav2vec2_model=model)}


@pytest.mark.parametrize("kind", ["logmel", "wav2vec2"])
def test_feature_lengths_at_25fps(small_features, kind):
    feats = small_features[kind]
    assert feats.kind == kind and feats.fps == 25 and feats.sample_rate == 16000
    dim = 80 if kind == "logmel" else 64
    assert feats.feature_dim == dim
    for n in (0, 639, 640, 1279, 1281, 16000 + 639):
        out = feats(_audio(n, (2, n)))
        assert out.shape == (2, n // HOP, dim), (kind, n)
        assert feats.num_frames(n) == n // HOP
        assert np.all(np.isfinite(np.asarray(out)))


def test_wav2vec2_features_are_causal_to_the_frame_span(small_features):
    """Trailing samples past the last whole frame are ignored (only T*640 samples are used)."""
    feats = small_features["wav2vec2"]
    x = _audio(7, (1, HOP * 6 + 500))
    np.testing.assert_array_equal(np.asarray(feats(x)), np.asarray(feats(x[:, :HOP * 6])))


def test_make_audio_features_errors():
    for kwargs in (dict(kind="mfcc"), dict(kind="wav2vec2"), dict(kind="logmel", n_mel=80),
                   dict(kind="logmel", pad_mode="edge"), dict(kind="logmel", fmax=9000.0)):
        with pytest.raises(ConfigError) as e:
            A.make_audio_features(**kwargs)
        assert "\n" not in str(e.value), kwargs
    with pytest.raises(ConfigError, match=r"kind is 'mfcc', expected one of \['logmel', 'wav2vec2'\]"):
        A.make_audio_features("mfcc")
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        A.make_audio_features("logmel")(np.zeros(1600, np.float32))


def test_preprocessor_config_controls_normalisation(hf_checkpoint, tmp_path):
    _, _, path = hf_checkpoint
    d = tmp_path / "ckpt"
    shutil.copytree(path, d)
    (d / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))
    assert not A.make_audio_features("wav2vec2", wav2vec2_path=str(d)).normalize
    assert A.make_audio_features("wav2vec2", wav2vec2_path=str(d), normalize=True).normalize
