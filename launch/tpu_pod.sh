#!/usr/bin/env bash
# Cloud TPU VM pod slice: create it, copy + install vasa_jax on every worker, run a trainer on
# all workers at once, follow the logs, delete it.
#
# Usage:
#   launch/tpu_pod.sh create            # gcloud TPU VM (all workers)
#   launch/tpu_pod.sh install           # copy this checkout to every worker, pip install -e .
#   launch/tpu_pod.sh run -- --config configs/face_latent.py:vox512 \
#       --workdir gs://BUCKET/runs/stage1 --config.data.data_dir=gs://BUCKET/vasa_data \
#       --config.data.dataset=voxceleb2/r512_jpeg_XXXXXXXX
#   launch/tpu_pod.sh logs              # follow worker 0's log (WORKER=all: every worker)
#   launch/tpu_pod.sh stop              # kill the trainer on every worker
#   launch/tpu_pod.sh delete
#
# Settings (environment): TPU_NAME (vasa-pod), ZONE (us-central2-b), ACCELERATOR (v4-32),
# VERSION (tpu-ubuntu2204-base), PROJECT (gcloud's default), TRAINER (vasa_jax.train.face_latent;
# vasa_jax.train.motion for stage 2), WORKER (0 | all, for logs).
#
# Every worker runs the same command; `vasa_jax.distributed.initialize()` (--distributed=auto)
# detects the TPU VM and jax.distributed gets the coordinator and process ids from the TPU
# metadata, so no flags are needed. Workdir and data should be gs:// paths (or a shared disk):
# orbax writes checkpoints from every worker, and each worker reads its own shard of the data.
# Only worker 0 writes metrics.jsonl / TensorBoard / samples.
set -euo pipefail

TPU_NAME=${TPU_NAME:-vasa-pod}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
VERSION=${VERSION:-tpu-ubuntu2204-base}
TRAINER=${TRAINER:-vasa_jax.train.face_latent}
WORKER=${WORKER:-0}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REPO=$(cd "$(dirname "$0")/.." && pwd)
REMOTE_DIR=vasa_jax_src
LOG=vasa_train.log

ssh_all() {  # ssh_all WORKER COMMAND
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker="$1" \
    --command="$2"
}

case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
      --accelerator-type="$ACCELERATOR" --version="$VERSION"
    ;;
  install)
    tarball=$(mktemp /tmp/vasa_jax_src.XXXXXX.tar.gz)
    git -C "$REPO" ls-files -z | tar -C "$REPO" --null -T - -czf "$tarball"
    gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME":vasa_jax_src.tar.gz --zone="$ZONE" \
      $PROJECT_FLAG --worker=all
    rm -f "$tarball"
    ssh_all all "mkdir -p $REMOTE_DIR && tar -xzf vasa_jax_src.tar.gz -C $REMOTE_DIR && \
      pip install -q 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html && \
      pip install -q -e $REMOTE_DIR"
    ;;
  run)
    shift
    [[ "${1:-}" == "--" ]] && shift
    [[ $# -gt 0 ]] || { echo "usage: $0 run -- --config ... --workdir gs://..." >&2; exit 2; }
    args=$(printf '%q ' "$@")
    # nohup: the run survives the ssh session; every worker logs to ~/$LOG.
    ssh_all all "cd $REMOTE_DIR && nohup python -m $TRAINER $args > ~/$LOG 2>&1 &"
    echo "started on all workers of $TPU_NAME; follow with: $0 logs"
    ;;
  logs)
    ssh_all "$WORKER" "tail -n 100 -F ~/$LOG"
    ;;
  stop)
    ssh_all all "pkill -f 'python -m $TRAINER' || true"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --quiet
    ;;
  *)
    sed -n '2,25p' "$0"
    exit 2
    ;;
esac
