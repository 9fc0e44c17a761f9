"""BatchTopK selection: which entries of a (B, F) score matrix survive batch-global top-k.

    exact       every method ("topk", "radix", "pallas") on the whole matrix, sharded forms,
                the per-row top-k of auxk
    candidates  the same selection computed on a sampled bracket of candidates (what the train
                step runs), as a mask or as sorted index lists
    pallas      the counting pass of the radix select as a Pallas kernel (TPU, GPU)
"""
from jaxcoders.core.selection.candidates import compact_mask, select_entries, select_mask
from jaxcoders.core.selection.exact import (
    METHODS,
    batch_topk,
    batch_topk_mask,
    batch_topk_mask_local,
    batch_topk_mask_sharded,
    radix_select,
    row_topk_mask,
    score_keys,
)

__all__ = ["METHODS", "batch_topk", "batch_topk_mask", "batch_topk_mask_local", "batch_topk_mask_sharded",
           "compact_mask", "radix_select", "row_topk_mask", "score_keys", "select_entries", "select_mask"]
