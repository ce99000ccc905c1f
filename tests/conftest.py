import os

import pytest
import torch
from hypothesis import settings

from helpers import tiny_bert_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Timings on a shared 2-core machine vary too much for per-example deadlines; exactness is what is tested.
settings.register_profile("smcbench", deadline=None)
settings.load_profile("smcbench")
torch.set_num_threads(min(2, torch.get_num_threads()))


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
