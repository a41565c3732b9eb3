"""The bounded set of shapes a compiled decoder runs on, chosen from the task's own lengths.

A compiled graph is specialised to the sizes of its inputs: every new size is a compile (tens
of seconds with inductor on a GPU, plus a CUDA-graph capture), and past dynamo's cache limit
the function falls back to eager for good. The training step sees three sizes: the rows (the
batch size, fixed in training), the spliced sequence and the target slots (the positions
whose logits are scored). Padding each to its own list of buckets multiplies the lists; here
the two lengths are padded together instead, to the cheapest of a few ``(sequence, slots)``
pairs that holds the batch. The pairs are chosen from batches drawn the way training draws
them, so the set of graphs a run needs is known, and printed, before the first step.

Generation pads its rows to a power of two and sizes the static KV cache by the prompt's
sequence bucket plus ``max_new_tokens``, so its decoding step sees a few sizes as well.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from math import inf

from xares.models.text import round_up


@dataclass(frozen=True)
class BatchLengths:
    """What one batch asks of the compiled step, from its padded widths and its real rows.

    ``frames``, ``prompt`` and ``target`` are the batch's padded widths (the encoder's frames
    for the longest clip, the token-id widths from the collate); ``real`` is the sum over rows
    of each row's own frames + prompt + target tokens, ``longest`` the longest row's.
    """

    rows: int
    frames: int
    prompt: int
    target: int
    real: int
    longest: int

    @property
    def seq(self) -> int:
        """The spliced width that holds every row, known from shapes alone (no GPU read)."""
        return self.frames + self.prompt + self.target

    @classmethod
    def of(
        cls, rows: Sequence[tuple[int, int, int]], frames: int, prompt: int, target: int
    ) -> BatchLengths:
        """From each row's (frames, prompt tokens, target tokens) and the padded widths."""
        totals = [sum(row) for row in rows]
        return cls(len(rows), frames, prompt, target, sum(totals), max(totals, default=0))


class ShapeSet:
    """A sorted set of ``(sequence, slots)`` pairs; a batch runs on the cheapest that holds it.

    ``slot_weight`` is the cost of one target slot in sequence positions (the vocabulary
    projection against one decoder layer stack): it decides which of two pairs that hold a
    batch is cheaper. A batch that no pair holds runs on the largest pair's lengths rounded up
    to their multiples: a shape outside the set, counted in :attr:`outside`.
    """

    def __init__(self, pairs: Iterable[tuple[int, int]], slot_weight: float = 0.25):
        self.pairs = sorted({(int(s), int(w)) for s, w in pairs})
        if not self.pairs:
            raise ValueError("a shape set needs at least one (sequence, slots) pair")
        if any(s <= 0 or w <= 0 for s, w in self.pairs):
            raise ValueError(f"shape lengths must be positive, got {self.pairs}")
        self.slot_weight = float(slot_weight)
        self.outside: set[tuple[int, int]] = set()

    @classmethod
    def product(
        cls, seq: Sequence[int], slots: Sequence[int], slot_weight: float = 0.25
    ) -> ShapeSet:
        """Every sequence bucket with every slot bucket no longer than it."""
        pairs = [(s, w) for s, w in itertools.product(seq, slots) if w <= s]
        return cls(pairs or [(max(seq), min(slots))], slot_weight)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self):
        return iter(self.pairs)

    def cost(self, pair: tuple[int, int]) -> float:
        return pair[0] + self.slot_weight * pair[1]

    def pick(self, seq: int, slots: int) -> tuple[int, int]:
        """The cheapest pair with at least ``seq`` positions and ``slots`` slots."""
        holding = [p for p in self.pairs if p[0] >= seq and p[1] >= slots]
        if holding:
            return min(holding, key=self.cost)
        top_seq = max(s for s, _ in self.pairs)
        top_slots = max(w for _, w in self.pairs)
        shape = (round_up(max(seq, top_seq), top_seq), round_up(max(slots, top_slots), top_slots))
        self.outside.add(shape)
        return shape

    def sequences(self) -> list[int]:
        """The sequence lengths of the set: the buckets of generation's prompts."""
        return sorted({s for s, _ in self.pairs})

    def bucket(self, length: int) -> int:
        """The smallest sequence length of the set that holds ``length`` (then multiples)."""
        seqs = self.sequences()
        index = bisect.bisect_left(seqs, length)
        return seqs[index] if index < len(seqs) else round_up(length, seqs[-1])

    def describe(self) -> str:
        return " ".join(f"{s}x{w}" for s, w in self.pairs)


def choose_shapes(
    batches: Sequence[BatchLengths],
    max_shapes: int,
    slot_weight: float = 0.25,
    multiple: int = 8,
    candidates: int = 16,
) -> ShapeSet:
    """At most ``max_shapes`` pairs that hold every batch of ``batches`` at least padding.

    Greedy on the batches' own quantiles: it starts from the one pair that holds them all
    (the longest sequence, the widest slots) and adds, one at a time, the candidate pair that
    saves the most padded cost, until ``max_shapes`` or until no pair saves 1%.
    """
    if not batches:
        raise ValueError("choosing shapes needs at least one batch of lengths")
    if max_shapes < 1:
        raise ValueError(f"speed.max_shapes must be >= 1, got {max_shapes}")
    needs = [(b.seq, b.target, b.rows) for b in batches]

    def grid(values: list[int]) -> list[int]:
        values = sorted(round_up(v, multiple) for v in values)
        picks = {
            values[min(len(values) - 1, (i * len(values)) // candidates)]
            for i in range(1, candidates)
        }
        return sorted(picks | {values[-1]})

    seqs, slots = grid([n[0] for n in needs]), grid([n[1] for n in needs])
    chosen = [(seqs[-1], slots[-1])]
    pool = [(s, w) for s in seqs for w in slots if w <= s and (s, w) not in chosen]

    def costs(pair: tuple[int, int]) -> list[float]:
        """Each batch's cost on ``pair`` (infinite where the pair cannot hold it)."""
        s, w = pair
        cost = s + slot_weight * w
        return [rows * cost if s >= seq and w >= width else inf for seq, width, rows in needs]

    current = costs(chosen[0])
    best = sum(current)
    while len(chosen) < max_shapes and pool:
        scored = []
        for pair in pool:
            saved = sum(max(0.0, now - new) for now, new in zip(current, costs(pair)))
            scored.append((saved, pair))
        saved, pair = max(scored)
        if saved < 0.01 * best:
            break
        chosen.append(pair)
        pool.remove(pair)
        current = [min(now, new) for now, new in zip(current, costs(pair))]
        best = sum(current)
    # A pair no batch would pick is a graph that costs a compile and serves nothing.
    shapes = ShapeSet(chosen, slot_weight)
    used = {shapes.pick(seq, width) for seq, width, _ in needs}
    return ShapeSet(used, slot_weight)


@dataclass(frozen=True)
class Padding:
    """Padded against real tokens over a set of batches, on a shape set and eagerly."""

    batches: int
    real: int
    padded: int
    eager: int
    shapes_used: int

    @property
    def overhead(self) -> float:
        """Padded tokens / real tokens on the shape set (1.0: no padding)."""
        return self.padded / max(self.real, 1)

    @property
    def eager_overhead(self) -> float:
        """The same for eager batches padded to their longest row."""
        return self.eager / max(self.real, 1)


def padding(batches: Sequence[BatchLengths], shapes: ShapeSet) -> Padding:
    """The padding ``shapes`` costs on ``batches`` (which pairs they use, too)."""
    used = set()
    padded = 0
    for batch in batches:
        pair = shapes.pick(batch.seq, batch.target)
        used.add(pair)
        padded += batch.rows * pair[0]
    return Padding(
        batches=len(batches),
        real=sum(b.real for b in batches),
        padded=padded,
        eager=sum(b.rows * b.longest for b in batches),
        shapes_used=len(used),
    )
