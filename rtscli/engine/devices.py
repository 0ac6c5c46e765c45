"""Which device runs the model: a CUDA GPU, Apple silicon (MPS), or the CPU.

``--accelerator`` (training, through Lightning) and ``--device`` (``rts predict``) name it; ``auto``
takes a CUDA GPU when there is one, else Apple's MPS GPU, else the CPU. Asking for a device this machine
does not have is a one-line error with the fix, not a Lightning traceback.
"""

from __future__ import annotations

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def has_mps() -> bool:
    """Apple silicon's GPU through PyTorch's MPS backend (macOS 12.3+, an arm64 build of torch)."""
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def default_device(local_rank: int = 0) -> str:
    """``cuda:N`` (N = the process's local rank under torchrun), else ``mps``, else ``cpu``."""
    if has_cuda():
        return f"cuda:{local_rank}"
    if has_mps():
        return "mps"
    return "cpu"


def resolve_accelerator(name: str) -> str:
    """The Lightning accelerator for ``--accelerator NAME`` (``auto``, ``cpu``, ``gpu``/``cuda``, ``mps``).

    Raises :class:`RtsError` for an unknown name, or a device this machine does not have.
    """
    from rtscli.errors import RtsError

    name = name.strip().lower()
    if name not in ACCELERATORS:
        raise RtsError(f"unknown --accelerator {name!r}", fix=f"use one of {', '.join(ACCELERATORS)}")
    if name in ("gpu", "cuda") and not has_cuda():
        raise RtsError("--accelerator gpu: this machine has no CUDA GPU that PyTorch can use",
                       fix="use --accelerator cpu (or mps on Apple silicon), or install a CUDA build of torch")
    if name == "mps" and not has_mps():
        raise RtsError("--accelerator mps: Apple's MPS GPU is not available here (it needs macOS on Apple silicon "
                       "and an arm64 build of PyTorch)", fix="use --accelerator cpu, or gpu on a CUDA machine")
    return "gpu" if name == "cuda" else name


def training_device(accelerator: str, local_rank: int = 0) -> str:
    """The torch device a training run with ``accelerator`` uses on this process (for memory checks)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and has_cuda()):
        return f"cuda:{local_rank}"
    if accelerator == "mps" or (accelerator == "auto" and has_mps()):
        return "mps"
    return "cpu"
