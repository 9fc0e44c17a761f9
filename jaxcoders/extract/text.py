"""Datasets, chat templates and token classes for activation extraction (imports `datasets` and
`transformers` lazily; no torch here).

* `open_dataset`: a hub name or a local file / directory (jsonl, json, parquet, csv, text,
  `save_to_disk` output) through `datasets.load_dataset`, as a map-style or streaming dataset.
* `iter_docs`: the documents of one column from a document index on (resume without
  re-tokenizing what is already stored).
* `encode_texts` / `encode_chats`: token ids truncated to seq_len plus a `TokenClass` per token.
  Chats are rendered with the chat model's template and tokenized once; both models then see the
  identical ids (docs/method.md §8). Token classes come from character spans: a token whose
  first character lies inside a message's content gets that message's role; everything else
  the template produced (turn markers, role names, newlines) is TEMPLATE; the BOS id is BOS.
* `tokenizer_mismatch`: which ids the base and chat tokenizers disagree on.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator, Sequence

import numpy as np

from jaxcoders.data.store import TokenClass

# Rendering must be a pure function of the data, or a resumed run would store different tokens:
# Llama-3.x templates insert today's date unless `date_string` is given. This is Llama's own default.
CHAT_TEMPLATE_KWARGS = {"date_string": "26 Jul 2024"}

_ROLE_CLASS = {
    "system": TokenClass.SYSTEM, "developer": TokenClass.SYSTEM,
    "user": TokenClass.USER, "human": TokenClass.USER,
    "assistant": TokenClass.ASSISTANT, "model": TokenClass.ASSISTANT, "gpt": TokenClass.ASSISTANT,
    "bot": TokenClass.ASSISTANT,
}
_ROLE_NAME = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}

_LOCAL_BUILDERS = {
    ".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json",
    ".parquet": "parquet", ".csv": "csv", ".txt": "text", ".text": "text", ".arrow": "arrow",
}


class DataError(ValueError):
    """A dataset / column / tokenizer problem, phrased as what to change."""


def is_local(name: str) -> bool:
    return os.path.exists(os.path.expanduser(name))


def open_dataset(name: str, split: str, config: str | None = None, streaming: bool | None = None,
                 flag: str = "--dataset"):
    """Open one split of a hub dataset or a local path; streaming defaults to True for the hub."""
    import datasets

    base_split = split.split("[", 1)[0] or "train"
    looks_local = name.startswith(("/", "./", "../", "~")) or any(name.endswith(e) for e in _LOCAL_BUILDERS)
    if looks_local and not is_local(name):
        raise DataError(f"{flag}={name} does not exist; give an existing local path or a hub dataset name.")
    if is_local(name) and os.path.isfile(os.path.expanduser(name)) and os.path.getsize(os.path.expanduser(name)) == 0:
        raise DataError(f"{flag}={name} is empty; point {flag} at data with rows.")
    try:
        if is_local(name):
            path = os.path.expanduser(name)
            if os.path.isdir(path):
                if os.path.exists(os.path.join(path, "state.json")) or os.path.exists(
                    os.path.join(path, "dataset_dict.json")
                ):
                    ds = datasets.load_from_disk(path)
                    if isinstance(ds, datasets.DatasetDict):
                        if base_split not in ds:
                            raise DataError(
                                f"{flag}={name} has splits {list(ds)}, not {base_split!r}; set --split."
                            )
                        ds = ds[base_split]
                    return ds
                return datasets.load_dataset(path, config, split=split, streaming=bool(streaming))
            builder = next((b for ext, b in _LOCAL_BUILDERS.items() if path.endswith(ext)), None)
            if builder is None:
                raise DataError(
                    f"{flag}={name}: unknown file type; use .jsonl, .json, .parquet, .csv or .txt "
                    "(or a directory / hub dataset name)."
                )
            return datasets.load_dataset(builder, data_files={base_split: path}, split=split,
                                         streaming=bool(streaming))
        return datasets.load_dataset(name, config, split=split,
                                     streaming=True if streaming is None else streaming)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types; one clear sentence instead
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"could not load {flag}={name} (split {split!r}): {msg}") from e


def dataset_columns(ds) -> list[str] | None:
    cols = getattr(ds, "column_names", None)
    return list(cols) if cols is not None else None


def check_dataset(ds, name: str, split: str, column: str, flag_column: str) -> None:
    """Clear errors for an empty dataset or a missing column (before any store is touched)."""
    n = _len(ds)
    if n == 0:
        raise DataError(f"--dataset={name} (split {split!r}) is empty; point --dataset at data with rows.")
    cols = dataset_columns(ds)
    if cols is None:
        try:
            first = next(iter(ds))
        except StopIteration:
            raise DataError(f"--dataset={name} (split {split!r}) is empty; point --dataset at data with rows.")
        cols = list(first)
    if column not in cols:
        raise DataError(
            f"{flag_column}={column!r} is not a column of --dataset={name} (columns: {', '.join(cols)}); "
            f"set {flag_column} to one of them."
        )


def _len(ds) -> int | None:
    try:
        return len(ds)
    except TypeError:  # IterableDataset
        return None


def iter_docs(ds, column: str, start: int = 0, batch: int = 256) -> Iterator[tuple[int, Any]]:
    """(document index, value of `column`) from document `start` on, in dataset order."""
    n = _len(ds)
    if n is not None:
        if dataset_columns(ds) and len(dataset_columns(ds)) > 1:
            ds = ds.select_columns([column])  # do not decode the other columns
        for i in range(start, n, batch):
            values = ds[i:min(n, i + batch)][column]
            for j, v in enumerate(values):
                yield i + j, v
        return
    it = ds.skip(start) if start else ds
    for j, ex in enumerate(it):
        yield start + j, ex[column]


# --------------------------------------------------------------------------------------------
# Encoding


def encode_texts(tokenizer, texts: Sequence[Any], seq_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tokenize plain-text documents with the tokenizer's special tokens (BOS), truncated to seq_len.

    Returns per document (ids (T,) int32, classes (T,) uint8) with T ≤ seq_len (T = 0 for empty docs).
    """
    texts = [t if isinstance(t, str) else ("" if t is None else str(t)) for t in texts]
    enc = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=seq_len)["input_ids"]
    bos = tokenizer.bos_token_id
    out = []
    for t, ids in zip(texts, enc):
        ids = np.asarray(ids if t else [], np.int32)  # an empty document is skipped, not stored as a lone BOS
        cls = np.full(ids.shape, TokenClass.TEXT, np.uint8)
        if bos is not None:
            cls[ids == bos] = TokenClass.BOS
        out.append((ids, cls))
    return out


def normalize_messages(conv: Any) -> list[dict]:
    """LMSYS / OpenAI ({role, content}) or ShareGPT ({from, value}) conversations → [{role, content}]."""
    if isinstance(conv, str):
        try:
            conv = json.loads(conv)
        except json.JSONDecodeError as e:
            raise DataError("a --chat_column value is a string that is not a JSON list of messages") from e
    if conv is None:
        return []
    if isinstance(conv, dict) and "messages" in conv:
        conv = conv["messages"]
    msgs = []
    for m in conv:
        if not isinstance(m, dict):
            raise DataError(
                "--chat_column must hold lists of messages like {'role': 'user', 'content': '...'}; "
                f"found an element of type {type(m).__name__}."
            )
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if isinstance(content, list):  # multimodal-style parts: keep the text
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if role is None or content is None:
            raise DataError("each --chat_column message needs 'role' and 'content' (or 'from' and 'value').")
        msgs.append({"role": _ROLE_NAME.get(str(role), str(role)), "content": str(content)})
    return msgs


def render_chat(tokenizer, messages: list[dict]) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **CHAT_TEMPLATE_KWARGS)
    except Exception as e:  # e.g. Gemma's template rejects a 'system' role
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        roles = [m["role"] for m in messages]
        raise DataError(
            f"the chat template of --chat_model cannot render a conversation with roles {roles} ({msg}); "
            "filter or convert such conversations in the dataset."
        ) from e


def encode_chats(tokenizer, convs: Sequence[Any], seq_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Render conversations with the chat template, tokenize, classify tokens; truncated to seq_len.

    The rendered text already contains the template's special tokens (BOS included), so it is
    tokenized without adding special tokens again.
    """
    msgs_list = [normalize_messages(c) for c in convs]
    texts = [render_chat(tokenizer, m) if m else "" for m in msgs_list]
    enc = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=seq_len,
                    return_offsets_mapping=True)
    bos = tokenizer.bos_token_id
    out = []
    for text, msgs, ids, offs in zip(texts, msgs_list, enc["input_ids"], enc["offset_mapping"]):
        ids = np.asarray(ids, np.int32)
        cls = np.full(ids.shape, TokenClass.TEMPLATE, np.uint8)
        if len(ids):
            starts = np.asarray([o[0] for o in offs], np.int64)
            ends = np.asarray([o[1] for o in offs], np.int64)
            pos = 0
            for m in msgs:
                content = m["content"].strip()
                if not content:
                    continue
                i = text.find(content, pos)
                if i < 0:  # the template rewrote the content: its tokens stay TEMPLATE
                    continue
                j = i + len(content)
                inside = (starts >= i) & (starts < j) & (ends > starts)
                cls[inside] = _ROLE_CLASS.get(m["role"], TokenClass.OTHER_ROLE)
                pos = j
            if bos is not None:
                cls[ids == bos] = TokenClass.BOS
        out.append((ids, cls))
    return out


# --------------------------------------------------------------------------------------------
# Tokenizer agreement


def tokenizer_mismatch(base_tok, chat_tok) -> np.ndarray | None:
    """None if both vocabularies are identical, else a bool array: True at ids whose token differs."""
    vb, vc = base_tok.get_vocab(), chat_tok.get_vocab()
    if vb == vc:
        return None
    size = max(max(vb.values(), default=-1), max(vc.values(), default=-1)) + 1
    tb = np.full(size, None, dtype=object)
    tc = np.full(size, None, dtype=object)
    for t, i in vb.items():
        tb[i] = t
    for t, i in vc.items():
        tc[i] = t
    return np.asarray([a != b for a, b in zip(tb, tc)], bool)


def check_ids(ids: np.ndarray, mismatch: np.ndarray | None, base_tok, chat_tok, vocab_limits: dict) -> None:
    """Raise a clear DataError if `ids` use a token the two tokenizers / models disagree on."""
    if ids.size == 0:
        return
    top = int(ids.max())
    for flag, limit in vocab_limits.items():
        if top >= limit:
            raise DataError(
                f"token id {top} is outside the embedding matrix of {flag} ({limit} rows); base and chat "
                "models must share one tokenizer and vocabulary."
            )
    if mismatch is None:
        return
    bad = ids[(ids < len(mismatch)) & mismatch[np.minimum(ids, len(mismatch) - 1)]]
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"the --base_model and --chat_model tokenizers disagree on token id {i} "
            f"({_token(base_tok, i)!r} vs {_token(chat_tok, i)!r}); both models must "
            "see identical ids: use a base/chat pair that shares one tokenizer."
        )


def _token(tok, i: int):
    try:
        return tok.convert_ids_to_tokens(i)
    except Exception:  # id outside this vocabulary
        return None
