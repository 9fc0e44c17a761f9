"""TensorBoard sink of the trainer (`--config.run.tensorboard=True`): the event files hold the
same scalars as metrics.jsonl; a resumed writer purges the steps it will rewrite."""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxcoders.training.metrics import TensorBoardLog

ROOT = Path(__file__).resolve().parents[1]


def read_events(logdir: Path) -> list:
    """Every Event of every event file under `logdir`, in file order (TFRecord framing)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for f in sorted(logdir.rglob("events.out.tfevents.*")):
        data = f.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = Event()
            ev.ParseFromString(data[i + 12:i + 12 + n])
            events.append(ev)
            i += 12 + n + 4
    return events


def scalars(events) -> dict:
    out = {}
    for ev in events:
        for v in ev.summary.value:
            out.setdefault(v.tag, {})[ev.step] = v.simple_value
    return out


def test_trainer_writes_metrics_as_tensorboard_scalars(tmp_path, cli_runner):
    wd = tmp_path / "run"
    cmd = [str(ROOT / "experiments" / "train.py"), f"--config={ROOT / 'experiments/configs/tiny.py'}",
           f"--workdir={wd}", "--config.model.dict_size=64", "--config.run.batch_size=64", "--config.run.steps=8",
           "--config.run.log_every=2", "--config.run.eval_every=4", "--config.run.checkpoint_every=4",
           "--config.run.async_checkpoint=False", "--config.run.tensorboard=True"]
    rc, _, err = cli_runner.run(cmd, cwd=ROOT)
    assert rc == 0, err[-3000:]
    rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    got = scalars(read_events(wd / "tensorboard"))
    train_rows = [row for row in rows if "loss" in row]
    assert [row["step"] for row in train_rows] == [1, 3, 5, 7]
    for row in train_rows:
        for key in ("loss", "recon", "l0", "tokens_per_s", "num_dead"):
            np.testing.assert_allclose(got[f"train/{key}"][row["step"]], row[key], rtol=1e-6, err_msg=key)
    val = [row for row in rows if "val/l0" in row]
    assert val and got["val/l0"][val[-1]["step"]] == pytest.approx(val[-1]["val/l0"], rel=1e-6)
    assert got["val/fve_model0"] and got["val/fve_model1"]


def test_resumed_writer_purges_rewritten_steps_and_expands_lists(tmp_path):
    first = TensorBoardLog(tmp_path, start_step=0)
    for step in range(6):
        first.write({"step": step, "loss": float(step), "threshold": [0.5, 1.5], "flag": True, "bad": float("nan")})
    first.close()
    again = TensorBoardLog(tmp_path, start_step=4)  # resumed from the step-4 checkpoint
    again.write({"step": 4, "loss": 40.0})
    again.close()
    events = read_events(tmp_path)
    purges = [ev.step for ev in events if ev.HasField("session_log") and ev.session_log.status == 1]  # START
    assert purges == [4]  # TensorBoard drops the first file's steps >= 4 when it reads the second
    got = scalars(events)
    assert set(got) == {"train/loss", "train/threshold/0", "train/threshold/1"}  # bools / NaN left out
    assert got["train/threshold/1"][5] == 1.5 and got["train/loss"][4] == 40.0


def test_missing_tensorboardx_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"pip install 'jaxcoders\[tensorboard\]'"):
        TensorBoardLog(tmp_path, enabled=True)
    TensorBoardLog(tmp_path, enabled=False).write({"step": 0, "loss": 1.0})  # disabled: nothing needed
