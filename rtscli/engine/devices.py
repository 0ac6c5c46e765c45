"""Which device runs the model: a CUDA GPU, Apple silicon (MPS), or the CPU.

``--accelerator`` (training, through Lightning) and ``--device`` (``rts predict``) name it; ``auto``
takes a CUDA GPU when there is one, else Apple's MPS GPU, else the CPU. Asking for a device this machine
does not have is a one-line error with the fix, not a Lightning traceback.
"""

from __future__ import annotations

from rtscli.errors import RtsError, unknown_choice

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def has_cuda() -> bool:
    """Whether PyTorch can use a CUDA GPU here."""
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


def _unavailable(kind: str, option: str, fix: str) -> RtsError:
    """The one error for a device this machine does not have (``kind``: ``cuda`` or ``mps``)."""
    if kind == "mps":
        return RtsError(f"{option} mps: Apple's MPS GPU is not available here (it needs macOS on Apple silicon and "
                        "an arm64 build of PyTorch)", fix=fix)
    return RtsError(f"{option}: this machine has no CUDA GPU that PyTorch can use", fix=fix)


def resolve_accelerator(name: str) -> str:
    """The Lightning accelerator for ``--accelerator NAME`` (``auto``, ``cpu``, ``gpu``/``cuda``, ``mps``).

    Args:
        name: what the user gave (any case).

    Returns:
        ``auto``, ``cpu``, ``gpu`` or ``mps``.

    Raises:
        RtsError: an unknown name, or a device this machine does not have.
    """
    name = name.strip().lower()
    if name not in ACCELERATORS:
        raise unknown_choice("--accelerator", name, ACCELERATORS)
    if name in ("gpu", "cuda") and not has_cuda():
        raise _unavailable("cuda", "--accelerator gpu",
                           "use --accelerator cpu (or mps on Apple silicon), or install a CUDA build of torch")
    if name == "mps" and not has_mps():
        raise _unavailable("mps", "--accelerator", "use --accelerator cpu, or gpu on a CUDA machine")
    return "gpu" if name == "cuda" else name


def resolve_device(device: str | None, local_rank: int = 0) -> str:
    """The torch device for ``--device`` (``rts predict``): ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Args:
        device: what the user gave; None takes :func:`default_device`.
        local_rank: the process's local rank under torchrun (``cuda`` becomes ``cuda:LOCAL_RANK``).

    Returns:
        A torch device string.

    Raises:
        RtsError: an unknown device, or one this machine does not have.
    """
    if device is None:
        return default_device(local_rank)
    if device == "cuda":
        device = f"cuda:{local_rank}"
    if not (device == "cpu" or device == "mps" or device.startswith("cuda")):
        raise RtsError(f"unknown --device {device!r}", fix="use cpu, cuda, cuda:N or mps")
    if device.startswith("cuda") and not has_cuda():
        raise _unavailable("cuda", f"--device {device}", "use --device cpu (or mps on Apple silicon)")
    if device == "mps" and not has_mps():
        raise _unavailable("mps", "--device", "use --device cpu")
    return device


def distributed(device: str | None) -> tuple[int, int, str]:
    """``(rank, world size, device)`` of this process; under torchrun each rank takes its own GPU (LOCAL_RANK).

    Args:
        device: ``--device`` as given (None: the default device).

    Returns:
        Rank, world size and the torch device; ``(0, 1, device)`` outside torchrun. No collective follows the
        set-up, so a rank with nothing (left) to do never waits on the others.

    Raises:
        RtsError: an unknown or missing device (:func:`resolve_device`).
    """
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if world <= 1:
        return 0, 1, device
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def training_device(accelerator: str, local_rank: int = 0) -> str:
    """The torch device a training run with ``accelerator`` uses on this process (for memory checks)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and has_cuda()):
        return f"cuda:{local_rank}"
    if accelerator == "mps" or (accelerator == "auto" and has_mps()):
        return "mps"
    return "cpu"
