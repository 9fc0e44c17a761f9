"""Extraction driver: datasets → both models → ActivationStore, resumable (torch side).

    cfg = ExtractConfig(base_model=..., chat_model=..., layer=13, out="gs://b/acts",
                        datasets=(DatasetSpec("HuggingFaceFW/fineweb", text_column="text", max_tokens=50_000_000),
                                  DatasetSpec("lmsys/lmsys-chat-1m", chat_column="conversation", max_tokens=50_000_000)))
    run_extraction(cfg)

Data flow. Each (dataset, split) is a *source*; sources run one after another (training sources,
then validation sources), each filling one contiguous row range. A source reads documents in
dataset order in *rounds* of `round_docs` documents: a background thread tokenizes round r+1 while
the models run on round r. A round's sequences become forward batches: with --batch_size=1 one
unpadded sequence per forward (bitwise the plain `model(ids)` computation), otherwise sequences
sorted by length (less padding) and right-padded to the longest of the batch; no attention mask is
needed for right padding, as causal attention never lets a real token see a later pad. Rows kept:
every real position, minus the BOS token (--drop_bos) and the first n positions (--ignore_first_n).
A writer thread buffers batches and writes them in large chunk-aligned writes, then commits
(store.py: data, then Welford state, then the metadata with the resume cursor) about every 8
chunks, every 10 s, and at the end of each source, overlapping I/O with the next forwards.

Resume. A commit always ends at a batch boundary and records that batch's cursor (round start
document, batches done in the round, rows and sequences before the round). Rounds are a pure
function of the document stream and the cursor, so a rerun re-forms the interrupted round, skips
its committed batches and continues: no duplicated and no missing rows, and the same bits. A store records the identity of the
command that created it (models, layer, datasets, token filters, dtypes, batching); another
command against it is refused unless --overwrite.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from typing import Any, Iterator

import numpy as np

from jaxcoders.data import store as store_lib
from jaxcoders.data.prefetch import Prefetcher
from jaxcoders.data.store import StoreError, StoreWriter, TokenClass, normalize_url
from jaxcoders.extract import models as models_lib
from jaxcoders.extract import text as text_lib
from jaxcoders.extract.config import (  # noqa: F401 - re-exported: the extraction API in one place
    DatasetSpec,
    ExtractConfig,
    dataset_specs,
    per_dataset,
    round_docs,
)
from jaxcoders.extract.models import ModelError
from jaxcoders.extract.text import DataError
from jaxcoders.extract.writer import ExtractionError, StoreFeeder
from jaxcoders.files import free_disk_bytes
from jaxcoders.locks import DirectoryLock
from jaxcoders.progress import progress_bar

log = logging.getLogger("jaxcoders.extract")

SAMPLE_DOCS = 32  # documents per dataset tokenized up front to check the two tokenizers agree

# Errors that are the user's to fix; the CLI prints their one-sentence message without a traceback.
USER_ERRORS = (StoreError, DataError, ModelError, ExtractionError)


# --------------------------------------------------------------------------------------------
# Rounds: documents → sequences (pure functions of the document stream and the cursor)


@dataclasses.dataclass
class _Seq:
    doc: int
    ids: np.ndarray  # (T,) int32 model input
    classes: np.ndarray  # (T,) uint8
    keep: np.ndarray  # (T,) bool: positions stored as rows

    @property
    def rows(self) -> int:
        return int(self.keep.sum())


@dataclasses.dataclass
class _Round:
    start_doc: int
    end_doc: int  # first document not consumed
    rows_before: int  # source rows before this round
    seqs: list  # [_Seq]


def _rounds(docs: Iterator[tuple[int, Any]], start_doc: int, rows_before: int, max_rows: int, encode,
            n_docs: int, ignore_first_n: int, bos_id: int | None, drop_bos: bool) -> Iterator[_Round]:
    rows = rows_before
    while rows < max_rows:
        raw = []
        for item in docs:
            raw.append(item)
            if len(raw) == n_docs:
                break
        if not raw:
            return
        encoded = encode([v for _, v in raw])
        seqs, end_doc, rb = [], raw[-1][0] + 1, rows
        for (doc, _), (ids, cls) in zip(raw, encoded):
            keep = np.arange(len(ids)) >= ignore_first_n
            if drop_bos and bos_id is not None:
                keep &= ids != bos_id
            k = int(keep.sum())
            if k == 0:
                continue
            need = max_rows - rows
            if k > need:  # budget reached inside this document: run only up to the last needed row
                cut = int(np.flatnonzero(keep)[need - 1]) + 1
                ids, cls, keep = ids[:cut], cls[:cut], keep[:cut]
                k = need
            seqs.append(_Seq(doc, ids, cls, keep))
            rows += k
            if rows >= max_rows:
                end_doc = doc + 1
                break
        yield _Round(start_doc, end_doc, rb, seqs)
        start_doc = end_doc


def _kept_rows(ids: np.ndarray, ignore_first_n: int, bos_id: int | None, drop_bos: bool) -> int:
    """Rows a document's ids give after the token filters (as in `_rounds`)."""
    keep = np.arange(len(ids)) >= ignore_first_n
    if drop_bos and bos_id is not None:
        keep &= np.asarray(ids) != bos_id
    return int(keep.sum())


def _batches(rnd: _Round, batch_size: int) -> list[list[_Seq]]:
    seqs = rnd.seqs
    if batch_size > 1:  # longest first: OOM shows up in the first batch, and little padding
        seqs = sorted(seqs, key=lambda s: (-len(s.ids), s.doc))
    return [seqs[i:i + batch_size] for i in range(0, len(seqs), batch_size)]


# --------------------------------------------------------------------------------------------
# Checks before anything is written


def _sources(cfg: ExtractConfig) -> list[dict]:
    out = []
    for i, d in enumerate(cfg.datasets):
        out.append({"dataset_id": i, "split": "train", "data_split": d.split, "kind": d.kind, "column": d.column,
                    "max_rows": d.max_tokens, "held_out_after": None})
    for i, d in enumerate(cfg.datasets):
        if d.val_max_tokens > 0:
            held = None if d.val_split else i  # held out: starts after the training documents of source i
            out.append({"dataset_id": i, "split": "validation", "data_split": d.val_split or d.split,
                        "kind": d.kind, "column": d.column, "max_rows": d.val_max_tokens, "held_out_after": held})
    return out


def _check_existing(url: str, existing: dict, ident: dict) -> None:
    old = existing.get("extraction", {}).get("identity")
    if old is None:
        raise StoreError(
            f"--out={url} holds an ActivationStore that was not written by this extraction command; "
            "choose another --out or pass --overwrite."
        )
    diff = [k for k in sorted(set(old) | set(ident)) if old.get(k) != ident.get(k)]
    if diff:
        what = "; ".join(f"{k}: store has {old.get(k)!r}, command asks {ident.get(k)!r}" for k in diff[:4])
        raise StoreError(
            f"--out={url} holds activations from a different extraction ({what}); use a new --out, "
            "or --overwrite to replace it."
        )


def _check_same_models(url: str, existing: dict, infos: dict, chat_tok) -> None:
    """A resumed run must see the same model weights (hub commit) and chat template as the first run."""
    ex = existing.get("extraction", {})
    for rec, (flag, info) in zip(ex.get("models", []), infos.items()):
        if rec.get("commit_hash") and info.commit_hash and rec["commit_hash"] != info.commit_hash:
            raise StoreError(
                f"{flag}={info.name} is now at commit {info.commit_hash}, but --out={url} was started with commit "
                f"{rec['commit_hash']}; pin --{flag[2:6]}_revision={rec['commit_hash']} to continue."
            )
        now = models_lib.weights_fingerprint(info.name)
        if rec.get("weights_fingerprint") and now and rec["weights_fingerprint"] != now:
            raise StoreError(
                f"the weights in {flag}={info.name} changed since --out={url} was started (fingerprint "
                f"{rec['weights_fingerprint']} -> {now}); restore the original weights to resume, or use a new "
                "--out (or --overwrite) for the new ones."
            )
    if "chat_template" in ex and ex["chat_template"] != getattr(chat_tok, "chat_template", None):
        raise StoreError(
            f"the chat template of --chat_model changed since --out={url} was started; restore it, or use a new "
            "--out (or --overwrite)."
        )


def _check_disk(url: str, rows_left: int, bytes_per_row: int) -> None:
    path = store_lib.local_path(url)
    if path is None or rows_left <= 0:
        return
    need = int(rows_left * bytes_per_row * 1.02) + (4 << 20)
    free = free_disk_bytes(path)
    if free is not None and need > free:
        raise StoreError(
            f"--out={path} needs about {need / 1e9:.2f} GB for {rows_left} more rows but only {free / 1e9:.2f} GB "
            "are free; free disk space, lower --max_tokens, or choose another --out."
        )


# --------------------------------------------------------------------------------------------
# The run


def run_extraction(cfg: ExtractConfig) -> str:
    """Extract (or resume extracting) activations into `cfg.out`; returns the store URL.

    One writer per store: a second extraction into the same --out while this one runs is refused
    (`jaxcoders.locks.DirectoryLock`; a lock left by a killed run is detected as stale)."""
    cfg.validate()
    url = normalize_url(cfg.out)
    where = store_lib.lock_location(url)
    if where is None:  # memory:// stores live in this process only
        return _extract(cfg, url)
    with DirectoryLock(where, what="activation store (extraction)"):
        return _extract(cfg, url)


def _extract(cfg: ExtractConfig, url: str) -> str:
    ident = cfg.identity()

    # 1. An existing store must come from the same command (cheap: before loading anything).
    existing = None if cfg.overwrite else store_lib.read_group_metadata(url)
    if existing is not None:
        _check_existing(url, existing, ident)
        if existing.get("complete"):
            log.info("%s is already complete (%d rows); nothing to do.", url, existing["num_rows"])
            return url
    elif not cfg.overwrite and store_lib.list_keys(url, 1):
        raise StoreError(
            f"--out={url} is not empty and holds no ActivationStore; choose an empty location or pass --overwrite."
        )

    # 2. Models (configs only), tokenizers, datasets: every input check before any write.
    infos = {"--base_model": models_lib.load_config(cfg.base_model, cfg.base_revision, "--base_model"),
             "--chat_model": models_lib.load_config(cfg.chat_model, cfg.chat_revision, "--chat_model")}
    models_lib.check_layer(cfg.layer, infos)
    d_model = infos["--base_model"].d_model
    base_tok, chat_tok = models_lib.load_tokenizer(cfg.base_model, cfg.base_revision, "--base_model"), \
        models_lib.load_tokenizer(cfg.chat_model, cfg.chat_revision, "--chat_model")
    if any(d.kind == "chat" for d in cfg.datasets) and not getattr(chat_tok, "chat_template", None):
        raise DataError(f"--chat_model={cfg.chat_model} has no chat template, needed for --chat_column data.")
    if existing is not None:
        _check_same_models(url, existing, infos, chat_tok)
    sources = _sources(cfg)
    handles = {}
    for src in sources:
        d = cfg.datasets[src["dataset_id"]]
        key = (src["dataset_id"], src["data_split"])
        if key not in handles:
            ds = text_lib.open_dataset(d.name, src["data_split"], d.config, cfg.streaming)
            text_lib.check_dataset(ds, d.name, src["data_split"], d.column,
                                   "--chat_column" if d.kind == "chat" else "--text_column")
            handles[key] = ds
    mismatch = text_lib.tokenizer_mismatch(base_tok, chat_tok)
    vocab_limits = {f"{flag}={info.name}": info.vocab_size for flag, info in infos.items()}
    encoders = {}
    for i, d in enumerate(cfg.datasets):
        encoders[i] = _encoder(d, base_tok, chat_tok, cfg.seq_len)
        sample = [v for _, v in zip(range(SAMPLE_DOCS), text_lib.iter_docs(handles[(i, d.split)], d.column))]
        kept = 0
        for ids, _ in encoders[i]([v for _, v in sample]):
            text_lib.check_ids(ids, mismatch, base_tok, chat_tok, vocab_limits)
            kept += _kept_rows(ids, d.ignore_first_n, base_tok.bos_token_id, cfg.drop_bos)
        if kept == 0 and len(sample) < SAMPLE_DOCS:  # the whole dataset was sampled: nothing to store
            raise DataError(
                f"--dataset={d.name} (split {d.split!r}) produces no tokens"
                + (f" ({len(sample)} documents, all empty after tokenization and the token filters)" if sample
                   else " (it has no documents)")
                + f"; check --{'chat' if d.kind == 'chat' else 'text'}_column and the token filters. Nothing was written."
            )
    if mismatch is not None:
        log.warning("base and chat vocabularies differ on %d ids; every batch is checked.", int(mismatch.sum()))

    itemsize = 2 if cfg.dtype == "bfloat16" else 4
    capacity = sum(s["max_rows"] for s in sources)
    done_rows = existing["num_rows"] if existing else 0
    _check_disk(url, capacity - done_rows, 2 * d_model * itemsize + 19)

    # 3. Models (weights), then the store.
    if cfg.num_threads > 0:
        import torch

        torch.set_num_threads(cfg.num_threads)
    device = models_lib.resolve_device(cfg.device)
    base = models_lib.LayerActivations(cfg.base_model, cfg.layer, revision=cfg.base_revision, dtype=cfg.model_dtype,
                                       device=device, attn_implementation=cfg.attn_implementation, flag="--base_model")
    chat = models_lib.LayerActivations(cfg.chat_model, cfg.layer, revision=cfg.chat_revision, dtype=cfg.model_dtype,
                                       device=device, attn_implementation=cfg.attn_implementation, flag="--chat_model")
    if existing is not None:
        writer = StoreWriter.open_for_append(url)
        log.info("resuming %s at row %d", url, writer.num_rows)
    else:
        attrs = {"extraction": _extraction_metadata(cfg, ident, infos, base_tok, chat_tok, base, chat)}
        names = [d.name if not d.config else f"{d.name}:{d.config}" for d in cfg.datasets]
        writer = StoreWriter.create(url, num_models=2, d_model=d_model, dtype=cfg.dtype, capacity=capacity,
                                    datasets=names, sources=sources, attrs=attrs, chunk_rows=cfg.chunk_rows,
                                    overwrite=cfg.overwrite)
    _Extraction(cfg, writer, base, chat, base_tok, chat_tok, handles, encoders, mismatch, vocab_limits, device).run()
    return url


def _encoder(d: DatasetSpec, base_tok, chat_tok, seq_len: int):
    # Text documents: the base model's tokenizer (pretraining-style input); chats: the chat model's
    # tokenizer and template. Both models always receive the very same ids.
    if d.kind == "chat":
        return lambda values: text_lib.encode_chats(chat_tok, values, seq_len)
    return lambda values: text_lib.encode_texts(base_tok, values, seq_len)


def _extraction_metadata(cfg, ident, infos, base_tok, chat_tok, base, chat) -> dict:
    import torch
    import transformers

    return {
        "identity": ident,
        "models": [
            {"index": 0, "role": "base", "name": cfg.base_model, "revision": cfg.base_revision,
             "commit_hash": infos["--base_model"].commit_hash, "model_type": infos["--base_model"].model_type,
             "num_layers": infos["--base_model"].num_layers, "torch_dtype": str(base.dtype),
             "weights_fingerprint": models_lib.weights_fingerprint(cfg.base_model)},
            {"index": 1, "role": "chat", "name": cfg.chat_model, "revision": cfg.chat_revision,
             "commit_hash": infos["--chat_model"].commit_hash, "model_type": infos["--chat_model"].model_type,
             "num_layers": infos["--chat_model"].num_layers, "torch_dtype": str(chat.dtype),
             "weights_fingerprint": models_lib.weights_fingerprint(cfg.chat_model)},
        ],
        "layer": cfg.layer,
        "hook": f"residual stream after decoder block {cfg.layer} = HF hidden_states[{cfg.layer + 1}]"
                + (" (final norm applied: last block)" if base.final_norm is not None else ""),
        "chat_template": getattr(chat_tok, "chat_template", None),
        "chat_template_kwargs": text_lib.CHAT_TEMPLATE_KWARGS,
        "bos_token_id": chat_tok.bos_token_id,
        "token_filters": {"drop_bos": cfg.drop_bos,
                          "ignore_first_n": {d.name: d.ignore_first_n for d in cfg.datasets}},
        "token_classes": {c.name: int(c) for c in TokenClass},
        "seq_len": cfg.seq_len,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": sys.version.split()[0]},
    }


class _Extraction:
    def __init__(self, cfg, writer, base, chat, base_tok, chat_tok, handles, encoders, mismatch, vocab_limits, device):
        self.cfg, self.writer, self.base, self.chat = cfg, writer, base, chat
        self.base_tok, self.chat_tok = base_tok, chat_tok
        self.handles, self.encoders = handles, encoders
        self.mismatch, self.vocab_limits = mismatch, vocab_limits
        self.device = device
        self.bos_id = chat_tok.bos_token_id
        self.pad_id = chat_tok.pad_token_id if chat_tok.pad_token_id is not None else 0
        self.forward_s = 0.0
        self.tokens = 0

    def run(self) -> None:
        meta = self.writer.metadata
        total = sum(s["max_rows"] for s in meta["sources"])
        bar = progress_bar(total, "extract", "tok", enabled=self.cfg.progress, initial=meta["num_rows"],
                           unit_scale=True, dynamic_ncols=True, smoothing=0.1)
        self.bar = bar
        # Up to ~64k rows may wait for the writer (≈ 600 MB for Gemma-2-2B in bf16).
        w = StoreFeeder(self.writer, max_items=-(-65536 // (self.cfg.batch_size * self.cfg.seq_len)))
        t0, c0 = time.perf_counter(), time.process_time()
        rows0 = meta["num_rows"]
        try:
            for si in range(len(meta["sources"])):
                if not meta["sources"][si]["done"]:
                    self._source(si, w)
                    w.drain()
            w.drain()
            wall = time.perf_counter() - t0
            run = {"input_tokens": self.tokens, "rows": meta["num_rows"] - rows0, "wall_s": round(wall, 3),
                   "cpu_s": round(time.process_time() - c0, 3), "forward_s": round(self.forward_s, 3),
                   "device": str(self.device)}
            meta["extraction"].setdefault("runs", []).append(run)  # informational, not part of the identity
            self.writer.finalize()
        finally:
            w.close()
            bar.close()
        if self.tokens:
            log.info("extracted %d input tokens in %.1f s: %.0f tok/s (of which model forwards + gather: %.1f s)",
                     self.tokens, wall, self.tokens / wall, self.forward_s)

    def _source(self, si: int, w: StoreFeeder) -> None:
        meta = self.writer.metadata
        src = meta["sources"][si]
        d = self.cfg.datasets[src["dataset_id"]]
        if "row_start" not in src:
            src["row_start"] = meta["num_rows"]
            src["row_ranges"] = [[src["row_start"], src["row_start"]]]
        cursor = src.get("cursor")
        if cursor is None:
            start_doc = 0
            if src["held_out_after"] is not None:
                train = next(s for s in meta["sources"] if s["split"] == "train"
                             and s["dataset_id"] == src["held_out_after"])
                start_doc = int(train["docs_end"])
            cursor = {"round_start_doc": start_doc, "batches_done": 0, "rows_before": 0,
                      "seqs_before": meta["num_sequences"]}
        self.bar.set_description(f"extract {d.name}:{src['split']}")
        docs = text_lib.iter_docs(self.handles[(src["dataset_id"], src["data_split"])], d.column,
                                  cursor["round_start_doc"])
        rounds = Prefetcher(_rounds(docs, cursor["round_start_doc"], cursor["rows_before"], src["max_rows"],
                                    self.encoders[src["dataset_id"]], round_docs(self.cfg.batch_size),
                                    d.ignore_first_n, self.bos_id, self.cfg.drop_bos), depth=2)
        end_doc, seqs_before, first = cursor["round_start_doc"], cursor["seqs_before"], True
        source_rows = int(src.get("num_rows") or 0)  # committed so far; then every row put
        try:
            for rnd in rounds:
                skip = cursor["batches_done"] if first else 0
                first = False
                row = src["row_start"] + rnd.rows_before
                seq = seqs_before
                for bi, batch in enumerate(_batches(rnd, self.cfg.batch_size)):
                    n_rows, n_seqs = sum(s.rows for s in batch), len(batch)
                    if bi >= skip:
                        for s in batch:
                            text_lib.check_ids(s.ids, self.mismatch, self.base_tok, self.chat_tok, self.vocab_limits)
                        item = self._forward(batch, row, seq, src["dataset_id"])
                        item.update(source=si, update={"cursor": {
                            "round_start_doc": rnd.start_doc, "batches_done": bi + 1,
                            "rows_before": rnd.rows_before, "seqs_before": seqs_before}})
                        w.put(item)
                        self.bar.update(n_rows)
                    row += n_rows
                    seq += n_seqs
                    source_rows = max(source_rows, row - src["row_start"])
                seqs_before = seq
                end_doc = rnd.end_doc
        finally:
            rounds.close()
        if source_rows == 0 and src["split"] == "train":  # never marked done: a store without training rows is never complete
            raise DataError(f"--dataset={d.name} (split {src['data_split']!r}) produced no tokens; "
                            f"check --{'chat' if d.kind == 'chat' else 'text'}_column and the token filters "
                            f"(the store at --out stays incomplete; rerun with other data and --overwrite).")
        w.put({"source": si, "update": {"done": True, "docs_end": end_doc}})
        w.drain()
        got = self.writer.metadata["sources"][si]["num_rows"]
        if got < src["max_rows"]:  # (a validation split may end up empty: training then refuses to use it)
            log.warning("--dataset=%s (%s) ran out of documents: %d of %d %s rows stored.", d.name,
                        src["data_split"], got, src["max_rows"], src["split"])

    def _forward(self, batch: list[_Seq], start: int, seq0: int, dataset_id: int) -> dict:
        import torch

        B, T = len(batch), max(len(s.ids) for s in batch)
        ids = np.full((B, T), self.pad_id, np.int64)
        keep = np.zeros((B, T), bool)
        for i, s in enumerate(batch):
            ids[i, :len(s.ids)] = s.ids
            keep[i, :len(s.ids)] = s.keep
        t0 = time.perf_counter()
        ids_t = torch.from_numpy(ids).to(self.device)
        keep_t = torch.from_numpy(keep).to(self.device)
        h0 = self.base(ids_t)[keep_t]  # (n, D): rows in (sequence, position) order
        h1 = self.chat(ids_t)[keep_t]
        x = torch.stack([h0, h1], dim=1).to(torch.bfloat16 if self.cfg.dtype == "bfloat16" else torch.float32)
        x64 = (x if x.device.type != "mps" else x.cpu()).to(torch.float64)  # MPS has no float64
        mean = x64.mean(dim=0)
        m2 = ((x64 - mean) ** 2).sum(dim=0)
        if not bool(torch.isfinite(mean).all()):
            raise ExtractionError(f"the models produced NaN/inf activations at layer {self.cfg.layer}; "
                                  "try --model_dtype=float32.")
        acts = _to_numpy(x)
        moments = (int(x.shape[0]), mean.cpu().numpy(), m2.cpu().numpy())
        self.forward_s += time.perf_counter() - t0
        self.tokens += int(sum(len(s.ids) for s in batch))

        pos = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))
        seq_ids = np.broadcast_to((seq0 + np.arange(B, dtype=np.int64))[:, None], (B, T))
        classes = np.zeros((B, T), np.uint8)
        for i, s in enumerate(batch):
            classes[i, :len(s.ids)] = s.classes
        n = int(keep.sum())
        return {
            "start": start, "acts": acts, "moments": moments, "n_seqs": B,
            "rows": {"token_ids": ids[keep].astype(np.int32), "sequence_ids": seq_ids[keep],
                     "positions": pos[keep], "dataset_ids": np.full(n, dataset_id, np.int16),
                     "token_classes": classes[keep]},
        }


def _to_numpy(x) -> np.ndarray:
    import torch

    x = x.detach().cpu().contiguous()
    if x.dtype == torch.bfloat16:
        import ml_dtypes

        return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return x.numpy()
