#!/usr/bin/env bash
# tpu/logs.sh: show, follow or download the per-worker logs of a run started by tpu/run.sh.
#
# usage: tpu/logs.sh [--dry-run] [--name=RUN] [--worker=all|N] [--lines=N] [--follow | --fetch=DIR | --list]
#
#   --dry-run     print the gcloud command and run nothing
#   --name=RUN    run name given to tpu/run.sh (default: train)
#   --worker=W    all workers (default; --follow: worker 0) or one index
#   --lines=N     last N lines of each log (default 30)
#   --follow      follow one worker's log (tail -F; Ctrl-C stops following, not the run)
#   --fetch=DIR   copy RUN.worker*.log from the workers into the local DIR
#   --list        list the runs (log files) on the workers
#
# Each worker's block starts with its log file and whether the run's process is still alive
# ("running" / "exited"). Only process 0 writes metrics.jsonl and checkpoints' metadata to the
# workdir; every worker logs its own progress and errors, so look at all of them when one hangs.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

name=train
worker=""
lines=30
mode="tail"
fetch_dir=""
while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --name=*) name=${1#--name=} ;;
    --worker=*) worker=${1#--worker=} ;;
    --lines=*) lines=${1#--lines=} ;;
    --follow) mode=follow ;;
    --fetch=*) mode=fetch; fetch_dir=${1#--fetch=} ;;
    --list) mode=list ;;
    -h | --help) usage "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see tpu/logs.sh --help)" ;;
  esac
  shift
done
require_configured
check_remote_names
[[ $name =~ ^[A-Za-z0-9._-]+$ ]] || die "--name must be letters, digits, '.', '_' or '-', got '$name'"
[[ $lines =~ ^[0-9]+$ ]] || die "--lines must be a number, got '$lines'"
if [[ -z $worker ]]; then
  if [[ $mode == follow ]]; then worker=0; else worker=all; fi
fi
check_worker "$worker"
[[ $mode != follow || $worker != all ]] || die "--follow follows one worker: pass --worker=N"

logs="\$HOME/$LOG_DIR"
case $mode in
  tail)
    tpu_ssh "$worker" "found=0; for f in \"$logs/$name\".worker*.log; do [ -e \"\$f\" ] || continue; found=1; p=\"\${f%.log}.pid\"; state=exited; if [ -f \"\$p\" ] && kill -0 \"\$(cat \"\$p\")\" 2>/dev/null; then state=running; fi; echo \"==> \$(hostname):\$f (\$state)\"; tail -n $lines \"\$f\"; done; [ \$found = 1 ] || echo \"==> \$(hostname): no logs named $name in ~/$LOG_DIR (tpu/logs.sh --list)\""
    ;;
  follow)
    tpu_ssh "$worker" "tail -n $lines -F \"$logs/$name\".worker*.log"
    ;;
  list)
    tpu_ssh "$worker" "echo \"==> \$(hostname):\"; ls -lt \"$logs\" 2>/dev/null || echo \"(no ~/$LOG_DIR yet)\""
    ;;
  fetch)
    [[ -n $fetch_dir ]] || die "--fetch needs a local directory"
    ((DRY_RUN)) || mkdir -p "$fetch_dir"
    # one copy per worker (each worker holds only its own RUN.workerN.log)
    if [[ $worker == all ]]; then workers=$(seq 0 $(($(tpu_hosts) - 1))); else workers=$worker; fi
    for w in $workers; do
      run gcloud compute tpus tpu-vm scp "$TPU_NAME:$LOG_DIR/$name.worker*.log" "$fetch_dir" --project="$PROJECT" \
        --zone="$ZONE" --worker="$w"
    done
    ;;
esac
