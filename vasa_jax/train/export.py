"""Stage-1 + stage-2 workdirs → one inference bundle (`vasa_jax.inference.bundle`).

    python -m vasa_jax.train.export --face-workdir W1 --motion-workdir W2 --out BUNDLE
"""

from __future__ import annotations

import os

from flax import nnx


def export_bundle(face_workdir: str, motion_workdir: str, out: str) -> str:
    """Writes the bundle (EMA weights of both stages); returns its checkpoint hash."""
    from vasa_jax.data import latents
    from vasa_jax.inference.bundle import save_bundle
    from vasa_jax.train.face_latent import restore_generator
    from vasa_jax.train.motion import restore_motion_model

    gen, fcfg, f_step = restore_generator(face_workdir)
    model, mcfg, _, m_step = restore_motion_model(motion_workdir)
    info = latents.read_info(mcfg.latents_dir) if os.path.isdir(mcfg.latents_dir) else {}
    manifest = dict(
        face=dict(model=fcfg.model.to_dict(), step=f_step,
                  workdir=os.path.abspath(face_workdir)),
        motion=dict(model=mcfg.model.to_dict(), step=m_step, diffusion=mcfg.diffusion.to_dict(),
                    sample=mcfg.sample.to_dict(), workdir=os.path.abspath(motion_workdir)),
        audio=info.get("audio", dict(kind="logmel", feature_dim=int(mcfg.model.audio_dim))),
        synthtalk=info.get("synthtalk"),
    )
    stats = latents.read_stats(motion_workdir)
    return save_bundle(out, manifest, nnx.state(gen).to_pure_dict(),
                       nnx.state(model).to_pure_dict(), stats)


def main(argv):
    del argv
    from absl import flags

    F = flags.FLAGS
    digest = export_bundle(F.face_workdir, F.motion_workdir, F.out)
    print(f"wrote {F.out} (checkpoint {digest[:16]})")


if __name__ == "__main__":
    import sys

    from absl import app, flags

    from vasa_jax.train.extract_latents import _dashes_to_underscores

    sys.argv = _dashes_to_underscores(sys.argv)
    flags.DEFINE_string("face_workdir", None, "stage-1 workdir")
    flags.DEFINE_string("motion_workdir", None, "stage-2 workdir")
    flags.DEFINE_string("out", None, "bundle folder to write")
    flags.mark_flags_as_required(["face_workdir", "motion_workdir", "out"])
    app.run(main)
