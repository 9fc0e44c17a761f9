#!/usr/bin/env bash
# tpu/setup.sh: install jaxcoders and its pinned dependencies on every worker (idempotent).
#
# usage: tpu/setup.sh [--dry-run] [--torch] [--fresh] [--worker=all|N]
#
#   --dry-run     print the gcloud command and run nothing
#   --torch       also install the PyTorch side (CPU torch==$TORCH_VERSION, transformers,
#                 datasets) for experiments/extract_activations.py on a TPU host
#   --fresh       delete the worker virtualenv first
#   --worker=W    all workers (default) or one index
#
# Run tpu/sync.sh first: this installs the synced tree (~/$REMOTE_DIR) in editable mode into
# ~/$REMOTE_VENV, a Python $PYTHON_VERSION virtualenv made with uv (the TPU images ship 3.10),
# with `jax[tpu]` (jax, jaxlib and the matching libtpu) and every other package pinned by
# tpu/constraints.txt, so all workers run identical versions. Rerunning it is cheap.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

torch=0
fresh=0
worker=all
while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --torch) torch=1 ;;
    --fresh) fresh=1 ;;
    --worker=*) worker=${1#--worker=} ;;
    -h | --help) usage "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see tpu/setup.sh --help)" ;;
  esac
  shift
done
require_configured
check_remote_names
check_worker "$worker"

venv="\$HOME/$REMOTE_VENV"
py="$venv/bin/python"
lines=(
  "set -euo pipefail"
  "cd \"\$HOME/$REMOTE_DIR\" || { echo \"\$(hostname): ~/$REMOTE_DIR is missing: run tpu/sync.sh first\" >&2; exit 1; }"
  "export PATH=\"\$HOME/.local/bin:\$PATH\""
  "command -v uv >/dev/null || python3 -m pip install --user --quiet --upgrade uv"
)
((fresh)) && lines+=("rm -rf \"$venv\"")
lines+=(
  "[ -x \"$py\" ] || uv venv --python $PYTHON_VERSION \"$venv\""
  "uv pip install --python \"$py\" --quiet -c tpu/constraints.txt \"jax[tpu]\" -e \".[analysis]\""
)
if ((torch)); then
  lines+=(
    "uv pip install --python \"$py\" --quiet --index-url https://download.pytorch.org/whl/cpu torch==$TORCH_VERSION"
    "uv pip install --python \"$py\" --quiet -c tpu/constraints.txt -e \".[torch,analysis]\""
  )
fi
lines+=(
  "\"$py\" -c \"import sys, jax, jaxcoders; print(sys.version.split()[0], jax.__version__)\" | sed \"s/^/\$(hostname): python, jax /\""
  "echo \"\$(hostname): \$(find /dev -maxdepth 2 -path \"/dev/accel*\" -o -path \"/dev/vfio/[0-9]*\" | wc -l) TPU device files\""
)
script=$(printf '%s; ' "${lines[@]}")
tpu_ssh "$worker" "${script%; }"
