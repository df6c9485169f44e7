"""Where and in which precision a PyTorch network runs (device, channels_last, bf16/AMP), and the
PyTorch engine's feature extractor (`Extractor`)."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import UserError
from .models.preprocess import Preprocess


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
        if device.startswith("cuda") and not torch.cuda.is_available():
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
        """Mixed precision for training (AMP on CUDA, bf16 autocast on CPU). On CPU in bf16 the
        gradients of depthwise convolutions that oneDNN computes slowly in bf16 are computed in
        fp32 (see `DepthwiseGradFp32`)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        amp = torch.autocast(device_type=self.device.type, dtype=self.dtype)
        if self.device.type != "cpu" or self.dtype != torch.bfloat16:
            return amp
        return _with_depthwise_grad_fp32(amp)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def train_module(self, module: nn.Module) -> nn.Module:
        return module.to(self.device, memory_format=torch.channels_last)

    def inference_module(self, module: nn.Module, input_size: int = 224) -> nn.Module:
        """An eval-mode copy with BatchNorm folded into the convolutions, in channels_last and the
        compute dtype. On CPU the weights are cast to bf16 outright: measured faster than autocast
        for inference."""
        m = copy.deepcopy(module).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        fold_batchnorm(m, module.eval(), input_size)
        return m.to(self.device, memory_format=torch.channels_last).to(self.dtype)

    def to_input(self, batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype=None) -> torch.Tensor:
        """uint8 (B,3,H,W) -> normalized float in channels_last on the device."""
        x = batch.to(self.device, non_blocking=True).float().div_(255.0)
        x = x.sub_(mean.to(self.device)).div_(std.to(self.device))
        return x.contiguous(memory_format=torch.channels_last).to(dtype or torch.float32)


class _DepthwiseConv(torch.autograd.Function):
    """A depthwise convolution computed in the autocast dtype whose slow bf16 gradients are
    computed in fp32. oneDNN (ONEDNN_VERBOSE) has no depthwise kernel in bf16 for the weight
    gradient, nor for the input gradient of a strided convolution, and runs generic grouped
    ones: weight gradient of 32x672x14x14 5x5 75 ms vs 20 ms in fp32; input gradient of
    32x96x113x113 3x3 stride 2 162 ms vs 48 ms. The input gradient of an unstrided one stays bf16
    (its depthwise kernel exists)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        xc, wc = x.to(dtype), weight.to(dtype)
        bc = None if bias is None else bias.to(dtype)
        with torch.autocast("cpu", enabled=False):
            out = nn.functional.conv2d(xc, wc, bc, stride, padding, dilation, groups)
        ctx.save_for_backward(xc, wc)
        ctx.conv = (stride, padding, dilation, groups)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return out

    @staticmethod
    def backward(ctx, grad):
        xc, wc = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        x_fp32 = need_x and max(stride) > 1  # strided: the input gradient in fp32 too
        bias_sizes = [wc.shape[0]] if need_b else None

        def conv_backward(g, x, w, mask):
            return torch.ops.aten.convolution_backward(g, x, w, bias_sizes, stride, padding, dilation, False,
                                                       [0, 0], groups, mask)

        gx = gw = gb = None
        if need_x and not x_fp32:
            gx = conv_backward(grad, xc, wc, [True, False, False])[0]
        if x_fp32 or need_w or need_b:
            fx, gw, gb = conv_backward(grad.float(), xc.float(), wc.float(), [x_fp32, need_w, need_b])
            gx = fx if x_fp32 else gx
        return (None if gx is None else gx.to(ctx.dtypes[0]), None if gw is None else gw.to(ctx.dtypes[1]),
                None if gb is None else gb.to(ctx.dtypes[2]), None, None, None, None)


class DepthwiseGradFp32(TorchFunctionMode):
    """While active, depthwise convolutions that need a weight gradient run as `_DepthwiseConv`:
    the same forward, the slow bf16 gradients in fp32. EfficientNet-Lite0's bf16 training step
    at batch 32 (best of 3 steps, 3 repeats): plain autocast 43-48 ms/img, weight gradients in
    fp32 38, and strided input gradients too 32-37. The gradients agree with plain autocast's
    (tested)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is nn.functional.conv2d and torch.is_grad_enabled():
            bound = dict(zip(("input", "weight", "bias", "stride", "padding", "dilation", "groups"), args), **kwargs)
            x, w, groups = bound["input"], bound["weight"], bound.get("groups", 1)
            padding = bound.get("padding", 0)
            if (groups > 1 and w.dim() == 4 and w.shape[1] == 1 and w.requires_grad and x.dim() == 4
                    and not isinstance(padding, str)):
                return _DepthwiseConv.apply(x, w, bound.get("bias"), _pair(bound.get("stride", 1)), _pair(padding),
                                            _pair(bound.get("dilation", 1)), groups)
        return func(*args, **kwargs)


@contextlib.contextmanager
def _with_depthwise_grad_fp32(amp: torch.autocast):
    with DepthwiseGradFp32(), amp:
        yield


def _pair(v) -> list[int]:
    return [int(i) for i in v] if isinstance(v, (tuple, list)) else [int(v), int(v)]


def fold_batchnorm(model: nn.Module, reference: nn.Module, input_size: int = 224) -> int:
    """Fold each eval-mode BatchNorm into the convolution registered just before it (conv, then bn,
    in one container: how timm and torchvision build their blocks), in place. BatchNorm alone
    took a fifth of EfficientNet-Lite0's CPU inference time. The result is checked against
    `reference` on a random batch; where it differs (a model whose data flow is not its
    registration order) the folding is undone. Returns the number of folded pairs."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    swaps = []
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if (type(conv).__name__.startswith("Conv2d") and isinstance(conv, nn.Conv2d)
                    and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                    and bn.num_features == conv.out_channels):
                swaps.append((parent, conv, bn_name, bn))
    if not swaps:
        return 0
    saved = [(conv.weight, conv.bias) for _, conv, _, _ in swaps]
    for parent, conv, bn_name, bn in swaps:
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                            bn.eps, bn.weight, bn.bias)
        conv.weight, conv.bias = weight.requires_grad_(False), bias.requires_grad_(False)
        # timm's BatchNormAct2d is bn -> drop -> act: keep what follows the normalization.
        rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
        setattr(parent, bn_name, nn.Sequential(*rest) if rest else nn.Identity())
    x = torch.rand(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ok = torch.allclose(model(x), reference(x), rtol=1e-3, atol=1e-3)
    if not ok:
        for (parent, conv, bn_name, bn), (w, b) in zip(swaps, saved):
            conv.weight, conv.bias = w, b
            setattr(parent, bn_name, bn)
        return 0
    return len(swaps)


class Extractor:
    """Runs a frozen backbone over image files, fast: eval mode, BatchNorm folded, channels_last,
    bf16 where the CPU has it (AMP dtype on CUDA), batched. Batches come decoded (`run` takes
    `decode_batches`, whose workers decode ahead)."""

    def __init__(self, backbone: nn.Module, pre: Preprocess, runtime: Runtime,
                 batch_size: int = 32):
        self.module = runtime.inference_module(backbone, pre.input_size)
        self.last_features = getattr(backbone, "last_features", None)  # multi-layer: width of the last layer's part
        self.frozen: torch.jit.ScriptModule | None = None
        self.freeze = False  # set by callers with enough images to pay for freezing
        self.pre, self.runtime = pre, runtime
        self.batch_size = batch_size
        self.mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std).view(1, 3, 1, 1)

    @torch.no_grad()
    def forward(self, batch_u8) -> torch.Tensor:
        """uint8 (B, 3, S, S) (a tensor or an array) -> float32 features (B, D) on the CPU."""
        if not isinstance(batch_u8, torch.Tensor):
            batch_u8 = torch.from_numpy(batch_u8)
        x = self.runtime.to_input(batch_u8, self.mean, self.std, self.runtime.dtype)
        if self.freeze and self.frozen is None:
            out = self._freeze(x)
            if out is not None:
                return out
        if self.frozen is not None:
            # no_grad, not inference_mode: TorchScript runs its optimized graph only outside it.
            return self.frozen(x).float().cpu()
        with torch.inference_mode():
            return self.module(x).float().cpu()

    def _freeze(self, x: torch.Tensor) -> torch.Tensor | None:
        """TorchScript trace + freeze: fuses ops beyond the eager BatchNorm folding; measured 10-18%
        faster than the folded eager module for EfficientNet-Lite0 in bf16 on CPU (6.3 vs 7.0-7.7
        ms/img). Returns this batch's features,
        or None (and stays eager) for a model that does not trace or whose traced output differs.
        The first call of the frozen module must see the real batch shape: its executor optimizes
        for the shapes of its first runs."""
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frozen = torch.jit.freeze(torch.jit.trace(self.module, x, check_trace=False))
                out = frozen(x).float()
                ref = self.module(x[:2]).float()
        except Exception:  # noqa: BLE001 - any tracing failure just means: stay eager
            self.freeze = False
            return None
        if not torch.allclose(out[:2], ref, rtol=0.05, atol=0.05):
            self.freeze = False
            return None
        self.frozen = frozen
        return out.cpu()

    def run(self, batches: Iterator[tuple], progress=None) -> Iterator[tuple]:
        """Features of `decode_batches` batches (already under way): yields (indices, one
        (1 + K, D) tensor per index, errors [(index, reason, cacheable)]) per batch."""
        for idx, batch, counts, errors in batches:
            feats = self.forward(batch).split(counts) if batch is not None else ()
            if progress is not None:
                progress.update(len(idx) + len(errors))
            yield idx, feats, errors
