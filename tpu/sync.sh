#!/usr/bin/env bash
# tpu/sync.sh: ship this working tree to every worker (~/$REMOTE_DIR, replaced atomically).
#
# usage: tpu/sync.sh [--dry-run] [--worker=all|N]
#
#   --dry-run     print the commands (pack, copy, unpack; one per line) and run nothing
#   --worker=W    all workers (default) or one index
#
# Packs the files git would commit (tracked plus untracked-but-not-ignored, so .venv/, caches
# and outputs stay home; outside a git checkout: everything but those), copies the archive to
# the workers with `tpu-vm scp`, and unpacks it into a fresh ~/$REMOTE_DIR on each. Every worker
# must run the same code: sync, then (after dependency changes) tpu/setup.sh, then tpu/run.sh.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

worker=all
while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --worker=*) worker=${1#--worker=} ;;
    -h | --help) usage "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see tpu/sync.sh --help)" ;;
  esac
  shift
done
require_configured
check_remote_names
check_worker "$worker"

archive="${TMPDIR:-/tmp}/jaxcoders-sync-$TPU_NAME.tgz"
remote_archive="$REMOTE_DIR-sync.tgz"
root=$(shell_quote "$ROOT_DIR")
if git -C "$ROOT_DIR" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  pack="git -C $root ls-files -z --cached --others --exclude-standard | tar -czf $(shell_quote "$archive") -C $root --null --ignore-failed-read -T -"
else
  pack="tar -czf $(shell_quote "$archive") -C $root --exclude-vcs --exclude=./.venv --exclude=__pycache__ '--exclude=*.egg-info' --exclude=.pytest_cache --exclude=./demo_out --exclude=./workdir ."
fi
if ((DRY_RUN)); then
  printf '%s\n' "$pack"
else
  printf '+ %s\n' "$pack" >&2
  bash -c "set -o pipefail; $pack"
  size=$(du -k "$archive" | cut -f1)
  info "# packed $((size / 1024)) MiB from $ROOT_DIR"
  ((size < 51200)) || info "# warning: the archive is over 50 MiB; large untracked files? (git status)"
fi

run gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:$remote_archive" --project="$PROJECT" --zone="$ZONE" \
  --worker="$worker"
new="\$HOME/$REMOTE_DIR.new"
tpu_ssh "$worker" "set -euo pipefail; rm -rf \"$new\"; mkdir -p \"$new\"; tar -xzf \"\$HOME/$remote_archive\" -C \"$new\"; rm -rf \"\$HOME/$REMOTE_DIR\"; mv \"$new\" \"\$HOME/$REMOTE_DIR\"; rm -f \"\$HOME/$remote_archive\"; echo \"\$(hostname): ~/$REMOTE_DIR has \$(find \"\$HOME/$REMOTE_DIR\" -type f | wc -l) files\""
((DRY_RUN)) || rm -f "$archive"
