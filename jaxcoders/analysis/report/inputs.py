"""The inputs of a report: what the analysis commands wrote into one analysis directory (the
per-latent table, `summary.json`, the examples, the interventions results), read by `load_inputs`."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Optional

TABLE_FILES = ("latents.parquet", "latents.csv", "latent_scaling.parquet", "latent_scaling.csv")


def _read_table(path: Path):
    import pandas as pd

    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def load_inputs(analysis_dir) -> dict:
    """{"table": DataFrame | None, "summary": dict, "examples": load_examples(...) | None, "dir": Path}."""
    d = Path(analysis_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d} is not a directory; pass the <out>/<crosscoder> directory written by "
                                "experiments/analyze.py or experiments/collect_examples.py")
    table = next((_read_table(d / f) for f in TABLE_FILES if (d / f).is_file()), None)
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else {}
    ex = None
    if (d / "examples.json").is_file():
        from jaxcoders.analysis.examples import load_examples

        ex = load_examples(d)
    if table is None and ex is None:
        raise FileNotFoundError(f"{d} holds neither latents.parquet (experiments/analyze.py) nor examples.json "
                                "(experiments/collect_examples.py): nothing to report")
    return {"table": table, "summary": summary, "examples": ex, "dir": d, "interventions": load_interventions(d)}


def load_interventions(d: Path) -> Optional[dict]:
    """`interventions.json` (+ `interventions.png`) of experiments/interventions.py, found in the
    analysis directory or its `interventions/` subdirectory; None when absent."""
    for sub in (d, d / "interventions"):
        if (sub / "interventions.json").is_file():
            res = json.loads((sub / "interventions.json").read_text())
            png = sub / "interventions.png"
            res["_png"] = base64.b64encode(png.read_bytes()).decode("ascii") if png.is_file() else None
            return res
    return None
