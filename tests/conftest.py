from __future__ import annotations

import os

import pytest
import torch

# Tests run on the 2 CPU cores of the reference machine; keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
