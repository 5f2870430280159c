"""torch tensors in and out (skipped where torch is not installed)."""

import numpy as np
import pytest

import redstone

from conftest import unique

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def client(server):
    return redstone.Client(server.fast)


def test_torch_tensors_round_trip_sharing_memory(client):
    key = unique("torch")
    value = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    client.put(key, value)
    back = client.get(key, torch=True)
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float32
    assert torch.equal(back, value)
    out = torch.empty(3, 4)
    assert client.get_into(key, out) and torch.equal(out, value)


def test_bfloat16_tensors(client, monkeypatch):
    key = unique("torch-bf16")
    value = torch.tensor([[1.5, -2.0], [0.25, 8.0]], dtype=torch.bfloat16)
    client.put(key, value)
    # Without ml_dtypes numpy cannot hold it, but torch can.
    monkeypatch.setattr(redstone._convert, "bfloat16", lambda: None)
    back = client.get(key, torch=True)
    assert back.dtype == torch.bfloat16 and torch.equal(back, value)


def test_a_state_dict_round_trips(client):
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    prefix = unique("model")
    for name, tensor in model.state_dict().items():
        client.put(f"{prefix}/{name}", tensor)
    copy = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    names = list(copy.state_dict())
    loaded = client.get_many([f"{prefix}/{n}" for n in names], torch=True)
    copy.load_state_dict(dict(zip(names, loaded)))
    x = torch.randn(5, 8)
    assert torch.equal(model(x), copy(x))


def test_gpu_tensors_are_refused_with_a_hint(client):
    if not hasattr(torch, "device"):
        pytest.skip("no torch.device")
    meta = torch.ones(2, device="meta")
    with pytest.raises(redstone.InvalidArgumentError, match="cpu"):
        client.put(unique("meta"), meta)


def test_negated_views_and_unsupported_dtypes(client):
    key = unique("torch-neg")
    value = torch.arange(4, dtype=torch.float32)
    client.put(key, value._neg_view() if hasattr(value, "_neg_view") else -value)
    assert client.get(key).tolist() == [-0.0, -1.0, -2.0, -3.0]
    if hasattr(torch, "float8_e4m3fn"):
        with pytest.raises(redstone.UnsupportedDtypeError):
            client.put(unique("f8"), torch.zeros(4, dtype=torch.float8_e4m3fn))
