"""The settings of a paper run (`PaperConfig`) and where they come from for a demo output
(`PaperConfig.from_demo_out`: the crosscoders, store, models, layer and evaluation prompts that
`experiments/demo.py` wrote)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

# the edits of the causal evaluation (jaxcoders.interventions.edits): model-only edits are run once,
# crosscoder edits per crosscoder; the latent-set edits (chat-only latents, best / worst half by ν)
# are added per crosscoder
MODEL_EDITS = ("base", "chat", "template")
CROSSCODER_EDITS = ("bias_only", "all_latents")
ARCHS = ("l1", "batchtopk")


class PaperError(ValueError):
    """Bad input to the paper command, phrased as what to change."""


def _looks_local(path: str) -> bool:
    """A local path rather than a hub name (org/name) or URL: absolute, relative with ./ or ~, or a
    data file name."""
    p = str(path)
    if "://" in p:
        return False
    return p.startswith(("/", "./", "../", "~")) or p.endswith((".jsonl", ".json", ".parquet", ".csv", ".txt"))


@dataclasses.dataclass
class PaperConfig:
    """Everything `run_paper` needs. Paths are local paths or any source the package reads."""

    out: str
    l1: str  # the L1 crosscoder (any source `jaxcoders.load_reference` accepts)
    batchtopk: str  # the BatchTopK crosscoder
    store: str  # ActivationStore url of the activations both were trained on
    base_model: Optional[str] = None  # the models (logit lens, evaluation set, causal evaluation)
    chat_model: Optional[str] = None
    layer: Optional[int] = None  # residual after this block (the crosscoders' layer)
    analyses: dict = dataclasses.field(default_factory=dict)  # {arch: analysis dir to reuse (latents.parquet)}
    tied: Optional[str] = None  # optional tied crosscoder (its r-ratio scatter)
    max_tokens: Optional[int] = None  # rows of the store the analysis passes read (None = all)
    batch_size: int = 4096
    density_bins: int = 20
    logit_lens_k: int = 10
    twin_top: int = 5
    twin_low: float = 0.3
    twin_high: float = 0.7
    # evaluation set: an existing file, or prompts the chat model answers (interventions.evalset)
    evalset: Optional[str] = None
    evalset_column: str = "conversation"
    prompts: Optional[str] = None
    prompt_split: str = "train"
    prompt_chat_column: Optional[str] = "conversation"
    prompt_column: Optional[str] = None
    num_conversations: int = 512
    max_new_tokens: int = 256
    sample: bool = False
    generate_batch_size: int = 8
    # causal evaluation
    max_len: int = 1024
    positions: int = 32
    nu_column: str = "nu_error"
    eval_batch_size: int = 4
    n_boot: int = 1000
    device: str = "auto"
    model_dtype: str = "float32"
    # separate-SAE baseline (M = 1 dictionaries on the store's model-0 / model-1 columns)
    sae: bool = True
    sae_architecture: str = "batchtopk"
    sae_dict_size: Optional[int] = None  # default: the BatchTopK crosscoder's F
    sae_k: Optional[int] = None  # default: the BatchTopK crosscoder's k
    sae_l1_coefficient: float = 0.05
    sae_steps: int = 1000
    sae_batch_size: int = 4096
    sae_lr: float = 1e-4
    sae_target_rms: Optional[float] = 1.0  # inputs normalized by the SAE from the store's statistics; None = off
    seed: int = 0
    overwrite: bool = False  # write into an --out holding other files (beside them; nothing is deleted)
    torch_threads: Optional[int] = None  # torch CPU threads while the models run (None = torch's default)
    progress: bool = True

    def validate(self) -> None:
        for name in ("batch_size", "density_bins", "logit_lens_k", "twin_top", "num_conversations", "max_new_tokens",
                     "generate_batch_size", "max_len", "eval_batch_size", "sae_steps", "sae_batch_size"):
            if getattr(self, name) < 1:
                raise PaperError(f"--{name} must be ≥ 1, got {getattr(self, name)}.")
        if self.positions < 1:
            raise PaperError(f"--positions must be ≥ 1 (the KL-by-position curve), got {self.positions}.")
        if not 0 <= self.twin_low <= self.twin_high <= 1:
            raise PaperError(f"the twin thresholds must satisfy 0 ≤ --twin_low ≤ --twin_high ≤ 1, got "
                             f"{self.twin_low} and {self.twin_high}.")
        if self.evalset and self.prompts:
            raise PaperError("give --evalset (an existing evaluation set) or --prompts (build one), not both.")
        for flag in ("evalset", "prompts"):
            path = getattr(self, flag)
            if path and _looks_local(path) and not Path(path).expanduser().exists():
                raise PaperError(f"--{flag}={path} does not exist; give an existing file (or a datasets hub name).")
        needs_models = self.evalset or self.prompts
        if needs_models and not (self.base_model and self.chat_model and self.layer is not None):
            raise PaperError("the causal evaluation needs --base_model, --chat_model and --layer.")
        if bool(self.base_model) != bool(self.chat_model):
            raise PaperError("give both --base_model and --chat_model (or neither: no logit lens, no causal "
                             "evaluation).")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise PaperError(f"--torch_threads must be ≥ 1, got {self.torch_threads}.")
        if self.sae_architecture not in ("l1", "batchtopk"):
            raise PaperError(f"--sae_architecture must be l1 or batchtopk, got {self.sae_architecture!r}.")

    @property
    def causal(self) -> bool:
        return bool(self.evalset or self.prompts)

    @classmethod
    def from_demo_out(cls, demo_out, out=None, **overrides) -> "PaperConfig":
        """The settings for an `experiments/demo.py` output directory: its crosscoders (`l1/`,
        `batchtopk/`), store (`store/`), analyses (`report/<arch>/`), models and layer (from
        `report/summary.json`), evaluation prompts (`data/eval_chats.jsonl`, answered anew by the
        chat model) and the demo's training sizes for the SAE baseline. `out` defaults to
        `<demo_out>/paper`."""
        d = Path(demo_out)
        summary_path = d / "report" / "summary.json"
        if not summary_path.is_file():
            raise PaperError(f"--demo_out={demo_out} holds no report/summary.json; run experiments/demo.py "
                             f"--out={demo_out} first (the model-pair demo, not --synthetic).")
        s = json.loads(summary_path.read_text())
        try:
            models, layer, c = s["models"]["dir"], int(s["layer"]), s["config"]
        except (KeyError, TypeError, ValueError) as e:
            raise PaperError(f"{summary_path} is not a model-pair demo summary (missing {e}).") from None
        for arch in ARCHS:
            if not (d / arch).is_dir():
                raise PaperError(f"--demo_out={demo_out} has no {arch}/ crosscoder; rerun experiments/demo.py.")
        prompts = d / "data" / "eval_chats.jsonl"
        kw = dict(
            out=str(out if out is not None else d / "paper"), l1=str(d / "l1"), batchtopk=str(d / "batchtopk"),
            store=str(d / "store"), base_model=str(Path(models) / "base"), chat_model=str(Path(models) / "chat"),
            layer=layer, analyses={a: str(d / "report" / a) for a in ARCHS if (d / "report" / a / "latents.parquet").is_file()},
            prompts=str(prompts) if prompts.is_file() and c.get("eval_chats", 0) else None,
            num_conversations=int(c.get("eval_chats") or 1), max_len=int(c.get("eval_max_len", 1024)),
            max_new_tokens=min(128, int(c.get("eval_max_len", 128))), eval_batch_size=8, device="cpu",
            sae_dict_size=int(c["dict_size"]), sae_k=int(c["k"]), sae_steps=int(c["steps"]),
            sae_batch_size=int(c["batch_size"]), sae_lr=float(c["lr"]), sae_target_rms=float(c.get("target_rms", 1.0)),
            seed=int(c.get("seed", 0)), progress=bool(c.get("progress", False)),
            # the demo's models are tiny: one torch thread is several times faster than two on a busy
            # 2-core machine (no spinning OpenMP workers), as the demo's own model training runs
            torch_threads=1,
        )
        kw.update(overrides)
        return cls(**kw)
