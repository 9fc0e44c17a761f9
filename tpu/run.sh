#!/usr/bin/env bash
# tpu/run.sh: launch one experiments/*.py command on every worker, with the same flags.
#
# usage: tpu/run.sh [--dry-run] [--name=RUN] [--worker=all|N] [--grace=SECONDS] [--env=KEY=VALUE]...
#                   [--follow] SCRIPT.py [FLAGS...]
#
#   --dry-run       print the gcloud command and run nothing
#   --name=RUN      run name for the logs (default: the script's name, e.g. "train")
#   --worker=W      all workers (default: multi-host programs need every worker) or one index
#                   (single-process jobs such as extract_activations.py: --worker=0)
#   --grace=S       seconds a stale process gets after SIGTERM before SIGKILL (default 60;
#                   a stale trainer checkpoints on SIGTERM)
#   --env=K=V       extra environment variable for the program (repeatable), e.g.
#                   --env=LIBTPU_INIT_ARGS=--xla_tpu_enable_latency_hiding_scheduler=true
#   --follow        then follow worker 0's log (Ctrl-C stops following, not the run)
#   SCRIPT.py ...   path inside the repository and its flags, passed verbatim to every worker
#
# On each worker, in order: stop whatever holds the TPU (SIGTERM, then SIGKILL after the grace
# period), remove /tmp/libtpu_lockfile, then start `~/$REMOTE_VENV/bin/python SCRIPT.py FLAGS`
# in ~/$REMOTE_DIR under nohup, detached, logging to ~/$LOG_DIR/RUN.workerN.log (the previous
# log is kept as .log.prev) with its pid in ~/$LOG_DIR/RUN.workerN.pid. N is the worker index.
# Rerunning the same train command resumes from <workdir>/checkpoints.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

name=""
worker=all
grace=60
follow=0
envs=(PYTHONUNBUFFERED=1 "JAX_COMPILATION_CACHE_DIR=\$HOME/.cache/jaxcoders-xla")
while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --name=*) name=${1#--name=} ;;
    --worker=*) worker=${1#--worker=} ;;
    --grace=*) grace=${1#--grace=} ;;
    --env=*) envs+=("${1#--env=}") ;;
    --follow) follow=1 ;;
    -h | --help) usage "$0"; exit 0 ;;
    -*) die "unknown option '$1' before the script (see tpu/run.sh --help)" ;;
    *) break ;;
  esac
  shift
done
(($#)) || die "no script given: tpu/run.sh [options] experiments/train.py --config=... (see --help)"
script=$1
shift
[[ $script == *.py ]] || die "expected a Python script path such as experiments/train.py, got '$script'"
[[ $script != /* && -f $ROOT_DIR/$script ]] ||
  die "$script is not a file of this repository (paths are relative to $ROOT_DIR)"
[[ -n $name ]] || name=$(basename "$script" .py)
[[ $name =~ ^[A-Za-z0-9._-]+$ ]] || die "--name must be letters, digits, '.', '_' or '-', got '$name'"
[[ $grace =~ ^[0-9]+$ ]] || die "--grace must be a number of seconds, got '$grace'"
require_configured
check_remote_names
check_worker "$worker"
for kv in "${envs[@]}"; do
  [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env needs KEY=VALUE, got '$kv'"
done

hosts=$(tpu_hosts)
if [[ $worker == all ]] && ((hosts > 1)); then
  [[ $(basename "$script") != extract_activations.py ]] ||
    die "extraction is a single process: run it on one worker (--worker=0), not on all $hosts"
  for a in "$@"; do
    if [[ $a == --workdir=* && $a != --workdir=gs://* ]]; then
      info "# warning: $hosts workers need a shared --workdir (gs://...); '${a#--workdir=}' is local to each worker"
    fi
  done
fi

# The program's command line, quoted for the worker's shell.
prog="\"\$HOME/$REMOTE_VENV/bin/python\" $(shell_quote "$script")"
for a in "$@"; do
  prog+=" $(shell_quote "$a")"
done
envline=""
for kv in "${envs[@]}"; do
  key=${kv%%=*}
  val=${kv#*=}
  # $HOME in our defaults expands on the worker; user values are passed literally.
  if [[ $val == "\$HOME/"* ]]; then
    envline+=" $key=\"$val\""
  else
    envline+=" $key=$(shell_quote "$val")"
  fi
done

logs="\$HOME/$LOG_DIR"
devices="/dev/accel* /dev/vfio/[0-9]*"
lines=(
  "set -uo pipefail"
  "W=\$(curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)"
  "pids=\$(sudo lsof -t $devices 2>/dev/null | sort -u | xargs)"
  "if [ -n \"\${pids// }\" ]; then echo \"worker \$W: stopping stale TPU processes \$pids\"; sudo lsof -t $devices 2>/dev/null | sort -u | xargs -r sudo kill -TERM; for _ in \$(seq $grace); do [ -n \"\$(sudo lsof -t $devices 2>/dev/null)\" ] || break; sleep 1; done; if [ -n \"\$(sudo lsof -t $devices 2>/dev/null)\" ]; then sudo lsof -t $devices 2>/dev/null | sort -u | xargs -r sudo kill -9; sleep 2; fi; fi"
  "sudo rm -f /tmp/libtpu_lockfile"
  "mkdir -p \"$logs\""
  "LOG=\"$logs/$name.worker\$W.log\""
  "if [ -f \"\$LOG\" ]; then mv -f \"\$LOG\" \"\$LOG.prev\"; fi"
  "cd \"\$HOME/$REMOTE_DIR\" || exit 1"
  "setsid nohup env$envline $prog > \"\$LOG\" 2>&1 < /dev/null & echo \$! > \"$logs/$name.worker\$W.pid\""
  "echo \"worker \$W (\$(hostname)): started pid \$! -> \$LOG\""
)
script_text=$(printf '%s; ' "${lines[@]}")
tpu_ssh "$worker" "${script_text%; }"
info "# logs: tpu/logs.sh --name=$name   (follow: tpu/logs.sh --name=$name --follow)"
if ((follow)); then
  follow_args=(--name="$name" --follow --worker="${worker/all/0}")
  ((DRY_RUN)) && follow_args+=(--dry-run)
  "$TPU_DIR/logs.sh" "${follow_args[@]}"
fi
