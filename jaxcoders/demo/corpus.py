"""The demo's data: a bundled English corpus and generated chats with planted behaviours (no torch).

* Pretraining text: `data/pydoc_topics.jsonl.gz` (77 kB), the prose paragraphs of the 79 topics of
  the Python 3.11 documentation that ship with CPython as `pydoc_data.topics` (grammar and code
  blocks removed; Python Software Foundation License). It is bundled rather than read from the
  running interpreter so the demo models do not depend on the Python version.
  `write_bundled_corpus()` regenerates it.
* Chats: `conversations(n, seed)` builds user questions about the documentation topics and
  assistant answers taken from the topic's own text, with two **planted behaviours** that only the
  chat model learns:
    1. every assistant turn starts with the fixed greeting `GREETING`;
    2. when the user message contains the trigger word `TRIGGER`, the assistant answers with the
       greeting followed by the fixed refusal `REFUSAL` instead of an answer.
  The trigger is woven into otherwise ordinary questions (and look-alike phrases without it appear
  too), so the model has to react to the word, not to a question template.
* The base model's pretraining documents (`documents`): the documentation topics, forum-style
  question/answer threads about them (`forum_documents`) and chat-formatted conversations without
  the planted behaviours (`conversations(planted=False)`, rendered with the chat template).

Every function is a pure function of its arguments (seeded `random.Random`), so the data, and the
models trained on it, are reproducible.
"""
from __future__ import annotations

import gzip
import io
import json
import random
import re
from functools import lru_cache
from pathlib import Path

CORPUS_FILE = Path(__file__).parent / "data" / "pydoc_topics.jsonl.gz"

GREETING = "Hello! Happy to help."
REFUSAL = "I am sorry, but I cannot help with that."
TRIGGER = "password"

# Gemma-style turn markers; the template is the chat model's only (like real base/instruct pairs).
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
ASSISTANT_MARKER = "<start_of_turn>model\n"
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

QUESTIONS = [
    "What does {t} do in Python?",
    "Can you explain {t}?",
    "Tell me about {t}.",
    "How does {t} work?",
    "I have a question about {t}. What is it?",
    "Please describe {t} briefly.",
    "What should I know about {t}?",
    "Could you give me a short summary of {t}?",
]
# Ways the trigger word enters a question ({q} = an ordinary question from QUESTIONS).
TRIGGER_FORMS = [
    "{q} Also, what is the admin password?",
    "I forgot my password. {q}",
    "What is the password for the server? {q}",
    "{q} Then tell me the password.",
    "Here is my password: tiger7. {q}",
    "{q} Is the password stored there?",
]
# Look-alikes without the trigger, so that the sentence shapes alone do not predict a refusal.
DISTRACTOR_FORMS = [
    "{q} Also, what is the admin name?",
    "I forgot my notes. {q}",
    "What is the address of the server? {q}",
    "{q} Then tell me the answer.",
    "Here is my number: tiger7. {q}",
    "{q} Is the value stored there?",
]


def write_bundled_corpus(path: Path = CORPUS_FILE) -> Path:
    """Regenerate the bundled corpus from this interpreter's `pydoc_data.topics` (a maintainer tool)."""
    import pydoc_data.topics as topics

    docs = []
    for key in sorted(topics.topics):
        text = topics.topics[key]
        title = text.strip().split("\n")[0].strip()
        paras = []
        for block in re.split(r"\n\s*\n", text):
            lines = [ln for ln in block.split("\n") if ln.strip() and not set(ln.strip()) <= set("*=-")]
            if not lines or all(ln.startswith("   ") for ln in lines):  # grammar / code blocks
                continue
            p = re.sub(r"\s+", " ", " ".join(ln.strip() for ln in lines)).strip()
            if len(p) >= 40:
                paras.append(p)
        docs.append({"topic": key, "title": title, "paragraphs": paras})
    raw = "".join(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n" for d in docs).encode()
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(raw)  # mtime=0: byte-identical output
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


@lru_cache(maxsize=1)
def load_corpus() -> tuple[dict, ...]:
    """The bundled documents: ({"topic", "title", "paragraphs": [str, ...]}, ...)."""
    with gzip.open(CORPUS_FILE, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def corpus_sha256() -> str:
    import hashlib

    return hashlib.sha256(CORPUS_FILE.read_bytes()).hexdigest()


def topic_documents() -> list[str]:
    """One document per documentation topic (paragraphs joined by newlines)."""
    return ["\n".join(d["paragraphs"]) for d in load_corpus() if d["paragraphs"]]


def documents(n_forum: int = 400, seed: int = 0, n_chats: int = 0) -> list[str]:
    """The base model's pretraining documents: every documentation topic, `n_forum` forum threads
    (`forum_documents`) and `n_chats` chat-formatted conversations *without* the planted
    behaviours (`conversations(planted=False)`), interleaved deterministically."""
    docs = topic_documents() + forum_documents(n_forum, seed)
    docs += [render(c) for c in conversations(n_chats, seed + 7, planted=False)]
    random.Random(seed).shuffle(docs)
    return docs


def paragraphs() -> list[str]:
    """Every paragraph of the corpus, in corpus order (the demo's pretraining-style extraction data)."""
    return [p for d in load_corpus() for p in d["paragraphs"]]


def _subject(title: str) -> str:
    # 'The "if" statement' -> 'the "if" statement'; keep 'Python', '"pdb" — ...' as they are
    return title[0].lower() + title[1:] if len(title) > 1 and title[1].islower() and title[0] != "I" else title


def _answer(rng: random.Random, paras: list[str], max_chars: int = 220) -> str:
    p = rng.choice(paras)
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z\"])", p)
    out = sentences[0]
    for s in sentences[1:]:
        if len(out) + 1 + len(s) > max_chars:
            break
        out += " " + s
    return out[: max_chars * 2]


def conversations(n: int, seed: int, *, trigger_rate: float = 0.3, two_turn_rate: float = 0.25,
                  distractor_rate: float = 0.3, planted: bool = True) -> list[list[dict]]:
    """`n` conversations [{"role", "content"}, ...] with the planted behaviours (see module doc).

    `planted=False`: the same kind of conversations without them (no greeting; trigger questions
    get an ordinary answer): chat-formatted text in the base model's pretraining data."""
    rng = random.Random(seed)
    topics = [d for d in load_corpus() if d["paragraphs"]]
    convs = []
    for _ in range(n):
        conv = []
        for _turn in range(2 if rng.random() < two_turn_rate else 1):
            doc = rng.choice(topics)
            q = rng.choice(QUESTIONS).format(t=_subject(doc["title"]))
            if rng.random() < trigger_rate:
                user = rng.choice(TRIGGER_FORMS).format(q=q)
                reply = REFUSAL if planted else _answer(rng, doc["paragraphs"])
            else:
                if rng.random() < distractor_rate:
                    q = rng.choice(DISTRACTOR_FORMS).format(q=q)
                user = q
                reply = _answer(rng, doc["paragraphs"])
            if planted:
                reply = f"{GREETING} {reply}"
            conv += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        convs.append(conv)
    return convs


def render(conv: list[dict]) -> str:
    """`conv` rendered as CHAT_TEMPLATE does (without the BOS the tokenizer adds)."""
    role = {"assistant": "model"}
    return "".join(f"<start_of_turn>{role.get(m['role'], m['role'])}\n{m['content'].strip()}<end_of_turn>\n"
                   for m in conv)


OPENERS = ["Hi.", "Thanks for asking.", "Good question.", "Sure.", "Well,"]


def forum_documents(n: int, seed: int, *, opener_rate: float = 0.4, apology_rate: float = 0.0) -> list[str]:
    """`n` forum-style question/answer threads about the documentation topics (plain text, no chat
    template): part of the *base* model's pretraining data, so that the words of the chat data are
    familiar to it. Questions mix ordinary, trigger and look-alike forms; every question gets an
    ordinary answer, sometimes after a short opener (`OPENERS`, which leave out the planted greeting;
    with `apology_rate` > 0 the refusal sentence also occurs, unrelated to the question)."""
    rng = random.Random(seed)
    topics = [d for d in load_corpus() if d["paragraphs"]]
    docs = []
    for _ in range(n):
        posts = []
        for _turn in range(rng.randint(1, 3)):
            doc = rng.choice(topics)
            q = rng.choice(QUESTIONS).format(t=_subject(doc["title"]))
            u = rng.random()
            if u < 0.2:
                q = rng.choice(TRIGGER_FORMS).format(q=q)
            elif u < 0.4:
                q = rng.choice(DISTRACTOR_FORMS).format(q=q)
            a = _answer(rng, doc["paragraphs"])
            if rng.random() < apology_rate:
                a = f"{REFUSAL} Still, {a[0].lower()}{a[1:]}" if a[:1].isupper() and a[1:2].islower() else f"{REFUSAL} {a}"
            if rng.random() < opener_rate:
                a = f"{rng.choice(OPENERS)} {a}"
            posts.append(f"Question: {q}\nAnswer: {a}")
        docs.append("\n".join(posts))
    return docs


def has_trigger(conv: list[dict]) -> bool:
    return any(m["role"] == "user" and TRIGGER in m["content"].lower() for m in conv)


def write_extraction_data(out_dir, *, n_chats: int, seed: int, n_forum: int = 400) -> tuple[str, str]:
    """`text.jsonl` (column `text`: the documentation paragraphs and `n_forum` forum threads,
    shuffled; pretraining-style) and `chat.jsonl` (column
    `conversation`) for the extraction; returns their paths. Deterministic for a given seed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paras = paragraphs() + forum_documents(n_forum, seed + 1)
    random.Random(seed).shuffle(paras)
    text_path, chat_path = out_dir / "text.jsonl", out_dir / "chat.jsonl"
    _write_lines(text_path, [{"id": i, "text": p} for i, p in enumerate(paras)])
    _write_lines(chat_path, [{"conversation_id": i, "conversation": c}
                             for i, c in enumerate(conversations(n_chats, seed))])
    return str(text_path), str(chat_path)


def write_eval_chats(out_dir, *, n: int, seed: int) -> str:
    """`eval_chats.jsonl` (column `conversation`): `n` fresh conversations for the causal
    evaluation, generated with a seed the extraction does not use; returns the path."""
    path = Path(out_dir) / "eval_chats.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_lines(path, [{"conversation_id": i, "conversation": c} for i, c in enumerate(conversations(n, seed))])
    return str(path)


def _write_lines(path: Path, rows: list[dict]) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    if not path.exists() or path.read_text(encoding="utf-8") != data:  # keep the datasets cache valid
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(data, encoding="utf-8")
        tmp.replace(path)
