"""`mechjax analyze` and `mechjax.views.analysis_report`: every kind of input, the files it
writes, what the page reports, and refusing to replace files mechjax did not write."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from conftest import random_model

import mechjax as mj
from mechjax.cli import main as cli_main
from mechjax.cli.analyze import load_any, write_analysis
from mechjax.io import save_hf, save_model
from mechjax.views.analysis_report import (
    FIGURES,
    HTML_FILE,
    JSON_FILE,
    planned_files,
)

ATTN2 = mj.presets.attn_only(2, d_model=16, n_heads=2, d_vocab=20, n_ctx=15)
ATTN1 = mj.presets.attn_only(1, d_model=16, n_heads=2, d_vocab=20, n_ctx=15)
GEMMA = mj.ModelConfig(
    d_vocab=20, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_head=4, n_ctx=64, d_mlp=16,
    act_fn="gelu_tanh", gated_mlp=True, normalization="rmsnorm", norm_eps=1e-6,
    norm_weight_offset=1.0, positional="rope", scale_embeddings=True, tied_embeddings=True,
    query_pre_attn_scalar=4.0, attn_logit_softcap=50.0, final_logit_softcap=30.0,
    sliding_window=4, layer_types=("local", "global"), post_attn_norm=True, post_mlp_norm=True,
)  # fmt: skip

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_outputs(out, cfg):
    for name in planned_files(cfg):
        assert (out / name).is_file(), name
    for name in FIGURES.values():
        if name in planned_files(cfg):
            data = (out / name).read_bytes()
            assert data.startswith(PNG_MAGIC)
    page = (out / HTML_FILE).read_text()
    # every figure is embedded in the page itself
    for name in planned_files(cfg):
        if name.endswith(".png"):
            encoded = base64.b64encode((out / name).read_bytes()).decode("ascii")
            assert encoded in page
    summary = json.loads((out / JSON_FILE).read_text())
    assert len(summary["heads"]) == cfg.n_layers * cfg.n_heads
    assert "L0H0" in page and "ov eigen copying" in page
    return page, summary


def test_two_layer_report_and_its_path_summary_adds_up(tmp_path):
    params = random_model(ATTN2, seed=0, noise=0.3)
    out = tmp_path / "analysis"
    page_path = write_analysis(params, ATTN2, out, bos_id=19, exclude=(18,), batch=2)
    assert page_path == out / HTML_FILE
    page, summary = _check_outputs(out, ATTN2)
    assert {"composition", "paths"} <= set(summary) and "skip_trigrams" not in summary
    assert "Path decomposition" in page and "K-composition" in page

    # the path terms on the second copy add up to the model's own next-token logit
    # minus the mean logit, averaged over the positions predicting the second copy
    seg_len = summary["input"]["seg_len"]
    tokens = mj.heads.repeated_tokens(
        0, 2, seg_len, ATTN2.d_vocab, n_repeats=2, bos_id=19, exclude=(18, 19)
    )
    logits = np.asarray(mj.forward(params, tokens, ATTN2), np.float64)
    target = np.take_along_axis(logits[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    centered = target - logits[:, :-1].mean(-1)
    expected = centered[:, 1 + seg_len :].mean()
    total = summary["paths"]["second_copy"]["total"]
    np.testing.assert_allclose(total, expected, rtol=1e-4, atol=1e-4)
    terms = summary["paths"]["second_copy"]["terms"]
    np.testing.assert_allclose(sum(terms.values()), total, rtol=1e-4, atol=1e-5)

    # the baseline-subtracted pairs are composition_scores(..., baseline=True)
    folded, folded_cfg = mj.circuits.fold_norms(params, ATTN2)
    K = np.asarray(mj.circuits.composition_scores(folded, folded_cfg, "K", baseline=True))
    best = summary["composition"]["K"][0]
    assert best["from"] == f"L0H{K[0, :, 1].max(1).argmax()}"
    np.testing.assert_allclose(best["minus_baseline"], K[0, :, 1].max(), rtol=1e-5)

    # running again over its own output replaces it
    write_analysis(params, ATTN2, out, bos_id=19, batch=2)


def test_one_layer_report_has_skip_trigrams(tmp_path):
    params = random_model(ATTN1, seed=1)
    out = tmp_path / "a1"
    write_analysis(params, ATTN1, out, token_str=lambda i: f"t{i}", batch=2)
    page, summary = _check_outputs(out, ATTN1)
    assert (out / FIGURES["skip_trigrams"]).is_file()
    assert not (out / FIGURES["composition"]).exists() and not (out / FIGURES["paths"]).exists()
    assert len(summary["skip_trigrams"]) == 8 * ATTN1.n_heads
    first = summary["skip_trigrams"][0]["trigram"]
    assert first.startswith("[t") and " … [t" in first and "] → [t" in first
    assert first.replace("→", "&rarr;") in page or first in page


def test_foreign_files_are_never_replaced(tmp_path):
    params = random_model(ATTN1, seed=2)
    out = tmp_path / "mine"
    out.mkdir()
    (out / HTML_FILE).write_text("<html>my own notes</html>")
    with pytest.raises(FileExistsError, match="not written by mechjax"):
        write_analysis(params, ATTN1, out)
    assert sorted(p.name for p in out.iterdir()) == [HTML_FILE]  # nothing else written
    assert (out / HTML_FILE).read_text() == "<html>my own notes</html>"
    (out / HTML_FILE).unlink()
    (out / FIGURES["copying"]).write_bytes(PNG_MAGIC + b"not ours")
    with pytest.raises(FileExistsError, match="copying_plane.png"):
        write_analysis(params, ATTN1, out)
    with pytest.raises(FileExistsError, match="not a directory"):
        write_analysis(params, ATTN1, out / FIGURES["copying"])


def test_cli_on_a_run_directory_and_a_model_directory(tmp_path, capsys):
    params = random_model(ATTN2, seed=3)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": {"name": "repeated"}}))
    save_model(run / "final_model", params, ATTN2)
    loaded = load_any(run)
    assert loaded.kind == "run" and loaded.bos_id == 19 and loaded.token_str(19) == "<bos>"
    assert cli_main(["analyze", str(run), "--batch", "2"]) == 0
    assert str(run / "analysis" / HTML_FILE) in capsys.readouterr().out
    summary = json.loads((run / "analysis" / JSON_FILE).read_text())
    assert summary["input"]["bos_id"] == 19
    # the model directory itself, with an explicit BOS and output directory
    loaded = load_any(run / "final_model")
    assert loaded.kind == "model" and loaded.bos_id == 19
    out = tmp_path / "elsewhere"
    args = ["analyze", str(run / "final_model"), "--out", str(out), "--bos-id", "0", "--batch", "2"]
    assert cli_main(args) == 0
    assert json.loads((out / JSON_FILE).read_text())["input"]["bos_id"] == 0


def test_cli_on_a_huggingface_gemma_folder_with_grouped_query_attention(tmp_path):
    params = random_model(GEMMA, seed=4)
    folder = tmp_path / "gemma"
    save_hf(params, GEMMA, folder)
    config = json.loads((folder / "config.json").read_text())
    config["bos_token_id"] = 2
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_any(folder)
    assert loaded.kind == "hf" and loaded.bos_id == 2
    assert cli_main(["analyze", str(folder), "--batch", "2"]) == 0
    out = folder / "analysis"
    page, summary = _check_outputs(out, GEMMA.replace(name=loaded.cfg.name))
    # RoPE: the positional figure is the offset profile; MLPs: no paths, no skip-trigrams
    assert (out / FIGURES["positional"]).is_file() and "offset" in page
    assert "paths" not in summary and "skip_trigrams" not in summary
    assert summary["config"]["n_kv_heads"] == 2


def test_cli_on_a_training_checkpoint(tmp_path):
    import jax

    from mechjax.train import TrainConfig, init_states, save_checkpoint

    train_cfg = TrainConfig(steps=1, seeds=(0, 1))
    # a state of the right structure filled in numpy (compiling init_states is slow here)
    rng = np.random.default_rng(5)
    abstract = jax.eval_shape(lambda: init_states(ATTN1, train_cfg))
    state = jax.tree_util.tree_map(
        lambda s: jax.numpy.asarray(rng.standard_normal(s.shape).astype(s.dtype)), abstract
    ).replace(step=jax.numpy.zeros((2,), "int32"))
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoints", state, ATTN1, train_cfg)
    loaded = load_any(ckpt)
    assert loaded.kind == "checkpoint"
    first = np.asarray(state.params["W_E"][0])
    np.testing.assert_array_equal(np.asarray(loaded.params["W_E"]), first)  # model 0
    assert cli_main(["analyze", str(ckpt), "--batch", "2"]) == 0
    assert (ckpt / "analysis" / HTML_FILE).is_file()
    # an unfinished run points at its checkpoints
    with pytest.raises(ValueError, match="step_00000000"):
        load_any(tmp_path / "run")


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert cli_main(["analyze", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        load_any(tmp_path / "file.txt")
    with pytest.raises(ValueError, match="is not a model"):
        load_any(tmp_path)
    multi = tmp_path / "multi"
    save_model(multi / "seed_0" / "final_model", random_model(ATTN1), ATTN1)
    with pytest.raises(ValueError, match="multi-seed"):
        load_any(multi)
    with pytest.raises(ValueError, match="0-layer"):
        zero = mj.presets.attn_only(0, d_model=8, n_heads=2, d_vocab=11, n_ctx=8)
        write_analysis(random_model(zero), zero, tmp_path / "zero")
    with pytest.raises(ValueError, match="bos_id"):
        write_analysis(random_model(ATTN1), ATTN1, tmp_path / "bad", bos_id=ATTN1.d_vocab)


def test_figures_check_their_inputs_and_mask_impossible_pairs(tmp_path):
    from mechjax.views import circuits as cp

    scores = np.random.default_rng(0).random((3, 2, 3, 2))
    block = cp.composition_block(scores)  # rows: heads of layers 0-1, cols: layers 1-2
    assert block.shape == (4, 4)
    np.testing.assert_array_equal(block[:2], scores[0, :, 1:].reshape(2, 4))  # layer 0 -> 1, 2
    np.testing.assert_array_equal(block[2:, 2:], scores[1, :, 2])  # layer 1 -> 2
    assert np.isnan(block[2:, :2]).all()  # layer 1 -> layer 1: no composition
    fig = cp.plot_composition_scores({"K": scores}, {"K": scores - 0.1}, path=tmp_path / "c.png")
    assert len(fig.axes) == 4 and (tmp_path / "c.png").read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="at least 2 layers"):
        cp.plot_composition_scores({"K": np.zeros((1, 2, 1, 2))})
    with pytest.raises(ValueError, match="too many panels"):
        cp.plot_attention_patterns(np.zeros((9, 8, 3, 3)))
    with pytest.raises(ValueError, match="outside"):
        cp.plot_ov_eigenvalues(np.zeros((1, 2, 3), complex), heads=[(0, 2)])
    with pytest.raises(ValueError, match="shapes differ"):
        cp.plot_copying_plane(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="RoPE"):
        cp.plot_positional_qk(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="labels"):
        cp.plot_path_terms(["a", "b"], [1.0])
