"""`Linear`: torch's Linear without the random initialisation at construction, whose weight may be stored in
another float dtype than the activations.

K2's weights always come from a checkpoint or from an explicit `init_weights`, so the kaiming init that
`nn.Linear` runs in its constructor is wasted work — half the time of building K2's 69,609 Linear modules on the
meta device. A checkpoint loaded with its weights as stored (`load_model(weights="auto")`) keeps bf16 Linear
weights bf16 under float32 activations: `forward` then widens the weight (exact) for the product. The class is
otherwise `nn.Linear`, so `isinstance(m, nn.Linear)` still holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Linear):
    def reset_parameters(self) -> None:  # weights are loaded or set by init_weights, never drawn here
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.weight.dtype == x.dtype else self.weight.to(x.dtype)
        bias = self.bias if self.bias is None or self.bias.dtype == x.dtype else self.bias.to(x.dtype)
        return F.linear(x, weight, bias)
