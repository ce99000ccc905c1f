"""A pruned model's size on disk in each format, measured by writing the files (safetensors): dense fp32, bitmask
+ kept values (the pruned tensors as a bit-packed mask and their nonzero values in order), CSR (int32 row
offsets, column indices of the narrowest integer type that holds them, values), and the bitmask file compressed
(zlib, level 6). Tensors without a mask are stored dense in every format."""

from __future__ import annotations

import tempfile
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

import smcbench.inference.backends  # noqa: F401  (silences PyTorch's CSR beta warning)
from smcbench.sparsity.sparsifier import pack_bits


def disk_sizes(tensors: dict[str, Tensor], masks: dict[str, Tensor]) -> dict[str, int]:
    dense = {k: v.contiguous() for k, v in tensors.items()}
    bitmask: dict[str, Tensor] = {}
    csr: dict[str, Tensor] = {}
    for name, t in dense.items():
        mask = masks.get(name)
        if mask is None:
            bitmask[name] = csr[name] = t
            continue
        kept = mask.bool()
        bitmask[f"{name}.mask"] = pack_bits(kept)
        bitmask[f"{name}.values"] = t[kept].contiguous()
        matrix = (t * kept).reshape(t.shape[0], -1) if t.dim() >= 2 else (t * kept).reshape(1, -1)
        sparse = matrix.to_sparse_csr()
        col_type = torch.int16 if matrix.shape[1] <= 2**15 else torch.int32
        csr[f"{name}.crow"] = sparse.crow_indices().to(torch.int32)
        csr[f"{name}.col"] = sparse.col_indices().to(col_type)
        csr[f"{name}.values"] = sparse.values().contiguous()
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {}
        for label, content in (("dense", dense), ("bitmask", bitmask), ("csr", csr)):
            path = Path(tmp) / f"{label}.safetensors"
            save_file(content, str(path))
            sizes[label] = path.stat().st_size
            if label == "bitmask":
                sizes["bitmask_zlib"] = len(zlib.compress(path.read_bytes(), 6))
    return sizes
