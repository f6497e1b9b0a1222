"""GlobalBatchNorm: two Gloo processes holding parts of a batch match timm's BatchNorm + activation (torch's
BatchNorm inside) on the whole batch: outputs, input and parameter gradients, running statistics."""

from __future__ import annotations

import copy
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from timm.layers import BatchNormAct2d
from torch import nn

from maskkit.engine.sync_batchnorm import GlobalBatchNorm, _swap, sync_batchnorm

SPLIT = (1, 3)  # images per rank: unequal, so the counts must weigh the statistics


def _batch() -> tuple[torch.Tensor, torch.Tensor, BatchNormAct2d]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sum(SPLIT), 5, 6, 7, generator=g, dtype=torch.float64) * 3 + 2
    x[:1] += 10  # one image far from the others: a per-image normalisation would differ a lot
    w_loss = torch.randn(x.shape, generator=g, dtype=torch.float64)
    bn = BatchNormAct2d(5, act_layer=nn.SiLU).double()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(5, generator=g, dtype=torch.float64) + 0.5)
        bn.bias.copy_(torch.randn(5, generator=g, dtype=torch.float64))
    return x, w_loss, bn


def _worker(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        x, w_loss, ref = _batch()
        reference = copy.deepcopy(ref)
        model = sync_batchnorm(nn.Sequential(ref), torch.device("cpu"))
        bn = model[0]
        assert isinstance(bn, GlobalBatchNorm) and bn.weight is ref.weight and isinstance(bn.act, nn.SiLU)
        lo, hi = sum(SPLIT[:rank]), sum(SPLIT[: rank + 1])
        x_ref = x.clone().requires_grad_(True)
        y_ref = reference(x_ref)
        (y_ref * w_loss).sum().backward()

        part = x[lo:hi].clone()
        if rank == 1:
            part = part.contiguous(memory_format=torch.channels_last)
        part.requires_grad_(True)
        y = model(part)
        (y * w_loss[lo:hi]).sum().backward()  # the global loss is the sum of the ranks' losses
        torch.testing.assert_close(y, y_ref[lo:hi])
        torch.testing.assert_close(part.grad, x_ref.grad[lo:hi])
        for name in ("weight", "bias"):
            grad = getattr(bn, name).grad.clone()
            dist.all_reduce(grad)
            torch.testing.assert_close(grad, getattr(reference, name).grad)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(bn, name), getattr(reference, name))
        # no affine parameters, 3D input (BatchNorm1d): the input gradient alone carries the statistics' part
        plain = nn.BatchNorm1d(5, affine=False).double()
        seq = x.flatten(2)
        seq_ref = seq.clone().requires_grad_(True)
        (plain(seq_ref) * w_loss.flatten(2)).sum().backward()
        seq_part = seq[lo:hi].clone().requires_grad_(True)
        (sync_batchnorm(nn.BatchNorm1d(5, affine=False).double(), torch.device("cpu"))(seq_part)
         * w_loss.flatten(2)[lo:hi]).sum().backward()
        torch.testing.assert_close(seq_part.grad, seq_ref.grad[lo:hi])

        twin = copy.deepcopy(model)[0]  # as the EMA copies the model: the group is shared, not copied
        assert isinstance(twin, GlobalBatchNorm) and twin.group is bn.group
        bn.eval()
        reference.eval()
        torch.testing.assert_close(bn(x[lo:hi]), reference(x[lo:hi]))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes, a few seconds
def test_two_ranks_match_batchnorm_on_the_whole_batch() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port,), nprocs=2, join=True)


def test_swap_keeps_parameters_buffers_and_state_dict_keys() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(2)), nn.ReLU())
    model[1].eval()
    before = model.state_dict()
    weight, running_var = model[1].weight, model[1].running_var
    swapped = _swap(model, None)
    assert isinstance(swapped[1], GlobalBatchNorm) and isinstance(swapped[2][0], GlobalBatchNorm)
    assert swapped[1].weight is weight and swapped[1].running_var is running_var
    assert not swapped[1].training and swapped[2][0].training
    assert swapped.state_dict().keys() == before.keys()
    h = swapped[0](torch.randn(2, 3, 5, 5))
    bn = swapped[1]
    torch.testing.assert_close(bn(h), nn.functional.batch_norm(h, bn.running_mean, running_var, weight, bn.bias))


def test_swap_keeps_timm_activation_and_refuses_unknown_children() -> None:
    norm_act = BatchNormAct2d(4, act_layer=nn.ReLU).eval()
    with torch.no_grad():
        norm_act.running_mean.uniform_(-1, 1)
    x = torch.randn(2, 4, 3, 3)
    expected = norm_act(x)
    assert (expected >= 0).all()
    torch.testing.assert_close(_swap(norm_act, None)(x), expected)

    class Odd(nn.BatchNorm2d):
        def __init__(self) -> None:
            super().__init__(4)
            self.extra = nn.Conv2d(4, 4, 1)

    with pytest.raises(ValueError, match=r"Odd.*extra.*sync_batchnorm: false"):
        _swap(nn.Sequential(Odd()), None)
