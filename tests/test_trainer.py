"""The sharded trainer: multi-device equality, multi-process equality, kill-and-resume, bad input."""
import json
import os
import signal
import socket
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from xla_env import fake_devices

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "experiments" / "train.py")
TINY = str(ROOT / "experiments" / "configs" / "tiny.py")


def _env(**extra):
    env = dict(os.environ, CI="1", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def acts_file(tmp_path_factory):
    from jaxcoders.toy.synthetic import SyntheticSpec, make_dictionary

    x, _ = make_dictionary(SyntheticSpec(seed=0)).sample(12000, seed=1)
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, x)
    return str(path)


def _train_cmd(workdir, acts, steps=12, extra=()):
    """argv of experiments/train.py (run by the `cli_runner` fork server: a real process per command)."""
    return [TRAIN, f"--config={TINY}", f"--workdir={workdir}", "--config.data.synthetic=False",
            f"--config.data.acts={acts}", f"--config.run.steps={steps}", "--config.run.log_every=2",
            "--config.run.eval_every=4", "--config.run.checkpoint_every=4", "--config.run.batch_size=128",
            "--config.run.async_checkpoint=False", *extra]


@pytest.fixture(scope="module")
def ref_run(tmp_path_factory, acts_file, cli_runner):
    """One uninterrupted single-process run, shared by the tests below."""
    wd = tmp_path_factory.mktemp("ref") / "run"
    rc, _, err = cli_runner.run(_train_cmd(wd, acts_file), cwd=ROOT, env=_env())
    assert rc == 0, err[-3000:]
    return wd


def _weights(workdir):
    t = load_file(str(Path(workdir) / "export" / "model.safetensors"))
    return {k: v for k, v in t.items() if k in ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias",
                                                 "threshold")}


def test_sharded_step_equals_single_device(cli_runner):
    """8 fake CPU devices, several meshes: losses, selections and updated params equal 1 device.
    Every mesh shape runs the BatchTopK crosscoder; the other variants run two or one of them (each
    mesh runs with both architectures), which keeps the compiles to 9 instead of 16."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from flax import nnx
        from jaxcoders.config import CrossCoderConfig, TrainConfig
        from jaxcoders.core.module import CrossCoder
        from jaxcoders.core.crosscoder import select_train, encode_relu, code_normalization
        from jaxcoders.training import sharding as shd
        from jaxcoders.training.state import init_train_state, shard_train_state
        from jaxcoders.training.step import make_train_step
        assert jax.device_count() == 8
        for arch, cn, resample, meshes in [("batchtopk", "CROSSCODER", None, [(8, 1), (4, 2), (2, 4), (1, 8)]),
                                           ("batchtopk", "DECOUPLED", None, [(1, 8), (2, 4)]),
                                           ("l1", "CROSSCODER", None, [(8, 1), (4, 2)]),
                                           ("l1", "CROSSCODER", 2, [(2, 4)])]:
            cfg = CrossCoderConfig(2, 16, 64, architecture=arch, code_normalization=cn, k=4, norm_init_scale=1.0)
            model = CrossCoder(cfg, rngs=nnx.Rngs(0))
            if resample:  # 16 latents that never fire, resampled at step 2 (dead for > 1 step)
                model = CrossCoder(cfg, params=model.params._replace(b_enc_F=model.params.b_enc_F.at[:16].set(-100.)))
            tcfg = TrainConfig(lr=1e-3, warmup_steps=2, threshold_start_step=2, dead_tokens_threshold=64,
                               resample_steps=resample)
            xs = np.random.default_rng(0).normal(size=(4, 32, 2, 16)).astype(np.float32)
            sel_fn = jax.jit(lambda p, x: select_train(cfg, encode_relu(cfg, p, x),
                                                       code_normalization(cfg, p.w_dec_MFD), 4)[1])
            s1 = init_train_state(model, tcfg, 6)
            step1 = make_train_step(cfg, tcfg, 6)
            ref, ref_masks = [], []
            for x in xs:
                if arch == "batchtopk":
                    f = encode_relu(cfg, s1.params, jnp.asarray(x))
                    ref_masks.append(np.asarray(select_train(cfg, f, code_normalization(cfg, s1.params.w_dec_MFD), 4)[1]))
                s1, m = step1(s1, jnp.asarray(x), jnp.int32(4))
                ref.append(jax.device_get(m))
            for d, l in meshes:
                mesh = shd.make_mesh(d, l)
                s = shard_train_state(init_train_state(model, tcfg, 6), cfg, tcfg, mesh, 6)
                step = make_train_step(cfg, tcfg, 6, mesh=mesh)
                for i, x in enumerate(xs):
                    xg = shd.global_batch(x, mesh)
                    if arch == "batchtopk":
                        sel = sel_fn(s.params, xg)
                        assert np.array_equal(np.asarray(sel), ref_masks[i]), (arch, cn, d, l, i)
                    s, m = step(s, xg, jnp.int32(4))
                    m = jax.device_get(m)
                    np.testing.assert_allclose(m["loss"], ref[i]["loss"], rtol=1e-5)
                    assert int(m["num_dead"]) == int(ref[i]["num_dead"])
                    if resample:
                        assert int(m["resampled"]) == int(ref[i]["resampled"]) == (16 if i == 2 else 0)
                for a, b in zip(jax.tree.leaves(s.params), jax.tree.leaves(s1.params)):
                    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
                assert s.params.w_enc_MDF.sharding.spec == shd.param_specs().w_enc_MDF
        print("OK")
    """)
    rc, out, err = cli_runner.run(["-c", script], cwd=ROOT, env=_env(XLA_FLAGS=fake_devices(8)))
    assert rc == 0 and "OK" in out, err[-3000:]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(tmp_path, acts_file, ref_run, cli_runner):
    """2 local processes with jax.distributed train on the same global batches as 1 process."""
    one = ref_run
    two = tmp_path / "two"
    port = _free_port()
    jobs = [cli_runner.start(_train_cmd(two, acts_file, steps=12), cwd=ROOT,
                             env=_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                      JAX_PROCESS_ID=str(i)))
            for i in range(2)]
    for rc, _, err in [j.wait() for j in jobs]:
        assert rc == 0, err[-3000:]
    a, b = _weights(one), _weights(two)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=k)
    # only process 0 wrote metrics: one row per log/eval step
    steps = [json.loads(line)["step"] for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == len(set((s, i) for i, s in enumerate(steps)))


def test_sigkill_and_resume_is_bitwise(tmp_path, acts_file, ref_run, cli_runner):
    ref = ref_run
    wd = tmp_path / "killed"
    rng = np.random.default_rng()
    kill_after = int(rng.choice([4, 8]))  # a checkpoint step, then some more progress
    job = cli_runner.start(_train_cmd(wd, acts_file), cwd=ROOT, env=_env())
    deadline = time.time() + 300
    while time.time() < deadline and not (wd / "checkpoints" / str(kill_after)).exists() and job.rc is None:
        time.sleep(0.02)
    os.kill(job.pid, signal.SIGKILL)
    assert job.wait()[0] in (-signal.SIGKILL, 0)
    rc, _, err = cli_runner.run(_train_cmd(wd, acts_file), cwd=ROOT, env=_env())
    assert rc == 0, err[-3000:]
    a, b = _weights(ref), _weights(wd)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k  # bitwise on CPU
    rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    keys = [(r_["step"], "val/l0" in r_) for r_ in rows]
    assert len(keys) == len(set(keys)), "duplicate metric rows after resume"
    ref_rows = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [(r_["step"], "val/l0" in r_) for r_ in ref_rows] == keys
    assert [r_.get("loss") for r_ in ref_rows] == [r_.get("loss") for r_ in rows]


def test_sigterm_checkpoints_and_resumes(tmp_path, acts_file, cli_runner):
    wd = tmp_path / "term"
    job = cli_runner.start(_train_cmd(wd, acts_file, steps=400, extra=["--config.run.checkpoint_every=1000"]),
                           cwd=ROOT, env=_env())
    deadline = time.time() + 300
    while time.time() < deadline and not (wd / "metrics.jsonl").exists():
        time.sleep(0.05)
    os.kill(job.pid, signal.SIGTERM)
    rc, _, err = job.wait(300)
    assert rc == 0, err[-2000:]
    saved = [int(d.name) for d in (wd / "checkpoints").iterdir() if d.name.isdigit()]
    assert saved and max(saved) < 400  # stopped early with a checkpoint
    assert not (wd / "export").exists()


def test_bad_input_errors(tmp_path, acts_file, ref_run, cli_runner):
    rc, _, err = cli_runner.run(_train_cmd(ref_run, acts_file, extra=["--config.model.k=8"]), cwd=ROOT, env=_env())
    assert rc != 0 and "different config" in err and "model.k" in err

    from jaxcoders.training import sharding as shd
    from jaxcoders.config import CrossCoderConfig

    with pytest.raises(ValueError, match="devices"):
        shd.make_mesh(3, 1)
    with pytest.raises(ValueError, match="does not divide"):
        shd.make_mesh(None, 5)
    mesh = shd.make_mesh(1, 1)
    with pytest.raises(ValueError, match="int32 index limit"):
        shd.check_shapes(CrossCoderConfig(2, 8, 2**20), 4096, mesh)
    with pytest.raises(ValueError, match="not divisible by the data mesh axis"):
        shd.check_shapes(CrossCoderConfig(2, 8, 16), 7, _fake_mesh(2, 1))
    with pytest.raises(ValueError, match="not divisible by the latent mesh axis"):
        shd.check_shapes(CrossCoderConfig(2, 8, 15), 8, _fake_mesh(1, 2))


def _fake_mesh(data, latent):
    """A mesh-shaped stand-in for shape checks (only `.shape` is read)."""
    class M:
        shape = {"data": data, "latent": latent}
    return M()
