"""The command line's config schema, derived from the dataclasses of `jaxcoders.config`.

    c = base_config()                  # ConfigDict with sections model / train / run / data
    c.model.dict_size = 73_728         # presets (jaxcoders/configs/*.py) change what differs
    model, train, run, data = resolve(c, num_models=2, activation_dim=2304)
    print(describe(c))                 # every field: type, value, default and doc (`--config_help`)

Defaults, types and documentation all come from `CrossCoderConfig`, `TrainConfig`, `RunConfig` and
`DataConfig`: a new dataclass field appears on the command line with no other edit, and the API's
defaults are the command line's. Fields set from elsewhere are left out: `model.num_models` and
`model.activation_dim` come from the data, `train.total_steps` from `run.steps` and `train.seed`
from `run.seed`. Optional fields are typed `ml_collections` placeholders: None until set, so
`--config.train.k_max=400` works and an unset field means None, as in the API. `model.dict_size`
has no default: a preset or `--config.model.dict_size` must set it.
"""
from __future__ import annotations

import dataclasses
import enum
import re
import typing
from typing import Any, Optional

import ml_collections
from ml_collections import config_dict

from jaxcoders.config import CrossCoderConfig, DataConfig, RunConfig, TrainConfig

SECTIONS = {"model": CrossCoderConfig, "train": TrainConfig, "run": RunConfig, "data": DataConfig}
DERIVED = {("model", "num_models"): "from the data (M)", ("model", "activation_dim"): "from the data (D)",
           ("train", "total_steps"): "= run.steps", ("train", "seed"): "= run.seed"}
# Second names of a field, where a section reads more naturally to some: the tied crosscoder's η is
# a loss weight (train.eta) that the research update lists with the model; either name sets it.
ALIASES = {("model", "eta"): ("train", "eta")}


def _field_type(hint) -> tuple[type, bool]:
    """(the field's scalar type, whether None is allowed) from a resolved type hint."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return hint, False


def _config_value(value, typ: type, optional: bool):
    if isinstance(value, enum.Enum):
        return value.name
    if issubclass(typ, enum.Enum):
        typ = str
    if value is None or value is dataclasses.MISSING:
        return config_dict.placeholder(typ)
    if optional:  # typed, so that a later None stays allowed
        return config_dict.FieldReference(value, field_type=typ)
    return value


def fields(section: str) -> list[tuple[dataclasses.Field, type, bool]]:
    """(field, scalar type, optional) of the section's dataclass, derived fields left out."""
    dc = SECTIONS[section]
    hints = typing.get_type_hints(dc)
    out = []
    for f in dataclasses.fields(dc):
        if (section, f.name) in DERIVED:
            continue
        typ, optional = _field_type(hints[f.name])
        out.append((f, typ, optional))
    return out


def base_config() -> ml_collections.ConfigDict:
    """The ConfigDict of every section with the dataclasses' defaults."""
    c = ml_collections.ConfigDict()
    for section in SECTIONS:
        sec = ml_collections.ConfigDict()
        for f, typ, optional in fields(section):
            sec[f.name] = _config_value(f.default, typ, optional)
        c[section] = sec
    for (section, name), (target, field) in ALIASES.items():
        c[section][name] = config_dict.placeholder(type(c[target][field]))
    return c


def resolve(c: ml_collections.ConfigDict, num_models: int, activation_dim: int):
    """(CrossCoderConfig, TrainConfig, RunConfig, DataConfig) from a ConfigDict; the dataclasses
    validate every value (a bad one raises ValueError naming the field)."""
    unknown = sorted(set(c.keys()) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; the sections are {list(SECTIONS)}")
    values = {}
    for section in SECTIONS:
        given = dict(c[section]) if section in c else {}
        for (sec, name), (target, field) in ALIASES.items():
            if sec == section and name in given:
                value = given.pop(name)
                if value is not None:
                    other = c[target][field] if target in c and field in c[target] else None
                    default = next(f.default for f, _, _ in fields(target) if f.name == field)
                    if other not in (None, default, value):
                        raise ValueError(f"{section}.{name}={value} and {target}.{field}={other} disagree; set one")
                    values.setdefault("_aliases", {})[(target, field)] = value
        names = {f.name for f, _, _ in fields(section)}
        extra = sorted(set(given) - names)
        if extra:
            raise ValueError(f"unknown field(s) {[f'{section}.{n}' for n in extra]}; `--config_help` lists them")
        values[section] = given
    for (target, field), value in values.pop("_aliases", {}).items():
        values[target][field] = value
    model = values["model"]
    if model.get("dict_size") is None:
        raise ValueError("model.dict_size is not set: choose a preset (--config=...) or set --config.model.dict_size")
    run = RunConfig(**values["run"])
    data = DataConfig(**values["data"])
    model_cfg = CrossCoderConfig(num_models=num_models, activation_dim=activation_dim, **model)
    if not model_cfg.is_batchtopk:
        model_cfg = model_cfg.replace(k=None)
    train_cfg = TrainConfig(total_steps=run.steps, seed=run.seed, **values["train"])
    return model_cfg, train_cfg, run, data


def field_docs(dc) -> dict[str, str]:
    """Field name -> its documentation, from the "Attributes:" section of the dataclass docstring."""
    doc = dc.__doc__ or ""
    if "Attributes:" not in doc:
        return {}
    out, name = {}, None
    for line in doc.split("Attributes:", 1)[1].splitlines():
        m = re.match(r"^ {4,6}(\w+): (.*)$", line)
        if m:
            name = m.group(1)
            out[name] = m.group(2).strip()
        elif name and line.strip():
            out[name] += " " + line.strip()
        elif not line.strip() and name:
            name = None
    return out


def _fmt(v: Any) -> str:
    return "None" if v is None else repr(v)


def describe(c: Optional[ml_collections.ConfigDict] = None) -> str:
    """Every field of every section: `--config.<section>.<name>`, type, current value (of `c`),
    default, documentation. What `--config_help` prints."""
    c = c if c is not None else base_config()
    lines = []
    for section, dc in SECTIONS.items():
        docs = field_docs(dc)
        lines.append(f"[{section}] {dc.__name__}: {(dc.__doc__ or '').strip().splitlines()[0]}")
        for f, typ, optional in fields(section):
            default = f.default.name if isinstance(f.default, enum.Enum) else f.default
            default = "(required)" if default is dataclasses.MISSING else _fmt(default)
            value = c[section][f.name] if section in c and f.name in c[section] else None
            tname = ("str" if issubclass(typ, enum.Enum) else typ.__name__) + (" or None" if optional else "")
            cur = "" if _fmt(value) == default else f" (this config: {_fmt(value)})"
            lines.append(f"  --config.{section}.{f.name}: {tname} = {default}{cur}")
            if docs.get(f.name):
                lines.append(f"      {docs[f.name]}")
        for (sec, name), why in DERIVED.items():
            if sec == section:
                lines.append(f"  ({section}.{name}: {why})")
        for (sec, name), (target, field) in ALIASES.items():
            if sec == section:
                lines.append(f"  --config.{section}.{name}: another name of --config.{target}.{field}")
        lines.append("")
    return "\n".join(lines)


def plain(cfg) -> dict:
    """A dataclass as a JSON-able dict (enums by name)."""
    return {k: (v.name if isinstance(v, enum.Enum) else v) for k, v in dataclasses.asdict(cfg).items()}
