#!/usr/bin/env bash
# tpu/delete.sh: delete the queued resource and its TPU VMs (billing stops). The bucket stays.
#
# usage: tpu/delete.sh [--dry-run] [--yes] [--async]
#
#   --dry-run   print the gcloud command and run nothing
#   --yes       do not ask for confirmation (gcloud --quiet)
#   --async     return at once instead of waiting for the deletion to finish
#
# Everything on the workers (synced tree, virtualenv, logs) is lost; runs whose --workdir is on
# gs:// keep their checkpoints and resume when relaunched on a new slice. Fetch logs you want
# first (tpu/logs.sh --fetch=DIR). A Spot slice that was preempted (queued resource SUSPENDED)
# also has to be deleted before it can be created again.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

flags=()
while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --yes) flags+=(--quiet) ;;
    --async) flags+=(--async) ;;
    -h | --help) usage "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see tpu/delete.sh --help)" ;;
  esac
  shift
done
require_configured
run gcloud compute tpus queued-resources delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --force "${flags[@]}"
