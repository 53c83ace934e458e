"""The response alignment helper against a per-token loop."""

import torch

from tropd.trainer.alignment import gather_positions, response_index


def test_response_index_matches_naive_loop() -> None:
    torch.manual_seed(0)
    starts = torch.tensor([1, 3, 5])
    lengths = torch.tensor([4, 0, 2])
    width = 4
    logits_B_L_V = torch.randn(3, 8, 5)
    idx, valid = response_index(starts, lengths, width)
    got = gather_positions(logits_B_L_V, idx)
    for b in range(3):
        for j in range(width):
            assert bool(valid[b, j]) == (j < int(lengths[b]))
            if valid[b, j]:
                # response token j sits at ids[start + j] and is predicted by logits[start + j - 1]
                assert torch.equal(got[b, j], logits_B_L_V[b, int(starts[b]) + j - 1])
    assert int(idx.min()) >= 0
