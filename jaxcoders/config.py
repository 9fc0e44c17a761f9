"""Frozen, validated configuration dataclasses (hashable, so they can be static jit arguments).

* `CrossCoderConfig`: what the model *is* (shapes, architecture, code normalization, init).
* `TrainConfig`: how it is trained (optimizer, schedules, BatchTopK bookkeeping). Defaults are the
  paper's (docs/method.md §2–3); the reference's bugs are not copied (docs/method.md §9).
* `RunConfig`: how a run is executed (steps, batch, intervals, mesh, checkpoints, export).
* `DataConfig`: where the training activations come from.

These four are the one schema: `jaxcoders.configs` derives the presets and the command line's
`--config.<section>.<field>` from them (defaults, types and the help text of every field).
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Optional


class CodeNormalization(enum.IntEnum):
    """Per-latent code normalization c_j (docs/method.md §1). Values are the reference's ids."""

    CROSSCODER = 1  # sum_m ||W_dec[m, j]||            (paper default)
    SAE = 2  # sqrt(sum_m ||W_dec[m, j]||^2)
    MIXED = 3  # alpha_sae * SAE + alpha_cc * CROSSCODER
    NONE = 4  # 1
    DECOUPLED = 5  # c_{m, j} = ||W_dec[m, j]||  (per model)

    @classmethod
    def parse(cls, value: "CodeNormalization | str | int") -> "CodeNormalization":
        if isinstance(value, CodeNormalization):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                raise ValueError(
                    f"unknown code normalization {value!r}; choose one of {[c.name for c in cls]}"
                ) from None
        try:
            return cls(int(value))
        except ValueError:
            raise ValueError(
                f"unknown code normalization id {value!r}; valid ids are "
                f"{[(c.value, c.name) for c in cls]}"
            ) from None


ARCHITECTURES = ("l1", "batchtopk", "tied")
SELECTION_METHODS = ("topk", "radix", "pallas")  # jaxcoders.core.selection.exact.METHODS
DECODER_MODES = ("dense", "sparse", "auto")  # jaxcoders.core.sparse_batchtopk.decoder_mode


@dataclasses.dataclass(frozen=True)
class CrossCoderConfig:
    """Static description of a crosscoder.

    Attributes:
      num_models: M, number of models whose activations are concatenated (index 0 = base, 1 = chat);
        M = 1 is a plain sparse autoencoder of one model (the separate-SAE baseline).
      activation_dim: D, d_model of each model.
      dict_size: F, number of latents.
      architecture: "l1" (ReLU + L1 penalty), "batchtopk", or "tied" (shared/base/chat latent
        triples, docs/method.md §4; M must be 2; `dict_size` counts triples).
      code_normalization: see `CodeNormalization`.
      k: BatchTopK's average number of active latents per token (ignored for "l1").
      code_normalization_alpha_sae: MIXED: weight of the SAE norm (reference default 1.0).
      code_normalization_alpha_cc: MIXED: weight of the crosscoder norm (reference default 0.1).
      same_init_for_all_models: initialise every model's encoder with one (D, F) matrix (the paper's
        runs do; the reference's default does not) (docs/method.md §1).
      init_with_transpose: decoder = encoder transpose at initialisation (docs/method.md §1).
      norm_init_scale: rescale each encoder column to this norm at initialisation; None = no
        rescaling (the reference's default; the paper's BatchTopK runs use 1.0, its L1 runs 0.005).
      input_normalization: whether inputs are normalized with the model's stored mean/scale
        (docs/method.md §5); the statistics live in the model's buffers.
      compute_dtype: dtype of the matmul inputs ("float32" or "bfloat16"); accumulation is float32.
      n_shared_latents: L1 only: the first S latents have one decoder row used by every model
        (Anthropic's Feb-2025 shared-latent variant), with their own sparsity coefficient.
    """

    num_models: int
    activation_dim: int
    dict_size: int
    architecture: str = "l1"
    code_normalization: CodeNormalization = CodeNormalization.CROSSCODER
    k: Optional[int] = None
    code_normalization_alpha_sae: float = 1.0
    code_normalization_alpha_cc: float = 0.1
    same_init_for_all_models: bool = False
    init_with_transpose: bool = True
    norm_init_scale: Optional[float] = None
    input_normalization: bool = False
    compute_dtype: str = "float32"
    n_shared_latents: int = 0

    def __post_init__(self):
        object.__setattr__(self, "code_normalization", CodeNormalization.parse(self.code_normalization))
        arch = str(self.architecture).lower().replace("_", "").replace("-", "")
        if arch in ("relu", "crosscoder"):
            arch = "l1"
        if arch not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        object.__setattr__(self, "architecture", arch)
        for name in ("num_models", "activation_dim", "dict_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.architecture == "batchtopk":
            if self.k is None:
                object.__setattr__(self, "k", 100)
            if not isinstance(self.k, int) or self.k < 1:
                raise ValueError(f"k must be a positive integer, got {self.k!r}")
            if self.k > self.dict_size:
                raise ValueError(f"k={self.k} is larger than dict_size={self.dict_size}")
        if self.architecture == "tied" and self.num_models != 2:
            raise ValueError(f"the tied crosscoder is defined for 2 models (base, chat), got num_models={self.num_models}")
        if not 0 <= self.n_shared_latents <= self.dict_size:
            raise ValueError(f"n_shared_latents must be in [0, dict_size], got {self.n_shared_latents}")
        if self.n_shared_latents and self.architecture != "l1":
            raise ValueError("n_shared_latents (the shared-latent variant) is implemented for the L1 crosscoder")
        if self.norm_init_scale is not None and self.norm_init_scale <= 0:
            raise ValueError(f"norm_init_scale must be positive or None, got {self.norm_init_scale}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")

    @property
    def decoupled(self) -> bool:
        return self.code_normalization == CodeNormalization.DECOUPLED

    @property
    def is_batchtopk(self) -> bool:
        return self.architecture == "batchtopk"

    @property
    def is_tied(self) -> bool:
        return self.architecture == "tied"

    @property
    def encoder_width(self) -> int:
        """Columns of the encoder: F, or 3F for the tied crosscoder (latent-major, slot-minor)."""
        return 3 * self.dict_size if self.is_tied else self.dict_size

    def replace(self, **kw) -> "CrossCoderConfig":
        return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters. Defaults are the paper's (arXiv 2504.02922; docs/method.md §2–3).

    Attributes:
      lr: peak Adam learning rate.
      warmup_steps: linear LR warm-up; step 0 runs at LR 0 (as the reference's LambdaLR).
      decay_start: if set, LR decays linearly to 0 from this step to `total_steps`.
      total_steps: length of the run (needed for LR decay; inferred from `batches` when possible).
      adam_b1: Adam's beta1 (torch default).
      adam_b2: Adam's beta2 (torch default).
      adam_eps: Adam's epsilon (torch default).
      grad_clip_norm: global grad-norm clip (torch `clip_grad_norm_` semantics). None = the
        reference's default for the architecture (BatchTopK and tied 1.0, L1 no clipping); 0 disables.
      l1_coefficient: mu of the L1 crosscoder (paper 0.041); lambda of the tied crosscoder.
      shared_l1_coefficient: sparsity coefficient of the shared-latent block (n_shared_latents);
        None = 0.15 * l1_coefficient (Anthropic used 0.1-0.2 of the exclusive one).
      eta: tied crosscoder: extra factor on the base/chat-slot penalty (> 1 prefers shared).
      l1_warmup_steps: linear warm-up of mu from 0 (0 = off, as in the paper).
      use_mse_loss: use the squared L2 reconstruction term instead of the un-squared norm.
      k: BatchTopK target k; None = the model's own k.
      k_max: initial k for k-annealing; None = k (the reference silently used 2048; we do not).
      k_annealing_steps: anneal k linearly from k_max to k over this many steps (0 = off).
      threshold_start_step: the inference threshold theta is updated at steps > this.
      threshold_beta: EMA factor of theta.
      auxk_alpha: coefficient of the auxiliary dead-latent loss (1/32).
      dead_tokens_threshold: a latent is dead once it has not fired for this many tokens.
      top_k_aux: dead latents used per token by auxk; None = D // 2.
      init_b_dec_geometric_median: BatchTopK sets b_dec to the geometric median of the first batch.
      dead_latent_eps: L1 dead tracking: a latent is dead in a batch if f*c <= eps for every token.
      resample_steps: L1 only: every this many steps re-initialize latents dead for more than half
        of it from high-loss tokens and restart the LR warm-up (`jaxcoders.training.resample`); None = off
        (the paper's setting).
      selection_method: batch top-k selection method (see `jaxcoders.core.selection`); every method
        selects the same entries, only speed and memory differ. Default "topk": on GPU (H200) the
        three are equal inside the step and "topk" is fastest on the whole-matrix fallback
        (docs/accelerators.md); on CPU "radix" is ~20 % faster on candidates (docs/performance.md).
      decoder_mode: BatchTopK train step: "dense" (every matmul dense, the reference's order of
        operations), "sparse" (decode, decoder and encoder gradients and auxk only over the
        selected entries, `jaxcoders.core.sparse_batchtopk`; equal up to float summation order), or "auto"
        (sparse where measured faster -- CPU and GPU, one device, small k/F; dense on TPU, which is
        unmeasured: `jaxcoders.core.sparse_batchtopk.decoder_mode`). L1, tied and DECOUPLED BatchTopK
        always run dense.
      seed: PRNG seed (initialisation of fresh models in the launchers).
    """

    lr: float = 1e-4
    warmup_steps: int = 1000
    decay_start: Optional[int] = None
    total_steps: Optional[int] = None
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip_norm: Optional[float] = None
    l1_coefficient: float = 0.041
    l1_warmup_steps: int = 0
    shared_l1_coefficient: Optional[float] = None
    eta: float = 2.0
    use_mse_loss: bool = False
    k: Optional[int] = None
    k_max: Optional[int] = None
    k_annealing_steps: int = 0
    threshold_start_step: int = 1000
    threshold_beta: float = 0.999
    auxk_alpha: float = 1.0 / 32.0
    dead_tokens_threshold: int = 10_000_000
    top_k_aux: Optional[int] = None
    init_b_dec_geometric_median: bool = True
    dead_latent_eps: float = 1e-4
    resample_steps: Optional[int] = None
    selection_method: str = "topk"
    decoder_mode: str = "auto"
    seed: int = 0

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("warmup_steps", "k_annealing_steps", "l1_warmup_steps", "threshold_start_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be a positive integer, got {self.k}")
        if self.k_max is not None and self.k is not None and self.k_max < self.k:
            raise ValueError(f"k_max ({self.k_max}) must be >= k ({self.k})")
        if self.decay_start is not None:
            if self.total_steps is not None and not (0 <= self.decay_start < self.total_steps):
                raise ValueError(
                    f"decay_start ({self.decay_start}) must lie in [0, total_steps={self.total_steps})"
                )
            if self.decay_start < self.warmup_steps:
                raise ValueError(
                    f"decay_start ({self.decay_start}) must not precede the end of warm-up ({self.warmup_steps})"
                )
        if not 0.0 <= self.threshold_beta <= 1.0:
            raise ValueError(f"threshold_beta must be in [0, 1], got {self.threshold_beta}")
        if self.grad_clip_norm is not None and self.grad_clip_norm < 0:
            raise ValueError(f"grad_clip_norm must be >= 0 or None, got {self.grad_clip_norm}")
        if self.top_k_aux is not None and self.top_k_aux < 1:
            raise ValueError(f"top_k_aux must be a positive integer, got {self.top_k_aux}")
        if self.selection_method not in SELECTION_METHODS:
            raise ValueError(
                f"selection_method must be one of {SELECTION_METHODS}, got {self.selection_method!r}"
            )
        if self.decoder_mode not in DECODER_MODES:
            raise ValueError(f"decoder_mode must be one of {DECODER_MODES}, got {self.decoder_mode!r}")
        if self.eta <= 0:
            raise ValueError(f"eta must be positive, got {self.eta}")
        if self.resample_steps is not None and self.resample_steps < 1:
            raise ValueError(f"resample_steps must be a positive integer or None, got {self.resample_steps}")
        if self.dead_tokens_threshold < 1:
            raise ValueError(f"dead_tokens_threshold must be >= 1, got {self.dead_tokens_threshold}")

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **kw)

    def clip_norm_for(self, architecture: str) -> Optional[float]:
        """The effective global grad-norm clip for an architecture (None = no clipping)."""
        if self.grad_clip_norm is None:
            return 1.0 if architecture in ("batchtopk", "tied") else None
        return self.grad_clip_norm if self.grad_clip_norm > 0 else None


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How a run is executed (not what is learned).

    Attributes:
      steps: total optimizer steps.
      batch_size: global tokens per step (the paper: 2048).
      log_every: metrics interval in steps (a host sync: metrics.jsonl, progress line).
      eval_every: validation interval in steps (0 = off).
      eval_batches: validation batches per evaluation.
      checkpoint_every: checkpoint interval in steps.
      keep_checkpoints: how many checkpoints orbax keeps.
      mesh_data: size of the "data" mesh axis (0 = auto: the devices not on "latent").
      mesh_latent: size of the "latent" mesh axis (0 = auto: the devices of one host when F divides).
      seed: initialisation seed (also TrainConfig.seed in the CLI).
      export: write the final model in the reference layout to `workdir/export`.
      async_checkpoint: write checkpoints in the background (orbax async).
      tensorboard: also write the metrics as TensorBoard events to `workdir/tensorboard`
        (`jaxcoders.training.metrics`; needs tensorboardX).
      wandb_project: log the metrics and the config to this Weights & Biases project ("" = off;
        needs wandb; WANDB_MODE=offline writes the run under WANDB_DIR).
      wandb_entity: the W&B entity (team or user; "" = your default).
      wandb_run_name: the W&B run's display name ("" = W&B's choice).
      wandb_tags: comma-separated W&B tags.
    """

    steps: int = 10_000
    batch_size: int = 2048
    log_every: int = 100
    eval_every: int = 1000
    eval_batches: int = 8
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    mesh_data: int = 0
    mesh_latent: int = 0
    seed: int = 0
    export: bool = True
    async_checkpoint: bool = True
    tensorboard: bool = False
    wandb_project: str = ""
    wandb_entity: str = ""
    wandb_run_name: str = ""
    wandb_tags: str = ""

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be positive (got {self.steps}, {self.batch_size})")
        for name in ("log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("eval_every", "eval_batches", "keep_checkpoints", "mesh_data", "mesh_latent"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


MIXES = ("even", "concat")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the training activations come from (exactly one of store, acts, synthetic).

    Attributes:
      store: an ActivationStore URL (local path, file://, gs://) with a "train" split (and optionally
        a validation split).
      acts: a .npy file of (N, M, D) activations (the last 10 % of at most 8 batches validate).
      synthetic: planted synthetic activations (`jaxcoders.toy`): a smoke test needing no data.
      val_split: the store split used for validation ("" = none).
      mix: how batches mix the store's datasets: "even" (equal shares), "concat" (in proportion to
        their rows), or comma-separated weights, e.g. "0.7,0.3".
      normalize: normalize inputs by the store's statistics inside the crosscoder (docs/method.md §5).
      target_rms: the normalization's target RMS.
      shuffle_buffer_rows: rows of the loader's shuffle buffer.
      prefetch: batches the loader reads ahead in a background thread.
      num_readers: logical partitions of the store (0 = one per process); fixing it (e.g. to the
        largest host count you will use) makes the batch sequence independent of the host count.
    """

    store: str = ""
    acts: str = ""
    synthetic: bool = False
    val_split: str = "validation"
    mix: str = "even"
    normalize: bool = False
    target_rms: float = 1.0
    shuffle_buffer_rows: int = 65536
    prefetch: int = 2
    num_readers: int = 0

    def __post_init__(self):
        if self.mix not in MIXES:
            try:
                weights = [float(w) for w in str(self.mix).split(",")]
            except ValueError:
                raise ValueError(f"mix must be one of {MIXES} or comma-separated weights, got {self.mix!r}") from None
            if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
                raise ValueError(f"mix weights must be >= 0 with one > 0, got {self.mix!r}")
        if not self.target_rms > 0:
            raise ValueError(f"target_rms must be positive, got {self.target_rms}")
        for name in ("shuffle_buffer_rows", "prefetch", "num_readers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def mix_weights(self):
        """"even" / "concat", or the list of float weights."""
        return self.mix if self.mix in MIXES else [float(w) for w in self.mix.split(",")]

    def source(self) -> str:
        """Which of store / acts / synthetic is chosen; raises unless exactly one is."""
        chosen = [name for name, on in (("store", bool(self.store)), ("acts", bool(self.acts)),
                                        ("synthetic", self.synthetic)) if on]
        if len(chosen) != 1:
            raise ValueError("set exactly one of --config.data.store, --config.data.acts, --config.data.synthetic"
                             + (f" (got {', '.join(chosen)})" if chosen else ""))
        return chosen[0]
