import os

os.environ.setdefault("ATTNCC_VERIFY", "1")      # the IR verifier runs between passes in every test

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
