"""Every architecture from the train command (tied, the shared-latent L1 variant) and its export
through analyze; the tied importer's input normalization; W&B tracking in offline mode."""
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import jaxcoders
from jaxcoders.io.tied import load_tied_reference, save_tied

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
SHORT = ["--config=tiny", "--config.run.steps=20", "--config.run.log_every=10", "--config.run.eval_every=0",
         "--config.run.checkpoint_every=20"]


def _run(runner, script, *args, env_extra=None, timeout=300):
    """`python experiments/<script> args` through the suite's fork server (conftest.cli_runner)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", CI="1", **(env_extra or {}))
    rc, out, err = runner.run([str(EXP / script), *args], cwd=ROOT, env=env, timeout=timeout)
    assert rc == 0, f"{script}: {err[-3000:]}"
    return SimpleNamespace(returncode=rc, stdout=out, stderr=err)


@pytest.fixture(scope="module")
def acts(tmp_path_factory):
    from jaxcoders.toy.synthetic import SyntheticSpec, make_dictionary

    a, _ = make_dictionary(SyntheticSpec(seed=0)).sample(2048, seed=3)
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, np.asarray(a, np.float32))
    return path


def test_tied_from_the_command_line_and_its_analysis(cli_runner, tmp_path, acts):
    work = tmp_path / "tied"
    _run(cli_runner, "train.py", *SHORT, f"--workdir={work}", "--config.model.architecture=tied", "--config.model.eta=3")
    cfg = json.loads((work / "config.json").read_text())
    assert cfg["model"]["architecture"] == "tied" and cfg["train"]["eta"] == 3.0
    model = jaxcoders.load_reference(work)  # the tied export loads through the one entry point
    assert model.cfg.is_tied and model.cfg.dict_size == 256
    p = _run(cli_runner, "analyze.py", f"--crosscoder={work}", f"--acts={acts}", f"--out={tmp_path / 'an'}", "--noplots")
    assert "chat-corner" in p.stdout
    import pandas as pd

    t = pd.read_parquet(tmp_path / "an" / "tied" / "latents.parquet")
    for col in ("count_shared", "count_base", "count_chat", "r_base", "r_chat", "rare", "chat_corner",
                "max_activation_chat", "delta_norm"):
        assert col in t, col
    assert (t["count_shared"] >= 0).all() and t["r_chat"].dropna().ge(0).all()
    summary = json.loads((tmp_path / "an" / "tied" / "summary.json").read_text())
    assert {"l0_shared", "l0_base", "l0_chat", "chat_corner", "rare_latents"} <= set(summary)
    assert "latent_scaling" in summary  # says why it is not there


def test_shared_latent_variant_from_the_command_line(cli_runner, tmp_path, acts):
    work = tmp_path / "shared"
    _run(cli_runner, "train.py", *SHORT, f"--workdir={work}", "--config.model.architecture=l1",
         "--config.model.n_shared_latents=16", "--config.train.shared_l1_coefficient=0.005")
    assert json.loads((work / "export" / "jaxcoders.json").read_text()) == {"n_shared_latents": 16}
    model = jaxcoders.load_reference(work)
    assert model.cfg.n_shared_latents == 16
    w = np.asarray(model.params.w_dec_MFD)
    np.testing.assert_array_equal(w[0, :16], w[1, :16])  # one decoder row per shared latent
    _run(cli_runner, "analyze.py", f"--crosscoder={work}", f"--acts={acts}", f"--out={tmp_path / 'an'}", "--noplots")
    import pandas as pd

    t = pd.read_parquet(tmp_path / "an" / "shared" / "latents.parquet")
    assert t["shared_block"].sum() == 16 and t.loc[:15, "shared_block"].all()


def test_tied_importer_restores_the_input_normalization(tmp_path):
    from flax import nnx

    from jaxcoders.core.crosscoder import normalize_input

    cfg = jaxcoders.CrossCoderConfig(2, 8, 16, architecture="tied")
    model = jaxcoders.CrossCoder(cfg, rngs=nnx.Rngs(0))
    # the reference's layout: a cfg.json with per-model factors beside the weights
    out = save_tied(model, tmp_path / "ref")
    cfg_json = json.loads((out / "cfg.json").read_text())
    cfg_json["normalisation_factor"] = [0.5, 2.0]
    (out / "cfg.json").write_text(json.dumps(cfg_json))
    loaded = load_tied_reference(out)
    assert loaded.cfg.input_normalization
    x = np.random.default_rng(0).standard_normal((4, 2, 8)).astype(np.float32)
    got = np.asarray(normalize_input(loaded.cfg, loaded.buffers, x))
    np.testing.assert_allclose(got, x * np.array([0.5, 2.0])[None, :, None], rtol=1e-6)
    # our export writes them back, and a reload gives the same codes
    again = load_tied_reference(save_tied(loaded, tmp_path / "again"))
    np.testing.assert_allclose(np.asarray(again.encode(x)), np.asarray(loaded.encode(x)), rtol=1e-6)
    # an explicit argument wins
    explicit = load_tied_reference(out, normalization_factors=[1.0, 1.0])
    np.testing.assert_allclose(np.asarray(normalize_input(explicit.cfg, explicit.buffers, x)), x, rtol=1e-6)


def test_wandb_offline_run(cli_runner, tmp_path):
    pytest.importorskip("wandb")
    work, wdir = tmp_path / "run", tmp_path / "wandb_dir"
    wdir.mkdir()
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(wdir), "WANDB_SILENT": "true"}
    _run(cli_runner, "train.py", *SHORT, f"--workdir={work}", "--config.run.wandb_project=jaxcoders-test",
         "--config.run.wandb_tags=ci,tiny", env_extra=env)
    runs = sorted((wdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    run_id = (work / "wandb_run_id").read_text().strip()
    assert runs[0].name.endswith(run_id)
    # nothing is written when no project is asked for
    _run(cli_runner, "train.py", *SHORT, f"--workdir={tmp_path / 'plain'}", env_extra={**env, "WANDB_DIR": str(tmp_path / "no")})
    assert not (tmp_path / "no").exists() and not (tmp_path / "plain" / "wandb_run_id").exists()
