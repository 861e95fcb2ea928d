from __future__ import annotations

import os

import pytest
import torch

from landmark_lit.config import register_resolvers

# Tests run on the 2 CPU cores of the reference machine; keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))
# the configs' resolvers, as every command registers them before composing its config
register_resolvers()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
