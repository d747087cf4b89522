#!/usr/bin/env python3
"""Local multi-process launcher: N JAX processes on this machine, coordinator on 127.0.0.1.

Usage:
    python launch/local.py --num_processes 2 [--cpu_devices 4] [--port 0] [--log_dir DIR] -- \
        python -m vasa_jax.train.face_latent --config configs/face_latent.py:tiny --workdir W

Each process gets JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT (a free port unless --port),
JAX_NUM_PROCESSES and JAX_PROCESS_ID, which `vasa_jax.distributed.initialize()` (called by the
trainers' entry points) reads. --cpu_devices N gives every process N fake CPU devices
(JAX_PLATFORMS=cpu, XLA_FLAGS=--xla_force_host_platform_device_count=N): a multi-host run on one
machine, for tests and debugging. On a multi-GPU machine leave it out and pass
--gpus_per_process K: process i sees GPUs [i·K, (i+1)·K) through CUDA_VISIBLE_DEVICES.

Output lines are prefixed with [pI] (or written to DIR/process_I.log with --log_dir). If any
process fails, the others are stopped and the launcher exits with that process's status;
Ctrl-C stops them all. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(index: int, num_processes: int, port: int, cpu_devices: int = 0,
                gpus_per_process: int = 0, base: dict | None = None) -> dict:
    """The environment of process `index` (see the module doc)."""
    env = dict(os.environ if base is None else base)
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes),
               JAX_PROCESS_ID=str(index))
    if cpu_devices:
        env["JAX_PLATFORMS"] = "cpu"
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count="
                                             f"{cpu_devices}"])
    if gpus_per_process:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(
            str(i) for i in range(index * gpus_per_process, (index + 1) * gpus_per_process))
    return env


def start_processes(command: list[str], num_processes: int, *, port: int = 0,
                    cpu_devices: int = 0, gpus_per_process: int = 0, log_dir: str | None = None,
                    cwd: str | None = None, env: dict | None = None) -> list[subprocess.Popen]:
    """Starts the processes (each in its own process group) and returns their Popen objects.
    With log_dir, process i writes to log_dir/process_i.log; otherwise stdout is a pipe."""
    port = port or free_port()
    procs = []
    for i in range(num_processes):
        out = subprocess.PIPE
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            out = open(os.path.join(log_dir, f"process_{i}.log"), "ab")  # noqa: SIM115
        procs.append(subprocess.Popen(
            command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env=process_env(i, num_processes, port, cpu_devices, gpus_per_process, env)))
        if log_dir:
            out.close()
    return procs


def _pump(index: int, proc: subprocess.Popen) -> None:
    for line in iter(proc.stdout.readline, b""):
        sys.stdout.write(f"[p{index}] {line.decode(errors='replace')}")
        sys.stdout.flush()


def stop(procs: list[subprocess.Popen], sig: int = signal.SIGTERM, grace_s: float = 10.0) -> None:
    """Signals every live process group, then kills what is still alive after grace_s."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    parser.add_argument("--cpu_devices", type=int, default=0,
                        help="fake CPU devices per process (0: use the real accelerators)")
    parser.add_argument("--gpus_per_process", type=int, default=0)
    parser.add_argument("--log_dir", default=None, help="write process_I.log files here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --, e.g. -- python -m vasa_jax.train.face_latent ...")
    if args.num_processes < 1:
        parser.error(f"--num_processes={args.num_processes}: use 1 or more")
    procs = start_processes(command, args.num_processes, port=args.port,
                            cpu_devices=args.cpu_devices, gpus_per_process=args.gpus_per_process,
                            log_dir=args.log_dir)
    pumps = [threading.Thread(target=_pump, args=(i, p), daemon=True)
             for i, p in enumerate(procs) if p.stdout is not None]
    for t in pumps:
        t.start()
    status = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed:
                status = failed[0].returncode
                print(f"launch/local.py: process {procs.index(failed[0])} exited with "
                      f"{status}; stopping the others", file=sys.stderr)
                stop(procs)
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop(procs, signal.SIGINT)
        status = 130
    for t in pumps:
        t.join(timeout=5)
    return status or next((p.returncode for p in procs if p.returncode), 0)


if __name__ == "__main__":
    sys.exit(main())
