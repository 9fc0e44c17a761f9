"""The demo entry point runs end to end at a small size (the full size is `make demo`)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jaxcoders

ROOT = Path(__file__).resolve().parents[1]


def test_demo_small(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, CI="1")
    r = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "demo.py"), f"--out={out}", "--steps=300", "--dict_size=128"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "summary.md").read_text().startswith("# jaxcoders demo")
    for arch in ("l1", "batchtopk"):
        assert summary[arch]["fve_base"] > 0.5 and summary[arch]["fve_chat"] > 0.5
        model = jaxcoders.load_reference(out / arch)
        assert model.cfg.architecture == arch
