"""Token ids as text for the report's examples: `token_strings` decodes the ids the cards use with
a tokenizer (a path / hub name, an object with `decode`, or an {id: text} dict)."""
from __future__ import annotations

import os


def token_strings(tokenizer, ids) -> dict:
    """{id: text} for the given ids (see the package docstring for `tokenizer`); {} without one."""
    ids = sorted({int(i) for i in ids if int(i) >= 0})
    if tokenizer is None or not ids:
        return {}
    if isinstance(tokenizer, dict):
        return {i: str(tokenizer[i]) for i in ids if i in tokenizer}
    if isinstance(tokenizer, (str, os.PathLike)):
        try:
            from transformers import AutoTokenizer
        except ImportError as e:
            raise ImportError("--tokenizer needs transformers: pip install 'jaxcoders[torch]'") from e
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    out = {}
    for i in ids:
        try:
            out[i] = tokenizer.decode([i], clean_up_tokenization_spaces=False)
        except TypeError:
            out[i] = tokenizer.decode([i])
    return out
