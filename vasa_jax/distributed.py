"""Multi-process / multi-host start-up: `jax.distributed.initialize()` where a cluster asks for it.

    from vasa_jax import distributed
    info = distributed.initialize()            # before anything touches a JAX device
    # or from the trainers' flags:
    python -m vasa_jax.train.face_latent --config ... --workdir W \
        --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0

Which environment (the first that applies):
  explicit   --coordinator_address (or $JAX_COORDINATOR_ADDRESS) with --num_processes and
             --process_id (or $JAX_NUM_PROCESSES / $JAX_PROCESS_ID): any machines that reach the
             coordinator's port — the local launcher (launch/local.sh) and the fallback anywhere
             auto-detection fails.
  tpu        a Cloud TPU VM slice ($TPU_WORKER_HOSTNAMES / $TPU_ACCELERATOR_TYPE, or /dev/accel*):
             JAX reads the workers from the TPU metadata.
  slurm      inside `srun` ($SLURM_JOB_ID, $SLURM_NTASKS, $SLURM_PROCID, ...): the coordinator is
             the first node of the allocation, one JAX process per task.
  ompi       under Open MPI's `mpirun` ($OMPI_MCA_orte_hnp_uri / $OMPI_COMM_WORLD_SIZE).
  k8s        a Kubernetes pod ($KUBERNETES_SERVICE_HOST; JAX needs the `kubernetes` package and a
             JobSet/indexed Job, as in JAX's own K8sCluster).
  none       a single process: nothing to initialise.
`mode="off"` (flag --distributed=off) skips all of this; `mode="<name>"` insists on one.

After initialisation: every process sees all devices (`jax.devices()`), its own via
`jax.local_devices()`; the data pipelines read `jax.process_index()`'s shard and
`pipelines.global_batch` assembles the global batch with
`jax.make_array_from_process_local_data`; only process 0 writes metrics.jsonl, config.json,
TensorBoard events and sample images; orbax checkpoints are written collectively (every process
calls save/restore; each writes its own shards of the arrays and its grain iterator state), so
the checkpoint directory must be shared (NFS, GCS/S3 bucket path).
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

MODES = ("auto", "off", "explicit", "tpu", "slurm", "ompi", "k8s")


def detect() -> str:
    """The cluster environment this process runs in (see the module doc), without side effects."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "explicit"
    if env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_ACCELERATOR_TYPE") or glob.glob(
            "/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return "tpu"
    if all(k in env for k in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
                              "SLURM_STEP_NODELIST")):
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env or "OMPI_COMM_WORLD_SIZE" in env:
        return "ompi"
    if "KUBERNETES_SERVICE_HOST" in env and env.get("JOB_COMPLETION_INDEX") is not None:
        return "k8s"
    return "none"


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def initialize(mode: str = "auto", *, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               local_device_ids: list[int] | None = None,
               initialization_timeout: int = 300) -> dict[str, Any]:
    """Starts JAX's distributed runtime when the environment calls for it (idempotent).

    Returns {"mode", "process_index", "process_count", "local_devices", "devices"}. Must run
    before the first use of a JAX backend. Bad combinations raise ConfigError (one line).
    """
    import jax

    from vasa_jax.errors import ConfigError, check

    check(mode in MODES, f"distributed mode {mode!r} is invalid: use one of {', '.join(MODES)}")
    explicit = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None:
        num_processes = _int_env("JAX_NUM_PROCESSES")
    if process_id is None:
        process_id = _int_env("JAX_PROCESS_ID")
    chosen = mode
    if mode == "auto":
        chosen = "explicit" if explicit else detect()
        if chosen == "explicit" and not explicit:
            chosen = "none"
    if chosen in ("off", "none"):
        if num_processes not in (None, 1):
            raise ConfigError(f"num_processes={num_processes} but no coordinator: pass "
                              "--coordinator_address=HOST:PORT (process 0's host)")
    elif _already_initialized():
        log.info("jax.distributed already initialised")
    elif chosen == "explicit":
        check(bool(explicit), "distributed mode 'explicit' needs --coordinator_address=HOST:PORT")
        check(num_processes is not None and process_id is not None,
              f"--coordinator_address={explicit} needs --num_processes and --process_id "
              "(0 on the coordinator's host)")
        check(num_processes >= 1 and 0 <= process_id < num_processes,
              f"process_id={process_id} must lie in [0, num_processes={num_processes})")
        jax.distributed.initialize(explicit, num_processes, process_id,
                                   local_device_ids=local_device_ids,
                                   initialization_timeout=initialization_timeout)
    else:
        # JAX's own cluster detection fills in coordinator, process count and id.
        methods = {"tpu": None, "slurm": "SlurmCluster", "ompi": "OmpiCluster",
                   "k8s": "K8sCluster"}
        kwargs = {}
        if mode != "auto" and methods.get(chosen):
            kwargs["cluster_detection_method"] = methods[chosen]
        jax.distributed.initialize(coordinator_address=explicit or None,
                                   num_processes=num_processes, process_id=process_id,
                                   local_device_ids=local_device_ids,
                                   initialization_timeout=initialization_timeout, **kwargs)
    info = dict(mode=chosen, process_index=jax.process_index(),
                process_count=jax.process_count(), local_devices=jax.local_device_count(),
                devices=jax.device_count())
    if info["process_count"] > 1:
        quiet_other_processes()
    log.info("process %d of %d (%s): %d local / %d global devices", info["process_index"],
             info["process_count"], chosen, info["local_devices"], info["devices"])
    return info


def _already_initialized() -> bool:
    import jax

    if hasattr(jax.distributed, "is_initialized"):   # public since the JAX 0.5 line
        return bool(jax.distributed.is_initialized())
    try:
        from jax._src import distributed as _d  # older JAX: no public "is initialised"

        return _d.global_state.client is not None
    except (ImportError, AttributeError):
        return False


def quiet_other_processes() -> None:
    """Processes other than 0 log warnings and errors only (process 0 speaks for the run)."""
    import jax

    if jax.process_index() != 0:
        logging.getLogger().setLevel(logging.WARNING)
        try:
            from absl import logging as absl_logging

            absl_logging.set_verbosity(absl_logging.WARNING)
        except ImportError:
            pass


def barrier(name: str, timeout_s: float = 3600.0) -> None:
    """Waits until every process reaches the barrier `name` (no-op for one process). Uses the
    distributed runtime's own barrier, not a device collective, so it has its own timeout."""
    import jax

    if jax.process_count() == 1:
        return
    # The runtime client jax.distributed.initialize() created; JAX has no public handle on it
    # (multihost_utils.sync_global_devices is a device collective, without its own timeout).
    from jax._src import distributed as _d

    client = getattr(getattr(_d, "global_state", None), "client", None)
    if client is None:
        raise RuntimeError(f"barrier {name!r}: {jax.process_count()} processes but no JAX "
                           "distributed client; call vasa_jax.distributed.initialize() first")
    client.wait_at_barrier(f"vasa_jax:{name}", int(timeout_s * 1000))


def compile_then_meet(jitted, args: tuple, name: str):
    """`jitted` compiled ahead of time for `args`, returned once every process has compiled it.

    Multi-process only: processes finish compiling at different times, and CPU collectives
    (gloo) give up when a peer joins the first collective more than 30 s late; waiting at a
    barrier after compiling keeps that skew out of the first step. One process: `jitted`.
    """
    import jax

    if jax.process_count() == 1 or not hasattr(jitted, "lower"):
        return jitted
    compiled = jitted.lower(*args).compile()
    barrier(f"{name}:compiled")
    return compiled


def is_main_process() -> bool:
    import jax

    return jax.process_index() == 0


# ----------------------------------------------------------------------------------------------
# absl flags for the trainers' entry points.


def define_flags() -> None:
    """--distributed, --coordinator_address, --num_processes, --process_id, --local_device_ids."""
    from absl import flags

    flags.DEFINE_enum("distributed", "auto", list(MODES),
                      "multi-process start-up: auto-detect (TPU VM, SLURM, Open MPI, Kubernetes, "
                      "or the explicit flags), or force one / off")
    flags.DEFINE_string("coordinator_address", None,
                        "HOST:PORT of process 0 (explicit multi-process runs)")
    flags.DEFINE_integer("num_processes", None, "number of JAX processes (explicit runs)")
    flags.DEFINE_integer("process_id", None, "this process's index, 0..num_processes-1")
    flags.DEFINE_list("local_device_ids", None, "devices this process uses (default: all local)")


def initialize_from_flags() -> dict[str, Any]:
    from absl import flags

    f = flags.FLAGS
    ids = [int(i) for i in f.local_device_ids] if f.local_device_ids else None
    return initialize(f.distributed, coordinator_address=f.coordinator_address,
                      num_processes=f.num_processes, process_id=f.process_id,
                      local_device_ids=ids)
