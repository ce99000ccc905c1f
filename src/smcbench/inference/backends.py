"""Inference backends: ways to run a pruned model, each registered by name. A backend says why it cannot run here
(`unavailable`) or cannot use a run's sparsity pattern (`unfit`), and turns the masked dense model into the model it
serves (`prepare`). `dense` is the baseline every other backend is timed against and checked against (the masked
dense model itself). An engine outside PyTorch (DeepSparse) runs in its own process: `external` backends measure
themselves (smcbench.inference.external); another engine (ONNX Runtime, OpenVINO) plugs in the same way.
"""

from __future__ import annotations

import os
import shutil
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, TypeVar

import torch
from torch import Tensor, nn

from smcbench.errors import SmcBenchError

BLOCK_SIZES = (32, 16, 8, 4)  # BSR: the largest block (square) whose blocks are each wholly kept or wholly pruned


class Backend(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    external: ClassVar[bool] = False  # measured in its own process by smcbench.inference.external

    def unavailable(self) -> str | None:
        """Why this backend cannot run on this machine, or None."""
        return None

    def unfit(self, masks: dict[str, Tensor]) -> str | None:
        """Why this backend cannot use these masks' pattern (e.g. no blocks for BSR), or None."""
        return None

    @abstractmethod
    def prepare(self, model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
        """The model this backend serves, from the masked dense model (which it may change in place)."""


BACKENDS: dict[str, Backend] = {}
B = TypeVar("B", bound=type[Backend])


def register_backend(cls: B) -> B:
    if cls.name in BACKENDS:
        raise SmcBenchError(f"inference backend {cls.name!r} is registered twice")
    BACKENDS[cls.name] = cls()
    return cls


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise SmcBenchError(f"unknown inference backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def pruned_linears(model: nn.Module, masks: dict[str, Tensor]) -> list[tuple[str, nn.Linear]]:
    """The Linear layers whose weight has a mask (what a sparse kernel replaces)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and f"{name}.weight" in masks]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


class SparseLinear(nn.Module):
    """y = x Wᵀ + b with W a sparse (CSR or BSR) tensor: computed as (W xᵀ)ᵀ, sparse times dense with the
    dense operand made contiguous (MKL's CSR kernel is fastest that way round on CPU, measured)."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight = weight
        self.bias = None if bias is None else bias.detach().clone()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)
        y = (self.weight @ flat.t().contiguous()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


@register_backend
class Dense(Backend):
    name = "dense"
    summary = "the masked dense model in PyTorch (pruned weights are zeros): the baseline"

    def prepare(self, model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
        return model


@register_backend
class CSR(Backend):
    name = "csr"
    summary = "PyTorch sparse CSR weights for every pruned Linear layer (MKL's sparse kernels on CPU)"

    def prepare(self, model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
        for name, lin in pruned_linears(model, masks):
            _replace(model, name, SparseLinear(lin.weight.detach().to_sparse_csr(), lin.bias))
        return model


_KERNEL: list = []  # the compiled csr_avx2 extension, built once per process (torch caches the build on disk)


def csr_kernel():
    """Our CSR kernel (csr_avx2.cpp), compiled at first use with the system's C++ compiler."""
    if not _KERNEL:
        from torch.utils.cpp_extension import load

        _KERNEL.append(load("smcbench_csr_avx2", [str(Path(__file__).with_name("csr_avx2.cpp"))],
                            extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"], extra_ldflags=["-fopenmp"]))
    return _KERNEL[0]


class KernelLinear(nn.Module):
    """y = x Wᵀ + b by the csr_avx2 kernel: W's nonzeros only (int32 offsets and columns, fp32 values)."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        csr = weight.detach().float().to_sparse_csr()
        self.rowptr = csr.crow_indices().to(torch.int32).contiguous()
        self.cols = csr.col_indices().to(torch.int32).contiguous()
        self.vals = csr.values().contiguous()
        self.bias = None if bias is None else bias.detach().float().clone()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.kernel = csr_kernel()

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).contiguous()
        y = self.kernel.csr_linear(flat, self.rowptr, self.cols, self.vals, self.bias, self.out_features)
        return y.reshape(*x.shape[:-1], self.out_features)


@register_backend
class CSRAVX2(Backend):
    name = "csr-avx2"
    summary = ("smc-bench's CSR kernel for the pruned Linear layers (AVX2 + FMA, 8 outputs per instruction, built "
               "at first use with the system C++ compiler)")

    def unavailable(self) -> str | None:
        capability = torch.backends.cpu.get_cpu_capability()
        if capability not in ("AVX2", "AVX512"):
            return f"the CPU has no AVX2 (PyTorch reports {capability})"
        compiler = os.environ.get("CXX", "c++")
        if shutil.which(compiler) is None:
            return f"no C++ compiler ({compiler}) to build the kernel: install one (e.g. apt-get install g++)"
        return None

    def prepare(self, model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
        for name, lin in pruned_linears(model, masks):
            _replace(model, name, KernelLinear(lin.weight, lin.bias))
        return model


def block_size(mask: Tensor) -> int | None:
    """The largest size in BLOCK_SIZES whose square blocks of `mask` are each all kept or all pruned."""
    rows, cols = mask.shape
    for b in BLOCK_SIZES:
        if rows % b or cols % b:
            continue
        blocks = mask.reshape(rows // b, b, cols // b, b).sum((1, 3))
        if bool(((blocks == 0) | (blocks == b * b)).all()):
            return b
    return None


@register_backend
class BSR(Backend):
    name = "bsr"
    summary = f"PyTorch block-sparse (BSR) weights where the masks are block-structured (blocks {BLOCK_SIZES})"

    def unfit(self, masks: dict[str, Tensor]) -> str | None:
        sizes = {k: block_size(m) for k, m in masks.items() if m.dim() == 2}
        if not sizes or any(b is None for b in sizes.values()):
            return (f"the masks are not block-sparse: no block size of {', '.join(map(str, BLOCK_SIZES))} has every "
                    "block wholly kept or wholly pruned (unstructured masks never fit)")
        return None

    def prepare(self, model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
        for name, lin in pruned_linears(model, masks):
            b = block_size(masks[f"{name}.weight"])
            _replace(model, name, SparseLinear(lin.weight.detach().to_sparse_bsr((b, b)), lin.bias))
        return model


@register_backend
class Shrunk(Backend):
    name = "shrunk"
    summary = "dense PyTorch on the physically smaller model: fully pruned heads and neurons removed"

    def unfit(self, masks: dict[str, Tensor]) -> str | None:
        from smcbench.inference.results import pattern_of

        pattern = pattern_of(masks)
        return None if pattern == "structured" else f"the masks are {pattern}, not whole heads and neurons"

    def prepare(self, model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
        from smcbench.structure import shrink

        if not shrink(model, masks):
            raise SmcBenchError("the masks prune no whole attention head or feed-forward neuron")
        return model


def is_two_four(mask: Tensor) -> bool:
    """Whether every group of 4 consecutive inputs of every row keeps at most 2 (what 2:4 kernels store)."""
    return mask.dim() == 2 and mask.shape[1] % 4 == 0 and bool((mask.reshape(mask.shape[0], -1, 4).sum(-1) <= 2).all())


@register_backend
class SemiStructured(Backend):
    name = "2:4"
    summary = "PyTorch semi-structured 2:4 sparse kernels (NVIDIA GPUs of compute capability 8.0 and newer)"

    def unavailable(self) -> str | None:
        if not torch.cuda.is_available():
            return "no CUDA device: PyTorch's semi-structured 2:4 kernels run on NVIDIA GPUs only"
        if torch.cuda.get_device_capability() < (8, 0):
            return f"the GPU's compute capability {torch.cuda.get_device_capability()} is below 8.0"
        return None

    def unfit(self, masks: dict[str, Tensor]) -> str | None:
        if not all(is_two_four(m) for m in masks.values() if m.dim() == 2):
            return "the masks are not 2:4 (an N:M run with n=2, m=4 is)"
        return None

    def prepare(self, model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
        from torch.sparse import to_sparse_semi_structured

        # fp32 on the GPU (cuSPARSELt), so the check against the fp32 dense outputs stays meaningful; untested on
        # the reference machine (no GPU).
        model = model.cuda()
        for _name, lin in pruned_linears(model, masks):
            lin.weight = nn.Parameter(to_sparse_semi_structured(lin.weight.detach()), requires_grad=False)
        model.register_forward_pre_hook(_to_cuda, with_kwargs=True)
        return model


def _to_cuda(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return (tuple(a.cuda() for a in args), {k: v.cuda() if isinstance(v, Tensor) else v for k, v in kwargs.items()})


DEEPSPARSE_PYTHON = "SMCBENCH_DEEPSPARSE_PYTHON"


def deepsparse_python() -> str | None:
    """A Python interpreter with DeepSparse installed: $SMCBENCH_DEEPSPARSE_PYTHON, else this one if it has it."""
    given = os.environ.get(DEEPSPARSE_PYTHON)
    if given:
        return given if shutil.which(given) or os.path.isfile(given) else None
    try:
        import deepsparse  # noqa: F401
    except ImportError:
        return None
    import sys

    return sys.executable


@register_backend
class DeepSparse(Backend):
    name = "deepsparse"
    summary = "Neural Magic's DeepSparse CPU engine on the model exported to ONNX (an optional, separate install)"
    external = True

    def unavailable(self) -> str | None:
        if deepsparse_python() is None:
            return (f"DeepSparse is not installed: its last release, 1.8.0, has wheels for Python 3.8-3.11 and pins "
                    f"onnx < 1.15 (1.9.0 is an end-of-life stub that refuses to install), so install it in its own "
                    f"environment (python3.11 -m venv ds && ds/bin/pip install deepsparse==1.8.0) and set "
                    f"{DEEPSPARSE_PYTHON}=ds/bin/python")
        try:
            import onnx  # noqa: F401
        except ImportError:
            return "exporting to ONNX needs the onnx package: pip install 'smc-bench[inference]'"
        return None

    def prepare(self, model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
        raise SmcBenchError("deepsparse runs in its own process (smcbench.inference.external)")


# PyTorch warns on every CSR tensor that the format is in beta; the check against the dense outputs is ours.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta", category=UserWarning)
