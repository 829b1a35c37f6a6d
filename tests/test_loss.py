"""seqlm.loss.cross_entropy against torch's F.cross_entropy."""

import pytest
import torch
import torch.nn.functional as F

from seqlm import loss
from seqlm.loss import cross_entropy


@pytest.fixture
def blockwise(monkeypatch):
    """Route every vocabulary size through the blockwise function (it is used from 2,048)."""
    monkeypatch.setattr(loss, "BLOCKWISE_MIN_VOCAB", 0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(1, 2), (37, 11), (300, 4100)])  # the last spans blocks
@pytest.mark.parametrize("path", ["blockwise", "as called"])
def test_matches_torch_in_value_and_gradient(shape, reduction, path, request):
    if path == "blockwise":
        request.getfixturevalue("blockwise")
    g = torch.Generator().manual_seed(sum(shape))
    logits = (torch.randn(*shape, generator=g) * 3).requires_grad_()
    targets = torch.randint(0, shape[1], shape[:1], generator=g)
    upstream = torch.rand((), generator=g) + 0.5
    mine = cross_entropy(logits, targets, reduction=reduction)
    (got,) = torch.autograd.grad(mine * upstream, logits)
    ref = F.cross_entropy(logits, targets, reduction=reduction)
    (want,) = torch.autograd.grad(ref * upstream, logits)
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_block_boundaries_do_not_matter(monkeypatch, blockwise):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(23, 7, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (23,), generator=g)
    whole = torch.autograd.grad(cross_entropy(logits, targets), logits)[0]
    monkeypatch.setattr(loss, "BLOCK_ELEMENTS", 7 * 5)  # 5 rows a block, the last short
    blocked = torch.autograd.grad(cross_entropy(logits, targets), logits)[0]
    torch.testing.assert_close(blocked, whole, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: cross_entropy(x, targets), (logits,))


def test_rejects_what_it_cannot_compute():
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), reduction="none")
    with pytest.raises(ValueError, match="expected logits"):
        cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long))
