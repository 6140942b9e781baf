"""Host → device staging of calibration and inference batches.

TensorRT's calibrators hand TensorRT *device pointers* (``get_batch`` returns one ``int`` per
input), and the runtime binds device addresses to named tensors. This module owns that memory:

* :class:`StagingBuffers` holds one device buffer per model input, sized from the model's input
  specs, reused for every batch, and freed deterministically when the ``with`` block ends
  (or :meth:`~StagingBuffers.close` is called).
* :class:`DeviceBuffer` is one allocation with upload/download.
* Two CUDA bindings: cuda-python's runtime API (``cuda.bindings.runtime``, the default; the
  older ``cuda.cudart`` module is used when that is what is installed) and pycuda, used only
  when asked for with ``backend="pycuda"``.

Every CUDA call is checked; a failure raises :class:`~trt_backend.errors.DeviceError` with
CUDA's own error string.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from kldiv.defaults import DEFAULT_CUDA_BACKEND
from kldiv.errors import DataSourceError, ModelError

from .errors import INSTALL_HINT, DeviceError

__all__ = [
    "BACKENDS",
    "CudaBackend",
    "DeviceBuffer",
    "SpecsLike",
    "StagingBuffers",
    "TensorSpec",
    "as_specs",
    "check_batch",
    "get_backend",
    "input_specs_from_onnx",
]

logger = logging.getLogger(__name__)

#: Names accepted by :func:`get_backend`.
BACKENDS = ("cuda-python", "pycuda")


class TensorSpec(NamedTuple):
    """A model input: name, shape (``None`` for a dynamic dimension) and NumPy dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype[Any]


#: Input specs as accepted everywhere: TensorSpec objects, or ``{name: (shape, dtype)}``.
SpecsLike = Sequence[TensorSpec] | Mapping[str, tuple[Sequence[int | None], Any]]


class CudaBackend(Protocol):
    """The CUDA operations staging needs; implemented with cuda-python or pycuda."""

    name: str

    def malloc(self, nbytes: int) -> int:
        """Allocate ``nbytes`` of device memory; return the device pointer."""

    def free(self, ptr: int) -> None:
        """Free memory returned by :meth:`malloc`."""

    def htod(self, ptr: int, host: np.ndarray[Any, Any]) -> None:
        """Copy the C-contiguous ``host`` array to device memory at ``ptr``."""

    def dtoh(self, host: np.ndarray[Any, Any], ptr: int) -> None:
        """Copy ``host.nbytes`` bytes at ``ptr`` into the C-contiguous ``host`` array."""

    def create_stream(self) -> int:
        """Create a CUDA stream; return its handle as an int."""

    def destroy_stream(self, stream: int) -> None:
        """Destroy a stream made by :meth:`create_stream`."""

    def synchronize(self, stream: int) -> None:
        """Wait for all work queued on ``stream``."""


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise DeviceError(
                f"cuda-python is not installed; install it with {INSTALL_HINT} "
                "(or `pip install cuda-python`), or pass backend='pycuda' if you have pycuda"
            ) from None
    return cudart


class _CudaPythonBackend:
    """cuda-python's runtime API (``cudaMalloc`` / ``cudaMemcpy`` / ``cudaFree``)."""

    name = "cuda-python"

    def __init__(self) -> None:
        self._rt = _import_cudart()

    def _check(self, call: str, result: Any) -> Any:
        rt = self._rt
        if isinstance(result, tuple):
            err, rest = result[0], result[1:]
        else:
            err, rest = result, ()
        if err != rt.cudaError_t.cudaSuccess:
            _, text = rt.cudaGetErrorString(err)
            message = text.decode() if isinstance(text, bytes) else str(text)
            raise DeviceError(
                f"{call} failed: {getattr(err, 'name', err)}: {message}; check that this machine "
                "has an NVIDIA GPU, a working driver, and free device memory"
            )
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest

    def malloc(self, nbytes: int) -> int:
        return int(self._check("cudaMalloc", self._rt.cudaMalloc(max(int(nbytes), 1))))

    def free(self, ptr: int) -> None:
        self._check("cudaFree", self._rt.cudaFree(ptr))

    def htod(self, ptr: int, host: np.ndarray[Any, Any]) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check("cudaMemcpy(HostToDevice)", self._rt.cudaMemcpy(ptr, host.ctypes.data, host.nbytes, kind))

    def dtoh(self, host: np.ndarray[Any, Any], ptr: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check("cudaMemcpy(DeviceToHost)", self._rt.cudaMemcpy(host.ctypes.data, ptr, host.nbytes, kind))

    def create_stream(self) -> int:
        return int(self._check("cudaStreamCreate", self._rt.cudaStreamCreate()))

    def destroy_stream(self, stream: int) -> None:
        self._check("cudaStreamDestroy", self._rt.cudaStreamDestroy(stream))

    def synchronize(self, stream: int) -> None:
        self._check("cudaStreamSynchronize", self._rt.cudaStreamSynchronize(stream))


class _PycudaBackend:
    """pycuda's driver API; creates a context with ``pycuda.autoinit`` on first use."""

    name = "pycuda"

    def __init__(self) -> None:
        try:
            import pycuda.autoinit  # noqa: F401
            import pycuda.driver as drv
        except ImportError:
            raise DeviceError(
                "pycuda is not installed; use the default backend='cuda-python' "
                f"({INSTALL_HINT}) or `pip install pycuda`"
            ) from None
        self._drv: Any = drv
        self._allocs: dict[int, Any] = {}
        self._streams: dict[int, Any] = {}

    def _call(self, call: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._drv.Error as exc:
            raise DeviceError(f"{call} failed: {exc}") from exc

    def malloc(self, nbytes: int) -> int:
        alloc = self._call("mem_alloc", self._drv.mem_alloc, max(int(nbytes), 1))
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        alloc = self._allocs.pop(ptr)
        self._call("free", alloc.free)

    def htod(self, ptr: int, host: np.ndarray[Any, Any]) -> None:
        self._call("memcpy_htod", self._drv.memcpy_htod, ptr, host)

    def dtoh(self, host: np.ndarray[Any, Any], ptr: int) -> None:
        self._call("memcpy_dtoh", self._drv.memcpy_dtoh, host, ptr)

    def create_stream(self) -> int:
        stream = self._call("Stream", self._drv.Stream)
        self._streams[int(stream.handle)] = stream
        return int(stream.handle)

    def destroy_stream(self, stream: int) -> None:
        self._streams.pop(stream, None)

    def synchronize(self, stream: int) -> None:
        s = self._streams.get(stream)
        if s is not None:
            self._call("Stream.synchronize", s.synchronize)
        else:
            self._call("Context.synchronize", self._drv.Context.synchronize)


def get_backend(backend: str | CudaBackend = DEFAULT_CUDA_BACKEND) -> CudaBackend:
    """Return a CUDA backend by name (``"cuda-python"`` or ``"pycuda"``), or ``backend`` itself.

    Raises
    ------
    DeviceError
        If the binding is not installed (the message says what to install).
    ValueError
        If the name is unknown.
    """
    if not isinstance(backend, str):
        return backend
    key = backend.strip().lower().replace("_", "-")
    if key in ("cuda-python", "cudart", "cuda"):
        return _CudaPythonBackend()
    if key == "pycuda":
        return _PycudaBackend()
    raise ValueError(f"unknown CUDA backend {backend!r}; use one of {', '.join(BACKENDS)}")


class DeviceBuffer:
    """One device allocation of ``nbytes`` bytes; free it with :meth:`free` or ``with``.

    Parameters
    ----------
    nbytes : int
        Size in bytes.
    backend : str or CudaBackend, optional
        ``"cuda-python"`` (default) or ``"pycuda"``.
    """

    def __init__(self, nbytes: int, backend: str | CudaBackend = DEFAULT_CUDA_BACKEND) -> None:
        self.backend = get_backend(backend)
        self.nbytes = int(nbytes)
        self._ptr: int | None = self.backend.malloc(self.nbytes)

    @property
    def ptr(self) -> int:
        """The device pointer (raises after :meth:`free`)."""
        if self._ptr is None:
            raise DeviceError("this device buffer was already freed; allocate a new one")
        return self._ptr

    def upload(self, host: np.ndarray[Any, Any]) -> None:
        """Copy ``host`` (any layout; made C-contiguous first) to the device."""
        arr = np.ascontiguousarray(host)
        if arr.nbytes > self.nbytes:
            raise DeviceError(
                f"{arr.nbytes} bytes do not fit in a {self.nbytes}-byte device buffer; "
                "allocate a larger buffer"
            )
        self.backend.htod(self.ptr, arr)

    def download(self, shape: Sequence[int], dtype: Any) -> np.ndarray[Any, Any]:
        """Copy the buffer's first ``prod(shape) * itemsize`` bytes back into a new array."""
        out = np.empty(tuple(int(s) for s in shape), dtype=np.dtype(dtype))
        if out.nbytes > self.nbytes:
            raise DeviceError(
                f"cannot read {out.nbytes} bytes from a {self.nbytes}-byte device buffer"
            )
        self.backend.dtoh(out, self.ptr)
        return out

    def free(self) -> None:
        """Free the allocation (idempotent)."""
        if self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            self.backend.free(ptr)

    def __enter__(self) -> DeviceBuffer:  # noqa: PYI034 - not meant for subclassing
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()

    def __repr__(self) -> str:
        state = f"{self._ptr:#x}" if self._ptr is not None else "freed"
        return f"DeviceBuffer({self.nbytes} bytes, {state}, backend={self.backend.name!r})"


def as_specs(specs: SpecsLike) -> list[TensorSpec]:
    """Normalize :data:`SpecsLike` to a list of :class:`TensorSpec` (negative dims -> None)."""
    if isinstance(specs, Mapping):
        items: Iterable[Any] = ((n, s, d) for n, (s, d) in specs.items())
    else:
        items = specs
    out = []
    for name, shape, dtype in items:
        dims = tuple(None if d is None or int(d) < 0 else int(d) for d in shape)
        out.append(TensorSpec(str(name), dims, np.dtype(dtype)))
    if not out:
        raise ModelError("the model has no inputs to stage; check the model file")
    return out


def check_batch(
    specs: Iterable[TensorSpec],
    batch: Mapping[str, Any],
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, np.ndarray[Any, Any]]:
    """Validate ``batch`` against the inputs; return C-contiguous arrays of the input dtypes.

    Parameters
    ----------
    specs : iterable of TensorSpec
        The network's inputs (``None`` dimensions match anything).
    batch : mapping
        ``{input_name: array}``.
    shapes : mapping, optional
        Concrete shapes that override ``specs`` (buffers already allocated).

    Raises
    ------
    DataSourceError
        Missing or unknown input names, a shape that does not match the network, or a dtype
        that cannot be cast safely.
    """
    spec_map = {s.name: s for s in specs}
    names = set(spec_map)
    missing = sorted(names - set(batch))
    extra = sorted(set(batch) - names)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {missing}")
        if extra:
            parts.append(f"unknown name(s) {extra}")
        raise DataSourceError(
            f"batch does not match the network's inputs: {'; '.join(parts)}; the inputs are "
            f"{sorted(names)} - give each batch as {{input_name: array}}"
        )
    out = {}
    for name, spec in spec_map.items():
        arr = np.asarray(batch[name])
        want: tuple[int | None, ...] = (shapes or {}).get(name, spec.shape)
        shape_ok = arr.ndim == len(want) and all(
            w is None or w == a for w, a in zip(want, arr.shape)
        )
        if not shape_ok:
            shown = tuple("?" if w is None else w for w in want)
            raise DataSourceError(
                f"input {name!r}: batch shape {arr.shape} does not match the network's "
                f"{shown}; reshape or re-batch the data (every batch must have the same "
                "shape; the first batch fixes dynamic dimensions)"
            )
        if arr.dtype != spec.dtype:
            if not np.can_cast(arr.dtype, spec.dtype, casting="same_kind"):
                raise DataSourceError(
                    f"input {name!r}: batch dtype {arr.dtype} cannot be cast to the "
                    f"network's {spec.dtype}; convert the data to {spec.dtype}"
                )
            arr = arr.astype(spec.dtype)
        out[name] = np.ascontiguousarray(arr)
    return out


class StagingBuffers:
    """Device buffers for a model's inputs, reused across batches, freed on ``close``.

    Parameters
    ----------
    specs : sequence of TensorSpec, or mapping name -> (shape, dtype)
        The model's inputs. A ``None`` (or negative) dimension is taken from the first batch
        staged; later batches must have the same shape (a calibrator's batch size is fixed).
    backend : str or CudaBackend, optional
        ``"cuda-python"`` (default) or ``"pycuda"``.

    Examples
    --------
    >>> with StagingBuffers({"x": ((8, 3, 32, 32), "float32")}) as stage:  # doctest: +SKIP
    ...     ptrs = stage.stage({"x": batch})
    """

    def __init__(
        self,
        specs: SpecsLike,
        *,
        backend: str | CudaBackend = DEFAULT_CUDA_BACKEND,
    ) -> None:
        self.specs = {s.name: s for s in as_specs(specs)}
        self.backend = get_backend(backend)
        self._buffers: dict[str, DeviceBuffer] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self.allocations = 0
        self.batches_staged = 0
        self._closed = False
        for spec in self.specs.values():
            if all(d is not None for d in spec.shape):
                self._allocate(spec.name, tuple(int(d) for d in spec.shape if d is not None))

    def _allocate(self, name: str, shape: tuple[int, ...]) -> None:
        spec = self.specs[name]
        nbytes = math.prod(shape) * spec.dtype.itemsize
        self._buffers[name] = DeviceBuffer(nbytes, self.backend)
        self._shapes[name] = shape
        self.allocations += 1
        logger.debug("allocated %d bytes on the device for input %r %s", nbytes, name, shape)

    def check(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray[Any, Any]]:
        """Validate ``batch`` (see :func:`check_batch`); allocated buffers fix their shapes."""
        return check_batch(self.specs.values(), batch, shapes=self._shapes)

    def stage(self, batch: Mapping[str, Any]) -> dict[str, int]:
        """Copy one batch to the device; return ``{input_name: device_pointer}``."""
        if self._closed:
            raise DeviceError("these staging buffers were closed; create new ones")
        arrays = self.check(batch)
        for name, arr in arrays.items():
            if name not in self._buffers:
                self._allocate(name, tuple(arr.shape))
            self._buffers[name].upload(arr)
        self.batches_staged += 1
        return self.pointers

    @property
    def pointers(self) -> dict[str, int]:
        """``{input_name: device_pointer}`` of the buffers allocated so far."""
        return {name: buf.ptr for name, buf in self._buffers.items()}

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The concrete shape of each allocated buffer."""
        return dict(self._shapes)

    def fetch(self, name: str) -> np.ndarray[Any, Any]:
        """Copy input ``name``'s buffer back to the host (for checks)."""
        return self._buffers[name].download(self._shapes[name], self.specs[name].dtype)

    def close(self) -> None:
        """Free every buffer now (idempotent); further staging raises."""
        errors = []
        for buf in self._buffers.values():
            try:
                buf.free()
            except DeviceError as exc:  # free the rest, then report
                errors.append(exc)
        self._buffers.clear()
        self._closed = True
        if errors:
            raise errors[0]

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def __enter__(self) -> StagingBuffers:  # noqa: PYI034 - not meant for subclassing
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._buffers)} buffers"
        return f"StagingBuffers({list(self.specs)}, {state}, backend={self.backend.name!r})"


def input_specs_from_onnx(model: str | os.PathLike[str]) -> list[TensorSpec]:
    """Read an ONNX model's graph inputs (initializers excluded) as :class:`TensorSpec`.

    Dimensions that are symbolic or unknown come back as ``None``.

    Raises
    ------
    ModelError
        If the file cannot be read as ONNX.
    """
    try:
        import onnx
        from onnx import helper
    except ImportError:
        raise ModelError('reading ONNX inputs needs onnx: pip install "kldiv[onnx]"') from None
    try:
        proto = onnx.load(os.fspath(model), load_external_data=False)
    except Exception as exc:
        raise ModelError(
            f"cannot read {os.fspath(model)!r} as an ONNX model ({exc}); check the path"
        ) from exc
    initializers = {t.name for t in proto.graph.initializer}
    specs = []
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        ttype = value.type.tensor_type
        dims = tuple(
            int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in ttype.shape.dim
        )
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        specs.append(TensorSpec(value.name, dims, dtype))
    return specs
