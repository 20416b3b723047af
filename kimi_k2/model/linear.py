"""`Linear`: torch's Linear without the random initialisation at construction.

K2's weights always come from a checkpoint or from an explicit `init_weights`, so the kaiming init that
`nn.Linear` runs in its constructor is wasted work — half the time of building K2's 69,609 Linear modules on the
meta device. The class is otherwise `nn.Linear`, so `isinstance(m, nn.Linear)` still holds.
"""

from __future__ import annotations

from torch import nn


class Linear(nn.Linear):
    def reset_parameters(self) -> None:  # weights are loaded or set by init_weights, never drawn here
        pass
