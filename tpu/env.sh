# shellcheck shell=bash
# tpu/env.sh: the one place to edit. Every tpu/*.sh script sources this file.
#
# Each value can also be overridden from the environment for one command, e.g.
#   TPU_NAME=btk-v5e ACCELERATOR_TYPE=v5litepod-16 ZONE=us-west4-a tpu/create.sh --dry-run
#
# Zones that offer each TPU generation change over time; check
# https://cloud.google.com/tpu/docs/regions-zones . Examples at the time of writing:
#   v4-8, v4-16, ...             us-central2-b
#   v5litepod-8, v5litepod-16    us-west4-a, us-east1-c, us-central1-a, europe-west4-b
#   v5p-8, v5p-32, ...           us-east5-a, europe-west4-b
# Keep the bucket in the same region as the TPU (cross-region reads are slow and billed).

# Google Cloud project id (`gcloud projects list`).
: "${PROJECT:=your-gcp-project}"
# Zone of the TPU slice.
: "${ZONE:=us-central2-b}"
# Slice type: v4-8 (1 host, 4 chips), v5litepod-16 (4 hosts x 4 chips), v5p-32 (4 hosts x 4 chips), ...
: "${ACCELERATOR_TYPE:=v4-8}"
# TPU VM software version; empty = chosen from ACCELERATOR_TYPE (see runtime_version in common.sh).
: "${RUNTIME_VERSION:=}"
# Name of the queued resource and of its TPU node (lower case, digits, dashes).
: "${TPU_NAME:=jaxcoders-${ACCELERATOR_TYPE}}"
# GCS bucket (name or gs://name) holding activation stores and run directories.
: "${BUCKET:=your-bucket}"
# 1 = request Spot capacity (much cheaper, can be preempted at any time; see tpu/README.md).
: "${SPOT:=0}"
# Service account of the TPU VMs (empty = the project's default compute service account).
# It needs read/write access to BUCKET.
: "${SERVICE_ACCOUNT:=}"

# On each worker, relative to $HOME: the synced source tree, the virtualenv, the logs.
: "${REMOTE_DIR:=jaxcoders}"
: "${REMOTE_VENV:=jaxcoders-venv}"
: "${LOG_DIR:=jaxcoders_logs}"
# Python of the worker virtualenv (the TPU VM images ship 3.10; jaxcoders needs >= 3.11,
# setup.sh gets it with uv). Package versions are pinned in tpu/constraints.txt.
: "${PYTHON_VERSION:=3.11}"
# The CPU build of torch installed by `setup.sh --torch` (activation extraction on a TPU host).
: "${TORCH_VERSION:=2.13.0}"
