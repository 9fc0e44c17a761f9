"""Extraction settings: which models, layer, datasets, token filters and storage (no torch here).

`ExtractConfig.identity()` is what a store remembers of the command that created it; a resumed
run must match it exactly. `dataset_specs` turns the per-dataset comma-list flags of
experiments/extract_activations.py into `DatasetSpec`s.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from jaxcoders.data.store import StoreError
from jaxcoders.extract import models as models_lib
from jaxcoders.extract.models import ModelError
from jaxcoders.extract.text import DataError

ROUND_DOCS_MIN = 256  # documents per round (also: per tokenizer call)
ROUND_BATCHES = 32  # with --batch_size > 1, a round holds this many batches' worth of documents

@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One input dataset: a hub name or local path, and which column holds text or conversations.

    max_tokens: rows (stored tokens, after --drop_bos / --ignore_first_n) for the training split.
    val_max_tokens: rows for the validation split, from `val_split` or, if that is None, from the
    documents that follow the training documents in the same split (held out, never overlapping).
    """

    name: str
    split: str = "train"
    text_column: str | None = None
    chat_column: str | None = None
    config: str | None = None
    max_tokens: int = 1_000_000
    val_max_tokens: int = 0
    val_split: str | None = None
    ignore_first_n: int = 0

    @property
    def kind(self) -> str:
        return "chat" if self.chat_column else "text"

    @property
    def column(self) -> str:
        return self.chat_column or self.text_column or ""

    def validate(self) -> None:
        if bool(self.text_column) == bool(self.chat_column):
            raise DataError(
                f"--dataset={self.name} needs exactly one of --text_column or --chat_column "
                f"(got text_column={self.text_column!r}, chat_column={self.chat_column!r})."
            )
        if self.max_tokens <= 0:
            raise DataError(f"--max_tokens must be positive for --dataset={self.name}, got {self.max_tokens}.")
        if self.val_max_tokens < 0 or self.ignore_first_n < 0:
            raise DataError(f"--val_max_tokens and --ignore_first_n must be ≥ 0 for --dataset={self.name}.")


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    base_model: str
    chat_model: str
    layer: int
    datasets: tuple[DatasetSpec, ...]
    out: str
    seq_len: int = 1024
    batch_size: int = 1
    dtype: str = "bfloat16"  # stored activations: bfloat16 | float32
    model_dtype: str = "float32"  # torch dtype the models run in: float32 | bfloat16 | float16 | auto
    drop_bos: bool = False
    base_revision: str | None = None
    chat_revision: str | None = None
    attn_implementation: str | None = None
    device: str = "auto"
    streaming: bool | None = None  # hub datasets: None = stream
    chunk_rows: int | None = None
    overwrite: bool = False
    progress: bool = True
    num_threads: int = 0  # torch CPU threads (0 = torch's default)

    def validate(self) -> None:
        if not self.datasets:
            raise DataError("give at least one --dataset.")
        for d in self.datasets:
            d.validate()
        if self.layer < 0:
            raise ModelError(f"--layer must be ≥ 0, got {self.layer}.")
        if self.seq_len <= 0 or self.batch_size <= 0:
            raise DataError(f"--seq_len and --batch_size must be positive (got {self.seq_len}, {self.batch_size}).")
        if self.dtype not in ("bfloat16", "float32"):
            raise StoreError(f"--dtype must be bfloat16 or float32, got {self.dtype!r}.")
        if self.model_dtype not in models_lib.TORCH_DTYPES:
            raise ModelError(f"--model_dtype must be one of {', '.join(models_lib.TORCH_DTYPES)}, got {self.model_dtype!r}.")
        if self.chunk_rows is not None and self.chunk_rows <= 0:
            raise StoreError(f"--chunk_rows must be positive, got {self.chunk_rows}.")

    def identity(self) -> dict:
        """Everything that determines the store's content; a resumed run must match it exactly."""
        return {
            "base_model": self.base_model, "chat_model": self.chat_model,
            "base_revision": self.base_revision, "chat_revision": self.chat_revision,
            "layer": self.layer, "seq_len": self.seq_len, "batch_size": self.batch_size,
            "dtype": self.dtype, "model_dtype": self.model_dtype, "drop_bos": self.drop_bos,
            "attn_implementation": self.attn_implementation, "chunk_rows": self.chunk_rows,
            "datasets": [dataclasses.asdict(d) for d in self.datasets],
            "round_docs": round_docs(self.batch_size),
        }


def round_docs(batch_size: int) -> int:
    return max(ROUND_DOCS_MIN, ROUND_BATCHES * batch_size) if batch_size > 1 else ROUND_DOCS_MIN


def per_dataset(values: Sequence[str] | str | None, n: int, flag: str, cast=str, default=None) -> list:
    """Comma lists with one entry per --dataset; a single entry applies to all; '' → default."""
    if values is None:
        vals = [""]
    elif isinstance(values, str):
        vals = values.split(",")
    else:
        vals = list(values)
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n:
        raise DataError(f"{flag} has {len(vals)} comma-separated values but there are {n} --dataset entries; "
                        "give one value, or one per dataset.")
    out = []
    for v in vals:
        v = str(v).strip()
        if v == "":
            out.append(default)
        else:
            try:
                out.append(cast(v))
            except ValueError:
                raise DataError(f"{flag}: cannot read {v!r} as {cast.__name__}.") from None
    return out


def _tokens(v: str) -> int:
    """'50M' / '5k' / '1e6' / '1000' → int."""
    v = v.strip().lower().replace("_", "")
    mult = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}.get(v[-1:], 1)
    if mult != 1:
        v = v[:-1]
    return int(float(v) * mult)


_tokens.__name__ = "a token count"


def dataset_specs(dataset: str, split: str = "train", text_column: str | None = None, chat_column: str | None = None,
                  dataset_config: str | None = None, max_tokens: str = "1M", val_max_tokens: str = "0",
                  val_split: str | None = None, ignore_first_n: str = "0") -> tuple[DatasetSpec, ...]:
    """DatasetSpecs from comma-separated flag values (one per dataset, or one for all)."""
    names = [n.strip() for n in dataset.split(",") if n.strip()]
    if not names:
        raise DataError("give at least one --dataset.")
    n = len(names)
    splits = per_dataset(split, n, "--split", default="train")
    texts = per_dataset(text_column, n, "--text_column")
    chats = per_dataset(chat_column, n, "--chat_column")
    if n > 1 and text_column and chat_column and "," not in text_column and "," not in chat_column:
        raise DataError("with several --dataset entries, give --text_column and --chat_column per dataset, "
                        "e.g. --text_column=text, --chat_column=,conversation.")
    configs = per_dataset(dataset_config, n, "--dataset_config")
    maxes = per_dataset(max_tokens, n, "--max_tokens", _tokens)
    vmaxes = per_dataset(val_max_tokens, n, "--val_max_tokens", _tokens, default=0)
    vsplits = per_dataset(val_split, n, "--val_split")
    ignores = per_dataset(ignore_first_n, n, "--ignore_first_n", int, default=0)
    specs = tuple(
        DatasetSpec(name=names[i], split=splits[i], text_column=texts[i], chat_column=chats[i], config=configs[i],
                    max_tokens=maxes[i], val_max_tokens=vmaxes[i], val_split=vsplits[i],
                    ignore_first_n=ignores[i])
        for i in range(n)
    )
    for s in specs:
        s.validate()
    return specs
