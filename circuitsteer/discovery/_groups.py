"""Rows of a batch grouped by length, so that EAP's passes skip the padding after each prompt.

A metric that reads only the END logits (the built-in ones) has a zero gradient at every
position after a row's END, so EAP's score, a sum over rows and positions of ``delta . grad``,
does not change when those positions are left out. Prompts of different lengths padded to one
width waste the padding's share of every forward, backward and contraction (18% of the zoo
task's 96 x 21 tokens). :func:`row_groups` sorts the rows by length and splits them where that
saves more padded tokens than a group's fixed cost; each group then runs trimmed to its own
longest row (``Task.subset``). Groups also bound a pass's memory (``max_tokens``).

Example:
    >>> [g.tolist() for g in row_groups(torch.tensor([16, 21, 16, 21]), overhead=8)]
    [[0, 2], [1, 3]]
"""

from __future__ import annotations

import torch

# A group's fixed cost (its passes read the weights again, launch every op again, and smaller
# ops use the threads less well), in padded tokens per unit of d_model per pass: the weights a
# pass reads grow with d_model^2 per layer, a token's activations with d_model. Measured on the
# zoo model (d_model 128, 2 threads): EAP-IG with 5 steps gained from 2 groups, not from 3;
# EAP (one pass) from none.
GROUP_COST = 12
MAX_GROUP_TOKENS = 1 << 14  # rows x width of one group: bounds a pass's activations


def group_overhead(d_model: int, passes: int) -> int:
    """A group's fixed cost in padded tokens for a method making ``passes`` passes per row
    (forward + backward, or a recording forward): ``GROUP_COST * d_model / passes``."""
    return GROUP_COST * d_model // max(1, passes)


def row_groups(
    lengths: torch.Tensor, overhead: int | None = None, max_tokens: int | None = None
) -> list[torch.Tensor]:
    """Row indices per group (rows sorted by length, stable), minimising ``sum over groups of
    rows x longest row + overhead``, exactly (dynamic programming over the split points between
    rows of different lengths); a group over ``max_tokens`` padded tokens is then cut into
    groups of as many rows as fit (one at least), each paying the overhead. Defaults:
    ``group_overhead(128, 6)`` (the zoo model, EAP-IG with 5 steps) and ``MAX_GROUP_TOKENS``."""
    overhead = group_overhead(128, 6) if overhead is None else overhead
    max_tokens = MAX_GROUP_TOKENS if max_tokens is None else max_tokens
    lens = lengths.cpu().long()
    order = torch.sort(lens, stable=True).indices
    sl = lens[order].tolist()
    n = len(sl)

    def per(width: int) -> int:
        return max(1, max_tokens // width)

    def cost(start: int, end: int) -> int:
        width = sl[end - 1]
        return (end - start) * width + overhead * -(-(end - start) // per(width))

    ends = [i for i in range(1, n) if sl[i] != sl[i - 1]] + [n]
    best: dict[int, tuple[int, int]] = {0: (0, -1)}
    for end in ends:
        best[end] = min((best[start][0] + cost(start, end), start) for start in best)
    out, end = [], n
    while end > 0:
        start = best[end][1]
        k = per(sl[end - 1])
        out += [order[i : min(end, i + k)] for i in range(start, end, k)][::-1]
        end = start
    return out[::-1]
