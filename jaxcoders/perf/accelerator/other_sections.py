"""Sections besides the train step: the environment and ceilings, Latent Scaling against an encode
pass, extraction with a random Gemma-2-2B-shaped model, and the accelerator-marked tests."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from jaxcoders.perf.accelerator.measure import copy_bandwidth, device_peak_bytes, matmul_rate, median
from jaxcoders.perf.accelerator.plan import PYTEST_LOG, Size
from jaxcoders.perf.accelerator.records import Recorder


def section_env(size: Size, rec: Recorder) -> None:
    import jax

    info = dict(size=size.name, python=platform.python_version(), jax=jax.__version__,
                backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind,
                device_count=jax.device_count(), host=platform.node(), host_cpus=os.cpu_count(),
                loadavg_1m=round(os.getloadavg()[0], 2))
    for dist in ("jaxlib", "flax", "optax", "orbax-checkpoint", "tensorstore", "numpy", "torch", "transformers"):
        try:  # the installed distribution's version, without importing it (torch + transformers: ~4 s)
            info[dist.replace("-", "_")] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError as e:
            info[dist.replace("-", "_")] = f"missing ({type(e).__name__})"
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,"
                              "power.draw,temperature.gpu", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if smi.returncode == 0:
            info["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    stats = None
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        pass
    if stats:
        info["device_memory_bytes"] = stats.get("bytes_limit")
    rec("env", **info)
    for dtype in ("bfloat16", "float32"):
        rate = matmul_rate(size.matmul_n, dtype)
        rec("peak", what=f"matmul_{dtype}", n=size.matmul_n, tflops=round(rate / 1e12, 3))
    bw = copy_bandwidth(size.copy_mib)
    rec("peak", what="copy", mib=size.copy_mib, gbytes_per_s=round(bw / 1e9, 1))


def section_latent_scaling(size: Size, rec: Recorder) -> None:
    from flax import nnx

    from jaxcoders.analysis import scaling as ls
    from jaxcoders.analysis import stream
    from jaxcoders.config import CrossCoderConfig
    from jaxcoders.core.module import CrossCoder

    cfg = CrossCoderConfig(2, size.D, size.F, architecture="batchtopk", k=size.k, norm_init_scale=1.0)
    model = CrossCoder(cfg, rngs=nnx.Rngs(0))
    B = size.B
    rows = [("encode", [stream.EncodeBaseline()]), ("encode+decode", [stream.EncodeBaseline(decode=True)]),
            ("latent_scaling", [ls.make_accumulator(cfg)]),
            ("latent_scaling+mirror", [ls.make_accumulator(cfg, mirror=True)])]
    steps = max(3, size.steps)
    res = {}
    for name, accs in rows:
        timer = stream.step_timer(model, accs, batch_size=B)
        t0 = time.perf_counter()
        timer(1)  # compiles
        compile_s = time.perf_counter() - t0
        sec = median([timer(steps) / steps for _ in range(2)])
        res[name] = sec
        rec("latent_scaling", pass_=name, M=2, D=size.D, F=size.F, batch_size=B, ms_per_batch=round(1e3 * sec, 3),
            tokens_per_s=round(B / sec, 1), slowdown_vs_encode=round(sec / res["encode"], 3),
            first_call_s=round(compile_s, 2), device_peak_bytes=device_peak_bytes())


def _tiny_or_gemma_model(kind: str, out_dir: Path):
    """Save a randomly initialised causal LM + a locally trained tokenizer to `out_dir`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

    words = _WORDS
    rng = __import__("random").Random(0)
    lines = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(300)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=1000, special_tokens=["<pad>", "<bos>", "<eos>",
                                                                                      "<unk>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")
    if kind == "gemma2-2b":  # the Gemma-2-2B architecture (google/gemma-2-2b's config), random weights
        config = Gemma2Config(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                              num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                              max_position_embeddings=8192, sliding_window=4096, query_pre_attn_scalar=256,
                              final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                              bos_token_id=1, eos_token_id=2, pad_token_id=0)
    else:
        config = Gemma2Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, bos_token_id=1,
                              eos_token_id=2, pad_token_id=0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if device == "cuda" else torch.float32)
    try:
        with torch.device(device):
            model = Gemma2ForCausalLM(config)
    finally:
        torch.set_default_dtype(old)
    model.save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return config, n_params, lines


_WORDS = ("the a of to and in is was for on that with as by model chat base token layer residual stream latent "
          "feature cross coder sparse dictionary activation learning train data user assistant question answer "
          "hello world time year people way day thing life school state family group country problem").split()


def section_extraction(size: Size, rec: Recorder) -> None:
    import tempfile

    import torch

    from jaxcoders.extract.bench import benchmark
    from jaxcoders.extract.config import ExtractConfig, dataset_specs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        config, n_params, lines = _tiny_or_gemma_model(size.extract_model, tmp / "model")
        build_s = time.perf_counter() - t0
        seq_len = 1024 if size.extract_model == "gemma2-2b" else 64
        n_docs = max(8, size.extract_tokens // seq_len + 8)
        rng = __import__("random").Random(1)
        with open(tmp / "text.jsonl", "w") as fh:
            for _ in range(n_docs):  # every document longer than seq_len tokens
                fh.write(json.dumps({"text": " ".join(rng.choice(_WORDS) for _ in range(seq_len * 2))}) + "\n")
        layer = config.num_hidden_layers // 2
        specs = dataset_specs(str(tmp / "text.jsonl"), text_column="text", max_tokens=str(size.extract_tokens))
        model_dtype = "bfloat16" if device == "cuda" else "float32"
        cfg = ExtractConfig(base_model=str(tmp / "model"), chat_model=str(tmp / "model"), layer=layer,
                            datasets=specs, out="unused", seq_len=seq_len, batch_size=16 if device == "cuda" else 4,
                            dtype="bfloat16", model_dtype=model_dtype, device=device, progress=False)
        res = benchmark(cfg, repeats=1)
        rec("extraction", model=size.extract_model, params=n_params, build_model_s=round(build_s, 1),
            base_and_chat="the same random model twice", **{k: v for k, v in res.items() if k != "extract_run"},
            extract_wall_s=res["extract_run"].get("wall_s"))


def section_pytest(size: Size, rec: Recorder, out: Path, timeout: float) -> None:
    root = Path(__file__).resolve().parents[2]
    import jax

    # "" = jax picks its default backend (the device); tests/conftest.py only sets "cpu" when unset
    env = dict(os.environ, JAX_PLATFORMS="")
    cmd = [sys.executable, "-m", "pytest", "-m", "accelerator", "-q", "-rfE", "-p", "no:cacheprovider",
           str(root / "tests")]
    t0 = time.perf_counter()
    with open(Path(out) / PYTEST_LOG, "w") as log:
        try:
            p = subprocess.run(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    tail = (Path(out) / PYTEST_LOG).read_text().strip().splitlines()[-1:] or [""]
    rec.check("pytest -m accelerator on the device", rc == 0, returncode=rc, summary=tail[0],
              wall_s=round(time.perf_counter() - t0, 1), backend=jax.default_backend())
