"""Feedback rows -> token tensors for KTO.

A row is TRL's KTO format: ``prompt`` (text, or a list of chat messages),
``completion`` (text, or a one-message assistant list) and ``label`` (bool,
True = desirable). ``messages`` is accepted in place of ``prompt``.

Tokenisation: the prompt goes through the tokenizer's chat template (with the
generation prompt) when it has one; the completion is tokenised on its own
and followed by EOS, so the loss sees exactly what the model would emit,
stop token included. Loss is on completion tokens only. A BOS that the
tokenizer adds by default is added once, even when the template writes it too.

Truncation to ``max_length`` keeps the end of the prompt (the question and
the generation prompt) and the start of the completion (what the model says
first); BOS is always kept.

The KL partner of example i in a microbatch of m is example (i+1) mod m
("next", DESIGN.md) or (i-1) mod m ("previous", TRL's choice): same
estimator, other neighbour. Its sequence is i's prompt with the partner's
completion. A partner with the same prompt would make that "mismatched"
pair a matched one (paired imports, several responses per prompt), so then
the neighbours are taken around a ring that keeps equal prompts apart
(:func:`kl_partners`).
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch


class RowError(ValueError):
    """A feedback row is malformed; the message names the row and the field."""


@dataclass(frozen=True)
class Example:
    prefix: tuple[int, ...]  # BOS when the model wants one, else empty
    prompt: tuple[int, ...]  # prompt tokens, BOS excluded
    completion: tuple[int, ...]  # completion tokens, EOS included
    label: bool

    @property
    def num_tokens(self) -> int:
        return len(self.prefix) + len(self.prompt) + len(self.completion)


Pair = tuple[list[int], list[int]]  # (prompt tokens with prefix, completion tokens), truncated


@dataclass
class Sequences:
    """Right-padded token sequences of one microbatch."""

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 1 on real tokens
    completion_mask: torch.Tensor  # (B, T) bool, True on completion tokens (the ones scored)

    def to(self, device) -> Sequences:
        return Sequences(self.input_ids.to(device), self.attention_mask.to(device), self.completion_mask.to(device))


@dataclass
class Packed:
    """The matched and KL pairs of a microbatch in a few rows, without padding waste.

    Each example is one segment: its prompt x_i once, then two branches, its
    own completion y_i and its KL partner's y_j. Attention stays inside a
    segment; a branch sees the prompt and itself, never the other branch; the
    positions of both branches continue right after the prompt. So one
    forward gives log pi(y_i|x_i) and log pi(y_j|x_i) exactly as two separate
    sequences would, with the prompt computed once. Segments are packed
    first-fit-decreasing into rows no longer than the longest segment. (A KL
    pair whose prompt was truncated differently is a segment of its own.)
    """

    input_ids: torch.Tensor  # (R, L) long
    position_ids: torch.Tensor  # (R, L) long
    segment: torch.Tensor  # (R, L) long, segment id; -1 on padding
    branch: torch.Tensor  # (R, L) long, 0 prompt, 1.. the branch number within the segment
    score_from: torch.Tensor  # (N,) long, flat (R*L) index of the hidden state that predicts each scored token
    targets: torch.Tensor  # (N,) long, the scored completion tokens
    score_slot: torch.Tensor  # (N,) long, flat index into the (B, Wm) matched then (B, Wk) KL score grids
    widths: tuple[int, int]  # (Wm, Wk): score grids laid out as the padded sequences' (T-1) positions
    size: int  # B
    has_kl: bool

    def to(self, device) -> Packed:
        tensors = {k: getattr(self, k).to(device) for k in
                   ("input_ids", "position_ids", "segment", "branch", "score_from", "targets", "score_slot")}
        return Packed(**tensors, widths=self.widths, size=self.size, has_kl=self.has_kl)

    def attention_mask(self) -> torch.Tensor:
        """(R, 1, L, L) bool, True where query q may attend to key k."""
        idx = torch.arange(self.input_ids.shape[1], device=self.input_ids.device)
        causal = idx[None, :] <= idx[:, None]
        same = self.segment[:, :, None] == self.segment[:, None, :]
        branch_q, branch_k = self.branch[:, :, None], self.branch[:, None, :]
        # Padding is segment -1, branch 0: it attends to earlier padding (never an empty row, so no NaN).
        return (same & causal & ((branch_k == 0) | (branch_k == branch_q))).unsqueeze(1)


@dataclass
class Batch:
    indices: list[int]  # example indices, in microbatch order
    matched: Sequences  # x_i + y_i
    kl: Sequences | None  # x_i + y_partner(i); None when kl_mode is "zero"
    labels: torch.Tensor  # (B,) bool
    num_tokens: int  # real prompt + completion tokens of the matched pairs (for tokens/s)
    packed: Packed | None = None  # the same pairs with shared prompts, when requested
    matched_pairs: list[Pair] | None = None  # the unpadded token lists, for the per-sequence layout
    kl_pairs: list[Pair] | None = None
    per_sequence: bool = False  # score with one forward per example (alignment.logps.per_sequence_logps)
    workers: int = 1  # per-sequence layout: threads scoring examples at once
    kl_partners: list[int] | None = None  # position of each example's KL partner in the microbatch
    dropout_seeds: list[int] | None = None  # per example: its LoRA dropout generator's seed (training only)
    pad_id: int = 0  # what fills the rows of packs built from the pairs later (alignment.train.pair_logps)


def _as_messages(value, *, index: int, field: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RowError(f"row {index}: {field} must be text or a non-empty list of chat messages")
    for m in value:
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RowError(f"row {index}: each message in {field} needs string 'role' and 'content'")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _row_parts(row, index: int) -> tuple[str | list[dict], str, bool]:
    if not isinstance(row, Mapping):
        raise RowError(f"row {index}: expected an object with prompt/messages, completion and label")
    prompt = row.get("prompt", row.get("messages"))
    if prompt is None:
        raise RowError(f"row {index}: needs 'prompt' (text or chat messages) or 'messages'")
    if not isinstance(prompt, str):
        prompt = _as_messages(prompt, index=index, field="prompt")
    completion = row.get("completion")
    if isinstance(completion, list):
        messages = _as_messages(completion, index=index, field="completion")
        completion = "".join(m["content"] for m in messages)
    if not isinstance(completion, str) or not completion:
        raise RowError(f"row {index}: 'completion' must be non-empty text")
    label = row.get("label")
    if not isinstance(label, bool):
        raise RowError(f"row {index}: 'label' must be true (desirable) or false (undesirable), got {label!r}")
    return prompt, completion, label


def render_prompt(prompt: str | list[dict], tokenizer) -> str:
    """The prompt text the model sees, up to where the completion starts."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, str):
        return prompt
    # No template: a plain transcript ending where the assistant speaks.
    return "".join(f"{m['role']}: {m['content']}\n" for m in prompt) + "assistant: "


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts a BOS in front of plain text by default (Llama-style)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bool(with_special) and with_special[0] == bos and without[:1] != [bos]


TOKENIZE_CHUNK = 1024  # rows tokenised at once: the texts of one chunk are in memory, not the whole dataset


def tokenize_rows(rows: Iterable[Mapping], tokenizer) -> list[Example]:
    """Validate and tokenise rows (no truncation yet: see :func:`truncate`).

    ``rows`` may be a generator (a snapshot streamed from its file): rows are
    consumed a chunk at a time, so only token ids outlive their chunk.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: KTO needs one after each completion")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    prefix = (bos,) if adds_bos(tokenizer) else ()
    examples: list[Example] = []
    parts: list[tuple[str | list[dict], str, bool]] = []

    def flush() -> None:
        prompts = tokenizer([render_prompt(p, tokenizer) for p, _, _ in parts], add_special_tokens=False)["input_ids"]
        completions = tokenizer([c for _, c, _ in parts], add_special_tokens=False)["input_ids"]
        for (_, _, label), p_ids, c_ids in zip(parts, prompts, completions, strict=True):
            # We add the BOS ourselves; a template that writes it too would double it.
            if prefix and p_ids[:1] == [bos]:
                p_ids = p_ids[1:]
            examples.append(Example(prefix, tuple(p_ids), tuple(c_ids) + (eos,), label))
        parts.clear()

    for i, row in enumerate(rows):
        parts.append(_row_parts(row, i))
        if len(parts) == TOKENIZE_CHUNK:
            flush()
    if parts:
        flush()
    return examples


def truncate(example_prefix: Sequence[int], prompt: Sequence[int], completion: Sequence[int], *,
             max_length: int, prompt_budget: int) -> tuple[list[int], list[int]]:
    """(prompt tokens with prefix, completion tokens) fitting in ``max_length``.

    When both do not fit, the prompt keeps its last ``max(prompt_budget,
    room left by the whole completion)`` tokens and the completion its first
    ones; the completion always keeps at least one token.
    """
    room = max_length - len(example_prefix)
    if len(prompt) + len(completion) <= room:
        return list(example_prefix) + list(prompt), list(completion)
    keep_prompt = min(len(prompt), max(prompt_budget, room - len(completion)), room - 1)
    keep_completion = room - keep_prompt
    kept_prompt = list(prompt[len(prompt) - keep_prompt:]) if keep_prompt > 0 else []
    return list(example_prefix) + kept_prompt, list(completion[:keep_completion])


def kl_partner(i: int, m: int, pairing: str) -> int:
    """Index of the example whose completion is paired with prompt i (m >= 2)."""
    if pairing == "next":
        return (i + 1) % m
    if pairing == "previous":
        return (i - 1) % m
    raise ValueError(f"pairing must be 'next' or 'previous', got {pairing!r}")


def _ring_without_neighbours(prompts: Sequence[Hashable]) -> list[int]:
    """Positions in a cyclic order where no two neighbours share a prompt, whenever no prompt holds
    more than half of them: the groups, largest first, laid on the even slots, then the odd ones."""
    groups: dict[Hashable, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(i)
    flat = [i for group in sorted(groups.values(), key=len, reverse=True) for i in group]
    ring = [0] * len(flat)
    slots = list(range(0, len(flat), 2)) + list(range(1, len(flat), 2))
    for slot, i in zip(slots, flat, strict=True):
        ring[slot] = i
    return ring


def kl_partners(prompts: Sequence[Hashable], pairing: str) -> list[int]:
    """Position of each example's KL partner, given the examples' prompts (m >= 2).

    Distinct neighbours keep :func:`kl_partner` exactly. Otherwise the
    partners are the neighbours around a ring that keeps equal prompts
    apart (still a permutation: each completion is used once); where one
    prompt holds more than half the microbatch no permutation can avoid
    it, and such an example's partner is the next one along the ring with
    another prompt. Only a microbatch of one prompt keeps shared-prompt pairs.
    """
    m = len(prompts)
    step = kl_partner(0, m, pairing)  # validates pairing: 1 ("next") or m - 1 ("previous")
    ring = list(range(m))
    if any(prompts[i] == prompts[(i + 1) % m] for i in range(m)) and len(set(prompts)) > 1:
        ring = _ring_without_neighbours(prompts)
    partners = [0] * m
    for k, i in enumerate(ring):
        j = (k + step) % m
        while prompts[ring[j]] == prompts[i] and ring[j] != i:
            j = (j + step) % m
        partners[i] = ring[j] if ring[j] != i else ring[(k + step) % m]
    return partners


def _pad(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> Sequences:
    width = max(len(p) + len(c) for p, c in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    completion = torch.zeros((len(pairs), width), dtype=torch.bool)
    for row, (p, c) in enumerate(pairs):
        n = len(p) + len(c)
        ids[row, :n] = torch.tensor(p + c, dtype=torch.long)
        attention[row, :n] = 1
        completion[row, len(p):n] = True
    return Sequences(ids, attention, completion)


def pack(matched: list[tuple[list[int], list[int]]], kl: list[tuple[list[int], list[int]]] | None,
         pad_id: int, *, rows_of: int = 1) -> Packed:
    """:class:`Packed` from the (prompt, completion) pairs that :func:`collate` pads.

    Rows hold up to ``rows_of`` times the longest segment: 1 keeps attention's cost (quadratic in the
    row under a dense 4D mask) at the padded batch's; 2 lets two long sequences share a row, so nearly
    no row is padding, for about twice the attention work per token (small next to the MLP's at these
    lengths)."""
    m = len(matched)
    # A segment: (prompt, [(grid slot, completion), ...]); slot i = matched i, slot m + i = KL pair i.
    segments: list[tuple[list[int], list[tuple[int, list[int]]]]] = []
    for i, (prompt, completion) in enumerate(matched):
        branches = [(i, completion)]
        if kl is not None:
            kl_prompt, kl_completion = kl[i]
            if kl_prompt == prompt:
                branches.append((m + i, kl_completion))
            else:
                segments.append((kl_prompt, [(m + i, kl_completion)]))
        segments.append((prompt, branches))
    sizes = [len(p) + sum(len(c) for _, c in b) for p, b in segments]
    capacity = rows_of * max(sizes)
    rows: list[list[int]] = []
    fill: list[int] = []
    for s in sorted(range(len(segments)), key=lambda s: -sizes[s]):  # first fit, decreasing
        row = next((r for r in range(len(rows)) if fill[r] + sizes[s] <= capacity), None)
        if row is None:
            rows.append([])
            fill.append(0)
            row = len(rows) - 1
        rows[row].append(s)
        fill[row] += sizes[s]

    width = max(fill)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    branch = torch.zeros((len(rows), width), dtype=torch.long)
    grid_m = max(len(p) + len(c) for p, c in matched) - 1
    grid_k = max(len(p) + len(c) for p, c in kl) - 1 if kl is not None else 0
    score_from, targets, score_slot = [], [], []
    for r, members in enumerate(rows):
        offset = 0
        for s in members:
            prompt, branches = segments[s]
            n = len(prompt)
            ids[r, offset:offset + n] = torch.tensor(prompt, dtype=torch.long)
            positions[r, offset:offset + n] = torch.arange(n)
            segment[r, offset:offset + n] = s
            start = offset + n
            for number, (slot, completion) in enumerate(branches, start=1):
                c = len(completion)
                ids[r, start:start + c] = torch.tensor(completion, dtype=torch.long)
                positions[r, start:start + c] = torch.arange(n, n + c)
                segment[r, start:start + c] = s
                branch[r, start:start + c] = number
                grid = (slot * grid_m) if slot < m else (m * grid_m + (slot - m) * grid_k)
                for j in range(c):
                    if n + j == 0:
                        continue  # the very first token of a sequence is never scored
                    # Token j is predicted by the prompt's last state (j = 0) or by its predecessor in the branch.
                    score_from.append(r * width + (offset + n - 1 if j == 0 else start + j - 1))
                    targets.append(completion[j])
                    score_slot.append(grid + n + j - 1)  # where the padded sequence would hold it
                start += c
            offset = start
    return Packed(ids, positions, segment, branch, torch.tensor(score_from, dtype=torch.long),
                  torch.tensor(targets, dtype=torch.long), torch.tensor(score_slot, dtype=torch.long),
                  (grid_m, grid_k), m, kl is not None)


def collate(examples: Sequence[Example], indices: Sequence[int], *, max_length: int, prompt_budget: int,
            pad_id: int, pairing: str = "next", with_kl: bool = True, packed: bool = False) -> Batch:
    """One microbatch of ``examples[indices]`` with its KL pairs."""
    chosen = [examples[i] for i in indices]
    m = len(chosen)
    if with_kl and m < 2:
        raise ValueError("a microbatch needs >= 2 examples for the KL estimate")

    def fit(prompt_of: Example, completion_of: Example):
        return truncate(prompt_of.prefix, prompt_of.prompt, completion_of.completion,
                        max_length=max_length, prompt_budget=prompt_budget)

    matched = [fit(e, e) for e in chosen]
    partners = kl_partners([e.prefix + e.prompt for e in chosen], pairing) if with_kl else None
    kl = [fit(chosen[i], chosen[partners[i]]) for i in range(m)] if with_kl else None
    return Batch(
        indices=list(indices),
        matched=_pad(matched, pad_id),
        kl=_pad(kl, pad_id) if kl is not None else None,
        labels=torch.tensor([e.label for e in chosen], dtype=torch.bool),
        num_tokens=sum(len(p) + len(c) for p, c in matched),
        packed=pack(matched, kl, pad_id) if packed else None,
        matched_pairs=matched,
        kl_pairs=kl,
        kl_partners=partners,
    )


def _batch_sizes(n: int, batch_size: int, min_size: int = 2) -> list[int]:
    sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    # A batch of one has no KL partner (nor, on N processes, a batch under 2N): it joins the one before.
    if len(sizes) > 1 and sizes[-1] < min_size:
        last = sizes.pop()
        sizes[-1] += last
    return sizes


def class_quotas(sizes: Sequence[int], n_true: int) -> list[int]:
    """How many of the ``n_true`` rows of one class go to each batch of ``sizes``.

    Spread evenly in proportion to size (rounded along the cumulative
    count, so k < len(sizes) rows land one per ~len/k batches), then moved
    one by one so that every batch holds both classes where the counts
    allow: no batch lacks a class while another holds two or more of it.
    """
    n = sum(sizes)
    quotas, start = [], 0
    for size in sizes:
        end = start + size
        quotas.append((2 * end * n_true + n) // (2 * n) - (2 * start * n_true + n) // (2 * n))
        start = end
    others = [s - q for s, q in zip(sizes, quotas, strict=True)]
    for mine, theirs in ((quotas, others), (others, quotas)):
        while True:
            lacking = next((b for b, q in enumerate(mine) if q == 0), None)
            donor = max(range(len(mine)), key=lambda b: (mine[b], -b))
            if lacking is None or mine[donor] < 2:
                break
            mine[donor] -= 1
            theirs[donor] += 1
            mine[lacking] += 1
            theirs[lacking] -= 1
    return quotas


def plan_batches(lengths: Sequence[int], batch_size: int, *, seed: int, group_by_length: bool,
                 shuffle: bool = True, labels: Sequence[bool] | None = None, min_size: int = 2
                 ) -> list[list[int]]:
    """Fixed microbatch composition for a whole job.

    Shuffled with ``seed``; with ``group_by_length``, each window of 32
    batches is sorted by length before being cut, so a batch wastes little
    padding while batches still mix the data. A last batch of one example
    joins the one before it (a batch of one has no KL partner); so does a
    last batch under ``min_size`` (on N processes: 2N, two per shard).

    With ``labels`` (stratified), each batch takes its quota of each class
    (:func:`class_quotas`), both classes in their shuffled order; with
    ``group_by_length`` each class is sorted by length inside the window,
    so a batch holds the k-th longest rows of both classes (as little
    padding as the classes' lengths allow). A batch lists its rows longest
    first when grouped, else in shuffled order.
    """
    if labels is not None and len(labels) != len(lengths):
        raise ValueError(f"{len(labels)} labels for {len(lengths)} rows")
    order = list(range(len(lengths)))
    if shuffle:
        random.Random(seed).shuffle(order)
    sizes = _batch_sizes(len(order), batch_size, min_size)
    window = 32
    n_true = sum(1 for i in order if labels[i]) if labels is not None else 0
    if labels is None or n_true in (0, len(order)):
        if group_by_length:
            order = [i for start in range(0, len(order), batch_size * window)
                     for i in sorted(order[start:start + batch_size * window], key=lambda i: -lengths[i])]
        cuts = [sum(sizes[:b]) for b in range(len(sizes) + 1)]
        return [order[cuts[b]:cuts[b + 1]] for b in range(len(sizes))]

    rank = {i: r for r, i in enumerate(order)}
    streams = {True: iter([i for i in order if labels[i]]), False: iter([i for i in order if not labels[i]])}
    quotas = class_quotas(sizes, n_true)
    batches = []
    for start in range(0, len(sizes), window if group_by_length else len(sizes)):
        span = range(start, min(start + window, len(sizes)) if group_by_length else len(sizes))
        take = {True: sum(quotas[b] for b in span), False: sum(sizes[b] - quotas[b] for b in span)}
        rows = {label: [next(streams[label]) for _ in range(take[label])] for label in (True, False)}
        if group_by_length:
            rows = {label: sorted(part, key=lambda i: -lengths[i]) for label, part in rows.items()}
        rows = {label: iter(part) for label, part in rows.items()}
        for b in span:
            members = [next(rows[True]) for _ in range(quotas[b])] + \
                      [next(rows[False]) for _ in range(sizes[b] - quotas[b])]
            key = (lambda i: (-lengths[i], rank[i])) if group_by_length else rank.__getitem__
            batches.append(sorted(members, key=key))
    return batches


def pad_token_id(tokenizer) -> int:
    """Padding id: never scored, so any real id works when the tokenizer has none."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate
    return 0
