"""Crosscoders on the Hugging Face Hub: download (`snapshot`) and upload (`push_folder`).

    spec = parse_hub_spec("hf://science-of-finetuning/gemma-2-2b-crosscoder-l13-mu4.1e-02-lr1e-04@main")
    local_dir = snapshot(spec)                          # the repo's crosscoder files, cached
    push_folder(export_dir, "me/my-crosscoder", card=model_card(model))

Specs: `org/name` (when no local path of that name exists) or `hf://org/name[@revision][/subfolder]`.
Everything goes through `huggingface_hub` and its cache, with the environment read at call time:
`HF_HUB_OFFLINE=1` looks only in the local cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
~/.cache/huggingface/hub, in the documented layout `models--org--name/refs/<branch>` and
`snapshots/<commit>/<files>`), `HF_ENDPOINT` selects the server, `HF_TOKEN` or a stored login
authenticates. Only the files a crosscoder has are downloaded (`CROSSCODER_FILES`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple, Optional

# what the paper's library pushes (model.safetensors + config.json [+ trainer_config.json], or
# pytorch_model.bin), the tied reference's files (*.pt + cfg.json), jaxcoders' own extra fields
CROSSCODER_FILES = ("model.safetensors", "config.json", "trainer_config.json", "pytorch_model.bin", "cfg.json",
                    "*_cfg.json", "*.pt", "jaxcoders.json", "README.md")
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REPO = re.compile(rf"^({_NAME})/({_NAME})$")


class HubSpec(NamedTuple):
    repo_id: str
    revision: Optional[str]
    subfolder: str


class ReferenceFormatError(ValueError):
    """A directory or file that is not a readable crosscoder checkpoint."""


class CrosscoderNotFound(ReferenceFormatError):
    """A crosscoder that is not where its spec says (no such path, repo, revision or cached copy)."""


def parse_hub_spec(spec: str) -> Optional[HubSpec]:
    """A HubSpec for `hf://org/name[@rev][/sub/folder]`, or for a bare `org/name` that is not an
    existing local path; None for everything else (local paths, gs:// URLs)."""
    s = str(spec)
    if s.startswith("hf://"):
        rest = s[len("hf://"):].strip("/")
        parts = rest.split("/")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise CrosscoderNotFound(f"{spec!r} is not a hub spec; write hf://org/name[@revision][/subfolder]")
        name, _, revision = parts[1].partition("@")
        repo_id = f"{parts[0]}/{name}"
        if not _REPO.match(repo_id):
            raise CrosscoderNotFound(f"{spec!r}: {repo_id!r} is not a valid repo id (org/name)")
        return HubSpec(repo_id, revision or None, "/".join(parts[2:]))
    if "://" in s or os.path.exists(os.path.expanduser(s)):
        return None
    m = _REPO.match(s)
    if m and not s.startswith((".", "~")):
        return HubSpec(s, None, "")
    return None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache_dir() -> Optional[str]:
    """The cache huggingface_hub would use, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None  # huggingface_hub's default (~/.cache/huggingface/hub)


def snapshot(spec: HubSpec) -> Path:
    """The local directory of the spec's crosscoder (downloaded or from the cache)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - a declared dependency of transformers/datasets
        raise CrosscoderNotFound("loading from the hub needs huggingface_hub (pip install huggingface_hub)") from e
    offline = _env_flag("HF_HUB_OFFLINE")
    patterns = [f"{spec.subfolder}/{f}" if spec.subfolder else f for f in CROSSCODER_FILES]
    patterns += [f"{spec.subfolder}/*/{f}" if spec.subfolder else f"*/{f}" for f in ("model.safetensors", "config.json")]
    kwargs = dict(repo_id=spec.repo_id, revision=spec.revision, allow_patterns=patterns,
                  cache_dir=hub_cache_dir(), local_files_only=offline)
    if os.environ.get("HF_ENDPOINT"):
        kwargs["endpoint"] = os.environ["HF_ENDPOINT"]
    try:
        root = Path(snapshot_download(**kwargs))
    except Exception as e:  # RepositoryNotFound, RevisionNotFound, LocalEntryNotFound, gated, network
        where = (f"the local hub cache ({hub_cache_dir() or '~/.cache/huggingface/hub'}; HF_HUB_OFFLINE=1)" if offline
                 else f"the hub ({os.environ.get('HF_ENDPOINT', 'https://huggingface.co')})")
        rev = f" at revision {spec.revision!r}" if spec.revision else ""
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CrosscoderNotFound(f"crosscoder {spec.repo_id!r}{rev} was not found in {where}: {type(e).__name__}: "
                                 f"{msg}") from e
    path = root / spec.subfolder if spec.subfolder else root
    if not path.exists():
        raise CrosscoderNotFound(f"crosscoder {spec.repo_id!r} has no folder {spec.subfolder!r}")
    return path


def model_card(model, *, repo_id: str = "", base_model: str = "", chat_model: str = "", layer=None) -> str:
    """A README.md for a pushed crosscoder: what it is and how to load it (jaxcoders and the
    reference library)."""
    cfg = model.cfg
    arch = {"l1": "L1", "batchtopk": f"BatchTopK (k = {cfg.k})", "tied": "tied"}[cfg.architecture]
    lines = ["---", "library_name: jaxcoders", "tags:", "- crosscoder", "- model-diffing", "- sparse-autoencoder"]
    if base_model:
        lines.append(f"base_model: {base_model}")
    lines += ["---", "", f"# {repo_id or 'A crosscoder'}", "",
              f"A {arch} crosscoder trained with [jaxcoders](https://github.com/) on the concatenated residual-"
              f"stream activations of {cfg.num_models} models"
              + (f" ({base_model} and {chat_model}" + (f", after block {layer}" if layer is not None else "") + ")"
                 if base_model and chat_model else "") + ".",
              "", f"* activation dim D = {cfg.activation_dim}, latents F = {cfg.dict_size}"
              + (" triples (shared, base, chat)" if cfg.is_tied else "")
              + f", code normalization {cfg.code_normalization.name}",
              "", "```python", "import jaxcoders", f'model = jaxcoders.load_reference("{repo_id or "org/name"}")', "```", ""]
    if not cfg.is_tied:
        lines += ["The files follow the reference layout of the paper's library (`dictionary_learning`):",
                  "`model.safetensors` + `config.json` (+ `trainer_config.json`).", ""]
    return "\n".join(lines)


def push_folder(folder: Path, repo_id: str, *, card: Optional[str] = None, private: Optional[bool] = None,
                commit_message: str = "Upload crosscoder (jaxcoders)") -> str:
    """Create `repo_id` if needed and upload every file of `folder` (plus `card` as README.md).
    Returns the commit URL. Needs a token (HF_TOKEN or `huggingface-cli login`) and network."""
    from huggingface_hub import HfApi

    if not _REPO.match(repo_id):
        raise ValueError(f"push_to_hub={repo_id!r} is not a repo id (org/name)")
    if card is not None:
        (Path(folder) / "README.md").write_text(card)
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
