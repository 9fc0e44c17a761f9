"""What the dashboard is started on (`DashboardSpec`) and its checks, before anything heavy loads.

A spec names the crosscoder, the base / chat model pair, the layer L whose residual the crosscoder
reads (HF `hidden_states[L + 1]`), and optionally the directory written by `experiments/analyze.py`
(`latents.parquet`, `summary.json`) and the one written by `experiments/collect_examples.py`
(`examples.json` + parquet files). `spec_from_demo(out)` fills it from an `experiments/demo.py`
output (`<out>/report/summary.json` names the models, the layer and each crosscoder's export;
`<out>/report/<arch>/` holds its analysis and examples).

The spec travels to the Streamlit script as JSON in the environment variable `SPEC_ENV`
(`to_json` / `from_env`), so the command line and the library's test runner (`AppTest`) start the
same app the same way.

`check_spec` reads configs only (the crosscoder's `config.json`, the models' `config.json`): the
layer exists in both models, both have the crosscoder's width D, the directories hold what they
should. Every problem is a `DashboardError`: one sentence saying what to change.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path
from typing import Optional

SPEC_ENV = "JAXCODERS_DASHBOARD_SPEC"
TABLE_FILES = ("latents.parquet", "latents.csv", "latent_scaling.parquet", "latent_scaling.csv")
EXAMPLES_FILE = "examples.json"
DEMO_SUMMARY = ("report", "summary.json")


class DashboardError(ValueError):
    """Bad dashboard input, phrased as what to change (shown as one message in the page or one
    `error:` line on the command line)."""


@dataclasses.dataclass(frozen=True)
class DashboardSpec:
    """Everything the app needs, as plain JSON-able values.

    crosscoder: a crosscoder spec `jaxcoders.load_reference` takes (directory, workdir, gs://, hub);
    base_model / chat_model: HF names or local directories; layer: block L (0-indexed);
    analysis: directory with latents.parquet (or None); examples: directory with examples.json (or
    None); max_len: prompts are truncated to this many tokens; max_new_tokens: the most tokens a
    steering generation may ask for."""

    crosscoder: str
    base_model: str
    chat_model: str
    layer: int
    analysis: Optional[str] = None
    examples: Optional[str] = None
    device: str = "cpu"
    model_dtype: str = "float32"
    max_len: int = 256
    max_new_tokens: int = 64
    title: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DashboardSpec":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise DashboardError(f"the dashboard spec is not valid JSON ({e.msg}); start the dashboard with "
                                 "experiments/dashboard.py") from None
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise DashboardError(f"unknown dashboard spec fields {unknown}; start it with experiments/dashboard.py")
        try:
            return cls(**raw)
        except TypeError as e:
            raise DashboardError(f"incomplete dashboard spec ({e}); start it with experiments/dashboard.py") from None

    @property
    def name(self) -> str:
        return self.title or Path(str(self.crosscoder).rstrip("/")).name or "crosscoder"


def from_env(environ=None) -> DashboardSpec:
    """The spec the command line put in the environment (`SPEC_ENV`)."""
    text = (os.environ if environ is None else environ).get(SPEC_ENV)
    if not text:
        raise DashboardError(f"no dashboard spec in ${SPEC_ENV}; start the dashboard with "
                             "`python experiments/dashboard.py --demo_out=<dir>` (or --crosscoder=... "
                             "--base_model=... --chat_model=... --layer=...)")
    return DashboardSpec.from_json(text)


# ----------------------------------------------------------------------------- directories


def find_output_dir(path, marker_files, flag: str, prefer: Optional[str] = None) -> Path:
    """The directory holding one of `marker_files`: `path` itself, or its only subdirectory that holds
    one (analyze / collect_examples write `<out>/<crosscoder name>/`); with several, the one named
    `prefer`."""
    p = Path(os.path.expanduser(str(path)))
    if not p.is_dir():
        raise DashboardError(f"{flag}={path} is not a directory" + ("" if p.exists() else " (it does not exist)"))
    has = lambda d: any((d / f).is_file() for f in marker_files)  # noqa: E731
    if has(p):
        return p
    subs = sorted(d for d in p.iterdir() if d.is_dir() and has(d))
    if len(subs) == 1:
        return subs[0]
    if prefer and any(d.name == prefer for d in subs):
        return p / prefer
    want = " or ".join(marker_files[:2])
    if not subs:
        raise DashboardError(f"{flag}={path} holds no {want} (nor does any subdirectory); pass the output "
                             "directory of the command that writes it")
    raise DashboardError(f"{flag}={path} holds several crosscoders ({', '.join(d.name for d in subs)}); pass "
                         f"one of them, e.g. {flag}={subs[0]}")


def spec_from_demo(out, arch: Optional[str] = None, **overrides) -> DashboardSpec:
    """The spec of one crosscoder of an `experiments/demo.py` output (`arch`: its name, e.g. l1 or
    batchtopk; default: the one with the most chat-only latents surviving Latent Scaling)."""
    d = Path(os.path.expanduser(str(out)))
    summary_path = d.joinpath(*DEMO_SUMMARY)
    if not summary_path.is_file():
        raise DashboardError(f"--demo_out={out} holds no {'/'.join(DEMO_SUMMARY)}; pass the --out directory of a "
                             "finished `experiments/demo.py` run")
    try:
        summary = json.loads(summary_path.read_text())
        models, layer, ccs = summary["models"]["dir"], int(summary["layer"]), summary["crosscoders"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise DashboardError(f"{summary_path} is not a demo summary (models.dir, layer, crosscoders); rerun "
                             "experiments/demo.py") from None
    if not ccs:
        raise DashboardError(f"{summary_path} lists no crosscoders; rerun experiments/demo.py")
    if arch is None:
        arch = max(ccs, key=lambda a: ((ccs[a].get("summary") or {}).get("genuine_chat_specific") or 0,
                                       -list(ccs).index(a)))
    if arch not in ccs:
        raise DashboardError(f"--arch={arch} is not a crosscoder of this demo (it has {', '.join(ccs)})")
    report = d / "report" / arch
    analysis = str(report) if any((report / f).is_file() for f in TABLE_FILES) else None
    examples = str(report) if (report / EXAMPLES_FILE).is_file() else None
    export = ccs[arch].get("export") or str(d / arch)
    kw = dict(crosscoder=str(export), base_model=str(Path(models) / "base"), chat_model=str(Path(models) / "chat"),
              layer=layer, analysis=analysis, examples=examples,
              title=f"demo: {ccs[arch].get('label') or arch}")
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return DashboardSpec(**kw)


# ----------------------------------------------------------------------------- checks


def crosscoder_shape(crosscoder) -> tuple[int, int, int]:
    """(number of models M, width D, latents F) of a crosscoder, from its config file when it has
    one (no weights read), else from loading it."""
    from jaxcoders.io.hub import ReferenceFormatError
    from jaxcoders.io.sources import fetch_crosscoder

    try:
        path = fetch_crosscoder(crosscoder)
    except ReferenceFormatError as e:
        raise DashboardError(f"--crosscoder: {e}") from None
    cfg_file = (path if path.is_dir() else path.parent) / "config.json"
    if cfg_file.is_file():
        try:
            c = json.loads(cfg_file.read_text())
            if "activation_dim" in c and "dict_size" in c:
                return int(c.get("num_models", 2)), int(c["activation_dim"]), int(c["dict_size"])
        except (json.JSONDecodeError, TypeError, ValueError):
            pass
    from jaxcoders.io.reference import load_reference

    try:
        cfg = load_reference(path).cfg
    except (ReferenceFormatError, ValueError, OSError) as e:
        raise DashboardError(f"--crosscoder={crosscoder} could not be read: {e}") from None
    return int(cfg.num_models), int(cfg.activation_dim), int(cfg.dict_size)


def model_info(name: str, flag: str):
    """`jaxcoders.extract.models.ModelInfo` of a model (its config only)."""
    from jaxcoders.extract.models import ModelError, load_config

    try:
        return load_config(name, None, flag)
    except ModelError as e:
        raise DashboardError(str(e)) from None


def check_spec(spec: DashboardSpec) -> dict:
    """Validate a spec from configs only; returns {"num_models", "d_model", "dict_size", "num_layers",
    "analysis", "examples"} (the resolved directories). Raises DashboardError."""
    if spec.layer is None or int(spec.layer) < 0:
        raise DashboardError(f"--layer must be a block index ≥ 0, got {spec.layer}")
    if not 1 <= spec.max_len <= 100_000:
        raise DashboardError(f"--max_len must be between 1 and 100000, got {spec.max_len}")
    if not 1 <= spec.max_new_tokens <= 4096:
        raise DashboardError(f"--max_new_tokens must be between 1 and 4096, got {spec.max_new_tokens}")
    M, D, F = crosscoder_shape(spec.crosscoder)
    if M != 2:
        raise DashboardError(f"--crosscoder={spec.crosscoder} diffs {M} models; the dashboard needs a base/chat "
                             "crosscoder (M = 2)")
    infos = {"--base_model": model_info(spec.base_model, "--base_model"),
             "--chat_model": model_info(spec.chat_model, "--chat_model")}
    for flag, info in infos.items():
        if not 0 <= spec.layer < info.num_layers:
            raise DashboardError(f"--layer={spec.layer} does not exist in {flag}={info.name}, which has "
                                 f"{info.num_layers} blocks; use 0 ≤ --layer ≤ {info.num_layers - 1}")
        if info.d_model != D:
            raise DashboardError(f"dimension mismatch: --crosscoder has D = {D} but {flag}={info.name} has hidden "
                                 f"size {info.d_model}; use the crosscoder trained on these models")
    out = {"num_models": M, "d_model": D, "dict_size": F, "num_layers": infos["--chat_model"].num_layers,
           "analysis": None, "examples": None}
    if spec.analysis:
        out["analysis"] = str(find_output_dir(spec.analysis, TABLE_FILES, "--analysis"))
    if spec.examples:
        out["examples"] = str(find_output_dir(spec.examples, (EXAMPLES_FILE,), "--examples"))
    return out


def resolved(spec: DashboardSpec, checked: dict) -> DashboardSpec:
    """The spec with the analysis / examples directories `check_spec` resolved."""
    return dataclasses.replace(spec, analysis=checked["analysis"], examples=checked["examples"])


# ----------------------------------------------------------------------------- ports


def check_port(port: int, host: str = "127.0.0.1") -> None:
    """DashboardError unless `port` is a valid TCP port that nothing listens on at `host`."""
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise DashboardError(f"--port must be between 1 and 65535, got {port}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise DashboardError(f"--port={port} on {host} is not free ({e.strerror or e}); pick another "
                                 "--port") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
