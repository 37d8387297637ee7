import os
import tempfile

os.environ.setdefault("ATTNCC_VERIFY", "1")      # the IR verifier runs between passes in every test
# a fresh compiled-kernel cache per run: the suite measures what a new machine does
os.environ["ATTNCC_CACHE_DIR"] = tempfile.mkdtemp(prefix="attncc-test-cache-")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


def pytest_configure(config):
    config.addinivalue_line("markers", "fuzz: a random-spec test against the oracle; `make fuzz` runs these with "
                                       "ATTNCC_FUZZ_EXAMPLES random examples (tests/strategies.py)")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
