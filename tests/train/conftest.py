import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Training tests run one torch thread: on 2 shared cores that is the fastest setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
