"""An accelerator emulated on a CPU machine: the `meta` device stands for CUDA.

Every test here runs in float32 on a CPU, where a tensor left on the CPU beside the model's
never fails. On a GPU it does ("Expected all tensors to be on the same device"). torch's own
stand-ins each miss part of it on the project's CPU build of torch: fake CUDA tensors
(`FakeTensorMode`) cannot index or run autograd without a CUDA build, and the `meta` device
runs whole forward and backward passes but lets some CPU tensors through (CPU token ids into a
meta embedding pass silently) and cannot read a value back (`.item()`, `.tolist()`).

`EmulatedCuda` is a dispatch mode over the `meta` device that behaves as CUDA does where it
matters here:
- an operator that meets a meta ("device") tensor and a CPU tensor that is not a 0-dim scalar
  raises `DeviceMismatch`, as CUDA raises, except where CUDA itself accepts CPU tensors: the
  copies between devices and CPU index tensors in indexing (`x[idx]`, `x[idx] = y`);
- a CPU random generator used on device tensors raises, as `torch.multinomial` does on CUDA; a
  generator built for the device (`torch.Generator("meta")` is unsupported, so `generator()`
  stands in for it) passes;
- reading a device tensor back (`.item()`, `.tolist()`, `.cpu()`) gives zeros of the right
  shape and dtype, as a synchronising copy would give numbers, and a truth value read back
  (`if x.any():`) is True, so a generation loop ends after its first new token; `nonzero` (and boolean-mask
  indexing) takes every element as selected, so shapes downstream stay consistent.
What it cannot check is said in docs/gpu.md: values (a meta tensor has none: no loss falls),
kernels and their memory, anything under a real CUDA generator's stream.
"""

from __future__ import annotations

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
DEVICE = torch.device("meta")
# ops that move data between devices, or take CPU indices on CUDA as CUDA itself allows
MOVES = {aten._to_copy.default, aten.to.dtype_layout, aten.to.device, aten.to.other,
         aten.copy_.default, aten.lift_fresh.default,
         aten.lift_fresh_copy.default, aten._copy_from.default,
         aten._copy_from_and_resize.default}
INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default,
            aten._index_put_impl_.default}


class DeviceMismatch(RuntimeError):
    """A CPU tensor met an (emulated) CUDA one where CUDA would raise."""


_DEVICE_GENERATORS: dict[int, torch.Generator] = {}


def generator(device) -> torch.Generator:
    """The stand-in for `torch.Generator(device)`: a CPU generator marked as the device's when
    `device` is the emulated one, a plain one otherwise."""
    gen = torch.Generator()
    if torch.device(device).type == DEVICE.type:
        _DEVICE_GENERATORS[gen._cdata] = gen  # kept alive: the address stays unique
    return gen


def _zeros_like(t: torch.Tensor, dtype=None) -> torch.Tensor:
    return torch.zeros(t.shape, dtype=dtype or t.dtype)


class EmulatedCuda(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()  # every operator that ran on the device (what was covered)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = pytree.tree_leaves((args, kwargs))
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        on_device = [t for t in tensors if t.device.type == DEVICE.type]
        if on_device:
            self.ops.add(str(func.overloadpacket))
            self._check(func, tensors, leaves, args)
            if func.overloadpacket in (aten._local_scalar_dense, aten.item, aten.is_nonzero):
                dtype = args[0].dtype
                # a truth read is True: `generate` then stops after its first new token (its
                # stopping test, `unfinished.max() == 0`, has no value to become true on)
                return True if dtype == torch.bool else 0.0 if dtype.is_floating_point else 0
            if (func.overloadpacket in (aten._to_copy, aten.to)
                    and args[0].device.type == DEVICE.type):
                target = kwargs.get("device", next((a for a in args[1:] if isinstance(
                    a, torch.device | str)), None))
                if target is not None and torch.device(target).type == "cpu":
                    dtype = kwargs.get("dtype", next((a for a in args[1:]
                                                      if isinstance(a, torch.dtype)), None))
                    return _zeros_like(args[0], dtype)
            if func is aten.copy_.default and args[0].device.type == "cpu":
                return args[0].zero_()  # a device tensor read into a CPU one
            if func is aten.nonzero.default:
                x = args[0]
                return torch.empty((x.numel(), x.dim()), dtype=torch.long, device=DEVICE)
            if func in INDEXING and any(i is not None and i.dtype == torch.bool
                                        for i in args[1]):
                # a boolean mask as the indices it selects: every element, as `nonzero` here
                longs = []
                for i in args[1]:
                    if i is None or i.dtype != torch.bool:
                        longs.append(i)
                    else:
                        longs += [torch.empty((i.numel(),), dtype=torch.long,
                                              device=i.device)] * i.dim()
                args = (args[0], longs, *args[2:])
        return func(*args, **kwargs)

    def _check(self, func, tensors, leaves, args):
        for gen in leaves:
            if isinstance(gen, torch._C.Generator) and gen._cdata not in _DEVICE_GENERATORS:
                raise DeviceMismatch(f"{func}: a CPU random generator on device tensors (CUDA "
                                     "raises: 'Expected a 'cuda' device type for generator')")
        if func in MOVES:
            return
        if func in INDEXING:  # CUDA moves CPU indices itself; the indexed tensors must match
            tensors = [args[0]] + [a for a in args[2:] if isinstance(a, torch.Tensor)]
        host = [t for t in tensors if t.device.type == "cpu" and t.dim() > 0]
        if host:
            shapes = ", ".join(f"cpu {tuple(t.shape)} {t.dtype}" for t in host[:3])
            raise DeviceMismatch(f"{func}: Expected all tensors to be on the same device, but "
                                 f"found at least two devices, cuda (emulated) and cpu: {shapes}")


def meta_copy(model):
    """`model` (built on the CPU) with every parameter and buffer on the emulated device, same
    dtypes; the CPU model is untouched (a new module tree)."""
    import copy

    return copy.deepcopy(model).to(DEVICE)
