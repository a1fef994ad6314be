"""SAM refuses a base optimizer instance with one short line naming its type."""

from __future__ import annotations

import pytest
import torch

from samhess.optim import SAM


def test_sam_given_an_optimizer_instance_names_its_type_in_one_line():
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(TypeError) as info:
        SAM(params, torch.optim.SGD(params, lr=0.1, momentum=0.9))
    assert str(info.value) == ("base_optimizer must be a torch.optim.Optimizer class such as "
                               "torch.optim.SGD, not an instance; got an instance of SGD")
