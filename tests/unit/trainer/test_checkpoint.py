"""checkpoint: atomic step folders, HF-loadable weights, exact resume, float16's loss scale,
corruption handling, pruning.

Uses a real tiny GPT-2 (with dropout, so the global torch RNG matters) and a word-level tokenizer
built in the test; nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from tropd.trainer.checkpoint import (
    CheckpointError,
    TrainState,
    find_latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from tropd.trainer.precision import Precision

VOCAB = 32
# Fixed toy corpus: 16 sequences of 8 token ids.
DATA_N_L = (torch.arange(16 * 8).reshape(16, 8) * 7) % VOCAB
CONFIG = {"name": "toy", "optim": {"lr": 0.01, "betas": [0.9, 0.99]}, "loss": {"method": "tropd"}}


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def _model(init_seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(init_seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=16,
        n_embd=16,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.1,
        embd_pdrop=0.1,
        attn_pdrop=0.1,
    )
    return GPT2LMHeadModel(config).train()


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _train(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sampler: torch.Generator,
    data_state: dict,
    steps: int,
) -> list[float]:
    """A toy loop drawing on every RNG a real loop uses: a sampler generator (rows), python
    `random` (crop offset), numpy (token noise) and torch's global RNG (dropout)."""
    losses = []
    for _ in range(steps):
        rows_B = torch.randint(0, DATA_N_L.shape[0], (4,), generator=sampler)
        offset = random.randrange(3)
        ids_B_T = DATA_N_L[rows_B, offset : offset + 6].clone()
        ids_B_T[:, -1] = torch.from_numpy(np.random.randint(0, VOCAB, size=4))
        loss = model(input_ids=ids_B_T, labels=ids_B_T).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        data_state["seen"] += 4
        losses.append(loss.item())
    return losses


def _save(run_dir: Path, step: int, model: torch.nn.Module, keep_last: int | None = None) -> Path:
    state = TrainState(step=step, data_state={"seen": step}, elapsed_s=1.5 * step)
    return save_checkpoint(
        run_dir, step, model, _tokenizer(), _optimizer(model), state, CONFIG, keep_last=keep_last
    )


def _draws(sampler: torch.Generator) -> tuple[float, ...]:
    """One draw from every RNG a checkpoint restores."""
    return (
        random.random(),
        float(np.random.rand()),
        torch.rand(1).item(),
        torch.rand(1, generator=sampler).item(),
    )


def test_round_trip(tmp_path: Path) -> None:
    model, sampler = _model(0), torch.Generator().manual_seed(7)
    opt = _optimizer(model)
    data_state = {"seen": 0}
    _train(model, opt, sampler, data_state, 1)
    state = TrainState(step=1, data_state=data_state, elapsed_s=3.25)
    path = save_checkpoint(
        tmp_path, 1, model, _tokenizer(), opt, state, CONFIG, generators={"sampler": sampler}
    )
    expected_draws = _draws(sampler)

    assert path == tmp_path / "checkpoints" / "step-000001"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    meta = verify_checkpoint(path)
    assert meta["step"] == 1 and meta["wall_time_s"] == 3.25 and meta["tropd_version"]
    assert set(meta["weights_sha256"]) == {"model.safetensors"}
    assert {"optimizer.pt", "rng.pt", "train_state.json", "train_config.yaml"} <= set(meta["files"])

    # The weights are a plain HF folder.
    hf_model = AutoModelForCausalLM.from_pretrained(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(hf_model.state_dict()[name], tensor), name
    assert AutoTokenizer.from_pretrained(path)("w3 w4").input_ids == [3, 4]

    _seed_all(12345)
    fresh, fresh_sampler = _model(99), torch.Generator().manual_seed(0)
    fresh_opt = _optimizer(fresh)
    loaded = load_checkpoint(path, fresh, fresh_opt, generators={"sampler": fresh_sampler})
    assert loaded == state
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    assert fresh.lm_head.weight is fresh.transformer.wte.weight  # still tied after loading
    assert torch.equal(
        fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    assert _draws(fresh_sampler) == expected_draws


def test_resume_equals_straight_run(tmp_path: Path) -> None:
    """torchtune's guarantee: 4 steps straight == 2 steps, save, load into fresh objects, 2."""
    torch.set_num_threads(1)
    model, sampler = _model(0), torch.Generator().manual_seed(7)
    opt, data_state = _optimizer(model), {"seen": 0}
    _seed_all(0)
    straight_losses = _train(model, opt, sampler, data_state, 4)

    model_a, sampler_a = _model(0), torch.Generator().manual_seed(7)
    opt_a, data_a = _optimizer(model_a), {"seen": 0}
    _seed_all(0)
    first_losses = _train(model_a, opt_a, sampler_a, data_a, 2)
    path = save_checkpoint(
        tmp_path,
        2,
        model_a,
        _tokenizer(),
        opt_a,
        TrainState(2, data_a),
        CONFIG,
        generators={"sampler": sampler_a},
    )
    del model_a, opt_a, sampler_a

    _seed_all(999)  # a new process would start from other RNG states
    model_b, sampler_b = _model(1), torch.Generator().manual_seed(1)
    opt_b = _optimizer(model_b)
    state = load_checkpoint(path, model_b, opt_b, generators={"sampler": sampler_b})
    assert state.step == 2
    resumed_losses = first_losses + _train(model_b, opt_b, sampler_b, state.data_state, 2)

    assert resumed_losses == straight_losses  # bitwise
    assert state.data_state == data_state == {"seen": 16}
    for name, tensor in model.state_dict().items():
        assert torch.equal(model_b.state_dict()[name], tensor), name


def _truncate_weights(path: Path) -> str:
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    return "model.safetensors has"


def _flip_weight_byte(path: Path) -> str:
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    return "sha256 does not match"


def _delete_meta(path: Path) -> str:
    (path / "meta.json").unlink()
    return "no meta.json"


def _garble_meta(path: Path) -> str:
    (path / "meta.json").write_text('{"step": 3, "fil')
    return "unreadable meta.json"


def _delete_optimizer(path: Path) -> str:
    (path / "optimizer.pt").unlink()
    return "missing file optimizer.pt"


@pytest.mark.parametrize(
    "corrupt", [_truncate_weights, _flip_weight_byte, _delete_meta, _garble_meta, _delete_optimizer]
)
def test_corrupt_latest_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, corrupt
) -> None:
    model = _model(0)
    for step in (1, 2, 3):
        _save(tmp_path, step, model)
    bad = tmp_path / "checkpoints" / "step-000003"
    reason = corrupt(bad)

    with caplog.at_level(logging.WARNING, logger="tropd.trainer.checkpoint"):
        latest = find_latest_checkpoint(tmp_path)
    assert latest == tmp_path / "checkpoints" / "step-000002"
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "step-000003" in warning and reason in warning
    with pytest.raises(CheckpointError, match=reason.split()[0]):
        load_checkpoint(bad, _model(1))


def test_leftover_temp_dir_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _model(0)
    _save(tmp_path, 1, model)
    partial = tmp_path / "checkpoints" / ".tmp-step-000002-4242"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half a file")

    with caplog.at_level(logging.WARNING, logger="tropd.trainer.checkpoint"):
        latest = find_latest_checkpoint(tmp_path)
    assert latest == tmp_path / "checkpoints" / "step-000001"
    assert any(
        ".tmp-step-000002-4242" in r.getMessage() and "unfinished" in r.getMessage()
        for r in caplog.records
    )


def test_no_checkpoint(tmp_path: Path) -> None:
    assert find_latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    assert find_latest_checkpoint(tmp_path) is None


def test_keep_last_prunes_oldest(tmp_path: Path) -> None:
    model = _model(0)
    for step in range(1, 6):
        _save(tmp_path, step, model, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000004", "step-000005"]


def test_resaving_older_step_drops_abandoned_newer_ones(tmp_path: Path) -> None:
    model = _model(0)
    for step in (2, 4, 6):
        _save(tmp_path, step, model)
    _save(tmp_path, 4, model)  # resumed from step 2 or 4 and saved again
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000002", "step-000004"]
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000004"


def test_bad_arguments_write_nothing(tmp_path: Path) -> None:
    model = _model(0)
    opt, tok = _optimizer(model), _tokenizer()
    with pytest.raises(ValueError, match="state.step"):
        save_checkpoint(tmp_path, 2, model, tok, opt, TrainState(1), CONFIG)
    with pytest.raises(ValueError, match="not serialisable"):
        save_checkpoint(tmp_path, 1, model, tok, opt, TrainState(1, {"x": object()}), CONFIG)
    with pytest.raises(ValueError, match="not serialisable"):
        save_checkpoint(tmp_path, 1, model, tok, opt, TrainState(1), {"path": Path("/x")})
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_weights_that_do_not_fit_raise(tmp_path: Path) -> None:
    path = _save(tmp_path, 1, _model(0))
    wider = GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    )
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_checkpoint(path, wider)
    model = _model(0)
    one_group = torch.optim.AdamW([model.transformer.wte.weight])
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        load_checkpoint(path, model, one_group)


def test_config_and_state_files_are_readable(tmp_path: Path) -> None:
    path = _save(tmp_path, 3, _model(0))
    assert json.loads((path / "train_state.json").read_text()) == {
        "step": 3,
        "elapsed_s": 4.5,
        "data_state": {"seen": 3},
    }
    assert yaml.safe_load((path / "train_config.yaml").read_text()) == CONFIG


def _fp16_scaler() -> torch.amp.GradScaler:
    """The run's own scaler (enabled on CPU too) after an overflowed step and a good one: its
    scale has backed off from the initial 2**16 and its growth tracker counts one step."""
    scaler = Precision.of("float16", "cpu").scaler
    assert scaler is not None and scaler.is_enabled()
    model = _model(0)
    opt = _optimizer(model)
    for overflow in (1e35, 1.0):  # 1e35 * 2**16 is past float32's max: inf gradients
        loss = model(input_ids=DATA_N_L[:2], labels=DATA_N_L[:2]).loss * overflow
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    assert scaler.get_scale() == 2.0**15 and scaler.state_dict()["_growth_tracker"] == 1
    return scaler


def test_float16_loss_scale_round_trip(tmp_path: Path) -> None:
    model, scaler = _model(0), _fp16_scaler()
    path = save_checkpoint(tmp_path, 1, model, _tokenizer(), _optimizer(model), TrainState(1),
                           CONFIG, scaler=scaler)  # fmt: skip
    assert "scaler.pt" in verify_checkpoint(path)["files"]
    fresh = Precision.of("float16", "cpu").scaler
    assert fresh is not None and fresh.get_scale() == 2.0**16
    load_checkpoint(path, _model(1), scaler=fresh)
    assert fresh.state_dict() == scaler.state_dict()
    assert fresh.get_scale() == 2.0**15


def test_checkpoint_without_a_loss_scale_still_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A float32 run writes no scaler.pt, and a checkpoint from before it was saved resumes a
    float16 run at the initial scale, with a warning."""
    path = _save(tmp_path, 1, _model(0))
    assert not (path / "scaler.pt").exists()
    fresh = Precision.of("float16", "cpu").scaler
    assert fresh is not None
    with caplog.at_level(logging.WARNING, logger="tropd.trainer.checkpoint"):
        load_checkpoint(path, _model(1), scaler=fresh)
    assert "holds no float16 loss scale" in caplog.text
    assert fresh.get_scale() == 2.0**16

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_round_trip(tmp_path: Path) -> None:
    model = _model(0).cuda()
    cuda_sampler = torch.Generator(device="cuda").manual_seed(3)
    torch.rand(1, device="cuda")  # initialise CUDA so its RNG state is part of the checkpoint
    path = save_checkpoint(
        tmp_path,
        1,
        model,
        _tokenizer(),
        _optimizer(model),
        TrainState(1),
        CONFIG,
        generators={"cuda_sampler": cuda_sampler},
    )
    expected = (torch.rand(4, device="cuda"), torch.rand(4, device="cuda", generator=cuda_sampler))
    torch.cuda.manual_seed_all(999)
    fresh_sampler = torch.Generator(device="cuda").manual_seed(0)
    load_checkpoint(path, _model(1).cuda(), generators={"cuda_sampler": fresh_sampler})
    assert torch.equal(torch.rand(4, device="cuda"), expected[0])
    assert torch.equal(torch.rand(4, device="cuda", generator=fresh_sampler), expected[1])
