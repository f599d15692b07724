"""Torch on one thread for these tests: tiny tensors gain nothing from more, and on a shared CPU the idle
threads' spin-waits cost several times the work (measured on 2 busy cores: 31 s against 134 s)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
