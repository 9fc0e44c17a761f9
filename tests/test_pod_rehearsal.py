"""A TPU-pod rehearsal on CPU: 4 processes × 2 fake devices train with jax.distributed, exactly
as `tpu/run.sh` launches `experiments/train.py` on every worker (same script, same flags; each a
process forked by the tests' `cli_runner` server, which saves the imports), from
an extraction store to an exported crosscoder; the result equals a 1-process run on the same data.
"""
import os
import socket
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from xla_env import fake_devices

ROOT = Path(__file__).resolve().parents[1]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = dict(os.environ, CI="1", JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
               XLA_FLAGS=fake_devices(2))
    env.update(extra)
    return env


def test_four_process_pod_rehearsal(tmp_path, cli_runner):
    import extract_helpers as H

    base, chat = H.build_tiny_model_pair(tmp_path / "models", "llama")
    text, conv = H.write_local_datasets(tmp_path / "data")
    store = tmp_path / "store"
    # every command is a real process forked by the `cli_runner` server (same script, flags, environment)
    rc, _, err = cli_runner.run(
        [ROOT / "experiments" / "extract_activations.py", f"--base_model={base}",
         f"--chat_model={chat}", "--layer=1", f"--dataset={text},{conv}", "--text_column=text,",
         "--chat_column=,conversation", "--max_tokens=1600", "--val_max_tokens=320", "--seq_len=48",
         "--dtype=float32", "--chunk_rows=64", f"--out={store}"],
        cwd=ROOT, env=_env())
    assert rc == 0, err[-3000:]

    # the flags tpu/run.sh would pass to every worker
    flags = [f"--config={ROOT / 'experiments' / 'configs' / 'tiny.py'}", "--config.data.synthetic=False",
             f"--config.data.store={store}", "--config.data.num_readers=4", "--config.data.shuffle_buffer_rows=256",
             "--config.model.dict_size=64", "--config.run.batch_size=64", "--config.run.steps=8",
             "--config.run.log_every=4", "--config.run.eval_every=0",
             "--config.run.checkpoint_every=4", "--config.run.async_checkpoint=False"]
    train = [ROOT / "experiments" / "train.py"]

    port = _free_port()
    pod = tmp_path / "pod"
    jobs = [cli_runner.start(train + flags + [f"--workdir={pod}"], cwd=ROOT, timeout=900,
                             env=_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="4",
                                      JAX_PROCESS_ID=str(i)))
            for i in range(4)]
    outs = [j.wait() for j in jobs]
    for rc, _, err in outs:
        assert rc == 0, err[-3000:]

    single = tmp_path / "single"
    rc, _, err = cli_runner.run(train + flags + [f"--workdir={single}"], cwd=ROOT, env=_env(), timeout=900)
    assert rc == 0, err[-3000:]

    a = load_file(str(pod / "export" / "model.safetensors"))
    b = load_file(str(single / "export" / "model.safetensors"))
    for k in ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias", "threshold"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=k)
    # only process 0 wrote metrics; the mesh spanned all 8 devices of the 4 processes
    assert (pod / "metrics.jsonl").read_text().count('"step": 7') == 1  # one row per log step
    assert "'data': 4, 'latent': 2" in "".join(err for _, _, err in outs)
