"""Device names: ``'auto'|'cpu'|'cuda'|'cuda:N'|'mps'`` to an available ``torch.device``."""

from __future__ import annotations

import re

import torch

from seqlm.errors import ConfigError

_CUDA_INDEX = re.compile(r"cuda:(\d+)")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn ``'auto'|'cpu'|'cuda'|'cuda:N'|'mps'`` into an available ``torch.device``.

    ``'auto'`` picks CUDA, then MPS, then CPU.

    Raises:
        ConfigError: the name is unknown or that device is not available here.
    """
    name = str(name)
    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not mps_ok:
            raise ConfigError("`device` mps: Apple MPS is not available on this machine; use "
                              "`device` cpu or auto")
        return torch.device("mps")
    match = _CUDA_INDEX.fullmatch(name)
    if name == "cuda" or match:
        if not torch.cuda.is_available():
            raise ConfigError(f"`device` {name}: CUDA is not available on this machine; use "
                              "`device` cpu or auto")
        count = torch.cuda.device_count()
        if match and int(match.group(1)) >= count:
            raise ConfigError(f"`device` {name}: this machine has {count} CUDA device(s), "
                              f"cuda:0 to cuda:{count - 1}; use one of those or cuda")
        return torch.device(name)
    raise ConfigError(f"`device` {name}: unknown device; use auto, cpu, cuda, cuda:N or mps")
