# shellcheck shell=bash
# tpu/common.sh: helpers shared by the tpu/*.sh scripts (sourced, never run).
#
# Every script prints the commands it runs: with --dry-run it prints them to stdout, exactly,
# one per line, and runs nothing; otherwise it echoes each one to stderr ("+ cmd") and runs it.

TPU_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
ROOT_DIR="$(dirname "$TPU_DIR")"
# shellcheck source=env.sh
source "$TPU_DIR/env.sh"

DRY_RUN=0

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

info() {
  printf '%s\n' "$*" >&2
}

# Print the header comment of the calling script (its usage text).
usage() {
  local script=${1:-$0}
  sed -n '2,/^[^#]/{/^#/!q;s/^# \{0,1\}//;p}' "$script"
}

# Quote one argument for a POSIX shell; plain words are left as they are.
shell_quote() {
  local a=$1
  if [[ -n $a && $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$a"
  else
    printf "'%s'" "${a//\'/\'\\\'\'}"
  fi
}

# One command as a single line that a shell (or Python's shlex.split) reads back exactly.
format_cmd() {
  local out="" a
  for a in "$@"; do
    out+="${out:+ }$(shell_quote "$a")"
  done
  printf '%s\n' "$out"
}

# Run a command, or only print it under --dry-run.
run() {
  if ((DRY_RUN)); then
    format_cmd "$@"
  else
    printf '+ %s' "$(format_cmd "$@")" >&2
    printf '\n' >&2
    "$@"
  fi
}

# gs://name/... for BUCKET given as "name" or "gs://name".
bucket_url() {
  local b=${BUCKET#gs://}
  printf 'gs://%s' "${b%/}"
}

# us-central2-b -> us-central2
zone_region() {
  printf '%s' "${ZONE%-*}"
}

# The TPU VM image for an accelerator type (RUNTIME_VERSION wins when set).
runtime_version() {
  if [[ -n $RUNTIME_VERSION ]]; then
    printf '%s' "$RUNTIME_VERSION"
    return
  fi
  case $ACCELERATOR_TYPE in
    v4-*) printf 'tpu-ubuntu2204-base' ;;
    v5litepod-*) printf 'v2-alpha-tpuv5-lite' ;;
    v5p-*) printf 'v2-alpha-tpuv5' ;;
    v6e-*) printf 'v2-alpha-tpuv6e' ;;
    v5e-*) die "v5e slices are called v5litepod-N in gcloud (e.g. ACCELERATOR_TYPE=v5litepod-16)" ;;
    *) die "no default runtime for ACCELERATOR_TYPE=$ACCELERATOR_TYPE; set RUNTIME_VERSION in tpu/env.sh" ;;
  esac
}

# Chips in the slice: the number in the name counts TensorCores on v4/v5p (2 per chip), chips on v5e/v6e.
tpu_chips() {
  local n=${ACCELERATOR_TYPE##*-}
  [[ $n =~ ^[0-9]+$ ]] || die "cannot read the size of ACCELERATOR_TYPE=$ACCELERATOR_TYPE"
  case $ACCELERATOR_TYPE in
    v4-* | v5p-*) echo $((n / 2)) ;;
    *) echo "$n" ;;
  esac
}

# TPU VMs (workers) in the slice: 4 chips per VM, except single-host v5e/v6e slices of up to 8 chips.
tpu_hosts() {
  local chips
  chips=$(tpu_chips)
  case $ACCELERATOR_TYPE in
    v5litepod-* | v6e-*) if ((chips <= 8)); then echo 1; else echo $((chips / 4)); fi ;;
    *) echo $(((chips + 3) / 4)) ;;
  esac
}

# Refuse to talk to Google Cloud with the placeholder values of env.sh (dry runs may use them).
require_configured() {
  ((DRY_RUN)) && return 0
  [[ $PROJECT != your-gcp-project ]] || die "set PROJECT in tpu/env.sh (or export PROJECT=...)"
  [[ $BUCKET != your-bucket ]] || die "set BUCKET in tpu/env.sh (or export BUCKET=...)"
}

# Paths on the workers are relative to $HOME and must be plain names (they are rm -rf'ed).
check_remote_names() {
  local v
  for v in "$REMOTE_DIR" "$REMOTE_VENV" "$LOG_DIR"; do
    [[ $v =~ ^[A-Za-z0-9._-]+$ && $v != . && $v != .. ]] ||
      die "REMOTE_DIR, REMOTE_VENV and LOG_DIR must be plain directory names under \$HOME, got '$v'"
  done
}

check_worker() {
  [[ $1 == all || $1 =~ ^[0-9]+$ ]] || die "--worker must be 'all' or a worker index, got '$1'"
}

# gcloud compute tpus tpu-vm ssh on WORKER (all | N) running COMMAND there.
tpu_ssh() {
  local worker=$1 command=$2
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --worker="$worker" --command="$command"
}
