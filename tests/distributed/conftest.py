"""Fixtures of the tensor-parallel tests: a one-rank gloo group in this process."""
import pytest
import torch.distributed as dist


@pytest.fixture
def one_rank():
    """A one-rank gloo group (in-memory store, no sockets to other ranks)."""
    if dist.is_initialized():
        pytest.skip("a default process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
