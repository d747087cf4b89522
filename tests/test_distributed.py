"""Multi-host training for real: the stage-1 trainer as 2 JAX processes on localhost (4 fake CPU
devices each, coordinator on 127.0.0.1) on a VoxCeleb2-layout data set preprocessed from real
mp4 files, against 1 process with 8 devices; then one process is killed mid-run, both are
restarted, and training resumes from the last checkpoint with the same losses.
"""

import importlib.util
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

import _video_fixture as vf
from vasa_jax.config_util import load_config, set_fields
from vasa_jax.data import preprocess

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

# The smallest stage-1 model the code builds, trained on reconstruction only; logging,
# checkpoints and a warm-up longer than the run (losses at step k then depend on `steps` only
# after the warm-up: runs of different lengths agree).
TINIEST = dict(vf.TINIEST_STAGE1, **{
    "warmup_steps": 20, "batch_size": 8, "log_every": 1, "ckpt_every": 2,
    "sample_every": 1000, "keep_checkpoints": 10})
REF_STEPS = 10


def _launcher():
    spec = importlib.util.spec_from_file_location("launch_local", ROOT / "launch" / "local.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
    """8 train clips of 4 speakers (+ 1 test speaker) preprocessed from real mp4 files."""
    tree = str(tmp_path_factory.mktemp("vox_tree"))
    vf.vox_tree(tree, train_speakers=4, clips_per_speaker=2, test_speakers=1, bad_files=False)
    out = str(tmp_path_factory.mktemp("vox_data"))
    cfg = load_config(f"{CONFIGS / 'preprocess.py'}:tiny")
    summary = preprocess.preprocess(cfg, tree, out, num_workers=1, progress=False)
    assert summary["clips"]["train"] == 8
    return out, summary["dataset"]


def _fields(real_data, steps):
    data_dir, dataset = real_data
    return dict(TINIEST, steps=steps, **{"data.data_dir": data_dir, "data.dataset": dataset})


def _rows(workdir):
    """metrics.jsonl rows; a line being appended while we read is left for the next poll."""
    path = Path(workdir) / "metrics.jsonl"
    rows = []
    for line in (path.read_text().splitlines(keepends=True) if path.exists() else []):
        if not line.endswith("\n"):
            break
        rows.append(json.loads(line))
    return rows


def _losses(workdir):
    """step → loss, the last line of each step winning (a resumed run logs steps again)."""
    return {r["step"]: r["loss"] for r in _rows(workdir)}


def _committed_steps(workdir):
    d = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _wait(condition, procs, what):
    while not condition():
        for i, p in enumerate(procs):
            assert p.poll() is None, f"process {i} exited ({p.returncode}) before {what}"
        time.sleep(0.05)


def test_two_processes_match_one_and_resume_after_a_kill(real_data, tmp_path, devices):
    from vasa_jax.train.face_latent import train

    # Two processes × 4 devices; `steps` is far away, so they run until they are stopped.
    launch = _launcher()
    workdir = str(tmp_path / "two_processes")
    overrides = [f"--config.{k}={v}" for k, v in _fields(real_data, 100_000).items()]
    cmd = [sys.executable, "-m", "vasa_jax.train.face_latent",
           "--config", f"{CONFIGS / 'face_latent.py'}:tiny", "--workdir", workdir, *overrides]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"))
    # (launch/local.py swaps this process's 8-device flag for 4 and keeps the others)
    logs = tmp_path / "logs"
    procs = launch.start_processes(cmd, 2, cpu_devices=4, log_dir=str(logs), cwd=str(ROOT),
                                   env=env)

    # A watcher kills process 1 once checkpoint 4 is committed and step 5 logged (mid-run),
    # then tears the job down, while this process computes the reference.
    def progressed():
        steps = _committed_steps(workdir)
        return (bool(steps) and steps[-1] >= 4 and os.path.isfile(f"{workdir}/metrics.jsonl")
                and max(_losses(workdir), default=0) >= 5)

    outcome = {}

    def watch():
        try:
            _wait(progressed, procs, "checkpoint 4")
            os.killpg(procs[1].pid, signal.SIGKILL)  # one process dies mid-run ...
            procs[1].wait()
        except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = err
        finally:
            launch.stop(procs, signal.SIGKILL)     # ... and the job is torn down

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    # The reference here: one process, all 8 fake devices, one data-parallel mesh.
    ref_dir = str(tmp_path / "one_process")
    # (checkpoints only at the first and the last step: the comparison needs none)
    cfg = set_fields(load_config(f"{CONFIGS / 'face_latent.py'}:tiny"),
                     dict(_fields(real_data, REF_STEPS), ckpt_every=REF_STEPS))
    try:
        train(cfg, ref_dir)
    finally:
        watcher.join()
    if "error" in outcome:
        raise outcome["error"]
    ref = _losses(ref_dir)
    assert sorted(ref) == list(range(1, REF_STEPS + 1)) and ref[REF_STEPS] != ref[1]

    last_ckpt = _committed_steps(workdir)[-1]
    first_rows = _rows(workdir)
    first = _losses(workdir)
    assert last_ckpt + 2 <= REF_STEPS, f"ran to checkpoint {last_ckpt} before the kill"
    # Only process 0 logs (each step once); both saw 8 devices, 4 of them local; the
    # checkpoint was written by both (each its array shards and its grain iterator state).
    assert [r["step"] for r in first_rows] == list(range(1, len(first_rows) + 1))
    p0 = (logs / "process_0.log").read_text()
    assert "process 0 of 2 (explicit): 4 local / 8 global devices" in p0
    ckpt = Path(workdir) / "checkpoints" / str(last_ckpt)
    assert {p.name for p in (ckpt / "data_iter").glob("process_*.json")} == {
        "process_0-of-2.json", "process_1-of-2.json"}
    assert {p.name for p in (ckpt / "state").glob("ocdbt.process_*")} == {
        "ocdbt.process_0", "ocdbt.process_1"}

    # Restart both: training resumes from the last committed checkpoint.
    procs = launch.start_processes(cmd, 2, cpu_devices=4, log_dir=str(tmp_path / "logs2"),
                                   cwd=str(ROOT), env=env)
    resumed_rows = lambda: _rows(workdir)[len(first_rows):]  # noqa: E731
    try:
        _wait(lambda: any(r["step"] >= last_ckpt + 2 for r in resumed_rows()), procs,
              "two steps after the restart")
    finally:
        launch.stop(procs, signal.SIGTERM)
    again = resumed_rows()
    assert again[0]["step"] == last_ckpt + 1, (last_ckpt, [r["step"] for r in again])
    assert f"resumed from step {last_ckpt}" in (tmp_path / "logs2" / "process_0.log").read_text()
    both = _losses(workdir)
    for step in range(1, last_ckpt + 3):
        # Same batches (the grain iterators were checkpointed per process), same parameters:
        # the 2×4-device run equals the 1×8-device run, before and after the kill.
        assert both[step] == pytest.approx(ref[step], rel=2e-5, abs=1e-6), step
    if last_ckpt + 1 in first:  # the killed run had logged it too
        assert again[0]["loss"] == pytest.approx(first[last_ckpt + 1], rel=1e-6)
    assert len({round(both[s], 6) for s in range(1, last_ckpt + 3)}) > 1  # it trains


@pytest.mark.parametrize("env, expected", [
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "explicit"),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
      "SLURM_STEP_NODELIST": "node[1-2]"}, "slurm"),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "ompi"),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.2", "JOB_COMPLETION_INDEX": "0"}, "k8s"),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1"}, "tpu"),
    ({"SLURM_JOB_ID": "7"}, "none"),  # an allocation, but not inside srun
])
def test_cluster_detection(monkeypatch, env, expected):
    from vasa_jax import distributed

    for key in list(os.environ):
        if key.startswith(("SLURM_", "OMPI_", "TPU_", "JAX_COORDINATOR", "KUBERNETES_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if expected == "none" and Path("/dev/accel0").exists():
        pytest.skip("this machine has TPU devices")
    assert distributed.detect() == expected


def test_bad_distributed_settings_are_one_line_errors(monkeypatch):
    from vasa_jax import distributed
    from vasa_jax.errors import ConfigError

    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match="--coordinator_address"):
        distributed.initialize("off", num_processes=2)
    with pytest.raises(ConfigError, match="needs --num_processes and --process_id"):
        distributed.initialize("explicit", coordinator_address="127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"process_id=2 must lie in \[0, num_processes=2\)"):
        distributed.initialize("explicit", coordinator_address="127.0.0.1:1", num_processes=2,
                               process_id=2)
    with pytest.raises(ConfigError, match="distributed mode 'mpi' is invalid"):
        distributed.initialize("mpi")
    # Off: nothing is started, this pytest process stays as it is.
    info = distributed.initialize("off")
    assert info["process_count"] == 1 and info["devices"] == 8


def test_launcher_environment():
    env = _launcher().process_env(1, 2, 4242, cpu_devices=4, base={"XLA_FLAGS": "--xla_foo=1 "
                                  "--xla_force_host_platform_device_count=8"})
    assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:4242"
    assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("2", "1")
    assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=4"
    assert env["JAX_PLATFORMS"] == "cpu"
    gpu = _launcher().process_env(1, 2, 4242, gpus_per_process=2, base={})
    assert gpu["CUDA_VISIBLE_DEVICES"] == "2,3" and "JAX_PLATFORMS" not in gpu
