"""The causal evaluation set builder (`jaxcoders.interventions.evalset`, `experiments/build_evalset.py`)
on a tiny local model pair: greedy answers equal a token-by-token argmax loop, runs are
deterministic, a crashed run resumed (with a torn last line) writes the same file as an
uninterrupted one, sampling is seeded, other settings are refused, and bad input gives one `error:`
line."""
from __future__ import annotations

import json
from pathlib import Path

import extract_helpers as H
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model runs several times faster on one thread than on two busy cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalset")
    base, chat = H.build_tiny_model_pair(tmp / "models", "llama")
    text, chats = H.write_local_datasets(tmp / "data", n_text=12, n_chat=8)
    return {"tmp": tmp, "base": base, "chat": chat, "text": text, "chats": chats}


def _cfg(world, out, **kw):
    from jaxcoders.interventions.evalset import EvalSetConfig

    base = dict(chat_model=world["chat"], dataset=world["chats"], out=str(out), num_conversations=5,
                max_new_tokens=6, batch_size=2, device="cpu", progress=False)
    base.update(kw)
    return EvalSetConfig(**base)


def _build(world, out, **kw):
    from jaxcoders.interventions.evalset import build_evalset

    return build_evalset(_cfg(world, out, **kw))


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_greedy_answers_are_the_argmax_loop(world, tmp_path):
    """Brute force: each turn's prompt (the chat template over the conversation so far, with the
    model's own earlier answers) continued one argmax token at a time until a stop token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jaxcoders.extract.text import CHAT_TEMPLATE_KWARGS

    out = tmp_path / "greedy.jsonl"
    meta = _build(world, out, batch_size=1, num_conversations=3)
    rows = _rows(out)
    assert meta["conversations"] == len(rows) == 3 and [r["index"] for r in rows] == [0, 1, 2]
    tok = AutoTokenizer.from_pretrained(world["chat"])
    model = AutoModelForCausalLM.from_pretrained(world["chat"], dtype=torch.float32).eval()
    stops = {tok.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>")}
    assert set(meta["stop_token_ids"]) == stops
    src = [json.loads(line)["conversation"] for line in Path(world["chats"]).read_text().splitlines()]
    for r in rows:
        conv, turns = [], 0
        for msg in src[r["index"]]:
            if msg["role"] == "assistant":
                continue
            conv.append(msg)
            if msg["role"] != "user":
                continue
            ids = tok(tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True, **CHAT_TEMPLATE_KWARGS),
                      add_special_tokens=False)["input_ids"]
            new = []
            with torch.no_grad():
                while len(new) < 6:
                    nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
                    if nxt in stops:
                        break
                    new.append(nxt)
            answer = tok.decode(new, skip_special_tokens=True).strip()
            conv.append({"role": "assistant", "content": answer})
            assert r["new_tokens"][turns] == len(new)
            turns += 1
        assert r["conversation"] == [m for m in conv], r["index"]
        assert len(r["new_tokens"]) == len(r["finished"]) == turns
    assert any(len(r["new_tokens"]) > 1 for r in rows)  # later turns are conditioned on the model's own answers


def test_deterministic_and_resumable_after_a_crash(world, tmp_path, monkeypatch):
    from jaxcoders.interventions import evalset

    full = tmp_path / "full.jsonl"
    _build(world, full)
    again = tmp_path / "again.jsonl"
    _build(world, again)
    assert full.read_bytes() == again.read_bytes()  # deterministic
    assert len(_rows(full)) == 5

    crashed = tmp_path / "crashed.jsonl"
    original = evalset._answer_batch
    calls = []

    def dies_on_the_third_batch(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return original(*a, **kw)

    monkeypatch.setattr(evalset, "_answer_batch", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        _build(world, crashed)
    monkeypatch.setattr(evalset, "_answer_batch", original)
    assert len(_rows(crashed)) == 4  # two whole batches of 2
    with open(crashed, "a") as fh:  # a torn last line, as a kill during a write leaves it
        fh.write('{"index": 4, "conversation": [{"role": "us')
    assert not crashed.read_bytes().endswith(b"\n")
    calls.clear()
    monkeypatch.setattr(evalset, "_answer_batch", lambda *a, **kw: (calls.append(1), original(*a, **kw))[1])
    meta = _build(world, crashed)
    assert len(calls) == 1  # only the missing batch was generated
    assert crashed.read_bytes() == full.read_bytes()
    assert meta["conversations"] == 5
    # a finished file: a rerun generates nothing and changes nothing
    calls.clear()
    _build(world, crashed)
    assert not calls and crashed.read_bytes() == full.read_bytes()


def test_seeded_sampling(world, tmp_path):
    a, b, c, g = (tmp_path / f"{n}.jsonl" for n in ("a", "b", "c", "greedy"))
    kw = dict(num_conversations=3, max_new_tokens=8, max_turns=1)
    _build(world, a, sample=True, seed=3, **kw)
    _build(world, b, sample=True, seed=3, **kw)
    _build(world, c, sample=True, seed=4, **kw)
    _build(world, g, **kw)
    assert a.read_bytes() == b.read_bytes()  # same seed, same file
    answers = {p: [m["content"] for r in _rows(p) for m in r["conversation"] if m["role"] == "assistant"]
               for p in (a, c, g)}
    assert answers[a] != answers[c]  # another seed draws other answers
    assert answers[a] != answers[g]  # sampling is not greedy
    meta = json.loads((tmp_path / "a.jsonl.meta.json").read_text())
    assert meta["settings"]["sample"] is True and meta["settings"]["seed"] == 3 and meta["settings"]["top_p"] == 1.0


def test_plain_prompts_and_turn_limits(world, tmp_path):
    out = tmp_path / "plain.jsonl"
    meta = _build(world, out, dataset=world["text"], chat_column=None, prompt_column="text", num_conversations=4)
    rows = _rows(out)
    assert [r["index"] for r in rows] == [0, 1, 2, 4]  # row 3 is an empty document
    assert meta["empty_prompts_skipped"] == 1
    assert all([m["role"] for m in r["conversation"]] == ["user", "assistant"] for r in rows)
    one = tmp_path / "one_turn.jsonl"
    _build(world, one, max_turns=1)
    assert all(len(r["new_tokens"]) == 1 for r in _rows(one))


def test_resume_refuses_other_settings(world, tmp_path):
    from jaxcoders.interventions.codes import InterventionError

    out = tmp_path / "set.jsonl"
    _build(world, out, num_conversations=2)
    with pytest.raises(InterventionError, match="other settings"):
        _build(world, out, num_conversations=2, max_new_tokens=7)
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"a": 1}\n')
    with pytest.raises(InterventionError, match="not written by this command"):
        _build(world, foreign)
    assert foreign.read_text() == '{"a": 1}\n'


# ----------------------------------------------------------------------------- the command


def _cli(runner, args, cwd):
    from fork_runner import in_repo_env

    return runner.run([str(ROOT / "experiments" / "build_evalset.py"), *args], cwd=cwd, env=in_repo_env(),
                      timeout=300)


def test_cli_writes_what_the_library_writes(cli_runner, world, tmp_path):
    lib = tmp_path / "lib.jsonl"
    _build(world, lib, num_conversations=3, batch_size=2, max_new_tokens=5)
    out = tmp_path / "cli.jsonl"
    rc, stdout, err = _cli(cli_runner, [f"--chat_model={world['chat']}", f"--dataset={world['chats']}", f"--out={out}",
                                    "--num_conversations=3", "--batch_size=2", "--max_new_tokens=5", "--device=cpu",
                                    "--noprogress"], tmp_path)
    assert rc == 0, err[-2000:]
    assert "3 conversations" in stdout and out.read_bytes() == lib.read_bytes()


@pytest.mark.parametrize("args,msg", [
    ([], "--chat_model"),
    (["--chat_model={chat}", "--dataset={chats}"], "--out"),
    (["--chat_model={chat}", "--dataset={tmp}/none.jsonl", "--out={tmp}/o.jsonl"], "does not exist"),
    (["--chat_model={tmp}/no_model", "--dataset={chats}", "--out={tmp}/o.jsonl"], "--chat_model"),
    (["--chat_model={chat}", "--dataset={chats}", "--out={tmp}/o.txt"], "must name a .jsonl file"),
    (["--chat_model={chat}", "--dataset={chats}", "--out={tmp}/o.jsonl", "--chat_column=nope"],
     "is not a column"),
    (["--chat_model={base}", "--dataset={chats}", "--out={tmp}/o.jsonl"], "no chat template"),
    (["--chat_model={chat}", "--dataset={chats}", "--out={tmp}/o.jsonl", "--batch_size=0"], "--batch_size must be"),
    (["--chat_model={chat}", "--dataset={chats}", "--out={tmp}/o.jsonl", "--sample", "--temperature=0"],
     "--temperature > 0"),
    (["--chat_model={chat}", "--dataset={chats}", "--out={tmp}/o.jsonl", "--max_turns=-1"], "--max_turns"),
])
def test_cli_bad_input_one_error_line(cli_runner, world, tmp_path, args, msg):
    args = [a.format(tmp=tmp_path, chat=world["chat"], base=world["base"], chats=world["chats"]) for a in args]
    rc, out, err = _cli(cli_runner, args, tmp_path)
    assert rc != 0, (out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.txt").exists()


def test_cli_refuses_to_resume_with_other_settings(cli_runner, world, tmp_path):
    out = tmp_path / "r.jsonl"
    _build(world, out, num_conversations=2)
    before = out.read_bytes()
    rc, _, err = _cli(cli_runner, [f"--chat_model={world['chat']}", f"--dataset={world['chats']}", f"--out={out}",
                               "--num_conversations=2", "--batch_size=2", "--max_new_tokens=9", "--device=cpu"],
                      tmp_path)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc != 0 and len(lines) == 1 and lines[0].startswith("error: ") and "other settings" in lines[0], err
    assert out.read_bytes() == before
