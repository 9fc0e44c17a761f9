"""The markdown report of the accelerator check, rendered from its JSON lines (also from a committed
JSONL, e.g. docs/results/)."""
from __future__ import annotations


def _fmt(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _gib(b):
    return "–" if b is None else f"{b / 2**30:.1f}"


def render_markdown(recs: list[dict]) -> str:
    """The report's tables from the JSON lines (also used to rebuild it from a committed JSONL)."""
    env = next((r for r in recs if r["kind"] == "env"), {})
    peaks = {r["what"]: r for r in recs if r["kind"] == "peak"}
    bf16 = peaks.get("matmul_bfloat16", {}).get("tflops")
    f32 = peaks.get("matmul_float32", {}).get("tflops")
    lines = [f"# Accelerator check: {env.get('device_kind', '?')} ({env.get('backend', '?')}), "
             f"{(env.get('time') or '')[:10]}", ""]
    lines.append(f"jax {env.get('jax', '?')}, jaxlib {env.get('jaxlib', '?')}, flax {env.get('flax', '?')}, "
                 f"torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}, python "
                 f"{env.get('python', '?')}; size preset `{env.get('size', '?')}`; host load (1 min) "
                 f"{env.get('loadavg_1m', '?')}." + (f" nvidia-smi: {env['nvidia_smi']}." if env.get("nvidia_smi") else ""))
    lines.append("")
    if peaks:
        lines.append("Measured ceilings: dense matmul "
                     f"**{_fmt(bf16)} TFLOP/s bf16**, **{_fmt(f32)} TFLOP/s f32** (Precision.HIGHEST), "
                     f"n = {peaks.get('matmul_float32', {}).get('n', '?')}; copy "
                     f"{_fmt(peaks.get('copy', {}).get('gbytes_per_s'))} GB/s (read + write).")
        lines.append("")
    checks = [r for r in recs if r["kind"] == "check"]
    if checks:
        n_ok = sum(r["passed"] for r in checks)
        lines += [f"## Correctness on the device: {n_ok} of {len(checks)} checks passed", "",
                  "| check | result | detail |", "|---|---|---|"]
        for r in checks:
            detail = {k: v for k, v in r.items() if k not in ("kind", "section", "time", "name", "passed")}
            lines.append(f"| {r['name']} | {'pass' if r['passed'] else '**FAIL**'} | {_short(detail)} |")
        lines.append("")
    steps = [r for r in recs if r["kind"] == "step"]
    if steps:
        lines += ["## Train step", "",
                  "| arch | matmul dtype | decoder path | selection | ms/step | tokens/s | executed TFLOP/s "
                  "| × peak of dtype | dense-equivalent TFLOP/s | step / encoder fwd | device peak GiB | compiled GiB "
                  "| compile s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in steps:
            peak = bf16 if r["dtype"] == "bfloat16" else f32
            frac = r["achieved_tflops"] / peak if peak else None
            lines.append(
                f"| {r['arch']}{' k=' + str(r['k']) if r.get('k') else ''} | {r['dtype']} | {r['decoder_path']} "
                f"| {r.get('selection') or '–'} | {_fmt(r['ms_per_step'], 2)} | {_fmt(r['tokens_per_s'], 0)} "
                f"| {_fmt(r['achieved_tflops'])} | {_fmt(frac, 2)} | {_fmt(r['dense_equivalent_tflops'])} "
                f"| {_fmt(r['step_over_encoder_forward'], 2)} | {_gib(r.get('device_peak_bytes'))} "
                f"| {_gib(r.get('compiled_memory_bytes'))} | {_fmt(r['compile_s'])} |")
        s0 = steps[0]
        lines += ["", f"Shapes: M={s0['M']}, D={s0['D']}, F={s0['F']}, B={s0['B']}; 5 % of BatchTopK latents dead "
                  "(auxk active). Executed FLOPs count the matmuls the path runs (dense L1 5G, dense BatchTopK 8G, "
                  "sparse G + 8·k·B·M·D + the auxk block; G = 2·B·M·D·F); dense-equivalent = 5G / time.", ""]
    for r in (r for r in recs if r["kind"] == "profile"):
        sel_ = f", {r['selection']} selection" if r.get("selection") else ""
        lines += [f"### Profile: {r['arch']} {r['dtype']} {r['decoder_path']}{sel_} ({_fmt(r['ms_per_step'], 2)} ms/step)",
                  "", "| op / kernel | ms per step | calls per step |", "|---|---|---|"]
        for o in r["top_ops"]:
            lines.append(f"| `{o['op'].replace('|', '/')}` | {_fmt(o['ms_per_call'], 3)} | {_fmt(o['calls_per_step'], 1)} |")
        lines.append("")
    sel = [r for r in recs if r["kind"] == "selection_time"]
    if sel:
        lines += ["## Selection alone (ReLU(normal) scores)", "", "| implementation | method | ms (median) | ms (min) |",
                  "|---|---|---|---|"]
        for r in sel:
            lines.append(f"| {r['implementation']} | {r['method']} | {_fmt(r['ms_median'], 2)} | {_fmt(r['ms_min'], 2)} |")
        lines += ["", f"B={sel[0]['B']}, F={sel[0]['F']}, k={sel[0]['k']}.", ""]
    lsr = [r for r in recs if r["kind"] == "latent_scaling"]
    if lsr:
        lines += ["## Latent Scaling vs a plain encode pass", "", "| pass | ms per batch | tokens/s | × encode |",
                  "|---|---|---|---|"]
        for r in lsr:
            lines.append(f"| {r['pass_']} | {_fmt(r['ms_per_batch'], 2)} | {_fmt(r['tokens_per_s'], 0)} "
                         f"| {_fmt(r['slowdown_vs_encode'], 2)} |")
        lines += ["", f"BatchTopK crosscoder D={lsr[0]['D']}, F={lsr[0]['F']}, batch {lsr[0]['batch_size']}, f32, "
                  "device-resident batch (the pass's compute alone).", ""]
    ex = [r for r in recs if r["kind"] == "extraction"]
    if ex:
        r = ex[0]
        t = r["tok_per_s"]
        lines += ["## Extraction", "", "| | tokens/s |", "|---|---|",
                  f"| bare forwards, full models (both) | {_fmt(t['bare_full'], 0)} |",
                  f"| bare forwards to layer {r['layer']} (both) | {_fmt(t['bare_to_layer'], 0)} |",
                  f"| extraction into a local store | {_fmt(t['extract'], 0)} |", "",
                  f"Model: {r['model']} ({r['params'] / 1e9:.2f} B parameters, random weights, {r['model_dtype']}), "
                  f"{r['input_tokens']:,} tokens, seq_len {r['seq_len']}, batch {r['batch_size']}, device "
                  f"{r['device']}; overhead of extraction vs bare forwards to the layer "
                  f"{100 * r['overhead_vs_bare_to_layer']:.1f} %.", ""]
    bad = [r for r in recs if r["kind"] in ("error", "skipped")]
    if bad:
        lines += ["## Sections that did not finish", ""]
        for r in bad:
            lines.append(f"* `{r['what']}`: {r.get('returncode', r.get('reason', ''))} "
                         f"{(r.get('error') or r.get('log_tail') or '').splitlines()[-1:] if (r.get('error') or r.get('log_tail')) else ''}")
        lines.append("")
    return "\n".join(lines)


def _short(d: dict, limit: int = 300) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {fmt(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v[:6]) + ("…" if len(v) > 6 else "") + "]"
        return str(v)

    s = "; ".join(f"{k}={fmt(v)}" for k, v in d.items())
    s = s.replace("|", "/")
    return s if len(s) <= limit else s[: limit - 1] + "…"
