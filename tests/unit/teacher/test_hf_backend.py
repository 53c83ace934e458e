"""hf backend against an independent float32 computation on real (tiny) transformers models.

The reference for a sequence is `torch.log_softmax(model(ids).logits.float(), -1)` on the full,
unpadded, single sequence; the backend pads, batches, gathers and chunks, and must agree.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config

from tropd.output_head import OutputHead
from tropd.teacher.backends import load_backend
from tropd.teacher.backends.base import GenerateTask, ScoreTask
from tropd.teacher.backends.hf import HFBackend, HFOptions
from tropd.wire.types import ScoredSequence

TOKENIZER_VOCAB = 438  # the tiny tokenizer's size (tests/conftest.py)
ATOL = 1e-4


@pytest.fixture(scope="module")
def llama(tiny_llama_dir: Path) -> HFBackend:
    torch.set_num_threads(2)
    return HFBackend(HFOptions(model_path=str(tiny_llama_dir), dtype="float32"))


@pytest.fixture(scope="module")
def qwen(tiny_qwen_dir: Path) -> HFBackend:
    return HFBackend(HFOptions(model_path=str(tiny_qwen_dir), dtype="float32", chunk_size=7))


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir: Path) -> HFBackend:
    return HFBackend(HFOptions(model_path=str(tiny_gpt2_dir), dtype="float32"))


def _ids(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, TOKENIZER_VOCAB, size=n).astype(np.int32)


def _full_task(ids: np.ndarray, start: int, end: int, k: int, n_cand: int, seed: int) -> ScoreTask:
    rng = np.random.default_rng(seed)
    candidates = rng.integers(0, TOKENIZER_VOCAB, size=(end - start, n_cand)).astype(np.int32)
    return ScoreTask(
        ids,
        start,
        end,
        top_k=k,
        candidates=candidates,
        want_logsumexp=True,
        want_entropy=True,
        want_rank=True,
    )


@torch.inference_mode()
def _reference(model: torch.nn.Module, task: ScoreTask) -> dict[str, np.ndarray]:
    """Independent float32 computation over the whole unpadded sequence."""
    logits_T_V = model(torch.as_tensor(task.ids[None]).long()).logits[0].float()
    logprobs_T_V = torch.log_softmax(logits_T_V, dim=-1)
    rows = torch.arange(task.start - 1, task.end - 1)  # row i predicts ids[start + i]
    targets = torch.as_tensor(task.ids[task.start : task.end]).long()
    lp_M_V, logits_M_V = logprobs_T_V[rows], logits_T_V[rows]
    given = logits_M_V.gather(1, targets[:, None])
    topk = lp_M_V.topk(task.top_k, dim=-1)
    ref = {
        "logprobs": lp_M_V.gather(1, targets[:, None])[:, 0],
        "topk_ids": topk.indices,
        "topk_logprobs": topk.values,
        "logsumexp": torch.logsumexp(logits_M_V, dim=-1),
        "entropy": -(lp_M_V.exp() * lp_M_V).sum(dim=-1),
        "rank": (logits_M_V > given).sum(dim=-1),
    }
    if task.candidates is not None:
        ref["candidate_logprobs"] = lp_M_V.gather(1, torch.as_tensor(task.candidates).long())
    return {name: value.numpy() for name, value in ref.items()}


def _assert_matches(out: ScoredSequence, ref: dict[str, np.ndarray], atol: float = ATOL) -> None:
    for name in ("logprobs", "topk_logprobs", "logsumexp", "entropy", "candidate_logprobs"):
        got = getattr(out, name)
        assert got.dtype == np.float32, name
        np.testing.assert_allclose(got, ref[name], atol=atol, rtol=0, err_msg=name)
    np.testing.assert_array_equal(out.topk_ids, ref["topk_ids"])
    np.testing.assert_array_equal(out.rank, ref["rank"])
    assert out.topk_ids.dtype == np.int32 and out.rank.dtype == np.int32


SPANS = [(2, 1, 2), (5, 1, 5), (17, 4, 17), (33, 10, 20), (64, 63, 64), (64, 1, 64)]


@pytest.mark.parametrize("backend_name", ["llama", "qwen", "gpt2"])
@pytest.mark.parametrize(("length", "start", "end"), SPANS)
def test_score_matches_independent_reference(
    backend_name: str, length: int, start: int, end: int, request: pytest.FixtureRequest
) -> None:
    backend: HFBackend = request.getfixturevalue(backend_name)
    rng = np.random.default_rng(length * 100 + start)
    task = _full_task(_ids(rng, length), start, end, k=6, n_cand=3, seed=length)
    (out,) = backend.score([task])
    assert out.logprobs.shape == (end - start,)
    assert out.topk_ids.shape == (end - start, 6)
    _assert_matches(out, _reference(backend.model, task))


def test_topk_sorted_and_consistent(qwen: HFBackend) -> None:
    task = _full_task(_ids(np.random.default_rng(3), 30), 1, 30, k=20, n_cand=1, seed=0)
    (out,) = qwen.score([task])
    assert np.all(np.diff(out.topk_logprobs, axis=1) <= 0)
    # The given token's rank and log-prob agree with the top-k list where it appears in it.
    for i, (token, rank) in enumerate(zip(task.ids[1:30], out.rank, strict=True)):
        if rank < 20:
            assert out.topk_ids[i, rank] == token
            assert out.topk_logprobs[i, rank] == pytest.approx(out.logprobs[i], abs=1e-6)
    # The padded output rows (448 > 438) are real vocab entries: top-k may pick them.
    assert qwen.info().vocab_size == 448


def _random_task(rng: np.random.Generator) -> ScoreTask:
    length = int(rng.integers(2, 60))
    start = int(rng.integers(1, length))
    end = int(rng.integers(start + 1, length + 1))
    n_cand = int(rng.integers(0, 5))
    candidates = (
        _ids(rng, (end - start) * n_cand).reshape(end - start, n_cand)
        if rng.random() < 0.7
        else None
    )
    return ScoreTask(
        _ids(rng, length),
        start,
        end,
        top_k=int(rng.integers(0, 12)),
        candidates=candidates if rng.random() < 0.7 else None,
        want_logsumexp=bool(rng.random() < 0.5),
        want_entropy=bool(rng.random() < 0.5),
        want_rank=bool(rng.random() < 0.5),
    )


@pytest.mark.parametrize("backend_name", ["llama", "qwen"])
def test_batch_invariance(backend_name: str, request: pytest.FixtureRequest) -> None:
    backend: HFBackend = request.getfixturevalue(backend_name)
    rng = np.random.default_rng(11)
    for trial in range(3):
        task = _full_task(_ids(rng, 25 + 10 * trial), 3, 20 + 5 * trial, k=5, n_cand=2, seed=trial)
        (alone,) = backend.score([task])
        others = [_random_task(rng) for _ in range(7)]
        position = int(rng.integers(0, 8))
        batch = [*others[:position], task, *others[position:]]
        mixed = backend.score(batch)[position]
        for name in ("logprobs", "topk_logprobs", "logsumexp", "entropy", "candidate_logprobs"):
            np.testing.assert_allclose(
                getattr(mixed, name), getattr(alone, name), atol=1e-5, rtol=0, err_msg=name
            )
        np.testing.assert_array_equal(mixed.topk_ids, alone.topk_ids)
        np.testing.assert_array_equal(mixed.rank, alone.rank)
        # Every batch-mate still matches its own reference, whatever its k and extras.
        for other, out in zip(batch, backend.score(batch), strict=True):
            ref = _reference(backend.model, dataclasses.replace(other, top_k=max(other.top_k, 1)))
            np.testing.assert_allclose(out.logprobs, ref["logprobs"], atol=ATOL, rtol=0)
            assert (out.topk_ids is None) == (other.top_k == 0)
            if other.top_k:
                np.testing.assert_array_equal(out.topk_ids, ref["topk_ids"][:, : other.top_k])
            assert (out.entropy is None) != other.want_entropy
            assert (out.rank is None) != other.want_rank
            assert (out.logsumexp is None) != other.want_logsumexp
            assert (out.candidate_logprobs is None) == (other.candidates is None)
            if other.candidates is not None:
                assert out.candidate_logprobs.shape == other.candidates.shape


def test_chunk_size_does_not_change_results(tiny_llama_dir: Path, llama: HFBackend) -> None:
    one_row = HFBackend(HFOptions(model_path=str(tiny_llama_dir), dtype="float32", chunk_size=1))
    rng = np.random.default_rng(5)
    tasks = [_full_task(_ids(rng, 40), 5, 40, k=4, n_cand=2, seed=s) for s in range(3)]
    for a, b in zip(one_row.score(tasks), llama.score(tasks), strict=True):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(a.topk_ids, b.topk_ids)


def test_empty_batch(llama: HFBackend) -> None:
    assert llama.score([]) == []
    assert llama.generate([]) == []


# ---- generation -------------------------------------------------------------------------


@torch.inference_mode()
def _greedy_reference(model: torch.nn.Module, prompt: np.ndarray, steps: int) -> list[int]:
    """Argmax continuation by full re-forwards, no cache, no padding."""
    ids = torch.as_tensor(prompt[None]).long()
    for _ in range(steps):
        next_id = model(ids).logits[0, -1].float().argmax()
        ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    return ids[0, len(prompt) :].tolist()


@torch.inference_mode()
def _untempered_logprobs(model: torch.nn.Module, prompt: np.ndarray, gen: np.ndarray) -> np.ndarray:
    ids = torch.as_tensor(np.concatenate([prompt, gen])[None]).long()
    logprobs_T_V = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    rows = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(gen))
    return logprobs_T_V[rows].gather(1, torch.as_tensor(gen).long()[:, None])[:, 0].numpy()


@pytest.mark.parametrize("backend_name", ["llama", "qwen", "gpt2"])
def test_greedy_equals_argmax_continuation(
    backend_name: str, request: pytest.FixtureRequest
) -> None:
    backend: HFBackend = request.getfixturevalue(backend_name)
    rng = np.random.default_rng(2)
    prompts = [_ids(rng, n) for n in (1, 4, 9)]
    outs = backend.generate([GenerateTask(p, max_new_tokens=8, temperature=0.0) for p in prompts])
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.ids.tolist() == _greedy_reference(backend.model, prompt, 8)
        assert out.finish_reason == "length"
        expected = _untempered_logprobs(backend.model, prompt, out.ids)
        np.testing.assert_allclose(out.logprobs, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend_name", ["llama", "qwen"])
def test_sampling_reproducible_and_independent_of_batch(
    backend_name: str, request: pytest.FixtureRequest
) -> None:
    backend: HFBackend = request.getfixturevalue(backend_name)
    rng = np.random.default_rng(4)
    task = GenerateTask(_ids(rng, 6), max_new_tokens=12, temperature=1.3, top_p=0.9, seed=1234)
    (alone,) = backend.generate([task])
    (again,) = backend.generate([task])
    assert alone.ids.tolist() == again.ids.tolist()
    others = [
        GenerateTask(_ids(rng, n), max_new_tokens=m, temperature=t, top_p=p, seed=s)
        for n, m, t, p, s in [
            (1, 3, 1.0, 1.0, 1),
            (15, 20, 0.7, 0.5, 2),
            (3, 5, 0.0, 1.0, None),
            (9, 1, 2.0, 1.0, 1234),
        ]
    ]
    mixed = backend.generate([others[0], others[1], task, others[2], others[3]])[2]
    assert mixed.ids.tolist() == alone.ids.tolist()
    # Left padding changes the attention reduction shapes: ~1e-5 drift over a KV-cached run.
    np.testing.assert_allclose(mixed.logprobs, alone.logprobs, atol=ATOL, rtol=0)
    expected = _untempered_logprobs(backend.model, task.prompt, alone.ids)
    np.testing.assert_allclose(alone.logprobs, expected, atol=ATOL, rtol=0)
    other_seed = backend.generate([dataclasses.replace(task, seed=99)])[0]
    assert other_seed.ids.tolist() != alone.ids.tolist()


def test_tiny_top_p_is_greedy(llama: HFBackend) -> None:
    prompt = _ids(np.random.default_rng(8), 5)
    (nucleus,) = llama.generate([GenerateTask(prompt, 10, temperature=1.0, top_p=1e-6, seed=3)])
    assert nucleus.ids.tolist() == _greedy_reference(llama.model, prompt, 10)


def test_stop_ids_end_generation(llama: HFBackend) -> None:
    prompt = _ids(np.random.default_rng(9), 4)
    greedy = _greedy_reference(llama.model, prompt, 10)
    stop = greedy[3]
    first = greedy.index(stop)
    (out,) = llama.generate([GenerateTask(prompt, 10, temperature=0.0, stop_ids=(stop, 999))])
    assert out.ids.tolist() == greedy[: first + 1]  # the stop id is included
    assert out.finish_reason == "stop"
    # A batch-mate that stops early does not cut the others short.
    outs = llama.generate(
        [
            GenerateTask(prompt, 10, temperature=0.0, stop_ids=(stop,)),
            GenerateTask(prompt, 10, temperature=0.0),
        ]
    )
    assert outs[0].finish_reason == "stop" and outs[1].finish_reason == "length"
    assert outs[1].ids.tolist() == greedy


# ---- description, options, registry ------------------------------------------------------


def test_info(qwen: HFBackend, llama: HFBackend, tiny_qwen_dir: Path) -> None:
    info = qwen.info()
    assert (info.backend, info.dtype, info.device) == ("hf", "float32", "cpu")
    assert info.vocab_size == 448 and info.tokenizer.vocab_size == TOKENIZER_VOCAB
    assert info.max_sequence_length == 512
    assert info.tokenizer == llama.info().tokenizer
    lowered = HFBackend(HFOptions(model_path=str(tiny_qwen_dir), max_sequence_length=64))
    assert lowered.info().max_sequence_length == 64
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings 512"):
        HFBackend(HFOptions(model_path=str(tiny_qwen_dir), max_sequence_length=4096))


def test_bfloat16_dtype_and_warmup(tiny_llama_dir: Path) -> None:
    backend = HFBackend(HFOptions(model_path=str(tiny_llama_dir), dtype="bfloat16"))
    assert backend.info().dtype == "bfloat16"
    backend.warmup()
    task = _full_task(_ids(np.random.default_rng(1), 12), 1, 12, k=3, n_cand=1, seed=0)
    (out,) = backend.score([task])
    assert out.logprobs.dtype == np.float32 and np.isfinite(out.logprobs).all()


def test_registry(tiny_llama_dir: Path) -> None:
    backend = load_backend("hf", model_path=str(tiny_llama_dir), device="cpu", dtype="auto")
    assert backend.info().dtype == "float32"
    with pytest.raises(ValueError, match="unknown backend 'vllm'; known: hf"):
        load_backend("vllm", model_path=str(tiny_llama_dir))
    with pytest.raises(ValueError, match="chunk_sise"):
        load_backend("hf", model_path=str(tiny_llama_dir), chunk_sise=4)
    with pytest.raises(ValueError, match="CUDA is not available|invalid device"):
        load_backend("hf", model_path=str(tiny_llama_dir), device="cuda:7")
    with pytest.raises(ValueError, match="invalid device"):
        load_backend("hf", model_path=str(tiny_llama_dir), device="tpu0")


def test_head_transforms_checked_against_model() -> None:
    config = Gemma2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        final_logit_softcapping=0.5,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    head = OutputHead.of(model)
    assert head.softcap == 0.5
    ids = torch.arange(10)
    with torch.inference_mode():
        head.check_against_model(model, ids)
        with pytest.raises(ValueError, match="applies a transform"):
            dataclasses.replace(head, softcap=None).check_against_model(model, ids)
