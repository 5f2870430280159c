"""The blocking :class:`Client` and the asyncio :class:`AsyncClient`."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from . import _aio, _convert
from ._redstone import Native

DEFAULT_ADDR = "127.0.0.1:50052"


def _native(
    addr: Optional[str],
    nodes: Optional[Sequence[str]],
    replicas: Optional[int],
    write_quorum: Optional[int],
    connect_timeout: float,
    timeout: Optional[float],
    max_tensor: Optional[int],
    l1: Optional[int],
    l1_ttl: Optional[float],
    keep_mapped: Optional[int],
) -> Native:
    if addr is not None and nodes is not None:
        raise ValueError("give either an address or nodes=[...], not both")
    common = dict(
        replicas=replicas,
        write_quorum=write_quorum,
        connect_timeout=connect_timeout,
        timeout=timeout,
        max_tensor=max_tensor,
        l1=l1,
        l1_ttl=l1_ttl,
        keep_mapped=keep_mapped,
    )
    if nodes is not None:
        if isinstance(nodes, str):
            nodes = [n.strip() for n in nodes.split(",") if n.strip()]
        return Native(nodes=list(nodes), **common)
    if addr is None:
        addr = DEFAULT_ADDR
    if not isinstance(addr, str) or ":" not in addr:
        raise ValueError(f"addr must be 'host:port', not {addr!r}")
    return Native(addr, **common)


def _keys(keys: Sequence[str]) -> List[str]:
    if isinstance(keys, (str, bytes)):
        raise TypeError("get_many takes a list of keys, not one key")
    return list(keys)


class _Connected:
    """What both clients are made from: see :class:`Client` for the arguments."""

    def __init__(
        self,
        addr: Optional[str] = None,
        *,
        nodes: Optional[Sequence[str]] = None,
        replicas: Optional[int] = None,
        write_quorum: Optional[int] = None,
        connect_timeout: float = 5.0,
        timeout: Optional[float] = None,
        max_tensor: Optional[int] = None,
        l1: Optional[int] = None,
        l1_ttl: Optional[float] = None,
        keep_mapped: Optional[int] = None,
    ) -> None:
        self._native = _native(
            addr,
            nodes,
            replicas,
            write_quorum,
            connect_timeout,
            timeout,
            max_tensor,
            l1,
            l1_ttl,
            keep_mapped,
        )


class Client(_Connected):
    """A blocking client of one Redstone server's fast path, or of a cluster.

    ::

        c = redstone.Client("127.0.0.1:50052")
        c.put("emb:1", np.ones((100, 768), np.float32))
        a = c.get("emb:1")          # np.ndarray, or None

        cluster = redstone.Client(nodes=["h1:50052", "h2:50052", "h3:50052"], replicas=2)

    One client is safe to share between threads, and should be: calls from
    many threads share its connection (requests are pipelined). The GIL is
    released while a call waits on the network, so other threads run.
    Ctrl-C interrupts a waiting call.

    Args:
        addr: ``host:port`` of a server's fast path (default
            ``127.0.0.1:50052``), or ``unix:PATH``, its local door (a server
            on this host started with ``--uds PATH``: large tensors are
            shared through memory, see :meth:`get`). Connects now: an
            unreachable server is :class:`redstone.ConnectionError`.
        nodes: a cluster's fast-path addresses (a list, or one
            comma-separated string), instead of ``addr``. Every client of a
            cluster must list the same nodes. Nodes are connected on first
            use, so this succeeds while some are down. Or
            ``"dns:NAME:PORT"``: the nodes are every address ``NAME``
            resolves to (a Kubernetes headless service), re-resolved every
            5 s while the client is in use.
        replicas: copies of each tensor on a cluster (default
            ``min(3, len(nodes))``; 3 with a ``dns:`` name, or every node
            while it has fewer).
        write_quorum: replicas that must store a put for it to succeed
            (default ``replicas``).
        connect_timeout: seconds connecting may take.
        timeout: seconds one call may wait for its reply (``None``: no
            limit on one server; 2 s per node on a cluster).
        max_tensor: the largest tensor, in bytes, a reply may make this
            client allocate (default 64 GiB). A larger reply, or one the
            process cannot allocate, is :class:`redstone.ConnectionError`
            and ends the connection (the calls sharing it fail too).
        l1: bytes of a local cache (off by default): tensors this client got
            or put are kept in this process, and a ``get`` of one makes no
            request (it still copies it into a new array; ``get_into``
            copies into yours). Concurrent misses of one key make one
            request. Bounded by bytes; a tensor over a quarter of it is not
            kept. This client's ``delete`` drops the key at once; another
            client's delete (and re-put) is not seen until the entry leaves:
            see ``l1_ttl``. ``stats()["l1"]`` has its counters. With an
            L1, ``put`` copies the array once (the L1 keeps the copy; the
            array is yours again as soon as ``put`` returns).
        l1_ttl: seconds an L1 entry may be served (``None``: until evicted
            or deleted by this client).
        keep_mapped: the local door only (``addr="unix:PATH"``): bytes of
            shared-memory mappings kept after the arrays over them are
            gone (off by default), so that the next ``get`` of the same
            stored tensor returns a view of the kept mapping instead of
            mapping it again (with 4 KiB pages, most of a large get's
            cost). A kept mapping keeps its tensor's memory on the host
            after the server evicts it, counted in the server's leased
            bytes (``--max-leased``), until it is let go: least recently
            got first, and all at once when the server is short of leases.
    """

    def put(self, key: str, value: Any, *, compress: Optional[str] = None) -> None:
        """Stores ``value`` under ``key``.

        ``value`` is a numpy array, a torch CPU tensor, an object with
        ``__dlpack__``, or a buffer (``bytes``, ``memoryview``...; stored
        as uint8 unless its format says otherwise). Its bytes are sent from
        its own memory; don't modify it until ``put`` returns. ``put``
        returns only once nothing reads it any more, whatever the outcome:
        after a timeout or Ctrl-C, bytes still queued for a server get
        0.2 s, then their connection is ended (failing the calls sharing
        it) to drop them. A non-contiguous array is copied once into a
        contiguous one first.

        With ``compress="lz4"``, the tensor is packed here (zero masks for
        sparse data such as ReLU activations, byte shuffle and LZ4 for the
        rest) and the server stores, and charges, the packed bytes; every
        ``get`` returns it unpacked. A tensor that packs by less than 10 %
        is sent as it is.

        Raises:
            AlreadyExistsError: the key is cached (values are immutable).
            OutOfMemoryError: the tensor is larger than the server takes (its
                budget, or its --max-tensor).
            InvalidArgumentError: a bad key (empty, or over 4 KiB).
            UnsupportedDtypeError: a dtype Redstone has no code for.
        """
        code, shape, layout, flat = _convert.to_parts(value)
        self._native.put(key, code, shape, layout, flat, compress)

    def get(self, key: str, *, torch: bool = False) -> Any:
        """The tensor under ``key`` as a numpy array with its stored dtype and
        shape (writable, owning its memory), or ``None`` if it is not cached.
        The payload is read from the socket into the array's memory.

        Over the local door (``Client("unix:/path/to/socket")``, a server
        started with ``--uds``), a tensor of 256 KiB or more that was put
        through the local door is instead a **read-only** array over the
        server's shared memory: no byte is copied, and every process that
        reads it shares one copy (``a.copy()`` for a writable one).

        With ``torch=True``, a ``torch.Tensor`` over the same memory
        (``torch.from_numpy``).
        """
        parts = self._native.get(key)
        return None if parts is None else _convert.from_parts(*parts, torch=torch)

    def get_into(self, key: str, out: Any) -> bool:
        """Reads the tensor under ``key`` into ``out``, a preallocated,
        writable numpy array or torch CPU tensor with the tensor's dtype and
        shape, C-contiguous (F-contiguous for a tensor stored column-major,
        as a Fortran-ordered array is). A flat ``uint8`` array of the
        tensor's byte size takes any tensor's raw bytes. Allocates nothing:
        on one server the bytes go from the socket straight into ``out`` (on
        a cluster they are copied once). Don't touch ``out`` until this
        returns, nor give the same memory to two calls at once (refused).

        Returns:
            ``True``, or ``False`` if the key is not cached (``out`` untouched).

        Raises:
            InvalidArgumentError: ``out`` does not fit the tensor (dtype,
                shape, order or byte size; checked before a byte is written,
                so ``out`` is untouched), is read-only, is not contiguous, or
                is being written by another ``get_into``.
        """
        flat, expect = _convert.out_view(out)
        return self._native.get_into(key, flat, expect) is not None

    def get_many(self, keys: Sequence[str], *, torch: bool = False) -> List[Any]:
        """One entry per key, in order: an array (or tensor), or ``None``.
        On one server, one request carries all the keys."""
        parts = self._native.get_many(_keys(keys))
        return [None if p is None else _convert.from_parts(*p, torch=torch) for p in parts]

    def delete(self, key: str) -> bool:
        """Removes ``key``; ``True`` if it was cached."""
        return self._native.delete(key)

    def stats(self) -> Dict[str, Any]:
        """The server's counters: ``entries``, ``memory_used``,
        ``memory_limit``, ``hits``, ``misses``, ``evictions``, ``hit_rate``,
        ``memory_utilization``. A cluster's are summed over the nodes that
        answer, and ``nodes`` lists each node's (``addr``, ``up``, and its
        counters or ``error``). One server's also has ``disk``: ``None``, or
        its disk tier's counters (``entries``, ``bytes``, ``limit``,
        ``queued_bytes``, ``hits``, ``misses``, ``promotions``, ``writes``,
        ``dropped_writes``, ``corrupt``, ``evictions``, ``writable``)."""
        return self._native.stats()


class AsyncClient(_Connected):
    """:class:`Client`'s calls as coroutines, for asyncio (FastAPI, Ray
    Serve...). The network wait happens off the event loop, which keeps
    running; many calls may be in flight at once.

    ::

        c = redstone.AsyncClient("127.0.0.1:50052")
        await c.put("emb:1", np.ones((100, 768), np.float32))
        a = await c.get("emb:1")

    The constructor takes :class:`Client`'s arguments and connects before it
    returns (a short blocking wait, once). Cancelling a call stops it, and the
    ``CancelledError`` comes only once nothing touches the caller's arrays
    any more: a ``get_into`` cancelled mid-read may have written part of
    ``out``, and a cancelled ``put`` may have stored its tensor (if its bytes
    were still queued, its connection is ended to drop them, failing the
    calls sharing it).
    """

    async def put(self, key: str, value: Any, *, compress: Optional[str] = None) -> None:
        """:meth:`Client.put`."""
        code, shape, layout, flat = _convert.to_parts(value)
        await _aio.run(self._native.aput(key, code, shape, layout, flat, compress))

    async def get(self, key: str, *, torch: bool = False) -> Any:
        """:meth:`Client.get`."""
        parts = await _aio.run(self._native.aget(key))
        return None if parts is None else _convert.from_parts(*parts, torch=torch)

    async def get_into(self, key: str, out: Any) -> bool:
        """:meth:`Client.get_into`."""
        flat, expect = _convert.out_view(out)
        return (await _aio.run(self._native.aget_into(key, flat, expect))) is not None

    async def get_many(self, keys: Sequence[str], *, torch: bool = False) -> List[Any]:
        """:meth:`Client.get_many`."""
        parts = await _aio.run(self._native.aget_many(_keys(keys)))
        return [None if p is None else _convert.from_parts(*p, torch=torch) for p in parts]

    async def delete(self, key: str) -> bool:
        """:meth:`Client.delete`."""
        return await _aio.run(self._native.adelete(key))

    async def stats(self) -> Dict[str, Any]:
        """:meth:`Client.stats`."""
        return await _aio.run(self._native.astats())
