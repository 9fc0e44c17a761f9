"""Training trajectories against the reference (40-step fixtures) and the schedules."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import jaxcoders
from jaxcoders.config import CrossCoderConfig, TrainConfig
from jaxcoders.core.module import CrossCoder
from jaxcoders.core.params import CrossCoderParams
from jaxcoders.io.reference import reference_tensors
from jaxcoders.training.schedules import geometric_median, k_at_step, lr_schedule

CASES = ["train_l1_crosscoder", "train_l1_decoupled", "train_batchtopk_crosscoder", "train_batchtopk_decoupled"]
WEIGHTS = ["encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"]


def train_config_from_meta(meta) -> TrainConfig:
    hp = meta["hyperparameters"]
    if meta["kind"] == "l1":
        return TrainConfig(lr=hp["lr"], warmup_steps=hp["warmup_steps"], l1_coefficient=hp["l1_penalty"],
                           grad_clip_norm=hp.get("grad_clip") or 0)
    return TrainConfig(
        lr=hp["lr"], warmup_steps=hp["warmup_steps"], k=hp["k"], threshold_start_step=hp["threshold_start_step"],
        threshold_beta=hp["threshold_beta"], auxk_alpha=hp["auxk_alpha"],
        dead_tokens_threshold=hp["dead_feature_threshold_tokens"], top_k_aux=hp["top_k_aux"],
        grad_clip_norm=hp["grad_clip"],
    )


def rel(a, b):
    """Max abs difference relative to the reference tensor's max magnitude."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _run(fixtures_dir, case, perturb=False):
    d = fixtures_dir / case
    meta = json.loads((d / "meta.json").read_text())
    model = jaxcoders.load_reference(d / "init")
    if perturb:
        p = model.params
        w = np.array(p.w_enc_MDF)
        w[0, 0, 0] += 1e-2
        model.set_state(params=CrossCoderParams(w, *p[1:]))
    batches = np.load(d / "arrays.npz")["batches"]
    trained, losses = jaxcoders.fit(model, batches, train_config_from_meta(meta))
    return meta, d, trained, losses


@pytest.mark.accelerator
@pytest.mark.parametrize("case", CASES)
def test_training_trajectory_matches_reference(fixtures_dir, case):
    meta, d, trained, losses = _run(fixtures_dir, case)
    ref_losses = np.load(d / "arrays.npz")["losses"]
    assert losses.shape == ref_losses.shape
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    final = load_file(str(d / "final" / "model.safetensors"))
    mine = reference_tensors(trained)
    for key in WEIGHTS:
        assert rel(mine[key], final[key]) < 1e-4, key
    if "threshold" in final:
        np.testing.assert_allclose(mine["threshold"], final["threshold"], rtol=1e-5)
        np.testing.assert_allclose(mine["threshold"], meta["thresholds_after_step"][-1], rtol=1e-5)
        assert int(mine["k"]) == int(final["k"])


@pytest.mark.accelerator
@pytest.mark.parametrize("case", ["train_l1_crosscoder", "train_batchtopk_crosscoder"])
def test_training_control_perturbed_init_fails(fixtures_dir, case):
    _, d, trained, losses = _run(fixtures_dir, case, perturb=True)
    final = load_file(str(d / "final" / "model.safetensors"))
    assert rel(reference_tensors(trained)["encoder.weight"], final["encoder.weight"]) > 1e-4


@pytest.mark.accelerator
def test_threshold_and_dead_counts_follow_reference(fixtures_dir):
    """Per-step theta and dead counts (meta.json) through the step function directly."""
    from jaxcoders.training.state import init_train_state
    from jaxcoders.training.step import make_train_step
    from jaxcoders.training.fit import _geometric_median_jit

    d = fixtures_dir / "train_batchtopk_decoupled"
    meta = json.loads((d / "meta.json").read_text())
    tcfg = train_config_from_meta(meta)
    model = jaxcoders.load_reference(d / "init")
    batches = np.load(d / "arrays.npz")["batches"]
    state = init_train_state(model, tcfg, len(batches))
    state = state._replace(params=state.params._replace(b_dec_MD=_geometric_median_jit(jnp.asarray(batches[0]))))
    step = make_train_step(model.cfg, tcfg, len(batches))
    for i, x in enumerate(batches):
        state, metrics = step(state, jnp.asarray(x), jnp.asarray(4, jnp.int32))
        np.testing.assert_allclose(np.asarray(metrics["threshold"]), meta["thresholds_after_step"][i], rtol=1e-5)
        assert int(metrics["num_dead"]) == meta["num_dead_after_step"][i]


def test_lr_schedule_warmup_and_decay():
    t = TrainConfig(lr=1.0, warmup_steps=10, decay_start=50, total_steps=100)
    s = lr_schedule(t, 100)
    assert float(s(0)) == 0.0
    assert np.isclose(float(s(5)), 0.5)
    assert float(s(10)) == 1.0 and float(s(49)) == 1.0
    assert np.isclose(float(s(75)), 0.5)
    with pytest.raises(ValueError, match="decay_start"):
        TrainConfig(warmup_steps=10, decay_start=5)


def test_k_annealing_defaults_to_k():
    assert k_at_step(TrainConfig(), 100, 0) == 100  # k_max defaults to k, not 2048
    t = TrainConfig(k_max=200, k_annealing_steps=100)
    assert [k_at_step(t, 100, s) for s in (0, 50, 99, 100, 500)] == [200, 150, 101, 100, 100]


def test_k_annealing_trains_with_traced_k():
    rng = np.random.default_rng(0)
    cfg = CrossCoderConfig(2, 8, 32, architecture="batchtopk", k=2)
    model = CrossCoder(cfg, rngs=__import__("flax").nnx.Rngs(0))
    batches = rng.normal(size=(6, 16, 2, 8)).astype(np.float32)
    seen = []
    tcfg = TrainConfig(lr=1e-3, warmup_steps=1, k_max=8, k_annealing_steps=4)
    trained, losses = jaxcoders.fit(model, batches, tcfg, log_every=1,
                                    callback=lambda s, m: seen.append(float(m["l0"])))
    assert seen[:5] == [8.0, 6.0, 5.0, 4.0, 2.0]  # L0 follows k(t) = 8, 6.5->6, 5, 3.5->4, 2
    assert trained.cfg.k == 2 and int(trained.buffers.k) == 2


def test_l1_coefficient_warmup_changes_only_the_penalty():
    rng = np.random.default_rng(0)
    cfg = CrossCoderConfig(2, 8, 16)
    model = CrossCoder(cfg, rngs=__import__("flax").nnx.Rngs(0))
    batches = rng.normal(size=(3, 16, 2, 8)).astype(np.float32)
    _, l_plain = jaxcoders.fit(model, batches[:1], TrainConfig(lr=1e-3, warmup_steps=1))
    _, l_warm = jaxcoders.fit(model, batches[:1], TrainConfig(lr=1e-3, warmup_steps=1, l1_warmup_steps=10))
    assert l_warm[0] < l_plain[0]  # step 0: mu = 0


def test_geometric_median_robust_to_outlier():
    pts = np.concatenate([np.zeros((20, 2, 3)), np.full((1, 2, 3), 1000.0)]).astype(np.float32)
    gm = np.asarray(geometric_median(jnp.asarray(pts)))
    assert np.all(np.abs(gm) < 1.0)  # the mean would be ~47.6


def test_fit_rejects_bad_batches():
    cfg = CrossCoderConfig(2, 8, 16)
    model = CrossCoder(cfg, rngs=__import__("flax").nnx.Rngs(0))
    good = np.zeros((4, 2, 8), np.float32)
    with pytest.raises(ValueError, match=r"\(B, 2, 8\)"):
        jaxcoders.fit(model, [np.zeros((4, 3, 8), np.float32)])
    with pytest.raises(ValueError, match=r"\(B, 2, 8\)"):
        jaxcoders.fit(model, [np.zeros((4, 2, 9), np.float32)])
    bad = good.copy()
    bad[1, 0, 3] = np.nan
    with pytest.raises(ValueError, match="batch 1 contains NaN"):
        jaxcoders.fit(model, [good, bad])
    with pytest.raises(ValueError, match="batch 2 contains NaN"):  # jax arrays: checked on device
        jaxcoders.fit(model, [jnp.asarray(good)] * 2 + [jnp.asarray(bad)], log_every=100)
    with pytest.raises(ValueError, match="no batches"):
        jaxcoders.fit(model, [])


def test_exactly_reconstructed_token_has_finite_gradient():
    """An all-zero token at initialization (b_enc = b_dec = 0, so e = 0 exactly) must not make the
    gradient NaN: torch defines d||e||/de = 0 at e = 0 and so do we (crosscoder.safe_sqrt)."""
    import jax
    from flax import nnx

    from jaxcoders.core.losses import l1_loss

    cfg = CrossCoderConfig(2, 8, 16, architecture="l1")
    model = CrossCoder(cfg, rngs=nnx.Rngs(0))
    params = model.params._replace(b_dec_MD=jnp.zeros((2, 8)), b_enc_F=jnp.zeros((16,)))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 2, 8)), jnp.float32).at[0].set(0.0)
    tcfg = TrainConfig()
    grads = jax.grad(lambda p: l1_loss(cfg, tcfg, p, x, 0.1)[0])(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    # control: the plain sqrt norm this replaced gives NaN on that token
    plain = jax.grad(lambda e: jnp.mean(jnp.sqrt(jnp.sum(jnp.square(e), axis=-1))))(x)
    assert np.isnan(np.asarray(plain)).any()
