"""Checkpoints in the reference layout (docs/method.md §7): import and export.

A reference crosscoder directory holds `model.safetensors`, `config.json` and (optionally)
`trainer_config.json`. Tensors:

    encoder.weight (M, D, F) f32   encoder.bias (F) f32   decoder.weight (M, F, D) f32
    decoder.bias (M, D) f32        code_normalization_id () int64      target_rms () f32
    activation_mean (M, D) f32     activation_std (M, D) f32 (NaN-filled when unused)
    activation_global_scale () f32 (1.0 when unused)
    BatchTopK only: k () int32, threshold () f32 ((M,) for DECOUPLED)

Paper-era checkpoints carry only the four weight tensors (BatchTopK: plus k and threshold);
keys may carry torch.compile's `_orig_mod.` prefix. Missing buffers are never silently
defaulted to the reference's "no threshold" (theta = -1): a missing theta or k is an error unless
the caller passes it explicitly.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from jaxcoders.config import CodeNormalization, CrossCoderConfig
from jaxcoders.core.module import CrossCoder
from jaxcoders.core.params import CrossCoderBuffers, CrossCoderParams, default_buffers, fold_normalization
from jaxcoders.files import is_url, write_files
from jaxcoders.io.hub import ReferenceFormatError, model_card, push_folder
from jaxcoders.io.sources import fetch_crosscoder
from jaxcoders.io.tied import TIED_EXPORT_FILES, load_tied_reference, tied_export_files

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINER_CONFIG_FILE = "trainer_config.json"
EXTRA_CONFIG_FILE = "jaxcoders.json"  # fields the reference's config.json has no key for

_WEIGHT_KEYS = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias")
# Constructor arguments of the reference classes: the only keys config.json may hold.
_L1_CONFIG_KEYS = (
    "activation_dim", "dict_size", "num_layers", "same_init_for_all_layers", "norm_init_scale",
    "init_with_transpose", "encoder_layers", "latent_processor", "num_decoder_layers",
    "code_normalization", "code_normalization_alpha_sae", "code_normalization_alpha_cc",
    "activation_mean", "activation_std", "target_rms",
)
_BTK_CONFIG_KEYS = _L1_CONFIG_KEYS + ("k",)
DICT_CLASS = {"l1": "CrossCoder", "batchtopk": "BatchTopKCrossCoder"}


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # corrupt or truncated file
            raise ReferenceFormatError(f"{path} is not a readable safetensors file ({e})") from e
    if path.suffix in (".pt", ".pth", ".bin"):
        try:
            import torch
        except ImportError as e:
            raise ReferenceFormatError(
                f"{path} is a torch file; install the torch extra (`pip install torch==2.13.0`) to read it"
            ) from e
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
                for k, v in sd.items()}
    raise ReferenceFormatError(f"{path}: expected a .safetensors (or torch .pt) file")


def _strip_prefixes(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in tensors.items():
        if "_orig_mod." in k:
            k = k.split("_orig_mod.", 1)[1]
        if k.startswith("module."):  # DDP-wrapped
            k = k[len("module."):]
        out[k] = v
    return out


def _locate(path: os.PathLike | str) -> tuple[Path, Optional[Path]]:
    """(weights file, directory holding config.json or None)."""
    p = Path(path)
    if p.is_dir():
        for name in (WEIGHTS_FILE, "model.pt", "ae.pt", "pytorch_model.bin"):
            if (p / name).is_file():
                return p / name, p
        raise ReferenceFormatError(
            f"{p} is not a crosscoder directory: it has no {WEIGHTS_FILE} (expected the reference layout "
            f"{WEIGHTS_FILE} + {CONFIG_FILE}, see docs/method.md §7)"
        )
    if p.is_file():
        return p, p.parent if (p.parent / CONFIG_FILE).is_file() else None
    raise ReferenceFormatError(f"{p} does not exist")


def is_tied_layout(path: Path) -> bool:
    """The tied crosscoder's layout: a `*.pt` state dict, or a directory whose `cfg.json` says
    architecture "tied" (our export) or that holds `*_cfg.json` next to its weights (the reference)."""
    p = Path(path)
    if p.is_file():
        return p.suffix == ".pt" or (p.parent / "cfg.json").is_file() and not (p.parent / CONFIG_FILE).is_file()
    if (p / CONFIG_FILE).is_file():
        return False
    cfg_json = p / "cfg.json"
    if cfg_json.is_file():
        try:
            return json.loads(cfg_json.read_text()).get("architecture") == "tied" or any(p.glob("*.pt"))
        except json.JSONDecodeError:
            return False
    return bool(list(p.glob("*_cfg.json")))


_BUFFER_SHAPES = {"activation_mean": lambda M, D: [(M, D)], "activation_std": lambda M, D: [(M, D)],
                  "activation_global_scale": lambda M, D: [(), (1,), (M,)], "target_rms": lambda M, D: [(), (1,)],
                  "k": lambda M, D: [(), (1,)], "code_normalization_id": lambda M, D: [(), (1,)]}


def check_tensors(tensors: dict, config: dict, weights_path: Path, cfg_dir: Optional[Path], M: int, D: int) -> None:
    """Load-time checks: finite weights, buffers of the right shapes, config.json agreeing with them."""
    for name in _WEIGHT_KEYS + ("threshold",):
        if name in tensors and not np.all(np.isfinite(np.asarray(tensors[name], np.float32))):
            bad = int(np.size(tensors[name]) - np.isfinite(np.asarray(tensors[name], np.float32)).sum())
            raise ReferenceFormatError(f"{weights_path}: {name} holds {bad} NaN/inf values; the checkpoint is "
                                       "broken (re-export it from its training run)")
    for name, shapes in _BUFFER_SHAPES.items():
        if name in tensors and tuple(np.shape(tensors[name])) not in shapes(M, D):
            raise ReferenceFormatError(f"{weights_path}: {name} has shape {tuple(np.shape(tensors[name]))}, expected "
                                       f"{' or '.join(map(str, shapes(M, D)))} for M={M} models of D={D}")
    where = cfg_dir / CONFIG_FILE if cfg_dir is not None else CONFIG_FILE
    if "k" in tensors and config.get("k") is not None and int(config["k"]) != int(np.asarray(tensors["k"]).reshape(())):
        raise ReferenceFormatError(f"{where}: k={config['k']} disagrees with k={int(np.asarray(tensors['k']).reshape(()))} "
                                   f"stored in {weights_path}; fix config.json (the tensor is what was trained)")
    if "code_normalization_id" in tensors and config.get("code_normalization") is not None:
        stored = CodeNormalization.parse(int(np.asarray(tensors["code_normalization_id"]).reshape(())))
        try:
            named = CodeNormalization.parse(config["code_normalization"])
        except ValueError as e:
            raise ReferenceFormatError(f"{where}: {e}") from None
        if named != stored:
            raise ReferenceFormatError(f"{where}: code_normalization={named.name} disagrees with {stored.name} stored in "
                                       f"{weights_path}; fix config.json (the tensor is what was trained)")


def load_reference(
    path: os.PathLike | str,
    *,
    k: Optional[int] = None,
    threshold=None,
    code_normalization: Optional[str | int | CodeNormalization] = None,
    architecture: Optional[str] = None,
    allow_unset_threshold: bool = False,
):
    """Load a crosscoder in the reference (dictionary_learning) layout as a `CrossCoder`.

    Args:
      path: a directory with model.safetensors (+ config.json, trainer_config.json) or
        pytorch_model.bin, the weights file, a training workdir (its export/), a URL (gs://...), or a
        Hugging Face Hub repo: `org/name` or `hf://org/name[@revision][/subfolder]`
        (`jaxcoders.io.sources.fetch_crosscoder`). A tied crosscoder (cfg.json) loads with
        `jaxcoders.io.tied.load_tied_reference`.
      k, threshold: fill BatchTopK buffers missing from the file (an error otherwise). Values
        present in the file win unless they disagree with an explicit argument (then: error).
      code_normalization: needed only when neither the tensors nor config.json name it; the
        reference then assumes CROSSCODER, which we do too (with a warning) unless this is given.
      architecture: "l1" or "batchtopk"; inferred from trainer_config.json, then from the tensors.
      allow_unset_threshold: accept a BatchTopK file without theta and keep theta = -1 (every
        positive latent passes at inference), the reference's lenient behaviour.
    Returns:
      `jaxcoders.CrossCoder`.
    """
    path = fetch_crosscoder(path)  # hub, gs://, workdir -> local directory or file
    if is_tied_layout(path):
        return load_tied_reference(path)
    weights_path, cfg_dir = _locate(path)
    tensors = _strip_prefixes(_read_tensors(weights_path))
    missing = [k_ for k_ in _WEIGHT_KEYS if k_ not in tensors]
    if missing:
        raise ReferenceFormatError(
            f"{weights_path} is not a crosscoder checkpoint: missing tensors {missing} "
            f"(found {sorted(tensors)[:8]})"
        )
    config: dict = {}
    trainer_cfg: dict = {}
    extra: dict = {}
    if cfg_dir is not None:
        try:
            if (cfg_dir / CONFIG_FILE).is_file():
                config = json.loads((cfg_dir / CONFIG_FILE).read_text())
            if (cfg_dir / TRAINER_CONFIG_FILE).is_file():
                trainer_cfg = json.loads((cfg_dir / TRAINER_CONFIG_FILE).read_text())
            if (cfg_dir / EXTRA_CONFIG_FILE).is_file():
                extra = json.loads((cfg_dir / EXTRA_CONFIG_FILE).read_text())
        except json.JSONDecodeError as e:
            raise ReferenceFormatError(f"{cfg_dir}: config JSON is corrupt ({e})") from e

    w_enc = np.asarray(tensors["encoder.weight"], np.float32)
    b_enc = np.asarray(tensors["encoder.bias"], np.float32)
    w_dec = np.asarray(tensors["decoder.weight"], np.float32)
    b_dec = np.asarray(tensors["decoder.bias"], np.float32)
    if w_enc.ndim != 3:
        raise ReferenceFormatError(f"{weights_path}: encoder.weight must be (M, D, F), got {w_enc.shape}")
    M, D, F = w_enc.shape
    expect = {"encoder.bias": (F,), "decoder.weight": (M, F, D), "decoder.bias": (M, D)}
    for name, arr in (("encoder.bias", b_enc), ("decoder.weight", w_dec), ("decoder.bias", b_dec)):
        if arr.shape != expect[name]:
            raise ReferenceFormatError(
                f"{weights_path}: {name} has shape {arr.shape}, expected {expect[name]} for encoder (M, D, F) = {(M, D, F)}"
            )
    for name, key in (("activation_dim", D), ("dict_size", F), ("num_layers", M)):
        if name in config and config[name] is not None and int(config[name]) != key:
            raise ReferenceFormatError(f"{cfg_dir / CONFIG_FILE}: {name}={config[name]} disagrees with the tensors ({key})")
    check_tensors(tensors, config, weights_path, cfg_dir, M, D)

    # architecture
    dict_class = (trainer_cfg.get("trainer") or {}).get("dict_class") if trainer_cfg else None
    if architecture is None:
        if dict_class is not None:
            architecture = "batchtopk" if "BatchTopK" in str(dict_class) else "l1"
        elif "k" in tensors or "threshold" in tensors or "k" in config or k is not None:
            architecture = "batchtopk"
        else:
            architecture = "l1"

    # code normalization
    if "code_normalization_id" in tensors:
        cn = CodeNormalization.parse(int(np.asarray(tensors["code_normalization_id"]).reshape(())))
        if code_normalization is not None and CodeNormalization.parse(code_normalization) != cn:
            raise ValueError(f"code_normalization={code_normalization} disagrees with the file's {cn.name}")
    elif config.get("code_normalization") is not None:
        cn = CodeNormalization.parse(config["code_normalization"])
    elif code_normalization is not None:
        cn = CodeNormalization.parse(code_normalization)
    else:
        log.warning("%s names no code normalization; assuming CROSSCODER (the paper's and the reference's default)",
                    weights_path)
        cn = CodeNormalization.CROSSCODER

    # BatchTopK buffers
    file_k = None
    if "k" in tensors:
        file_k = int(np.asarray(tensors["k"]).reshape(()))
    elif config.get("k") is not None:
        file_k = int(config["k"])
    theta = None
    if "threshold" in tensors:
        theta = np.asarray(tensors["threshold"], np.float32)
    if architecture == "batchtopk":
        if file_k is not None and k is not None and int(k) != file_k:
            raise ValueError(f"k={k} disagrees with k={file_k} stored in {weights_path}")
        k_val = file_k if file_k is not None else k
        if k_val is None:
            raise ReferenceFormatError(
                f"{weights_path}: BatchTopK checkpoint without k; pass load_reference(..., k=<k used in training>)"
            )
        if theta is None:
            if threshold is not None:
                theta = np.asarray(threshold, np.float32)
            elif allow_unset_threshold:
                theta = None
            else:
                raise ReferenceFormatError(
                    f"{weights_path}: BatchTopK checkpoint without the inference threshold; pass "
                    "load_reference(..., threshold=<theta>) or allow_unset_threshold=True to keep theta = -1 "
                    "(no thresholding, the reference's lenient default)"
                )
        elif threshold is not None and not np.allclose(np.asarray(threshold, np.float32), theta):
            raise ValueError(f"threshold={threshold} disagrees with the stored threshold {theta.tolist()}")
    else:
        k_val = None

    # normalization buffers
    mean = tensors.get("activation_mean")
    std = tensors.get("activation_std")
    input_norm = mean is not None and bool(np.all(np.isfinite(mean)))

    cfg = CrossCoderConfig(
        num_models=M, activation_dim=D, dict_size=F, architecture=architecture, code_normalization=cn,
        k=k_val,
        code_normalization_alpha_sae=float(config.get("code_normalization_alpha_sae") or 1.0),
        code_normalization_alpha_cc=float(config.get("code_normalization_alpha_cc") or 0.1),
        same_init_for_all_models=bool(config.get("same_init_for_all_layers", False)),
        init_with_transpose=bool(config.get("init_with_transpose", True)),
        norm_init_scale=config.get("norm_init_scale"),
        input_normalization=input_norm,
        n_shared_latents=int(extra.get("n_shared_latents", 0)) if architecture == "l1" else 0,
    )
    buffers = default_buffers(cfg)
    if theta is not None:
        want = (M,) if cfg.decoupled else ()
        if theta.shape != want:
            if theta.size == 1 and not cfg.decoupled:
                theta = theta.reshape(())
            else:
                raise ReferenceFormatError(f"{weights_path}: threshold has shape {theta.shape}, expected {want}")
        buffers = buffers._replace(threshold=theta)
    if mean is not None:
        buffers = buffers._replace(act_mean_MD=np.asarray(mean, np.float32))
    if std is not None:
        buffers = buffers._replace(act_std_MD=np.asarray(std, np.float32))
    if "activation_global_scale" in tensors:
        buffers = buffers._replace(act_scale=np.asarray(tensors["activation_global_scale"], np.float32))
    if "target_rms" in tensors:
        buffers = buffers._replace(target_rms=np.asarray(tensors["target_rms"], np.float32).reshape(()))
    elif config.get("target_rms") is not None:
        buffers = buffers._replace(target_rms=np.asarray(config["target_rms"], np.float32))
    params = CrossCoderParams(w_enc, b_enc, w_dec, b_dec)
    return CrossCoder(cfg, params=params, buffers=CrossCoderBuffers(*buffers), reference_config=config or None)


def reference_config_dict(model) -> dict:
    """config.json content for `model`: its imported config when it has one, else canonical."""
    cfg = model.cfg
    if model.reference_config:
        out = dict(model.reference_config)
    else:
        out = {
            "activation_dim": cfg.activation_dim,
            "activation_mean": None,
            "activation_std": None,
            "code_normalization": cfg.code_normalization.name,
            "dict_size": cfg.dict_size,
            "init_with_transpose": cfg.init_with_transpose,
            "norm_init_scale": cfg.norm_init_scale,
            "num_layers": cfg.num_models,
            "same_init_for_all_layers": cfg.same_init_for_all_models,
            "target_rms": float(np.asarray(model.buffers.target_rms)),
        }
        if cfg.code_normalization == CodeNormalization.MIXED:
            out["code_normalization_alpha_sae"] = cfg.code_normalization_alpha_sae
            out["code_normalization_alpha_cc"] = cfg.code_normalization_alpha_cc
    # fields that must follow the model's current state
    out["activation_dim"] = cfg.activation_dim
    out["dict_size"] = cfg.dict_size
    out["num_layers"] = cfg.num_models
    out["code_normalization"] = cfg.code_normalization.name
    out["activation_mean"] = None
    out["activation_std"] = None
    if out.get("target_rms") is None:
        out["target_rms"] = float(np.asarray(model.buffers.target_rms))
    if cfg.is_batchtopk:
        out["k"] = int(cfg.k)
    else:
        out.pop("k", None)
    allowed = _BTK_CONFIG_KEYS if cfg.is_batchtopk else _L1_CONFIG_KEYS
    return {k_: out[k_] for k_ in sorted(out) if k_ in allowed}


def reference_tensors(model) -> dict[str, np.ndarray]:
    """The state dict the reference expects, as numpy arrays in the reference dtypes."""
    cfg, params, buffers = model.cfg, model.params, model.buffers
    if cfg.input_normalization and np.asarray(buffers.act_scale).ndim > 0:
        # per-model scalars have no slot in the reference buffers: fold them into the weights
        cfg, params, buffers = fold_normalization(cfg, params, buffers)
    f32 = lambda a: np.ascontiguousarray(np.asarray(a, np.float32))  # noqa: E731
    out = {
        "encoder.weight": f32(params.w_enc_MDF),
        "encoder.bias": f32(params.b_enc_F),
        "decoder.weight": f32(params.w_dec_MFD),
        "decoder.bias": f32(params.b_dec_MD),
        "code_normalization_id": np.asarray(int(cfg.code_normalization), np.int64),
        "target_rms": f32(buffers.target_rms).reshape(()),
        "activation_mean": f32(buffers.act_mean_MD),
        "activation_std": f32(buffers.act_std_MD),
        "activation_global_scale": f32(buffers.act_scale).reshape(()),
    }
    if cfg.is_batchtopk:
        out["k"] = np.asarray(int(cfg.k), np.int32)
        out["threshold"] = f32(buffers.threshold).reshape((cfg.num_models,) if cfg.decoupled else ())
    return out


EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, TRAINER_CONFIG_FILE, EXTRA_CONFIG_FILE) + TIED_EXPORT_FILES


def export_files(model) -> dict[str, bytes]:
    """{file name: bytes} of `model`'s export: the reference layout (weights first), or the tied one."""
    from safetensors.numpy import save

    if model.cfg.is_tied:  # the reference CrossCoder layout has no latent triples
        return tied_export_files(model)
    dump = lambda d: json.dumps(d, indent=2, sort_keys=True).encode()  # noqa: E731
    files = {WEIGHTS_FILE: save(reference_tensors(model)),
             CONFIG_FILE: dump(reference_config_dict(model)),
             TRAINER_CONFIG_FILE: dump({"trainer": {"dict_class": DICT_CLASS[model.cfg.architecture]}})}
    if model.cfg.n_shared_latents:
        files[EXTRA_CONFIG_FILE] = dump({"n_shared_latents": model.cfg.n_shared_latents})
    return files


def save_reference(model, out_dir: os.PathLike | str, *, overwrite: bool = False, push_to_hub: Optional[str] = None,
                   private: Optional[bool] = None):
    """Write `model` as a reference directory that dictionary_learning's `from_pretrained` loads
    (a tied crosscoder: its own layout, `jaxcoders.io.tied`); `out_dir` may be a URL (gs://...).

    Only the export's own files are written, each atomically (a crash leaves the old file or the new
    one), with ordinary permissions. `out_dir` may be new, empty, or a previous export; a directory
    holding anything else is refused (`jaxcoders.files.OutputExistsError`) unless `overwrite=True`,
    and even then nothing but the export's own file names is written or removed. Fields the
    reference's config.json has no key for (the shared-latent block) go to `jaxcoders.json`. With
    `push_to_hub="org/name"` the same files and a model card are uploaded to the Hugging Face Hub
    (`upload_to_hub`). Returns the path."""
    if push_to_hub:
        out = save_reference(model, out_dir, overwrite=overwrite, private=private)
        pushed = upload_to_hub(model, push_to_hub, private=private)
        log.info("uploaded %s to %s", out, pushed)
        return out
    write_files(out_dir, export_files(model), own_names=EXPORT_FILES, overwrite=overwrite, what="crosscoder export")
    if is_url(out_dir):
        from etils import epath

        return epath.Path(out_dir)
    return Path(out_dir)


def upload_to_hub(model, repo_id: str, *, private: Optional[bool] = None, base_model: str = "", chat_model: str = "",
                layer=None, commit_message: str = "Upload crosscoder (jaxcoders)") -> str:
    """Upload `model` to the Hugging Face Hub as `repo_id` (created if needed): the files of
    `save_reference` plus a model card (README.md). Returns the commit URL."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_reference(model, Path(tmp) / "crosscoder")
        card = model_card(model, repo_id=repo_id, base_model=base_model, chat_model=chat_model, layer=layer)
        return push_folder(folder, repo_id, card=card, private=private, commit_message=commit_message)
