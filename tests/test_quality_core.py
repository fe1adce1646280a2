"""The quality check's pure parts: windows as llama.cpp's perplexity tool, the sums and figures,
the vocabulary check, and the worker-side scoring of logits (numpy only, no model)."""
import math

import numpy as np
import pytest

from backends.text_scoring import log_softmax, score_logits
from core.quality import (QualityError, QualityOptions, QualityResult, WindowScore, check_same_vocabulary,
                          describe, prepare_text, quant_label, scored_targets, short_summary, summarise,
                          window_starts, window_tokens)


def test_windows_like_llama_perplexity():
    opts = QualityOptions(window=512)
    assert window_starts(7638, opts) == [i * 512 for i in range(14)]
    assert window_starts(7638, QualityOptions(window=512, max_windows=4)) == [0, 512, 1024, 1536]
    with pytest.raises(QualityError, match="needs at least 1024"):
        window_starts(1023, opts)
    tokens = list(range(100, 1124))
    chunk = window_tokens(tokens, 512, 512, bos=1)
    assert chunk[0] == 1 and chunk[1:] == tokens[513:1024]
    assert window_tokens(tokens, 0, 512, bos=None) == tokens[:512]
    # positions 256..510 predict tokens 257..511: 255 scored per window, as the tool counts
    assert scored_targets(chunk) == chunk[257:] and len(scored_targets(chunk)) == 255
    assert prepare_text("abc\n") == "abc" and prepare_text("abc\n\n") == "abc\n"


def test_summary_matches_hand_computation():
    nll = [2.0, 3.0, 1.0, 4.0]
    windows = [WindowScore(0, 2, 5.0, 13.0, kl_sum=0.2, kl2_sum=0.02, same_top=2, compared=2),
               WindowScore(1, 2, 5.0, 17.0, kl_sum=0.0, kl2_sum=0.0, same_top=1, compared=2)]
    r = summarise(windows, model="m.Q4_K_M.gguf", text_sha256="s", opts=QualityOptions(), n_tokens=2000,
                  windows_total=3, seconds=1.0, reference="m.Q8_0.gguf", reference_ppl=math.exp(2.0))
    mean = sum(nll) / 4
    assert r.ppl == pytest.approx(math.exp(mean))
    sd = math.sqrt((sum(v * v for v in nll) / 4 - mean * mean) / 3)
    assert r.ppl_error == pytest.approx(r.ppl * sd)
    assert r.kl_mean == pytest.approx(0.05) and r.top1 == pytest.approx(0.75)
    assert not r.complete and r.windows_done == 2
    assert r.ppl_change == pytest.approx(100 * (math.exp(2.5) / math.exp(2.0) - 1))
    assert "+64.9 % vs m.Q8_0.gguf" in describe(r, "Q4_K_M") and "stopped after 2/3" in describe(r)
    assert short_summary(r) == "PPL 12.18, +64.9 % vs Q8_0"
    assert QualityResult.from_dict(r.to_dict()) == r


def test_quant_labels():
    assert quant_label("Llama-3-8B.Q4_K_M.gguf") == "Q4_K_M"
    assert quant_label("SmolLM2-135M-Instruct.Q4_1.gguf") == "Q4_1"
    assert quant_label("model-f16.gguf") == "F16"
    assert quant_label("SmolLM2-135M-Instruct") == "SmolLM2-135M-Instruct"


def test_vocabulary_mismatch_is_refused_clearly():
    check_same_vocabulary("a", (100, "x"), "b", (100, "x"))
    with pytest.raises(QualityError, match="vocabulary of 100 tokens and b one of 200"):
        check_same_vocabulary("a", (100, "x"), "b", (200, "x"))
    with pytest.raises(QualityError, match="different tokens"):
        check_same_vocabulary("a", (100, "x"), "b", (100, "y"))


def test_scoring_logits_nll_kl_and_top1():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(40, 500)).astype(np.float32)
    targets = list(rng.integers(0, 500, size=40))
    score, ids, lps = score_logits(0, logits, targets, top_k=500)
    lp = log_softmax(logits)
    nll = -lp[np.arange(40), targets]
    assert score.count == 40 and score.nll_sum == pytest.approx(nll.sum()) and score.nll2_sum == pytest.approx((nll ** 2).sum())
    assert (ids[:, 0] == logits.argmax(axis=1)).all() and (np.diff(lps, axis=1) <= 0).all()

    # against itself: KL 0, top-1 agreement 100 %
    same, _, _ = score_logits(0, logits, targets, top_k=8, ref=(ids[:, :8], lps[:, :8]))
    assert same.kl_sum == pytest.approx(0.0, abs=1e-9) and same.same_top == 40 == same.compared

    # against another distribution: with every token kept the KL is exact; with top-k a lower bound
    other = logits + rng.normal(0, 1, size=logits.shape).astype(np.float32)
    _, o_ids, o_lps = score_logits(0, other, targets, top_k=500)
    full, _, _ = score_logits(0, logits, targets, top_k=8, ref=(o_ids, o_lps))
    p, q = np.exp(log_softmax(other)), log_softmax(logits)
    exact = (p * (np.log(p) - q)).sum(axis=1).sum()
    assert full.kl_sum == pytest.approx(exact, rel=1e-4)  # log-probabilities in float32
    part, _, _ = score_logits(0, logits, targets, top_k=8, ref=(o_ids[:, :32], o_lps[:, :32]))
    assert 0 < part.kl_sum <= exact + 1e-9
    assert full.same_top == int((other.argmax(axis=1) == logits.argmax(axis=1)).sum())
