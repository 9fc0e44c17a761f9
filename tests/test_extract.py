"""Activation extraction with tiny local transformers: exactness, token classes, resume, bad input.

Models and tokenizer are built locally (tests/extract_helpers.py) and loaded through the real
`from_pretrained` path; no network.
"""
import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import tempfile

# Local test datasets are converted to Arrow by `datasets`: keep that cache out of ~/.cache.
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(tempfile.gettempdir(), "jaxcoders-test-datasets-cache"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("datasets")

import extract_helpers as H  # noqa: E402

from jaxcoders.data.store import ActivationStore, TokenClass  # noqa: E402
from jaxcoders.extract import run as run_lib  # noqa: E402
from jaxcoders.extract.run import DatasetSpec, ExtractConfig, dataset_specs, run_extraction  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "experiments" / "extract_activations.py"
SEQ_LEN = 48


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import torch

    # Tiny models: one thread is ~50x faster than two on a busy 2-core machine (no spin-waiting).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("extract")
    text, chat = H.write_local_datasets(tmp / "data")
    models = {arch: H.build_tiny_model_pair(tmp / "models", arch) for arch in ("gemma2", "llama")}
    yield {"tmp": tmp, "text": text, "chat": chat, "models": models}
    torch.set_num_threads(threads)


def _cfg(env, out, arch="gemma2", layer=1, **kw):
    base, chat = env["models"][arch]
    datasets = kw.pop("datasets", (
        DatasetSpec(env["text"], text_column="text", max_tokens=500, val_max_tokens=100),
        DatasetSpec(env["chat"], chat_column="conversation", max_tokens=500, val_max_tokens=100),
    ))
    kw.setdefault("progress", False)
    return ExtractConfig(base_model=base, chat_model=chat, layer=layer, datasets=datasets, out=str(out),
                         seq_len=kw.pop("seq_len", SEQ_LEN), dtype=kw.pop("dtype", "float32"), **kw)


def _run_cli(runner, args, env_extra=None, check=True, timeout=300):
    """`python experiments/extract_activations.py args`, forked by the suite's `cli_runner` server."""
    rc, out, err = runner.run([CLI, *args], cwd=ROOT, env=env_extra, timeout=timeout)
    if check and rc != 0:
        raise AssertionError(f"CLI failed ({rc}):\n{err[-3000:]}")
    return SimpleNamespace(returncode=rc, stdout=out, stderr=err)


def _assert_matches_direct(store, base_dir, chat_dir, layer, *, exact=True):
    """Every stored row equals hidden_states[layer+1] of both models on the sequence's own ids."""
    tok, pos, bounds = store.token_ids, store.positions, store.sequence_bounds()
    assert len(bounds) > 3
    for k in range(len(bounds) - 1):
        r0, r1 = bounds[k], bounds[k + 1]
        assert np.all(np.diff(pos[r0:r1]) == 1) and pos[r0] == 0, "rows of a sequence are its positions in order"
        x = store.read(slice(r0, r1))
        for m, d in enumerate((base_dir, chat_dir)):
            h = H.direct_hidden_states(d, tok[r0:r1].tolist(), layer)
            if exact:
                np.testing.assert_array_equal(x[:, m], h, err_msg=f"sequence {k}, model {m}")
            else:
                np.testing.assert_allclose(x[:, m], h, rtol=1e-4, atol=1e-5, err_msg=f"sequence {k}, model {m}")


def _store_files(path):
    """{relative path: bytes} of every file of a local store (to prove it was left untouched)."""
    root = Path(path)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_gemma2_text_and_chat_bitwise(env, cli_runner):
    base, chat = env["models"]["gemma2"]
    out = env["tmp"] / "cli-store"
    # The tiny local command of docs/extract.md.
    p = _run_cli(cli_runner, [
        f"--base_model={base}", f"--chat_model={chat}", "--layer=1",
        f"--dataset={env['text']},{env['chat']}", "--text_column=text,", "--chat_column=,conversation",
        "--max_tokens=500", "--val_max_tokens=100", f"--seq_len={SEQ_LEN}", "--dtype=float32", f"--out={out}",
    ])
    assert "ActivationStore(" in p.stdout
    st = ActivationStore.open(str(out))
    assert st.complete and st.num_models == 2 and st.d_model == 32
    meta = st.metadata
    ex = meta["extraction"]
    assert ex["layer"] == 1 and "hidden_states[2]" in ex["hook"]
    assert ex["models"][0]["name"] == base and ex["models"][1]["name"] == chat
    assert "<start_of_turn>" in ex["chat_template"]
    # 500 text + 500 chat rows (train), then 100 + 100 held-out rows of each (validation).
    assert st.row_ranges("train") == [(0, 500, 0), (500, 1000, 1)]
    assert st.row_ranges("validation") == [(1000, 1100, 0), (1100, 1200, 1)]
    for train, val in ((0, 2), (1, 3)):  # validation documents follow the training documents
        assert meta["sources"][val]["cursor"]["round_start_doc"] == meta["sources"][train]["docs_end"]
    _assert_matches_direct(st, base, chat, layer=1, exact=True)

    # Token classes: BOS at position 0, plain text elsewhere in text data; chat data split into
    # template / system / user / assistant tokens whose text comes from the right messages.
    cls, ds, tok = st.token_classes, st.dataset_ids, st.token_ids
    assert set(np.unique(cls[ds == 0])) == {TokenClass.TEXT, TokenClass.BOS}
    assert np.all((cls == TokenClass.BOS) == (st.positions == 0))
    chat_cls = set(np.unique(cls[ds == 1]).tolist())
    assert {TokenClass.BOS, TokenClass.TEMPLATE, TokenClass.USER, TokenClass.ASSISTANT, TokenClass.SYSTEM} <= chat_cls
    from transformers import AutoTokenizer

    tk = AutoTokenizer.from_pretrained(chat)
    convs = [json.loads(line)["conversation"] for line in open(env["chat"])]
    assistant = " ".join(m["content"] for c in convs for m in c if m["role"] == "assistant")
    user = " ".join(m["content"] for c in convs for m in c if m["role"] == "user")
    rows = np.flatnonzero(ds == 1)
    for want, text in ((TokenClass.ASSISTANT, assistant), (TokenClass.USER, user)):
        sel = rows[cls[rows] == want]
        runs = np.split(sel, np.flatnonzero(np.diff(sel) != 1) + 1)
        for run in runs[:10]:
            assert tk.decode(tok[run].tolist()).strip() in text
    template_text = tk.decode(tok[rows[cls[rows] == TokenClass.TEMPLATE]].tolist())
    assert "<start_of_turn>" in template_text and "<end_of_turn>" in template_text

    # float64 Welford statistics equal numpy's over the stored rows.
    x = st.read(slice(0, 1000)).astype(np.float64)
    np.testing.assert_allclose(st.stats.mean, x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st.stats.std, x.std(0), rtol=1e-10)
    assert st.stats_for("validation").count == 200

    # The same command again: already complete, nothing rewritten.
    before = _store_files(out)
    run_extraction(_cfg(env, out))
    assert _store_files(out) == before


def test_llama_last_layer_filters_and_bf16(env):
    base, chat = env["models"]["llama"]
    last = 2  # the last block: hidden_states[3] carries the final norm, as in HF
    out = env["tmp"] / "llama-last"
    ds = (DatasetSpec(env["text"], text_column="text", max_tokens=300),
          DatasetSpec(env["chat"], chat_column="conversation", max_tokens=300, ignore_first_n=3))
    run_extraction(_cfg(env, out, arch="llama", layer=last, datasets=ds, drop_bos=True))
    st = ActivationStore.open(str(out))
    assert st.num_rows == 600
    assert not np.any(st.token_classes == TokenClass.BOS)
    assert st.positions[st.dataset_ids == 1].min() == 3 and st.positions[st.dataset_ids == 0].min() == 1
    # Reconstruct each sequence's input (BOS + tokens; chat: the first 3 template tokens) and compare.
    from transformers import AutoTokenizer

    tk = AutoTokenizer.from_pretrained(chat)
    convs = [json.loads(line)["conversation"] for line in open(env["chat"])]
    bounds = st.sequence_bounds()
    checked = 0
    for k in range(len(bounds) - 1):
        r0, r1 = bounds[k], bounds[k + 1]
        if st.dataset_ids[r0] == 0:
            ids = [tk.bos_token_id] + st.token_ids[r0:r1].tolist()
        else:
            full = tk(tk.apply_chat_template(convs[checked], tokenize=False), add_special_tokens=False)["input_ids"]
            checked += 1
            ids = full[:3] + st.token_ids[r0:r1].tolist()
            assert full[3:r1 - r0 + 3] == st.token_ids[r0:r1].tolist()
        x = st.read(slice(r0, r1))
        for m, d in enumerate((base, chat)):
            h = H.direct_hidden_states(d, ids, last)
            np.testing.assert_array_equal(x[:, m], h[len(ids) - (r1 - r0):])
    assert checked > 3
    # bf16 storage = the f32 activations rounded to bf16; batched (padded) extraction agrees to rounding.
    out16 = env["tmp"] / "llama-bf16"
    run_extraction(_cfg(env, out16, arch="llama", layer=last, datasets=ds, drop_bos=True, dtype="bfloat16",
                        batch_size=4))
    s16 = ActivationStore.open(str(out16))
    assert s16.num_rows == 600 and s16.dtype.name == "bfloat16"
    key = lambda s: {(tuple(s.token_ids[a:b]), a, b) for a, b in zip(s.sequence_bounds()[:-1], s.sequence_bounds()[1:])}
    m32 = {t: (a, b) for t, a, b in key(st)}
    for t, a, b in key(s16):
        a32, b32 = m32[t]
        np.testing.assert_allclose(s16.read(slice(a, b)).astype(np.float32), st.read(slice(a32, b32)),
                                   rtol=1e-2, atol=1e-2)


class _Crash(BaseException):
    """Stands in for the process dying at an exact point (nothing after it runs)."""


def _crash_at(monkeypatch, what, n):
    def maybe_kill(self, w):
        self._n[w] += 1
        if (w, self._n[w]) == (what, n):
            raise _Crash(f"{what}:{n}")

    monkeypatch.setattr(run_lib.StoreFeeder, "_maybe_kill", maybe_kill)


def test_kill_and_resume_equals_uninterrupted(env, monkeypatch, cli_runner):
    ref = env["tmp"] / "resume-ref"
    run_extraction(_cfg(env, ref, chunk_rows=32))  # small chunks: a commit every 8 chunks = 256 rows
    out = env["tmp"] / "resume"
    # 1. Dies after writing rows (the 3rd write), before committing them.
    _crash_at(monkeypatch, "write", 3)
    with pytest.raises(run_lib.ExtractionError, match="rerun the same command to continue"):
        run_extraction(_cfg(env, out, chunk_rows=32))
    monkeypatch.undo()
    st = ActivationStore.open(str(out))
    assert not st.complete and st.num_rows > 0
    committed = st.num_rows
    # 2. The documented CLI resumes; a real SIGKILL stops it at whatever point it has reached.
    base, chat = env["models"]["gemma2"]
    args = [f"--base_model={base}", f"--chat_model={chat}", "--layer=1", f"--dataset={env['text']},{env['chat']}",
            "--text_column=text,", "--chat_column=,conversation", "--max_tokens=500", "--val_max_tokens=100",
            f"--seq_len={SEQ_LEN}", "--dtype=float32", "--chunk_rows=32", f"--out={out}"]
    job = cli_runner.start([CLI, *args], cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and job.rc is None:
        if ActivationStore.open(str(out)).num_rows > committed:
            break
        time.sleep(0.02)
    os.kill(job.pid, signal.SIGKILL)
    assert job.wait()[0] == -signal.SIGKILL
    st = ActivationStore.open(str(out))
    assert st.num_rows >= committed and not st.complete
    # 3. Dies right after a commit, further on.
    _crash_at(monkeypatch, "commit", 2)
    with pytest.raises(run_lib.ExtractionError):
        run_extraction(_cfg(env, out, chunk_rows=32))
    monkeypatch.undo()
    # 4. Finished by the same command: identical to the uninterrupted run.
    run_extraction(_cfg(env, out, chunk_rows=32))
    a, b = ActivationStore.open(str(ref)), ActivationStore.open(str(out))
    assert a.num_rows == b.num_rows == 1200 and b.complete
    np.testing.assert_array_equal(a.read(slice(None)), b.read(slice(None)))
    for col in ("token_ids", "sequence_ids", "positions", "dataset_ids", "token_classes"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col), err_msg=col)
    np.testing.assert_array_equal(a.stats.mean, b.stats.mean)
    np.testing.assert_array_equal(a.stats.std, b.stats.std)
    ma, mb = a.metadata, b.metadata
    assert [s["row_ranges"] for s in ma["sources"]] == [s["row_ranges"] for s in mb["sources"]]
    assert ma["num_sequences"] == mb["num_sequences"]


def test_bad_input_one_clear_error_and_store_untouched(env, tmp_path, monkeypatch):
    # An existing, complete store from the gemma2 pair...
    out = tmp_path / "existing"
    small = (DatasetSpec(env["text"], text_column="text", max_tokens=100),)
    run_extraction(_cfg(env, out, datasets=small))
    before = _store_files(out)
    text, chat = env["text"], env["chat"]

    def expect(match, exc=ValueError, **kw):
        cfg = _cfg(env, kw.pop("out", out), **kw)
        with pytest.raises(exc, match=match):
            run_extraction(cfg)
        assert _store_files(out) == before

    # ... is refused for another model pair / layer, and kept when --overwrite meets bad input.
    expect(r"different extraction \(base_model", arch="llama", datasets=small)
    expect(r"different extraction \(layer: store has 1, command asks 0", layer=0, datasets=small)
    expect(r"--layer=7 does not exist in --base_model=.* 4 blocks; use 0 ≤ --layer ≤ 3", layer=7, datasets=small,
           overwrite=True)
    pair = H.build_tiny_model_pair(tmp_path / "mismatch", "gemma2", tokenizer_seed_base=1)
    cfg = _cfg(env, out, datasets=small, overwrite=True)
    with pytest.raises(ValueError, match=r"tokenizers disagree on token id \d+ .*shares one tokenizer"):
        run_extraction(ExtractConfig(**{**cfg.__dict__, "base_model": pair[0], "chat_model": pair[1]}))
    assert _store_files(out) == before
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    expect(r"--dataset=.*empty.jsonl is empty", datasets=(DatasetSpec(str(empty), text_column="text"),),
           overwrite=True)
    expect(r"--text_column='body' is not a column of --dataset=.*text.jsonl \(columns: id, text\)",
           datasets=(DatasetSpec(text, text_column="body"),), overwrite=True)
    expect(r"--chat_column='conv' is not a column", datasets=(DatasetSpec(chat, chat_column="conv"),),
           overwrite=True)
    expect(r"exactly one of --text_column or --chat_column",
           datasets=(DatasetSpec(text, text_column="text", chat_column="conversation"),), overwrite=True)
    monkeypatch.setattr(run_lib, "free_disk_bytes", lambda path: 10_000)
    expect(r"needs about .* GB .* are free; free disk space", datasets=small, overwrite=True, layer=0)
    monkeypatch.undo()
    # A fresh --out stays empty after a bad command.
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="does not exist in --base_model"):
        run_extraction(_cfg(env, fresh, layer=9, datasets=small))
    assert not fresh.exists() or not any(fresh.iterdir())
    # A non-empty directory that is not a store is refused.
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no ActivationStore"):
        run_extraction(_cfg(env, junk, datasets=small))
    # --overwrite with good input replaces the store.
    run_extraction(_cfg(env, out, datasets=small, layer=0, overwrite=True))
    assert ActivationStore.open(str(out)).metadata["extraction"]["layer"] == 0


def test_cli_error_is_one_line(env, tmp_path, cli_runner):
    base, chat = env["models"]["gemma2"]
    p = _run_cli(cli_runner, [f"--base_model={base}", f"--chat_model={chat}", "--layer=1", f"--dataset={env['text']}",
                  "--text_column=body", f"--out={tmp_path / 'x'}"], check=False)
    assert p.returncode == 2
    lines = [l for l in p.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "--text_column='body' is not a column" in lines[0]
    assert "Traceback" not in p.stderr


def test_dataset_flag_parsing():
    specs = dataset_specs("a.jsonl,b.jsonl", text_column="text,", chat_column=",conversation",
                          max_tokens="50M,5k", val_max_tokens="1M", ignore_first_n="0,25")
    assert specs[0] == DatasetSpec("a.jsonl", text_column="text", max_tokens=50_000_000, val_max_tokens=1_000_000)
    assert specs[1] == DatasetSpec("b.jsonl", chat_column="conversation", max_tokens=5000, val_max_tokens=1_000_000,
                                   ignore_first_n=25)
    with pytest.raises(ValueError, match="--max_tokens has 3 comma-separated values but there are 2"):
        dataset_specs("a,b", text_column="text", max_tokens="1,2,3")
    with pytest.raises(ValueError, match="exactly one of --text_column or --chat_column"):
        dataset_specs("a", text_column="")


def test_resume_refuses_changed_chat_template(env, tmp_path, monkeypatch):
    import shutil

    base, chat = env["models"]["gemma2"]
    chat_copy = tmp_path / "chat"
    shutil.copytree(chat, chat_copy)
    out = tmp_path / "partial"
    cfg = _cfg(env, out, chunk_rows=32)
    cfg = ExtractConfig(**{**cfg.__dict__, "chat_model": str(chat_copy)})
    _crash_at(monkeypatch, "commit", 2)
    with pytest.raises(run_lib.ExtractionError):
        run_extraction(cfg)
    monkeypatch.undo()
    before = _store_files(out)
    tok_cfg = chat_copy / "chat_template.jinja"
    if tok_cfg.exists():
        tok_cfg.write_text(tok_cfg.read_text().replace("<start_of_turn>", "<start_of_turn> "))
    else:
        cfg_path = chat_copy / "tokenizer_config.json"
        data = json.loads(cfg_path.read_text())
        data["chat_template"] = data["chat_template"].replace("<start_of_turn>", "<start_of_turn> ")
        cfg_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="chat template of --chat_model changed"):
        run_extraction(cfg)
    assert _store_files(out) == before
