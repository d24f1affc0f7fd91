"""SM partitions from CUDA green contexts: CUDA streams whose kernels run on a fixed SM subset.

A green context's SM count is fixed when it is created, so ``PartitionPool`` creates, once at
start-up, a (prefill, decode) pair of streams for every split the hardware allows (on sm_90 a
group is at least 8 SMs in multiples of 8 and the remainder takes the rest) and hands them
out by SM count. Counts are read back from the driver, never assumed.

Backends: cuda-python's driver bindings (``cuda.bindings.driver``) split the device into a
group and its remainder, which is what two lanes need. PyTorch's ``torch.cuda.green_contexts``
is used when cuda-python is missing, for single partitions only: it creates each context
from the whole device, so two of them are not guaranteed to hold disjoint SMs.

Everything touching torch or CUDA is imported inside functions: this module imports on any
machine, and fails with one ``PartitionError`` line where green contexts cannot work.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from typing import Any

GREEN_CONTEXT_DRIVER = 12040  # cuDevSmResourceSplitByCount and cuGreenCtxCreate
GREEN_STREAM_DRIVER = 12050  # cuGreenCtxStreamCreate


class PartitionError(RuntimeError):
    """Green-context partitions are unavailable or a requested split does not exist."""


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    num_sms: int
    min_sms: int  # smallest group the driver splits off
    granularity: int  # groups are multiples of this
    memory_bytes: int
    l2_bytes: int
    compute_capability: tuple[int, int]
    driver_version: int | None
    backend: str  # "cuda-python" or "torch"

    @property
    def driver(self) -> str | None:
        v = self.driver_version
        return None if v is None else f"{v // 1000}.{(v % 1000) // 10}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "driver": self.driver}


def sm_rules(major: int) -> tuple[int, int]:
    """(minimum group, group multiple) of ``cuDevSmResourceSplitByCount`` per architecture."""
    if major >= 9:
        return 8, 8
    if major == 8:
        return 4, 2
    return 2, 2


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise PartitionError("SM partitions need PyTorch with CUDA (pip install torch)") from None
    return torch


def _driver_module() -> Any | None:
    for name in ("cuda.bindings.driver", "cuda.cuda"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _torch_green_contexts(torch: Any) -> Any | None:
    gc = getattr(torch.cuda, "green_contexts", None)
    if gc is None:
        try:
            gc = importlib.import_module("torch.cuda.green_contexts")
        except ImportError:
            return None
    return gc if getattr(gc, "SUPPORTED", False) else None


def _check(driver: Any, name: str, *args: Any) -> Any:
    out = getattr(driver, name)(*args)
    err, rest = out[0], out[1:]
    if err != driver.CUresult.CUDA_SUCCESS:
        _, text = driver.cuGetErrorString(err)
        detail = text.decode() if isinstance(text, bytes) else str(text)
        raise PartitionError(f"{name} failed: {detail}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def probe(device: int = 0, backend: str | None = None) -> DeviceInfo:
    """Describe the GPU and pick a backend (``backend`` forces "cuda-python" or "torch"), or
    raise one PartitionError line saying why not."""
    if backend not in (None, "cuda-python", "torch"):
        raise PartitionError(f"unknown green-context backend {backend!r}: cuda-python or torch")
    torch = _torch()
    if not torch.cuda.is_available():
        raise PartitionError("no CUDA GPU is visible")
    # Green contexts derive from the primary context: torch must create it first.
    torch.cuda.set_device(device)
    torch.zeros(1, device=f"cuda:{device}")
    props = torch.cuda.get_device_properties(device)
    major, minor = props.major, props.minor
    min_sms, step = sm_rules(major)
    driver = _driver_module() if backend != "torch" else None
    version = None
    if backend == "cuda-python" and driver is None:
        raise PartitionError("cuda-python's driver bindings are not installed")
    if driver is not None:
        version = int(_check(driver, "cuDriverGetVersion"))
        if version < GREEN_CONTEXT_DRIVER:
            raise PartitionError(
                f"CUDA driver {version // 1000}.{(version % 1000) // 10} has no green contexts; "
                "SM partitions need driver 12.4 or newer"
            )
        backend = "cuda-python"
    elif _torch_green_contexts(torch) is not None:
        backend = "torch"
    else:
        raise PartitionError(
            "SM partitions need green contexts from cuda-python (pip install cuda-python) "
            "or a PyTorch build with torch.cuda.green_contexts"
        )
    return DeviceInfo(
        index=device,
        name=str(props.name),
        num_sms=int(props.multi_processor_count),
        min_sms=min_sms,
        granularity=step,
        memory_bytes=int(props.total_memory),
        l2_bytes=int(getattr(props, "L2_cache_size", 50 * 2**20)),
        compute_capability=(int(major), int(minor)),
        driver_version=version,
        backend=backend,
    )


@dataclass
class _Split:
    group_sms: int
    rest_sms: int
    # (prefill, decode) streams for each orientation, so the two lanes never share a stream.
    group_first: tuple[Any, Any]
    rest_first: tuple[Any, Any] | None
    handles: list[Any] = field(default_factory=list)


class PartitionPool:
    """Every split of the GPU into two lanes, created once; streams handed out by SM count.

    ``sizes`` limits which group sizes are built (a sweep needs only a few); by default every
    valid group size is. ``streams(p, d)`` returns a (prefill, decode) pair on disjoint SMs;
    ``stream(s)`` returns one stream on ``s`` SMs (the whole GPU when ``s`` is its SM count).
    ``backend`` forces one green-context backend instead of the first available.
    """

    def __init__(self, device: int = 0, sizes: Any = None, backend: str | None = None) -> None:
        self.info = probe(device, backend)
        torch = _torch()
        self._device = torch.device("cuda", device)
        self._full = torch.cuda.Stream(self._device)
        self._splits: list[_Split] = []
        n, lo, step = self.info.num_sms, self.info.min_sms, self.info.granularity
        wanted = range(lo, n - lo + 1, step) if sizes is None else sorted(set(sizes))
        for k in wanted:
            if k <= 0 or k >= n:
                continue
            if k < lo or k % step:
                raise PartitionError(
                    f"{k} SMs is not a green-context group on {self.info.name} "
                    f"(groups are >= {lo} SMs in multiples of {step})"
                )
            self._splits.append(self._make_split(k))

    # -- creation -------------------------------------------------------------------------

    def _make_split(self, k: int) -> _Split:
        if self.info.backend == "cuda-python":
            return self._split_driver(k)
        return self._split_torch(k)

    def _split_driver(self, k: int) -> _Split:
        driver = _driver_module()
        sm_type = driver.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM
        dev = _check(driver, "cuDeviceGet", self.info.index)
        full = _check(driver, "cuDeviceGetDevResource", dev, sm_type)
        groups, _, rest = _check(driver, "cuDevSmResourceSplitByCount", 1, full, 0, k)
        handles: list[Any] = []
        ctxs = []
        for resource in (groups[0], rest):
            desc = _check(driver, "cuDevResourceGenerateDesc", [resource], 1)
            flags = driver.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM
            ctx = _check(driver, "cuGreenCtxCreate", desc, dev, flags)
            handles.append(ctx)
            ctxs.append(ctx)
        counts = [
            int(_check(driver, "cuGreenCtxGetDevResource", c, sm_type).sm.smCount) for c in ctxs
        ]
        streams = [[self._green_stream(driver, c, handles) for _ in range(2)] for c in ctxs]
        group, rest_streams = streams
        return _Split(
            group_sms=counts[0],
            rest_sms=counts[1],
            group_first=(group[0], rest_streams[0]),
            rest_first=(rest_streams[1], group[1]),
            handles=handles,
        )

    def _green_stream(self, driver: Any, ctx: Any, handles: list[Any]) -> Any:
        torch = _torch()
        flags = driver.CUstream_flags.CU_STREAM_NON_BLOCKING
        if (self.info.driver_version or 0) >= GREEN_STREAM_DRIVER:
            raw = _check(driver, "cuGreenCtxStreamCreate", ctx, flags, 0)
        else:
            # Driver 12.4 has no per-context streams: create one with the context current.
            cu_ctx = _check(driver, "cuCtxFromGreenCtx", ctx)
            _check(driver, "cuCtxPushCurrent", cu_ctx)
            try:
                raw = _check(driver, "cuStreamCreate", flags)
            finally:
                _check(driver, "cuCtxPopCurrent")
        handles.append(raw)
        return torch.cuda.ExternalStream(int(raw), device=self._device)

    def _split_torch(self, k: int) -> _Split:
        gc_mod = _torch_green_contexts(_torch())
        try:
            ctx = gc_mod.GreenContext.create(num_sms=k, device_id=self.info.index)
        except Exception as exc:  # torch raises RuntimeError subclasses with driver text
            raise PartitionError(f"green context of {k} SMs failed: {exc}") from None
        # torch cannot read the count back; the driver rounds a request up to a whole group.
        step = self.info.granularity
        count = max(self.info.min_sms, -(-k // step) * step)
        if not hasattr(ctx, "Stream"):
            raise PartitionError(
                "this PyTorch's green contexts have no streams; install cuda-python "
                "(pip install cuda-python)"
            )
        stream = ctx.Stream()
        return _Split(count, self.info.num_sms - count, (stream, None), None, [ctx])

    # -- lookup ---------------------------------------------------------------------------

    @property
    def num_sms(self) -> int:
        return self.info.num_sms

    def splits(self) -> list[tuple[int, int]]:
        """Every (prefill, decode) SM pair with disjoint streams, as read back."""
        out = []
        for s in self._splits:
            if s.rest_first is not None:
                out += [(s.group_sms, s.rest_sms), (s.rest_sms, s.group_sms)]
        return sorted(set(out))

    def sm_counts(self) -> list[int]:
        counts = {self.info.num_sms}
        for s in self._splits:
            counts.add(s.group_sms)
            if s.rest_first is not None:
                counts.add(s.rest_sms)
        return sorted(counts)

    def streams(self, prefill_sms: int, decode_sms: int) -> tuple[Any, Any]:
        for s in self._splits:
            if s.rest_first is None:
                continue
            if (prefill_sms, decode_sms) == (s.group_sms, s.rest_sms):
                return s.group_first
            if (prefill_sms, decode_sms) == (s.rest_sms, s.group_sms):
                return s.rest_first
        if self.info.backend == "torch":
            raise PartitionError(
                "two disjoint SM partitions need cuda-python (pip install cuda-python); "
                "torch's green contexts may overlap"
            )
        raise PartitionError(
            f"no split gives prefill {prefill_sms} and decode {decode_sms} SMs; "
            f"available: {', '.join(f'{p}+{d}' for p, d in self.splits()) or 'none'}"
        )

    def stream(self, sms: int) -> Any:
        if sms == self.info.num_sms:
            return self._full
        for s in self._splits:
            if s.group_sms == sms:
                return s.group_first[0]
            if s.rest_first is not None and s.rest_sms == sms:
                return s.rest_first[0]
        raise PartitionError(
            f"no partition of {sms} SMs; available: {', '.join(map(str, self.sm_counts()))}"
        )

    def close(self) -> None:
        """Destroy the streams and contexts (the pool is unusable afterwards)."""
        torch = _torch()
        torch.cuda.synchronize(self._device)
        driver = _driver_module() if self.info.backend == "cuda-python" else None
        for s in self._splits:
            if driver is None:
                continue
            for h in reversed(s.handles):
                name = "cuStreamDestroy" if type(h).__name__ == "CUstream" else "cuGreenCtxDestroy"
                getattr(driver, name)(h)
        self._splits.clear()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.info.backend,
            "splits": [list(p) for p in self.splits()],
            "sm_counts": self.sm_counts(),
        }
