"""jaxcoders.data: activations on disk and batches from them; never imports torch.

    store      ActivationStore (reading) and the names of the store's API in one place
    layout     the on-disk format: tensorstore zarr3 arrays, metadata, token classes, URLs
    moments    Welford moments and the statistics built from them (float64)
    writer     StoreWriter: append, commit atomically, resume
    loader     Loader: shuffled, dataset-mixed, per-process batches with a resumable cursor
    prefetch   the one background-thread prefetcher (loader, extraction, analysis passes)
"""
