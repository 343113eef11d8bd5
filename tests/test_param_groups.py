"""Weight decay goes to weights only: biases, norm parameters and 1-D parameters get none."""

import pytest
import torch
from torch import nn

from errors import DataError
from models.param_groups import param_groups_weight_decay
from models.small_cnn import SmallCNN


def test_biases_and_norm_parameters_get_no_decay_and_every_weight_gets_the_configured_one() -> None:
    model = nn.Sequential(SmallCNN(10), nn.LayerNorm(10), nn.Linear(10, 3))
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model), lr=0.1, weight_decay=0.05)

    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)), "a parameter is in two groups"
    assert set(grouped) == {id(p) for p in model.parameters()}, "a parameter is missing"
    for name, param in model.named_parameters():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        if isinstance(module, (nn.Conv2d, nn.Linear)) and name.endswith("weight"):
            assert decay_of[id(param)] == 0.05, name
        else:
            assert isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)) or name.endswith("bias")
            assert decay_of[id(param)] == 0.0, name


def test_frozen_parameters_are_left_out_and_listed_names_get_no_decay() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    groups = param_groups_weight_decay(model, no_weight_decay=["1.weight"])

    all_params = [p for g in groups for p in g["params"]]
    assert all(p is not model[0].weight for p in all_params)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0
    assert len(all_params) == 3  # 0.bias, 1.weight, 1.bias


def test_a_lazy_weight_without_a_shape_is_refused_naming_it_not_left_undecayed() -> None:
    # An uninitialised parameter reports ndim 1: it would silently land in the no-decay group.
    model = nn.Sequential(nn.Linear(4, 8), nn.LazyLinear(3))
    with pytest.raises(DataError, match=r"Sequential\.1\.weight has no shape yet"):
        param_groups_weight_decay(model)
    model(torch.zeros(2, 4))  # sized: its weight decays like any other
    decayed = param_groups_weight_decay(model)[0]["params"]
    assert any(p is model[1].weight for p in decayed)
