#!/usr/bin/env bash
# tpu/create.sh: request a TPU slice as a queued resource (and optionally the GCS bucket).
#
# usage: tpu/create.sh [--dry-run] [--spot] [--wait] [--bucket] [-- EXTRA_GCLOUD_FLAGS...]
#
#   --dry-run   print the gcloud commands (one per line) and run nothing
#   --spot      Spot capacity (also SPOT=1 in env.sh): cheaper, preemptible at any time
#   --wait      poll until the queued resource is ACTIVE (fails on FAILED/SUSPENDED)
#   --bucket    first create gs://$BUCKET in the TPU's region (uniform access, no soft delete)
#   -- ...      passed verbatim to `queued-resources create` (e.g. --valid-until-duration=6h)
#
# Values come from tpu/env.sh (PROJECT, ZONE, ACCELERATOR_TYPE, RUNTIME_VERSION, TPU_NAME, ...).
# The queued resource and its TPU node share the name $TPU_NAME.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

wait_active=0
make_bucket=0
extra=()
while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --wait) wait_active=1 ;;
    --bucket) make_bucket=1 ;;
    -h | --help) usage "$0"; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument '$1' (see tpu/create.sh --help)" ;;
  esac
  shift
done
require_configured
runtime=$(runtime_version)
info "# $ACCELERATOR_TYPE: $(tpu_chips) chips on $(tpu_hosts) worker VM(s), runtime $runtime, spot=$SPOT"

if ((make_bucket)); then
  run gcloud storage buckets create "$(bucket_url)" --project="$PROJECT" --location="$(zone_region)" \
    --uniform-bucket-level-access --soft-delete-duration=0
fi

cmd=(gcloud compute tpus queued-resources create "$TPU_NAME" --project="$PROJECT" --zone="$ZONE"
  --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$runtime"
  --scopes=https://www.googleapis.com/auth/cloud-platform)
[[ -n $SERVICE_ACCOUNT ]] && cmd+=(--service-account="$SERVICE_ACCOUNT")
((SPOT)) && cmd+=(--spot)
run "${cmd[@]}" "${extra[@]}"

if ((wait_active)); then
  describe=(gcloud compute tpus queued-resources describe "$TPU_NAME" --project="$PROJECT" --zone="$ZONE"
    --format=value\(state.state\))
  if ((DRY_RUN)); then
    run "${describe[@]}"
    exit 0
  fi
  while :; do
    state=$("${describe[@]}")
    case $state in
      ACTIVE) info "# $TPU_NAME is ACTIVE"; break ;;
      FAILED | SUSPENDED | SUSPENDING) die "queued resource $TPU_NAME is $state (tpu/delete.sh, then retry)" ;;
      *) info "# $TPU_NAME: ${state:-unknown}; waiting"; sleep 30 ;;
    esac
  done
fi
