"""Where a factor's per-head blocks sit inside a projection weight, as plain data.

A BlockLayout is a tuple of ints and bools so that it can travel inside optimizer param groups and
their state_dict (loadable with torch.load(weights_only=True)); `view` applies it to the weight or
to any tensor of the weight's shape (its gradient, an optimizer buffer).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["BlockLayout"]


class BlockLayout(NamedTuple):
    transposed: bool  # the weight is stored (in, out), as GPT-2's Conv1D does
    head_rows: bool  # heads are blocks of output features (Q, K, V), else of input features (O)
    offset: int  # first output feature of the blocks (the chunk of a fused projection)
    groups: int
    per_group: int  # blocks per group (query heads sharing one key/value group, for O)
    rank: int

    def view(self, tensor: torch.Tensor) -> torch.Tensor:
        """A view (groups, per_group, m, rank) of a weight-shaped tensor; per head, the factor."""
        W = tensor.t() if self.transposed else tensor
        if self.head_rows:
            rows = W[self.offset : self.offset + self.groups * self.rank]
            return rows.view(self.groups, self.rank, -1).transpose(1, 2).unsqueeze(1)
        return W.view(W.shape[0], self.groups, self.per_group, self.rank).permute(1, 2, 0, 3)
