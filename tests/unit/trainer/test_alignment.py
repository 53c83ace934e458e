"""The response alignment helpers against a per-token loop."""

import torch

from tropd.trainer.alignment import flat_response_positions, response_index


def test_response_index_matches_naive_loop() -> None:
    starts = torch.tensor([1, 3, 5])
    lengths = torch.tensor([4, 0, 2])
    width = 4
    idx, valid = response_index(starts, lengths, width)
    for b in range(3):
        for j in range(width):
            assert bool(valid[b, j]) == (j < int(lengths[b]))
            if valid[b, j]:
                # response token j sits at ids[start + j] and is predicted by position start + j - 1
                assert int(idx[b, j]) == int(starts[b]) + j - 1
    assert int(idx.min()) >= 0


def test_flat_positions_predict_the_response_tokens() -> None:
    starts = torch.tensor([1, 3, 5])
    lengths = torch.tensor([4, 0, 2])
    ids_B_L = torch.arange(3 * 8).reshape(3, 8)  # distinct ids: each names its own position
    positions_N, valid_B_T = flat_response_positions(starts, lengths, 4, 8)
    assert positions_N.tolist() == sorted(positions_N.tolist())
    assert positions_N.numel() == int(lengths.sum()) == int(valid_B_T.sum())
    # flat position p predicts the token at flat position p + 1, in the same row
    predicted = ids_B_L.reshape(-1)[positions_N + 1]
    expected = [
        int(ids_B_L[b, int(starts[b]) + j]) for b in range(3) for j in range(int(lengths[b]))
    ]
    assert predicted.tolist() == expected
    placed = torch.zeros(3, 4, dtype=torch.long)
    placed[valid_B_T] = predicted
    assert placed[2, :2].tolist() == [ids_B_L[2, 5], ids_B_L[2, 6]]
