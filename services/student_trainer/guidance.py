"""Teacher drafts for off-policy guidance (and for the `sft` baseline).

A draft is the teacher's own response to a prompt, as token ids ending with eos. Drafts come from
the teacher service (`Generate`) on demand, or from a JSONL file written ahead of time by
`tropd-train generate-drafts` (one {"prompt": ..., "draft_ids": [...]} per line).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tropd.teacher.client import TeacherClient
from tropd.trainer.config import GuidanceConfig
from tropd.trainer.errors import SetupError
from tropd.trainer.losses import guidance_prefix_len
from tropd.trainer.prompts import PromptCodec
from tropd.trainer.tasks.base import Example


class DraftFileError(SetupError):
    """The drafts file is missing, malformed, or lacks a prompt the trainer asked for."""


@dataclass(frozen=True)
class DraftRequest:
    """How the teacher writes drafts: the response budget, stop ids, temperature, and the
    teacher's `max_request_tokens` (prompts + new tokens of one Generate request)."""

    max_new_tokens: int
    eos_ids: tuple[int, ...]
    temperature: float
    max_request_tokens: int = 1 << 62


def teacher_drafts(
    client: TeacherClient, prompts: Sequence[Sequence[int]], request: DraftRequest, seed: int
) -> list[np.ndarray]:
    """Ask the teacher service for one draft per prompt, in as many Generate requests as its
    request limit needs. Prompt i samples with seed + i whatever the split, so a resumed run
    gets the same drafts."""
    drafts: list[np.ndarray] = []
    lo = 0
    while lo < len(prompts):
        hi, tokens = lo, 0
        while hi < len(prompts) and (
            hi == lo or tokens + len(prompts[hi]) + request.max_new_tokens
            <= request.max_request_tokens
        ):
            tokens += len(prompts[hi]) + request.max_new_tokens
            hi += 1
        results = client.generate(
            [list(p) for p in prompts[lo:hi]],
            max_new_tokens=request.max_new_tokens,
            temperature=request.temperature,
            seed=seed + lo,
            stop_ids=request.eos_ids,
        )
        drafts.extend(np.asarray(r.ids, dtype=np.int64) for r in results)
        lo = hi
    return drafts


def load_drafts(path: str | Path) -> dict[str, np.ndarray]:
    """Read a drafts JSONL file into {prompt text: draft ids}."""
    drafts: dict[str, np.ndarray] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DraftFileError(f"cannot read drafts file {path}: {exc.strerror}") from exc
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            drafts[str(record["prompt"])] = np.asarray(record["draft_ids"], dtype=np.int64)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DraftFileError(
                f'{path}:{lineno}: expected {{"prompt": str, "draft_ids": [int, ...]}} ({exc})'
            ) from exc
    return drafts


def drafts_for(
    examples: Sequence[Example], table: dict[str, np.ndarray], path: str
) -> list[np.ndarray]:
    """Look up the drafts of `examples` in a loaded drafts file."""
    missing = [ex.prompt for ex in examples if ex.prompt not in table]
    if missing:
        raise DraftFileError(
            f"{path} has no draft for prompt {missing[0]!r} ({len(missing)} missing)"
        )
    return [table[ex.prompt] for ex in examples]


def write_drafts(
    client: TeacherClient,
    codec: PromptCodec,
    examples: Sequence[Example],
    out_path: str | Path,
    request: DraftRequest,
    seed: int = 0,
    batch_size: int = 64,
) -> int:
    """Generate a draft for every example through the teacher and write the JSONL file.

    Returns:
        The number of drafts written.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        for lo in range(0, len(examples), batch_size):
            chunk = examples[lo : lo + batch_size]
            drafts = teacher_drafts(client, codec.encode(chunk), request, seed + lo)
            for ex, draft in zip(chunk, drafts, strict=True):
                fh.write(json.dumps({"prompt": ex.prompt, "draft_ids": draft.tolist()}) + "\n")
    return len(examples)


def strip_eos(draft: np.ndarray, eos_ids: Sequence[int]) -> np.ndarray:
    """A guidance prefix never includes the draft's eos: the student writes its own ending."""
    return draft[:-1] if draft.size and int(draft[-1]) in eos_ids else draft


@dataclass(frozen=True)
class Drafts:
    """Where a run's drafts come from: a drafts file (`table`) or the teacher service (`client`).

    Teacher drafts are seeded per step (`seed * 1_000_003 + step`), so a resumed run asks for
    the same drafts it would have got.
    """

    cfg: GuidanceConfig
    client: TeacherClient
    table: dict[str, np.ndarray] | None  # {prompt text: draft ids} when cfg.source == "file"
    seed: int
    request: DraftRequest

    def for_step(
        self, step: int, examples: Sequence[Example], prompts: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        """One draft per example (ids ending with eos when the teacher stopped)."""
        if self.table is not None:
            return drafts_for(examples, self.table, str(self.cfg.drafts_file))
        return teacher_drafts(self.client, prompts, self.request, self.seed * 1_000_003 + step)

    def prefixes(
        self, step: int, total_steps: int, examples: Sequence[Example],
        prompts: Sequence[Sequence[int]],
    ) -> list[np.ndarray]:  # fmt: skip
        """Guidance prefixes for the step: the first `fraction` of the prompts get the opening
        of a teacher draft (length on the cosine schedule of `guidance_prefix_len`), the rest
        an empty prefix."""
        n_guided = int(round(self.cfg.fraction * len(prompts)))
        prefixes = [np.zeros(0, np.int64)] * len(prompts)
        if n_guided:
            drafts = self.for_step(step, examples[:n_guided], prompts[:n_guided])
            for i, draft in enumerate(drafts):
                draft = strip_eos(draft, self.request.eos_ids)
                prefixes[i] = draft[: guidance_prefix_len(step, total_steps, int(draft.size))]
        return prefixes
