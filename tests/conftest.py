import os

import pytest
import torch
from hypothesis import settings

from helpers import tiny_bert_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Timings on a shared 2-core machine vary too much for per-example deadlines; exactness is what is tested.
settings.register_profile("smcbench", deadline=None)
settings.load_profile("smcbench")
# Under pytest-xdist (`make test` runs two workers), the cores are split between the workers, and the processes
# a test starts (the CLI, grid workers) inherit the split: never more threads than cores, which on 2 cores would
# make every process spin against the others.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, torch.get_num_threads()) // _WORKERS)
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(_THREADS)


@pytest.fixture
def tiny_bert():
    from transformers import BertForMultipleChoice

    torch.manual_seed(0)
    return BertForMultipleChoice(tiny_bert_config())


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    from helpers import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-bert"))


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    from helpers import make_arithmetic_data, make_commonsense_data

    return make_arithmetic_data(make_commonsense_data(tmp_path_factory.mktemp("data")), folds=(0, 1))


@pytest.fixture(scope="module")
def code_path_out(tmp_path_factory):
    """One output folder for a module's code-path tests: the methods' runs share the dense fine-tune (and scratch
    its mask source) as a grid would, trained once instead of once per method."""
    return tmp_path_factory.mktemp("code-paths")

