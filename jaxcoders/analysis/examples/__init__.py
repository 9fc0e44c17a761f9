"""Max-activating examples per latent, in activation-quantile buckets (docs/method.md §6), for dashboards.

One jitted, sharded streaming pass over the rows of a store keeps, per selected latent:

* **top**: the `per_bucket` sequences with the largest activation of the latent (exact);
* **reservoirs**: for each bucket of the per-latent max activation `m` — with the reference's
  fractions (0.25, 0.5, 0.75, 0.95, 1.0) the buckets (0, .25m], (.25m, .5m], (.5m, .75m],
  (.75m, .95m], (.95m, m] — a uniform random sample without replacement of `per_bucket` of the
  sequences whose activation falls in it (reference: 100 per bucket).

The unit is a **sequence** (as in the reference): its activation for latent j is the max over its
tokens, and the example is the window of `before` tokens before and `after` tokens after that
max token (clipped to the sequence). Sequences whose token ids repeat an earlier sequence are
skipped ("duplicates skipped"; their tokens still count in the usage numbers).

Sampling: every (sequence, latent) gets a pseudo-random 31-bit key, a hash of the sequence's first
row, the latent index and the seed; a bucket keeps the `per_bucket` members with the smallest keys
(bottom-k sampling: a uniform sample without replacement, like reservoir sampling, but
deterministic and independent of how rows are batched or sharded). Exact ties (equal activations
or keys) go to the earlier row. One merge per step folds the batch's candidates into the (sorted)
state of all buckets at once: the top bucket ranks by the float32 activation's bit pattern
(order-preserving for positive floats), the reservoirs by the negated key.

The bucket edges need `m` before the pass: pass `max_activation` (e.g. the `max_activation` column
of `analyze`'s latents.parquet, the same quantity) for a single pass, or let `collect_examples`
run a cheap encode-only max pass first. With a supplied max, activations above `fractions[-1]·m`
(from rows the max did not see; by more than a relative `ABOVE_MARGIN` = 1e-5, so that float32
rounding of the same max computed by another pass does not count) land in an extra bucket
"<f>-inf"; with the in-pass max (and the last fraction 1.0) that bucket would always be empty and
is left out.

"Activation" is the ranking quantity of dashboards (docs/method.md §1), per token: L1 / BatchTopK
`f_j·c_j`; BatchTopK DECOUPLED `Σ_m f_{m,j}·n_{m,j}`; tied `f_sh·(n_b + n_c) + f_b·n_b + f_c·n_c`
(the scaled slots summed). "Both models' codes": the crosscoder has one code per token
(per model for DECOUPLED, per slot for tied); per token the file stores, besides `activation`,
each model's contribution norm ‖f_{m,j} d_j^m‖ = f_{m,j}·n_{m,j} (`base`, `chat`; f_m = the code
model m decodes with: the shared code, the DECOUPLED per-model code, or shared + own slot for
tied) and for tied the three scaled slots (`slot_shared`, `slot_base`, `slot_chat`). With the
CROSSCODER normalization `activation = base + chat`.

Cost and memory: the pass keeps only (score, activation, row) per kept example on device,
(1 + reservoirs) · K · S · 12 bytes (S latents, K per bucket; latent-sharded), and per step adds a
segment max and an O(K·G) merge per (bucket, latent) to the encode (G sequences per step). The windows are
filled afterwards: the rows the kept windows need are read in row order, `fill_chunk` examples at a
time, and re-encoded with only each example's encoder column (E·W·M·D work for E examples, not a
full encode). Host memory: the finished examples (≈ E · W · 4 · (1 + channels) bytes, checked
before the pass: `max_output_bytes`), one hash per distinct sequence (duplicate detection) and the
per-row columns of one block of rows.

Files: `write_examples` / `load_examples` (the on-disk format is described in `files`).

Modules: `spec` (format constants, `Spec`, bucket table, memory estimates, the pass state), `keys`
(deterministic sample keys), `channels` (device codes and output channels), `model` (loading the
crosscoder, codes of batches and windows), `rows` (per-row columns, whole-sequence batches), `step`
(the jitted device step), `max_pass` (`max_activations`), `collect` (`collect_examples`),
`finalize` (the examples table with windows), `latent_columns` (the per-latent table), `meta`
(examples.json), `files` (parquet / json files), `progress` (the progress bar).
"""
from __future__ import annotations

from jaxcoders.analysis.examples.channels import channel_scales, channel_values, code_channels, output_channels
from jaxcoders.analysis.examples.collect import collect_examples
from jaxcoders.analysis.examples.files import EXAMPLES_FILE, LATENTS_FILE, META_FILE, load_examples, write_examples
from jaxcoders.analysis.examples.keys import sample_key, seed_word
from jaxcoders.analysis.examples.max_pass import max_activations
from jaxcoders.analysis.examples.model import load_model
from jaxcoders.analysis.examples.rows import RowInfo
from jaxcoders.analysis.examples.spec import (ABOVE_MARGIN, DEFAULT_FRACTIONS, FORMAT, FORMAT_VERSION, INT_MIN,
                                              ROW_COLUMNS, Spec, bucket_table, output_bytes, state_bytes)

__all__ = [
    "ABOVE_MARGIN", "DEFAULT_FRACTIONS", "EXAMPLES_FILE", "FORMAT", "FORMAT_VERSION", "INT_MIN", "LATENTS_FILE",
    "META_FILE", "ROW_COLUMNS", "RowInfo", "Spec", "bucket_table", "channel_scales", "channel_values",
    "code_channels", "collect_examples", "load_examples", "load_model", "max_activations", "output_bytes",
    "output_channels", "sample_key", "seed_word", "state_bytes", "write_examples",
]
