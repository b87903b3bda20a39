"""The torch device for training, evaluation and predictions (STHELAR_DEVICE: auto | cpu | cuda[:N])."""

from __future__ import annotations

import os

from dagster import ConfigurableResource

from sthelar_platform.core.errors import InputError


class ComputeDeviceResource(ConfigurableResource):
    """Where torch runs: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]``.

    ``threads`` caps torch's CPU threads (0 = the cores this process may use).
    """

    device: str = "auto"
    threads: int = 0

    def resolve(self) -> str:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        else:
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError("$STHELAR_DEVICE", f"compute device {self.device!r} requested but torch sees no CUDA GPU",
                             "set STHELAR_DEVICE=cpu (or auto), or run on a machine with a GPU")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise InputError("$STHELAR_DEVICE", f"unknown compute device {self.device!r}", "use auto, cpu or cuda[:N]")
        return self.device
