"""Crosscoders from the Hugging Face Hub, offline: a hub cache built here in the documented layout
(`models--org--name/refs/main`, `snapshots/<commit>/...`) serves `org/name` and
`hf://org/name[@revision][/subfolder]`; missing repos give one clear error; uploads carry the
reference files and a model card."""
import shutil
from pathlib import Path

import numpy as np
import pytest

import jaxcoders
from jaxcoders.io.hub import CrosscoderNotFound, parse_hub_spec
from jaxcoders.io.sources import crosscoder_name

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache(tmp_path, fixtures_dir, repo="science-of-finetuning/btk-l13", sub="", torch_bin=False):
    org, name = repo.split("/")
    root = tmp_path / "hub" / f"models--{org}--{name}"
    snap = root / "snapshots" / COMMIT / sub
    src = fixtures_dir / "batchtopk_crosscoder" / "model"
    snap.mkdir(parents=True)
    for f in ("config.json", "trainer_config.json"):
        shutil.copy(src / f, snap / f)
    if torch_bin:  # what older pushes hold instead of safetensors
        import torch
        from safetensors.numpy import load_file

        torch.save({k: torch.from_numpy(v) for k, v in load_file(str(src / "model.safetensors")).items()},
                   snap / "pytorch_model.bin")
    else:
        shutil.copy(src / "model.safetensors", snap / "model.safetensors")
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    return tmp_path / "hub"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HOME", raising=False)
    return monkeypatch


def _same(a, b):
    for x, y in zip(a.params, b.params):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(a.buffers, b.buffers):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert a.cfg == b.cfg


def test_load_from_an_offline_hub_cache(tmp_path, fixtures_dir, offline):
    offline.setenv("HF_HUB_CACHE", str(_cache(tmp_path, fixtures_dir)))
    local = jaxcoders.load_reference(fixtures_dir / "batchtopk_crosscoder" / "model")
    for spec in ("science-of-finetuning/btk-l13", "hf://science-of-finetuning/btk-l13",
                 f"hf://science-of-finetuning/btk-l13@{COMMIT}", "hf://science-of-finetuning/btk-l13@main"):
        _same(jaxcoders.load_reference(spec), local)
    assert crosscoder_name("science-of-finetuning/btk-l13") == "btk-l13"
    # control: another crosscoder must not compare equal
    with pytest.raises(AssertionError):
        _same(jaxcoders.load_reference(fixtures_dir / "l1_crosscoder" / "model"), local)


def test_subfolder_pytorch_bin_and_hf_home(tmp_path, fixtures_dir, offline):
    cache = _cache(tmp_path, fixtures_dir, repo="org/many", sub="layer13", torch_bin=True)
    hf_home = tmp_path / "home"
    hf_home.mkdir()
    shutil.move(str(cache), str(hf_home / "hub"))  # HF_HOME/hub is the default cache
    offline.delenv("HF_HUB_CACHE", raising=False)
    offline.setenv("HF_HOME", str(hf_home))
    model = jaxcoders.load_reference("hf://org/many/layer13")
    _same(model, jaxcoders.load_reference(fixtures_dir / "batchtopk_crosscoder" / "model"))
    assert crosscoder_name("hf://org/many@main/layer13") == "many-layer13"


def test_missing_repo_or_revision_names_the_id_and_the_offline_setting(tmp_path, fixtures_dir, offline):
    offline.setenv("HF_HUB_CACHE", str(_cache(tmp_path, fixtures_dir)))
    with pytest.raises(CrosscoderNotFound, match=r"'org/absent'.*HF_HUB_OFFLINE=1"):
        jaxcoders.load_reference("org/absent")
    with pytest.raises(CrosscoderNotFound, match="at revision 'v9'"):
        jaxcoders.load_reference("hf://science-of-finetuning/btk-l13@v9")
    with pytest.raises(CrosscoderNotFound, match="not a local path"):
        jaxcoders.load_reference("runs/typo")  # looks like org/name: local first, then the hub


def test_spec_parsing():
    assert parse_hub_spec("hf://a/b@r1/x/y") == ("a/b", "r1", "x/y")
    assert parse_hub_spec("a/b") == ("a/b", None, "")
    assert parse_hub_spec("gs://bkt/run") is None
    assert parse_hub_spec("./a/b") is None
    with pytest.raises(CrosscoderNotFound):
        parse_hub_spec("hf://onlyorg")


def test_analysis_reads_a_hub_crosscoder(tmp_path, fixtures_dir, offline):
    """The commands name crosscoders the same way (shared resolution): analyze on a hub id."""
    import os
    import subprocess
    import sys

    cache = _cache(tmp_path, fixtures_dir)
    acts = fixtures_dir / "batchtopk_crosscoder" / "latent_scaling.npz"
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, str(root / "experiments" / "analyze.py"),
                        "--crosscoder=science-of-finetuning/btk-l13", f"--acts={acts}", f"--out={tmp_path / 'out'}",
                        "--batch_size=128", "--noplots"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "out" / "btk-l13" / "latents.parquet").is_file()


def test_push_to_hub_uploads_the_files_and_a_model_card(tmp_path, fixtures_dir, monkeypatch):
    import huggingface_hub

    calls = {}

    def create_repo(self, repo_id, private=None, exist_ok=False, **kw):
        calls["create"] = (repo_id, private, exist_ok)

    def upload_folder(self, repo_id, folder_path, commit_message="", **kw):
        calls["upload"] = (repo_id, sorted(p.name for p in Path(folder_path).iterdir()),
                           (Path(folder_path) / "README.md").read_text())
        return "https://huggingface.co/me/btk/commit/abc"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    model = jaxcoders.load_reference(fixtures_dir / "batchtopk_crosscoder" / "model")
    out = jaxcoders.save_reference(model, tmp_path / "export", push_to_hub="me/btk", private=True)
    assert (out / "model.safetensors").is_file()
    assert calls["create"] == ("me/btk", True, True)
    repo, files, card = calls["upload"]
    assert repo == "me/btk" and files == ["README.md", "config.json", "model.safetensors", "trainer_config.json"]
    assert "library_name: jaxcoders" in card and 'jaxcoders.load_reference("me/btk")' in card and "k = " in card
    with pytest.raises(ValueError, match="not a repo id"):
        jaxcoders.upload_to_hub(model, "not a repo")
