"""A bidirectional GRU for small batches on CPU: the same function and parameters as `nn.GRU`, less time.

With the benchmark's batches of 4 problems, `nn.GRU` spends its time in per-time-step matrix products: the input
projection (when sequences are packed), the recurrent product, and in backward two more per step (one for the
input gradient, one accumulating the weight gradient). Here the input projections of all steps are one product, the
two directions advance together (one batched product a step), and the recurrent weights' gradient is one product
over all steps after the backward loop. Padding needs no packing: each direction reads its sequence from the first
token (the backward direction on sequences reversed within their lengths), so padding only comes after the last real
step and never reaches a real output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Recurrence(torch.autograd.Function):
    """h_t = GRU cell(gi_t, h_{t-1}) for both directions at once; gi holds the input projections (bias included).

    gi [2, B, S, 3H], w_hh [2, 3H, H], b_hh [2, 3H] -> outputs [2, B, S, H] (h_0 = 0)."""

    @staticmethod
    def forward(ctx, gi: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
        d, b, s, three_h = gi.shape
        h_size = three_h // 3
        out = gi.new_empty(d, b, s, h_size)
        gates = gi.new_empty(s, 3, d, b, h_size)  # r, z, n per step: what backward needs
        gh_n = gi.new_empty(s, d, b, h_size)
        h = gi.new_zeros(d, b, h_size)
        w_t = w_hh.transpose(1, 2)
        bias = b_hh.unsqueeze(1)
        for t in range(s):
            gh = torch.baddbmm(bias, h, w_t)  # [d, b, 3H]
            gi_t = gi[:, :, t]
            r = torch.sigmoid(gi_t[..., :h_size] + gh[..., :h_size])
            z = torch.sigmoid(gi_t[..., h_size:2 * h_size] + gh[..., h_size:2 * h_size])
            ghn = gh[..., 2 * h_size:]
            n = torch.tanh(torch.addcmul(gi_t[..., 2 * h_size:], r, ghn))
            h = n + z * (h - n)
            out[:, :, t] = h
            gates[t, 0], gates[t, 1], gates[t, 2] = r, z, n
            gh_n[t] = ghn
        ctx.save_for_backward(w_hh, out, gates, gh_n)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        w_hh, out, gates, gh_n = ctx.saved_tensors
        d, b, s, h_size = out.shape
        d_gi = grad_out.new_empty(d, b, s, 3 * h_size)
        d_gh = grad_out.new_empty(d, b, s, 3 * h_size)
        dh = grad_out.new_zeros(d, b, h_size)
        zeros = grad_out.new_zeros(d, b, h_size)
        for t in range(s - 1, -1, -1):
            dh = dh + grad_out[:, :, t]
            r, z, n = gates[t, 0], gates[t, 1], gates[t, 2]
            h_prev = out[:, :, t - 1] if t > 0 else zeros
            da_n = dh * (1 - z) * (1 - n * n)
            da_z = dh * (h_prev - n) * z * (1 - z)
            dr = da_n * gh_n[t]
            da_r = dr * r * (1 - r)
            d_gi[:, :, t, :h_size] = da_r
            d_gi[:, :, t, h_size:2 * h_size] = da_z
            d_gi[:, :, t, 2 * h_size:] = da_n
            d_gh[:, :, t, :2 * h_size] = d_gi[:, :, t, :2 * h_size]
            d_gh[:, :, t, 2 * h_size:] = da_n * r
            dh = dh * z + torch.bmm(d_gh[:, :, t], w_hh)
        # The recurrent weights' gradient over every step in one product: sum_t dgh_t^T h_{t-1}.
        h_prev_all = torch.cat((zeros.unsqueeze(2), out[:, :, :-1]), 2).reshape(d, b * s, h_size)
        flat_d_gh = d_gh.reshape(d, b * s, 3 * h_size)
        d_w = torch.bmm(flat_d_gh.transpose(1, 2), h_prev_all)
        return d_gi, d_w, flat_d_gh.sum(1)


def reverse_within(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence of x [B, S, ...] within its length; padding stays where it is."""
    s = x.size(1)
    idx = torch.arange(s, device=x.device).unsqueeze(0)
    rev = torch.where(idx < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - idx, idx)
    return x.gather(1, rev.view(*rev.shape, *([1] * (x.dim() - 2))).expand_as(x))


class BatchGRU(nn.GRU):
    """`nn.GRU(bidirectional=True, batch_first=True)` with the same parameters; forward(x, lengths) returns the
    per-step outputs [B, S, 2H] (forward direction first), zero past each length."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float = 0.0) -> None:
        super().__init__(input_size, hidden_size, num_layers, dropout=dropout if num_layers > 1 else 0.0,
                         bidirectional=True, batch_first=True)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:  # type: ignore[override]
        valid = (torch.arange(x.size(1), device=x.device).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)
        for layer in range(self.num_layers):
            names = [f"{k}_l{layer}{suffix}" for suffix in ("", "_reverse")
                     for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            w_ih_f, w_hh_f, b_ih_f, b_hh_f, w_ih_b, w_hh_b, b_ih_b, b_hh_b = (getattr(self, n) for n in names)
            gi = torch.stack((F.linear(x, w_ih_f, b_ih_f), F.linear(reverse_within(x, lengths), w_ih_b, b_ih_b)))
            out = _Recurrence.apply(gi, torch.stack((w_hh_f, w_hh_b)), torch.stack((b_hh_f, b_hh_b)))
            x = torch.cat((out[0], reverse_within(out[1], lengths)), 2) * valid
            if layer < self.num_layers - 1 and self.dropout and self.training:
                x = F.dropout(x, self.dropout, training=True)
        return x
