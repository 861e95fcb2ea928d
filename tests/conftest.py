from __future__ import annotations

import os

import pytest
import torch

from landmark_lit.config import register_resolvers

# Tests run on the 2 CPU cores of the reference machine; keep torch from oversubscribing them. Under
# pytest-xdist (`make test`) the workers share the cores: each gets its share of threads, and the commands
# the tests start in subprocesses inherit it through OMP_NUM_THREADS.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = 1 if _WORKERS > 1 else min(2, os.cpu_count() or 1)
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
torch.set_num_threads(_THREADS)
# the configs' resolvers, as every command registers them before composing its config
register_resolvers()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
