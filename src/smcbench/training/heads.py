"""Output projections of odd width, computed through their weight padded to a multiple of 16 columns.

MKL's fp32 product runs at about half speed when the output width is odd: mbart-tiny's tied head of 8,029 columns,
800 rows, takes 35 ms forward where the same product padded to 8,032 takes 23 (a decoding step: 6.5 ms against
4.0). Each kept logit is the same dot product over the same hidden state either way, so the padded product gives
the same bits; that is checked on a probe before it is used, never assumed. In training the backward products are
autograd's own for the plain head (the input's gradient g·W, the weight's gᵀ·x, in those shapes), so gradients are
unchanged too; the probe checks them as well.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ALIGN = 16


class _PaddedProduct(torch.autograd.Function):
    """`F.linear(x, weight)` computed as `F.linear(x, padded)[..., :out]`; the backward as autograd's for the plain
    product: `g·W` for x, `gᵀ·x` for the weight (the forms torch's mm backward takes for a transposed weight)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, padded: Tensor) -> Tensor:  # noqa: ANN001 (torch's protocol)
        ctx.save_for_backward(x, weight)
        return F.linear(x, padded)[..., : weight.shape[0]]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # noqa: ANN001
        x, weight = ctx.saved_tensors
        g, x2 = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
        grad_x = g.mm(weight).view(x.shape) if ctx.needs_input_grad[0] else None
        grad_w = g.t().mm(x2) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


class PaddedHead(nn.Module):
    """Stands in for a plain `nn.Linear` head of odd width: its weight padded with zero rows (rebuilt when the
    weight changes), the extra logits cut off. With gradients (training, no bias), through `_PaddedProduct`."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head, self.out = head, head.out_features
        self._padded: tuple[tuple[int, int], Tensor, Tensor | None] | None = None

    def padded(self) -> tuple[Tensor, Tensor | None]:
        w, b = self.head.weight, self.head.bias
        key = (w.data_ptr(), w._version)  # an optimizer step changes the weight in place: its version moves
        if self._padded is None or self._padded[0] != key:
            extra = -self.out % ALIGN
            with torch.no_grad():
                weight = torch.cat([w, w.new_zeros(extra, w.shape[1])])
                bias = None if b is None else torch.cat([b, b.new_zeros(extra)])
            self._padded = (key, weight, bias)
        return self._padded[1], self._padded[2]

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.padded()
        if torch.is_grad_enabled() and (x.requires_grad or self.head.weight.requires_grad):
            return _PaddedProduct.apply(x, self.head.weight, weight)  # eligible() allows no bias here
        return F.linear(x, weight, bias)[..., : self.out]


def eligible(head: object, grad: bool) -> bool:
    """A plain fp32 CPU `nn.Linear` of odd width whose forward nothing changes (no hooks, no replaced forward: a
    method that wraps the head keeps it); with gradients, also without a bias."""
    return (type(head) is nn.Linear and head.out_features % ALIGN != 0 and head.weight.device.type == "cpu"
            and head.weight.dtype == torch.float32 and "forward" not in head.__dict__
            and not (head._forward_hooks or head._forward_pre_hooks or head._backward_hooks)
            and not (grad and head.bias is not None))


def _probe_agrees(padded: PaddedHead, head: nn.Linear, rows: int, grad: bool) -> bool:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, head.in_features, generator=gen)
    if not grad:
        with torch.no_grad():
            return torch.equal(padded(x), head(x))
    g = torch.randn(rows, head.out_features, generator=gen)
    got, expected = [], []
    for module, out in ((padded, got), (head, expected)):
        xr = x.clone().requires_grad_()
        w = head.weight.detach().clone().requires_grad_()
        y = _PaddedProduct.apply(xr, w, padded.padded()[0]) if module is padded else F.linear(xr, w)
        y.backward(g)
        out += [y.detach(), xr.grad, w.grad]
    return all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


_AGREED: dict[tuple, bool] = {}


@contextlib.contextmanager
def padded_head(model: nn.Module, rows: int = 1024) -> Iterator[bool]:
    """While active, `model`'s output projection (`get_output_embeddings`) computes through its padded weight, where
    it is `eligible` and a probe of `rows` rows gives the same logits (and, with gradients enabled, the same
    gradients) bit for bit (checked once per shape and mode); yields whether it does. The model's own head is
    back afterwards."""
    get, put = getattr(model, "get_output_embeddings", None), getattr(model, "set_output_embeddings", None)
    head = get() if callable(get) and callable(put) else None
    grad = torch.is_grad_enabled()
    if not eligible(head, grad) or torch.is_autocast_enabled("cpu"):  # autocast: products in another dtype
        yield False
        return
    padded = PaddedHead(head)
    key = (head.in_features, head.out_features, head.bias is not None, rows, grad)
    if key not in _AGREED:
        _AGREED[key] = _probe_agrees(padded, head, rows, grad)
    if not _AGREED[key]:
        yield False
        return
    put(padded)
    try:
        yield True
    finally:
        put(head)
