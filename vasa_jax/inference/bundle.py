"""Inference bundles: everything generation needs, in one folder, readable without the trainers.

    BUNDLE/manifest.json    format, model configs (stage 1 and 2), diffusion schedule, sampling
                            defaults, audio front end, training steps, `checkpoint_hash`
    BUNDLE/face/            orbax: stage-1 EMA parameters (+ non-parameter state)
    BUNDLE/motion/          orbax: stage-2 EMA parameters
    BUNDLE/stats.json       stage-2 normalisation statistics (motion, audio features, gaze, distance)

Written by `vasa_jax.train.export.export_bundle` (or `vasa-jax export`); read by `load_bundle`,
which imports only jax, flax, numpy and orbax (no grain / tfds / optax). `checkpoint_hash` is the
SHA-256 of every parameter's bytes in a fixed order: it names the weights for provenance.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
from flax import nnx

from vasa_jax.errors import ConfigError

FORMAT = "vasa_jax.bundle/1"
MANIFEST = "manifest.json"


def params_hash(*trees: Any) -> str:
    """SHA-256 over the leaves of the given pytrees (path-sorted), as hex."""
    h = hashlib.sha256()
    for tree in trees:
        for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(tree)[0],
                                 key=lambda kv: jax.tree_util.keystr(kv[0])):
            arr = np.ascontiguousarray(np.asarray(leaf))
            h.update(jax.tree_util.keystr(path).encode())
            h.update(str(arr.dtype).encode() + str(arr.shape).encode())
            h.update(arr.tobytes())
    return h.hexdigest()


@dataclasses.dataclass
class Bundle:
    """Loaded bundle: built models (EMA weights) and what goes with them."""

    path: str
    manifest: dict
    face: Any            # vasa_jax.models.face.FaceLatentModel
    motion: Any          # vasa_jax.models.motion_dit.MotionDiT
    stats: dict          # name → float32 numpy array

    @property
    def checkpoint_hash(self) -> str:
        return self.manifest["checkpoint_hash"]

    @property
    def image_size(self) -> int:
        """Side of the frames the face model draws."""
        return int(self.manifest["face"]["model"]["image_size"])

    @property
    def input_size(self) -> int:
        """Side of the frames the face model reads (model.input_size; 0 or absent: image_size)."""
        return int(self.manifest["face"]["model"].get("input_size", 0) or self.image_size)


class ModelFields(dict):
    """A model config read from the manifest: item and attribute access (`cfg.image_size`,
    `cfg["image_size"]`, `"x" in cfg`), which is all the model builders use. Stands in for
    ml_collections.ConfigDict, which the inference machines do not have."""

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return ModelFields(value) if isinstance(value, dict) else value

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self))


def _restore(path: str, target: Any) -> Any:
    import orbax.checkpoint as ocp

    # An explicit single-device placement: without one orbax rebuilds the export run's mesh
    # from the checkpoint metadata (a topology error on another machine, and parameters whose
    # NamedSharding leaks into every output, so jitted callers trace twice).
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            target)
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path, abstract)


def load_bundle(path: str) -> Bundle:
    """Reads a bundle; one-line ConfigError when it is missing or not a bundle."""
    from vasa_jax.models import motion_dit
    from vasa_jax.models.face import build_model as build_face

    path = os.path.abspath(os.fspath(path))
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isfile(mpath):
        hint = (" (that is a training workdir: export it with `vasa-jax export`)"
                if os.path.isfile(os.path.join(path, "config.json")) else "")
        raise ConfigError(f"{path!r} is not a vasa_jax model bundle ({MANIFEST} missing){hint}: "
                          "pass the folder written by `vasa-jax export` or `vasa-jax demo`")
    with open(mpath, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"{mpath} has format {manifest.get('format')!r}, expected {FORMAT!r}: "
                          "re-export the bundle with this version of vasa_jax")
    face_cfg = ModelFields(manifest["face"]["model"])
    motion_cfg = ModelFields(manifest["motion"]["model"])
    face_abs = nnx.eval_shape(lambda: build_face(face_cfg, nnx.Rngs(0)))
    f_def, f_state = nnx.split(face_abs)
    m_abs = nnx.eval_shape(lambda: motion_dit.build_model(motion_cfg, nnx.Rngs(0)))
    m_def, m_state = nnx.split(m_abs)
    try:
        f_vals = _restore(os.path.join(path, "face"), f_state.to_pure_dict())
        m_vals = _restore(os.path.join(path, "motion"), m_state.to_pure_dict())
    except (ValueError, KeyError, FileNotFoundError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"bundle {path!r} does not match its manifest's models ({first}): "
                          "re-export it") from None
    with open(os.path.join(path, "stats.json"), encoding="utf-8") as f:
        stats = {k: np.asarray(v, np.float32) for k, v in json.load(f).items()}
    return Bundle(path=path, manifest=manifest, face=nnx.merge(f_def, f_vals),
                  motion=nnx.merge(m_def, m_vals), stats=stats)


def save_bundle(path: str, manifest: dict, face_state: Any, motion_state: Any,
                stats: dict) -> str:
    """Writes a bundle (pure-dict states of the two models); returns the checkpoint hash."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    os.makedirs(path, exist_ok=True)
    digest = params_hash(face_state, motion_state)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, "face"), face_state, force=True)
        ckptr.save(os.path.join(path, "motion"), motion_state, force=True)
    with open(os.path.join(path, "stats.json"), "w", encoding="utf-8") as f:
        json.dump({k: np.asarray(v).tolist() for k, v in stats.items()}, f)
    manifest = dict(manifest, format=FORMAT, checkpoint_hash=digest)
    with open(os.path.join(path, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return digest
