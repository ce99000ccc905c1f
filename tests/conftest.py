import os

import pytest
import torch

from helpers import tiny_bert_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_bert():
    from transformers import BertForMultipleChoice

    torch.manual_seed(0)
    return BertForMultipleChoice(tiny_bert_config())
