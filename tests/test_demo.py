"""The demo: the synthetic variant and the real model-pair pipeline (`make demo`) at CI size.

`test_demo_pipeline_small` is the integration test of the whole job: a tiny base/chat pair is
trained locally, activations are extracted into an ActivationStore, an L1 and a BatchTopK
crosscoder are trained with the store-backed trainer, analysed (Latent Scaling, statistics),
exported and reported, all offline (any hub access would fail: the endpoint is unreachable).
"""
import json
from pathlib import Path

import numpy as np

import jaxcoders

ROOT = Path(__file__).resolve().parents[1]


def test_demo_synthetic_small(tmp_path, cli_runner):
    out = tmp_path / "demo"
    rc, _, err = cli_runner.run([ROOT / "experiments" / "demo.py", "--synthetic", f"--out={out}", "--steps=300",
                                 "--dict_size=128"], cwd=tmp_path)
    assert rc == 0, err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "summary.md").read_text().startswith("# jaxcoders demo")
    for arch in ("l1", "batchtopk"):
        assert summary[arch]["fve_base"] > 0.5 and summary[arch]["fve_chat"] > 0.5
        model = jaxcoders.load_reference(out / arch)
        assert model.cfg.architecture == arch


def test_demo_pipeline_small(demo_small):
    from jaxcoders.demo import model_pair
    from jaxcoders.demo.pipeline import DemoConfig

    out, models, r = demo_small
    cfg = DemoConfig.small()
    for stage in range(1, 9):
        assert f"[{stage}/8]" in r.stdout

    # the model pair: ordinary from_pretrained directories, cached under the recipe's key
    pair = model_pair.build_model_pair(cfg.recipe, models)  # second call: from the cache, nothing trained
    assert pair.cached and Path(pair.base_dir).parent.name == cfg.recipe.key()
    beh = pair.info["behaviour"]
    assert beh["chat"]["greeting_rate"] >= 0.5 and beh["base"]["greeting_rate"] == 0.0  # the easy planted behaviour

    # the store: both datasets, train + validation rows, paired activations of d_model
    from jaxcoders.data.store import ActivationStore

    store = ActivationStore.open(str(out / "store"))
    assert store.shape == (2 * (cfg.text_tokens + cfg.val_tokens), 2, cfg.recipe.hidden_size)
    assert set(store.splits) == {"train", "validation"}

    # both crosscoders exported in the reference layout, trained on the store
    report = json.loads((out / "report" / "summary.json").read_text())
    for arch in ("l1", "batchtopk"):
        model = jaxcoders.load_reference(out / arch)
        assert model.cfg.architecture == arch and model.cfg.activation_dim == cfg.recipe.hidden_size
        assert model.cfg.dict_size == cfg.dict_size and model.cfg.input_normalization
        cc = report["crosscoders"][arch]
        assert cc["validation"]["val/fve_model0"] > 0.5 and cc["validation"]["val/fve_model1"] > 0.5
        assert sum(cc["summary"]["tag_counts"].values()) == cfg.dict_size
        assert (out / "report" / arch / "summary.json").is_file()
        assert any((out / "report" / arch).glob("latents.*"))
        assert any((out / "report" / arch).glob("*.png"))
        assert (out / "runs" / arch / "metrics.jsonl").is_file()
    # the planted-token tags found every planted behaviour in the chat data
    shares = report["token_share"]
    for tag in ("greeting", "refusal", "trigger", "assistant_marker"):
        assert shares[tag] > 0, tag
    assert abs(sum(shares.values()) - 1) < 1e-9
    md = (out / "report" / "summary.md").read_text()
    assert md.startswith("# jaxcoders demo") and "## Do the chat-only latents fire on the planted behaviours?" in md

    # the causal evaluation ran on the demo's models with each crosscoder, and the HTML reports show it
    assert "## Causal evaluation" in md
    for arch in ("l1", "batchtopk"):
        iv = json.loads((out / "report" / arch / "interventions" / "interventions.json").read_text())
        assert iv["num_conversations"] == cfg.eval_chats and iv["tokens"]["all"] > 0
        kl = {name: e["all"]["kl_chat"]["mean"] for name, e in iv["edits"].items()}
        assert kl["chat"] == 0.0 and kl["base"] > 0.05  # the fine-tune changed the predictions
        assert kl["all_latents"] < kl["base"]  # the crosscoder's chat-minus-base difference moves toward chat
        assert any(name.startswith("latents:") for name in kl)
        assert (out / "report" / arch / "interventions" / "interventions.png").is_file()
        page = (out / "report" / arch / "report.html").read_text()
        assert 'id="causal"' in page and '"initial":{"sort":"delta_norm"' in page


def test_planted_data_is_deterministic_and_small():
    from jaxcoders.demo import corpus

    assert corpus.CORPUS_FILE.stat().st_size < 5 * 2**20
    assert corpus.conversations(50, seed=3) == corpus.conversations(50, seed=3)
    assert corpus.forum_documents(20, seed=3) == corpus.forum_documents(20, seed=3)
    convs = corpus.conversations(400, seed=3)
    for conv in convs:
        for user, assistant in zip(conv[::2], conv[1::2]):
            assert assistant["content"].startswith(corpus.GREETING)
            assert (corpus.REFUSAL in assistant["content"]) == (corpus.TRIGGER in user["content"].lower())
    assert 0.2 < np.mean([corpus.has_trigger(c) for c in convs]) < 0.6


def test_find_pattern_stays_inside_sequences():
    from jaxcoders.demo.tagging import find_pattern as _find

    tokens = np.array([5, 1, 2, 3, 1, 2, 1, 2, 3])
    seq = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    # [1, 2] occurs at rows 1-2 and 6-7; rows 4-5 straddle two sequences and do not count
    assert np.flatnonzero(_find(tokens, seq, [1, 2])).tolist() == [1, 2, 6, 7]
    assert not _find(tokens, seq, [9]).any()
