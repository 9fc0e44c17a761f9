"""An independent float64 numpy transcription of the reference crosscoder math (docs/method.md §1–3).

Used as a second implementation for configurations the public fixtures do not cover (SAE, MIXED,
NONE code normalizations, other shapes). Written from docs/method.md, not from jaxcoders' code.
"""
import numpy as np

IDS = {"CROSSCODER": 1, "SAE": 2, "MIXED": 3, "NONE": 4, "DECOUPLED": 5}


def code_norm(w_dec, kind, a_sae=1.0, a_cc=0.1):
    n = np.linalg.norm(w_dec, axis=2)  # (M, F)
    if kind == "CROSSCODER":
        return n.sum(0)
    if kind == "SAE":
        return np.sqrt((w_dec ** 2).sum(axis=(0, 2)))
    if kind == "MIXED":
        return a_sae * np.sqrt((w_dec ** 2).sum(axis=(0, 2))) + a_cc * n.sum(0)
    if kind == "NONE":
        return np.ones(w_dec.shape[1])
    if kind == "DECOUPLED":
        return n
    raise ValueError(kind)


def relu_code(x, w_enc, b_enc):
    return np.maximum(np.einsum("bmd,mdf->bf", x, w_enc) + b_enc, 0.0)


def topk_mask_flat(scores, n_keep):
    """Indices of the n_keep largest, ties to the lower flat index (stable sort)."""
    flat = scores.reshape(-1)
    order = np.argsort(-flat, kind="stable")[:n_keep]
    m = np.zeros(flat.shape, bool)
    m[order] = True
    return m.reshape(scores.shape)


def encode(x, w_enc, b_enc, w_dec, kind, arch, k=None, threshold=None, train=False):
    f = relu_code(x, w_enc, b_enc)
    if arch == "l1":
        return f
    c = code_norm(w_dec, kind)
    B = x.shape[0]
    if kind == "DECOUPLED":
        s = f[:, None, :] * c[None]
        if train:
            mask = np.stack([topk_mask_flat(s[:, m], k * B) for m in range(s.shape[1])], axis=1)
        else:
            mask = s > np.asarray(threshold)[None, :, None]
        return f[:, None, :] * mask
    s = f * c
    mask = topk_mask_flat(s, k * B) if train else s > threshold
    return f * mask


def decode(f, w_dec, b_dec):
    if f.ndim == 2:
        return np.einsum("bf,mfd->bmd", f, w_dec) + b_dec
    return np.einsum("bmf,mfd->bmd", f, w_dec) + b_dec
