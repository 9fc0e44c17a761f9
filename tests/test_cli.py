"""The commands: every one answers --help, the config schema is the dataclasses' (API defaults = CLI
defaults, every field documented), presets resolve by name, bad input gives one `error:` line."""
import ast
import dataclasses
import enum
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from jaxcoders.cli.main import COMMANDS
from jaxcoders.config import CrossCoderConfig, DataConfig, RunConfig, TrainConfig
from jaxcoders.configs import PRESETS, base_config, describe, resolve
from jaxcoders.configs.schema import DERIVED, SECTIONS, field_docs

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def _jaxcoders(runner, *args, timeout=120):
    """`python -m jaxcoders.cli.main args`, forked by the `cli_runner` server."""
    rc, out, err = runner.run(["-m", "jaxcoders.cli.main", *args], cwd=ROOT, timeout=timeout)
    return subprocess.CompletedProcess(args, rc, out, err)


def test_every_command_answers_help(cli_runner):
    p = _jaxcoders(cli_runner, "--help")
    assert p.returncode == 0 and all(name in p.stdout for name in COMMANDS)
    for name, (module, _) in COMMANDS.items():
        p = _jaxcoders(cli_runner, name, "--help")
        assert p.returncode == 0, (name, p.stderr[-2000:])
        source = (ROOT / "jaxcoders" / "cli" / f"{module}.py").read_text()
        doc = ast.get_docstring(ast.parse(source)).strip().splitlines()[0]  # importing would define flags
        assert doc in p.stdout, (name, p.stdout[:500])
        assert f"jaxcoders.cli.{module}:\n  --" in p.stdout, (name, "--help must list the command's flags")
    p = _jaxcoders(cli_runner, "nope")
    assert p.returncode == 2 and p.stderr.strip().startswith("error: unknown command 'nope'")


def test_console_scripts_are_declared_for_every_command():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["jaxcoders"] == "jaxcoders.cli.main:main"
    for name in COMMANDS:
        assert scripts[f"jaxcoders-{name}"] == f"jaxcoders.cli.main:{name.replace('-', '_')}"
    if shutil.which("jaxcoders-train"):  # installed (make install / pip install -e .)
        p = subprocess.run(["jaxcoders-train", "--help"], capture_output=True, text=True, env=ENV, timeout=120)
        assert p.returncode == 0 and "Train a crosscoder" in p.stdout


def test_the_schema_is_the_dataclasses():
    """API defaults = CLI defaults, every field on the command line and documented."""
    c = base_config()
    for section, dc in SECTIONS.items():
        docs = field_docs(dc)
        for f in dataclasses.fields(dc):
            if (section, f.name) in DERIVED:
                assert f.name not in c[section]
                continue
            default = f.default.name if isinstance(f.default, enum.Enum) else f.default
            value = c[section][f.name]
            assert value == (None if default is dataclasses.MISSING else default), (section, f.name)
            assert docs.get(f.name), f"{dc.__name__}.{f.name} has no line in the docstring's Attributes"
    c.model.dict_size = 64
    model, train, run, data = resolve(c, 2, 8)
    assert model == CrossCoderConfig(2, 8, 64)
    assert train == TrainConfig(total_steps=run.steps, seed=run.seed)
    assert run == RunConfig() and data == DataConfig()
    text = describe(c)
    assert "--config.train.eta: float = 2.0" in text and "--config.model.n_shared_latents" in text
    assert "--config.train.k_max: int or None = None" in text
    # unset optional fields are typed placeholders: a value can be set and cleared again
    c.train.k_max = 400
    c.train.k_max = None
    with pytest.raises(ValueError, match="dict_size is not set"):
        resolve(base_config(), 2, 8)
    with pytest.raises(ValueError, match="unknown field"):
        bad = base_config()
        bad.model.dict_size = 8
        bad.train.unlock() if hasattr(bad.train, "unlock") else None
        bad.train.lr_typo = 1.0
        resolve(bad, 2, 8)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_resolve_by_name_and_list_their_fields(preset, cli_runner):
    p = _jaxcoders(cli_runner, "train", f"--config={preset}", "--config_help")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "--config.model.dict_size" in p.stdout and "(this config:" in p.stdout
    module = __import__(f"jaxcoders.configs.{preset}", fromlist=["_"])
    resolve(module.get_config(), 2, 2304)
    # the experiments/configs file is the same preset
    exp = (ROOT / "experiments" / "configs" / f"{preset}.py").read_text()
    assert f"from jaxcoders.configs.{preset} import get_config" in exp


@pytest.mark.parametrize("args,msg", [
    (["--config=tiny", "--config.model.k=0"], "k must be a positive integer"),
    (["--config=tiny", "--config.data.mix=half"], "mix must be one of"),
    (["--config=tiny", "--config.data.synthetic=False"], "set exactly one of --config.data.store"),
    (["--config=tiny", "--config.data.synthetic=False", "--config.data.acts=/nonexistent.npy"], "does not exist"),
    (["--config=tiny", "--config.run.steps=0"], "steps and batch_size must be positive"),
    (["--config=tiny"], "--workdir is required"),
    (["--workdir=/tmp/x"], "--config is required"),
])
def test_train_bad_input_one_error_line(tmp_path, args, msg, cli_runner):
    workdir = tmp_path / "run"
    args = [a if a != "--workdir=/tmp/x" else f"--workdir={workdir}" for a in args]
    if not any(a.startswith("--workdir") for a in args) and msg != "--workdir is required":
        args.append(f"--workdir={workdir}")
    p = _jaxcoders(cli_runner, "train", *args)
    assert p.returncode == 2, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and msg in last, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert not workdir.exists()
