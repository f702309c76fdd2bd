"""What a piece of torch code costs a GPU besides its arithmetic: the ops it dispatches (on a
GPU each is a kernel launch or a copy) and the bytes they read and write (memory-bound kernels,
as the augmentation's are, take the time their bytes take). Both are counted on the CPU, so a
test or a benchmark checks them without a GPU.

`OpCounter`: the aten ops dispatched inside it, with their names and keyword arguments.

`Traffic`: the bytes each op reads and writes, by the library function that ran it (the
innermost frame in k400ft). Eager aten ops count their tensor arguments and results, with these
rules: a view moves nothing (left out); `empty` allocates without writing; an op that only
writes a tensor it is given (copy_, fill_, zero_) does not read it, any other in-place op reads
and writes it; `index_select` reads and writes the rows it selects and `index_copy_` writes the
rows it copies (not the whole tensor they index). Kernels compiled by torch.compile (Inductor's
C++ kernels on the CPU, called from compiled graphs without an aten op) count every tensor
argument they are given: read-only ones once, written ones once, read-and-written ones twice.
That is an upper bound for a kernel that reads a buffer only in part. Kernels count only if
they were loaded while counting was installed (`Traffic` installs it on entry; the benchmark
enters one before anything is compiled).
"""

from __future__ import annotations

import functools
import re
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

LIBRARY = str(Path(__file__).resolve().parent)
ONLY_WRITE = {"copy_", "fill_", "zero_"}
ALLOCATE = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside it (on a GPU each is a kernel launch or a copy)
    and keeps their names and keyword arguments: `with OpCounter() as ops: ...`."""

    def __init__(self):
        super().__init__()
        self.count, self.calls = 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        self.calls.append((func.overloadpacket.__name__, dict(kwargs or {})))
        return func(*args, **(kwargs or {}))


def nbytes(value) -> int:
    """Bytes of the tensors in value (a tensor, or a list or tuple of them)."""
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, list | tuple):
        return sum(nbytes(v) for v in value)
    return 0


def where() -> str:
    """The innermost library function on the stack (a compiled graph's kernels run inside the
    frame of the function torch.compile compiled)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(LIBRARY):
            return frame.f_code.co_name
        frame = frame.f_back
    return "(outside the library)"


def op_bytes(name: str, args: tuple, result) -> int:
    """Bytes read and written by one eager aten op (the rules in the module's docstring)."""
    if name in ALLOCATE:
        return 0
    if name == "index_select":
        return nbytes(args[2]) + 2 * nbytes(result)
    if name == "index_copy_":
        return nbytes(args[2]) + 2 * nbytes(args[3])
    written = nbytes(result)
    if name.endswith("_"):  # in place: args[0] is the result
        read = nbytes(args[1:]) + (0 if name in ONLY_WRITE else nbytes(args[0]))
    else:
        read = nbytes(args)
    return read + written


class Traffic(TorchDispatchMode):
    """`with Traffic() as traffic: ...`: traffic.bytes and traffic.ops, Counters by the library
    function that ran them (compiled kernels under 'compiled <function>'), and traffic.total."""

    active: Traffic | None = None

    @classmethod
    def ignore_compile_internals(cls) -> bool:  # torch.compile keeps compiling under it
        return True

    def __init__(self):
        super().__init__()
        install_kernel_counting()
        self.bytes, self.ops = Counter(), Counter()

    @property
    def total(self) -> int:
        return sum(self.bytes.values())

    def add(self, place: str, count: int) -> None:
        self.bytes[place] += count
        self.ops[place] += 1

    def __enter__(self):
        Traffic.active = self
        return super().__enter__()

    def __exit__(self, *exc):
        Traffic.active = None
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if not func.is_view:
            self.add(where(), op_bytes(func.overloadpacket.__name__, args, result))
        return result


def _kernel_arguments(argtypes, source: str) -> list[int]:
    """For each argument of a C++ kernel: 0 not a buffer, 1 read or written, 2 both."""
    signature = re.search(r"\bkernel\s*\(([^)]*)\)", source)
    names = [p.split()[-1].lstrip("*") for p in signature.group(1).split(",")] if signature else []
    kinds = []
    for number, argtype in enumerate(argtypes):
        name = names[number] if number < len(names) else ""
        kinds.append(0 if "*" not in argtype else 2 if name.startswith("in_out_ptr") else 1)
    return kinds


@functools.cache
def install_kernel_counting() -> None:
    """Wrap every C++ kernel Inductor loads from now on so that `Traffic` counts its bytes."""
    from torch._inductor.codecache import CppPythonBindingsCodeCache

    load = CppPythonBindingsCodeCache.load_pybinding_async.__func__

    def counted(cls, argtypes, main_code, *args, **kwargs):
        future = load(cls, argtypes, main_code, *args, **kwargs)
        kinds = _kernel_arguments(argtypes, main_code)

        def kernel():
            entry = future()

            def call(*values):
                if Traffic.active is not None:
                    count = sum(k * nbytes(v) for k, v in zip(kinds, values, strict=False))
                    Traffic.active.add(f"compiled {where()}", count)
                return entry(*values)

            return call

        return kernel

    CppPythonBindingsCodeCache.load_pybinding_async = classmethod(counted)
