"""Stage 3 of the demo: both models' residual stream after block `layer` on the same token ids,
extracted into the ActivationStore `<out>/store` (rows (N, 2, d_model): base, chat; train and
validation rows of the text and chat datasets; BOS dropped). A store left by an earlier run with
the same extraction identity is reused."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from jaxcoders.data import store as store_lib
from jaxcoders.demo.config import DemoConfig


def extract(cfg: DemoConfig, base_dir: str, chat_dir: str, layer: int, text_path: str, chat_path: str) -> str:
    """Extract (or reuse) the demo's store; returns its url."""
    from jaxcoders.extract.run import DatasetSpec, ExtractConfig, run_extraction  # torch side: lazy

    url = str(Path(cfg.out, "store").resolve())
    ecfg = ExtractConfig(
        base_model=base_dir, chat_model=chat_dir, layer=layer,
        datasets=(DatasetSpec(text_path, text_column="text", max_tokens=cfg.text_tokens, val_max_tokens=cfg.val_tokens),
                  DatasetSpec(chat_path, chat_column="conversation", max_tokens=cfg.chat_tokens,
                              val_max_tokens=cfg.val_tokens)),
        out=url, seq_len=cfg.seq_len, batch_size=cfg.extract_batch_size, dtype="float32", drop_bos=True,
        device="cpu", num_threads=1, progress=cfg.progress)
    existing = store_lib.read_group_metadata(url)
    same = existing is not None and existing.get("extraction", {}).get("identity") == ecfg.identity()
    if existing is not None and not same:  # other models or sizes: this store is the demo's own output
        ecfg = dataclasses.replace(ecfg, overwrite=True)
    elif existing is None and Path(url).exists():
        shutil.rmtree(url)
    return run_extraction(ecfg)
