"""A module fixture for tests of small models: one torch thread (tiny products gain nothing from threads, and on
a shared machine OpenMP barriers can cost 10×). Import it into a test module to apply it there."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
