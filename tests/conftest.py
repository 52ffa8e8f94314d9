import os
import sys
from pathlib import Path

import pytest

from shared_data import missing_message

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
# Tests never reach a hub: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and then do not fight other work on a 2-core machine
    (with two threads each, two busy processes slow each other down tenfold)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """One clear error instead of dozens of failures when the shared benchmark files are not where expected."""
    message = missing_message()
    if message and any(item.get_closest_marker("shared_data") for item in items):
        raise pytest.UsageError(message)
