"""Where and in which precision the model runs: device, channels_last, bf16/AMP, threads."""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError


def cpu_has_bf16() -> bool:
    """True where the CPU runs bf16 natively (AVX512-BF16 or AMX): there bf16 is several times
    faster than fp32; elsewhere it is emulated and slower, so we stay in fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, c, lambda: False)() for c in checks)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype  # compute dtype for the backbone: bfloat16, float16 (CUDA) or float32

    @classmethod
    def create(cls, device: str = "auto", precision: str = "auto") -> "Runtime":
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is available")
        dev = torch.device(device)
        if precision == "fp32":
            dtype = torch.float32
        elif dev.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif precision == "bf16" or cpu_has_bf16():
            dtype = torch.bfloat16
        else:
            dtype = torch.float32
        return cls(dev, dtype)

    @property
    def precision(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for training (AMP on CUDA, bf16 autocast on CPU)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def train_module(self, module: nn.Module) -> nn.Module:
        return module.to(self.device, memory_format=torch.channels_last)

    def inference_module(self, module: nn.Module) -> nn.Module:
        """An eval-mode copy in channels_last and the compute dtype. On CPU the weights are cast
        to bf16 outright: measured faster than autocast for inference."""
        m = copy.deepcopy(module).eval().to(self.device, memory_format=torch.channels_last)
        for p in m.parameters():
            p.requires_grad_(False)
        return m.to(self.dtype)

    def to_input(self, batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype=None) -> torch.Tensor:
        """uint8 (B,3,H,W) -> normalized float in channels_last on the device."""
        x = batch.to(self.device, non_blocking=True).float().div_(255.0)
        x = x.sub_(mean.to(self.device)).div_(std.to(self.device))
        return x.contiguous(memory_format=torch.channels_last).to(dtype or torch.float32)


def default_workers() -> int:
    """DataLoader workers: none on small machines, where they compete with the model for cores
    (measured on 2 cores); a few where cores are plentiful."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cores <= 4 else min(8, cores // 2)
