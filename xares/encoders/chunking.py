"""Padding and chunking shared by the pretrained encoders.

Each encoder encodes a clip as if it were alone: the features of its real frames must not
depend on how much padding the batch added, nor on the other clips in the batch. These helpers
cut rows to their real length, re-pad them, split long clips into model-sized pieces and join
the pieces' frames back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xares.encoders.contract import mask_from_lengths


def audio_lengths(audio: torch.Tensor, audio_attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Real samples per row (``[B]`` long): the mask's count, or the full width without a mask."""
    if audio_attention_mask is None:
        return torch.full((audio.shape[0],), audio.shape[-1], dtype=torch.long, device=audio.device)
    return audio_attention_mask.long().sum(-1).to(audio.device)


def real_rows(
    audio: torch.Tensor, lengths: torch.Tensor, min_samples: int = 1
) -> list[torch.Tensor]:
    """Each row cut to its real length; rows shorter than ``min_samples`` are zero-padded to it.

    The floor exists because every front end needs at least one analysis window; a clip shorter
    than that gets one frame computed over the clip followed by silence.
    """
    rows = []
    for row, length in zip(audio.float(), lengths.tolist()):
        row = row[: max(int(length), 1)]
        if row.shape[0] < min_samples:
            row = nn.functional.pad(row, (0, min_samples - row.shape[0]))
        rows.append(row)
    return rows


def pad_rows(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack time-first tensors of different lengths, zero-padded: ``([N, T, ...], lengths [N])``."""
    lengths = torch.tensor([r.shape[0] for r in rows], dtype=torch.long, device=rows[0].device)
    batch = rows[0].new_zeros((len(rows), int(lengths.max()), *rows[0].shape[1:]))
    for index, row in enumerate(rows):
        batch[index, : row.shape[0]] = row
    return batch, lengths


def split_rows(
    rows: Sequence[torch.Tensor], chunk: int | None
) -> tuple[list[torch.Tensor], list[int]]:
    """Cut each time-first row into consecutive pieces of at most ``chunk`` steps.

    Returns the pieces (all rows' pieces in order) and how many pieces each row gave.
    """
    if not chunk:
        return list(rows), [1] * len(rows)
    pieces: list[torch.Tensor] = []
    counts: list[int] = []
    for row in rows:
        parts = list(row.split(chunk, dim=0))
        pieces.extend(parts)
        counts.append(len(parts))
    return pieces, counts


def join_pieces(
    features: torch.Tensor, frames: torch.Tensor, counts: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reassemble per-piece features ``[P, S, D]`` (``frames[p]`` real) into ``[B, N, D]`` + mask."""
    if all(c == 1 for c in counts):
        width = int(frames.max())
        return features[:, :width], mask_from_lengths(frames, width)
    rows, start = [], 0
    frame_list = frames.tolist()
    for count in counts:
        parts = [features[p, : frame_list[p]] for p in range(start, start + count)]
        rows.append(torch.cat(parts, dim=0))
        start += count
    batch, lengths = pad_rows(rows)
    return batch, mask_from_lengths(lengths, batch.shape[1])


def check_loading_info(info: dict, name_or_path: str, prefix: str = "") -> None:
    """Refuse a checkpoint that left weights of the encoder at their random initialisation."""
    missing = [k for k in info.get("missing_keys", []) if k.startswith(prefix)]
    if missing:
        shown = ", ".join(sorted(missing)[:8])
        raise RuntimeError(
            f"{name_or_path}: {len(missing)} encoder weight(s) missing from the checkpoint "
            f"({shown}{', …' if len(missing) > 8 else ''}); it is not a checkpoint of this model"
        )
