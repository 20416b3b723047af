"""CPU products that read K2's weight formats as stored (fp32, bf16, block FP8, INT4 group-32).

`weight.py` is the one weight object the model's runner calls (`Weight.mm`, `ConcatWeight`, `ExpertBank`);
`native.py` builds and loads the C++ kernels (`csrc/products.cpp`); `reference.py` is their arithmetic in pure
torch, which is also the path taken where the kernels cannot be built.
"""
