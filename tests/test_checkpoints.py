"""A suite's ``checkpoint:`` file that is not a state dict is one line naming the file and field (issue 16, item 1)."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import pytest
import torch
from torch import nn

from advbench.checkpoints import load_state_dict
from advbench.errors import AdvbenchError

FIELD, SOURCE = "victims.cnn.checkpoint", "suites/x.yaml"


class Anything:
    pass


def write(path, kind: str):
    if kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "random":
        path.write_bytes(os.urandom(512))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "object-pickle":
        path.write_bytes(pickle.dumps(Anything()))
    elif kind == "list":
        torch.save([torch.zeros(2)], path)
    elif kind == "dict-of-non-tensors":
        torch.save({"weight": 1, "bias": "x"}, path)
    elif kind == "int-keys":
        torch.save({0: torch.zeros(1)}, path)
    elif kind == "empty-dict":
        torch.save({}, path)
    elif kind == "truncated":
        torch.save(nn.Linear(3, 2).state_dict(), path)
        path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("kind", ["text", "random", "empty", "object-pickle", "list", "dict-of-non-tensors",
                                  "int-keys", "empty-dict", "truncated"])
def test_not_a_state_dict_is_one_line_naming_file_and_field(tmp_path, kind):
    path = tmp_path / "weights.pt"
    write(path, kind)
    with pytest.raises(AdvbenchError) as info:
        load_state_dict(path, FIELD, SOURCE)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{SOURCE}: {FIELD}: ") and str(path) in message
    assert "weights_only" not in message and "Traceback" not in message
    assert "state_dict" in message or "state dict" in message


def test_missing_file(tmp_path):
    with pytest.raises(AdvbenchError, match="no such file"):
        load_state_dict(tmp_path / "absent.pt", FIELD, SOURCE)


def test_a_state_dict_and_a_wrapped_one_load(tmp_path):
    model = nn.Linear(3, 2)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    for name in ("plain.pt", "wrapped.pt"):
        state = load_state_dict(tmp_path / name, FIELD, SOURCE)
        assert isinstance(state, (dict, OrderedDict)) and set(state) == {"weight", "bias"}
        nn.Linear(3, 2).load_state_dict(state)
