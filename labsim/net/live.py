"""The live runtime: the actors on real TCP sockets, on loopback only, driven by asyncio.

**One address per actor** (DESIGN.md), **and a block of addresses per run**. Each run claims a
block of loopback addresses of its own, ``127.A.B.0/24`` (never ``127.0.x.x``, where localhost
and the tools outside a run live), and gives each lab host of the run one address of it, in the
order the actors are given (the first host gets ``127.A.B.1``), then any other lab host an
actor connects to (nothing listens there: refused). Lab hosts that are loopback addresses
themselves (a test's ``127.0.0.5``) and ``::1`` are their own address; other IPv6 hosts cannot be
mapped. Linux routes all of 127.0.0.0/8 to ``lo``, so no setup is needed.

Why a block per run: with a fixed mapping two live runs on one machine at the same time (two
shells, two pytest-xdist workers) bind the same addresses and ports and one of them fails with
"Address already in use". In its own block a run binds the lab's exact ports (5061, 3478,
24000 …, the Edge's source port 53577) whatever else runs.

How a block is claimed (:func:`claim_block`): by binding the Unix socket named
``labsim-loopback-127.A.B`` in Linux's abstract namespace, which is atomic and exclusive (a
second bind fails with ``EADDRINUSE``: the next block is tried), shared by every process of the
network namespace, as the loopback addresses are, and freed by the kernel when the socket is
closed or its process dies, so a crashed run leaves no stale claim. The claim is made when the
run starts (or when :meth:`LiveNetwork.loopback_of` is first asked, so a test can aim a peer
outside the run at an actor before it starts) and released when the run ends. The start block
is random, so runs that start together rarely even try the same block. A TCP port held on a
reserved address of the block would do the same, but any listener on the wildcard address at
that port would make every claim fail. Blocks that hold an ``external`` endpoint or a loopback
lab host of the run are skipped.

The actors and the trace only ever see lab addresses: an actor's block address maps back to
its lab host; ``external`` maps lab addresses of things outside the run (coturn standing in for
the TURN server, sipp for a SIP peer; each listens on a loopback address of its own) to real
loopback endpoints, and connections from loopback sources that are no actor of the run are
attributed to ``"external"`` (to the external endpoint's lab host when they come from its
address). An actor listens on exactly its address and the port it asked for (no remapping;
``SO_REUSEADDR``), and every outgoing connection binds the actor's address first, so peers see
who is calling, and the next port of a per-host counter from 40000 up, as the virtual runtime
does: the same scenario shows the same ports on both clocks (unless a connection of an earlier
run on the same block is still in TIME_WAIT).

``external_hosts`` maps a whole lab host to a real loopback host for the ports no actor of the
run listens on there: an external TURN server's relays advertised at Expressway-E's lab
address, whose ports are only known when allocated.

**No socket ever targets a non-loopback address**: every bind and connect goes through
:func:`require_loopback`; construction rejects actors that cannot be mapped and ``external``
endpoints off loopback; a Connect that cannot be mapped fails with ``ConnectFailed``.

TCP as the kernel does it: ``Close()`` is ``transport.close()`` (the buffered data, then FIN);
``Close(reset=True)`` sets ``SO_LINGER`` 0 and aborts (RST, buffered data dropped). EOF from the
peer gives ``Closed(reset=False)``; a reset (``ConnectionResetError``) or any other socket error
gives ``Closed(reset=True)``. Reads are up to 64 KiB into one buffer the runtime shares between
all connections (the loop is single-threaded and each read is copied out at once), delivered
in arrival order. There is no flow control towards the actors: what an actor sends is buffered
by the transport until the kernel takes it.

At the end of a run every listener, connection, connect task and timer the run made is closed
and awaited, and the block is given back, so the process holds no more file descriptors or
tasks than before it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import ipaddress
import secrets
import socket
import struct
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, cast

from labsim.net.faults import FAILS_AS, BlockHow, FaultPlan
from labsim.net.model import (
    EPHEMERAL_FIRST,
    EPHEMERAL_LAST,
    EXTERNAL,
    NETWORK,
    ActorState,
    End,
    Link,
    StopWhen,
)
from labsim.net.nat import StaticNat
from labsim.net.runtime import Runtime
from labsim.net.transport import Handle
from labsim.proto.events import Actor, Address, Connect, ConnId
from labsim.trace import ConnectFailure, Trace

#: Bytes taken from a socket per read.
READ_SIZE = 64 * 1024
#: Ports tried before giving the choice to the kernel (bind) or giving up (connect).
_BIND_ATTEMPTS = 64
#: ``SO_LINGER`` on, timeout 0: close() sends RST and drops unsent data.
_LINGER_RST = struct.pack("ii", 1, 0)

_RealAddr = tuple[str, int]
_PairKey = tuple[_RealAddr, _RealAddr]
"""(client's real address, server's real address): the same key on both ends of a connection."""


class NonLoopbackError(ValueError):
    """A socket would have used an address outside loopback."""


#: Blocks 127.A.B.0/24 a run may claim: A from 1 (127.0.x.x is localhost's), B from 0.
_BLOCKS = 255 * 256
#: Blocks tried, from a random one on, before a claim gives up.
_CLAIM_ATTEMPTS = 1024
#: Addresses of a block given to lab hosts: .1 to .254.
BLOCK_SIZE = 254
#: Blocks one run may hold: more than one only for more lab hosts than a block has (a load
#: run's many clients, labsim.load).
MAX_BLOCKS = 64


def reset_transport(transport: asyncio.BaseTransport) -> None:
    """End a TCP connection with RST rather than FIN: SO_LINGER on with a zero timeout makes
    the kernel drop unsent data and send RST on close (RFC 9293 §3.6, "abort")."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass  # already closed: abort() below still ends it
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    else:
        transport.close()


class LoopbackBlock:
    """The loopback addresses ``127.A.B.1`` to ``127.A.B.254``, held by this process until
    :meth:`release` (see the module docstring). A context manager."""

    __slots__ = ("a", "b", "_lock")

    def __init__(self, a: int, b: int, lock: socket.socket) -> None:
        self.a = a
        self.b = b
        self._lock = lock

    @property
    def prefix(self) -> str:
        """``127.A.B``."""
        return f"127.{self.a}.{self.b}"

    @property
    def held(self) -> bool:
        return self._lock.fileno() >= 0

    def address(self, index: int) -> str:
        """The block's ``index``-th address, 1 to 254."""
        if not 1 <= index <= BLOCK_SIZE:
            raise ValueError(f"a block has addresses 1 to {BLOCK_SIZE}, not {index}")
        return f"{self.prefix}.{index}"

    def __contains__(self, host: object) -> bool:
        return isinstance(host, str) and _block_of(host) == (self.a, self.b)

    def release(self) -> None:
        """Give the block back (the kernel frees the name at once); safe to call again."""
        self._lock.close()

    def __enter__(self) -> LoopbackBlock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"LoopbackBlock({self.prefix}.0/24{'' if self.held else ', released'})"


def _block_of(host: str) -> tuple[int, int] | None:
    """(A, B) of an IPv4 loopback address 127.A.B.x, else None."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version != 4 or not ip.is_loopback:
        return None
    return ip.packed[1], ip.packed[2]


def claim_block(
    avoid: Iterable[str] = (), *, first: tuple[int, int] | None = None
) -> LoopbackBlock:
    """Claim a free block 127.A.B.0/24 for this process: ``first`` (A, B) if given and free,
    else the next free one after it (after a random one when ``first`` is None). Blocks holding
    an address of ``avoid`` (loopback addresses in use outside the block system) are skipped.
    Raises ``RuntimeError`` when no block is free within the attempts."""
    avoided = {block for host in avoid if (block := _block_of(host)) is not None}
    if first is None:
        # From the OS, not the random module: tests seed that (hypothesis does, the same way
        # in every pytest-xdist worker), and forked processes share its state.
        start = secrets.randbelow(_BLOCKS)
    else:
        a, b = first
        if not (1 <= a <= 255 and 0 <= b <= 255):
            raise ValueError(f"no block 127.{a}.{b}: A is 1 to 255, B 0 to 255")
        start = (a - 1) * 256 + b
    for step in range(_CLAIM_ATTEMPTS):
        n = (start + step) % _BLOCKS
        a, b = 1 + n // 256, n % 256
        if (a, b) in avoided:
            continue
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # A leading NUL names the socket in the abstract namespace: no file, no clean-up.
            lock.bind(f"\0labsim-loopback-127.{a}.{b}".encode())
        except OSError as exc:
            lock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            continue  # another run (of any process) holds it
        return LoopbackBlock(a, b, lock)
    raise RuntimeError(f"no free loopback block after {_CLAIM_ATTEMPTS} tries")


@functools.lru_cache(maxsize=256)
def _own_loopback(host: str) -> str | None:
    """A lab host that is a loopback address itself (normalized); None for other IPv4 hosts,
    which get a block address; ``ValueError`` for what cannot be mapped."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"{host!r} is not an IP address") from exc
    if ip.is_loopback:
        return str(ip)
    if ip.version == 4:
        return None
    raise ValueError(f"no loopback address for IPv6 lab host {host}: only IPv4 hosts and ::1 map")


def require_loopback(host: str) -> str:
    """``host`` if it is a loopback address; raises :class:`NonLoopbackError` otherwise."""
    if not _is_loopback(host):
        raise NonLoopbackError(f"{host} is not a loopback address: the live runtime stays on lo")
    return host


def _failure_of(exc: OSError) -> ConnectFailure:
    """How a connect that raised ``exc`` failed: a RST (``ECONNREFUSED``, or one that reset
    the handshake), silence until the kernel gave up (``ETIMEDOUT``: Linux's
    ``tcp_syn_retries`` ran out), or no route (``ENETUNREACH``, ``EHOSTUNREACH``, an address
    that cannot be used)."""
    if exc.errno in (errno.ECONNREFUSED, errno.ECONNRESET):
        return "refused"
    if exc.errno == errno.ETIMEDOUT:
        return "timeout"
    return "unreachable"


# Every connect checks both ends; ipaddress parsing costs more than the rest of the check.
@functools.lru_cache(maxsize=256)
def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_TransportMaker = Callable[[socket.socket, asyncio.BaseProtocol], asyncio.Transport]


def _transport_maker(loop: asyncio.AbstractEventLoop) -> _TransportMaker | None:
    """The selector event loop's transport constructor (what ``connect_accepted_socket``
    awaits), for accepting without a Task per connection; None on another loop (uvloop, a
    proactor), where the public coroutine is used."""
    if not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        return None
    make = getattr(loop, "_make_socket_transport", None)
    return cast(_TransportMaker, make) if callable(make) else None


class _Listener:
    __slots__ = ("st", "address", "sock", "key", "retry")

    def __init__(self, st: ActorState, address: Address, sock: socket.socket, key: _RealAddr):
        self.st = st
        self.address = address
        self.sock = sock
        self.key = key
        self.retry: asyncio.TimerHandle | None = None


class _Outgoing:
    """A connect in flight."""

    __slots__ = ("st", "conn", "remote", "key", "task", "local_port")

    def __init__(self, st: ActorState, conn: ConnId, remote: Address) -> None:
        self.st = st
        self.conn = conn
        self.remote = remote
        self.local_port = 0
        self.key: _PairKey | None = None
        self.task: asyncio.Task[None] | None = None


class _Stream(asyncio.BufferedProtocol):
    """One socket of the run, either end; forwards what happens to the runtime."""

    __slots__ = ("net", "origin", "transport", "end")

    def __init__(self, net: LiveNetwork, origin: _Listener | _Outgoing) -> None:
        self.net = net
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.end: End | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        try:
            self.net._made(self, self.transport)
        except Exception as exc:  # noqa: BLE001 - reported by arun, not lost in the loop's log
            self.net._internal(exc)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.net._rbuf

    def buffer_updated(self, nbytes: int) -> None:
        end = self.end
        if end is not None and end.open:
            net = self.net
            try:
                net._arrive(end, net._rbuf[:nbytes].tobytes())
            except Exception as exc:  # noqa: BLE001
                net._internal(exc)

    def pause_writing(self) -> None:
        if self.end is not None:
            self.net.runtime.write_pressure(self.end, True)

    def resume_writing(self) -> None:
        if self.end is not None:
            self.net.runtime.write_pressure(self.end, False)

    def eof_received(self) -> bool:
        end = self.end
        if end is not None and end.open:
            try:
                self.net._arrive_close(end, False, self.net._far_name(end))
            except Exception as exc:  # noqa: BLE001
                self.net._internal(exc)
        return False  # the transport closes our side too

    def connection_lost(self, exc: Exception | None) -> None:
        net = self.net
        try:
            net._lost(self, exc)
        except Exception as error:  # noqa: BLE001
            net._internal(error)


class LiveNetwork:
    """Run actors on real loopback sockets (see the module docstring): the live transport, and
    the run's :class:`~labsim.net.runtime.Runtime` composed with it."""

    def __init__(
        self,
        actors: Sequence[Actor],
        trace: Trace,
        *,
        external: Mapping[Address, tuple[str, int]] | None = None,
        external_hosts: Mapping[str, str] | None = None,
        backlog: int = 512,
        blocked: set[tuple[str, str]] | None = None,
        refused: set[tuple[str, str]] | None = None,
        link_latency: Mapping[tuple[str, str], float] | None = None,
        faults: FaultPlan | None = None,
        nat: Sequence[StaticNat] = (),
    ) -> None:
        if any(v < 0 for v in (link_latency or {}).values()):
            raise ValueError("latencies must not be negative")
        self.trace = trace
        #: ``blocked`` pairs (client actor, server actor) are black-holed, as a firewall that
        #: drops the SYN does (``ConnectFailed("timeout")`` after the connect timeout);
        #: ``refused`` ones get a RST at once; so do the ``block`` rules of ``faults``.
        self.runtime = Runtime(
            actors, trace, self, faults=faults, blocked=blocked or (), refused=refused or (),
            nat=nat,
        )  # fmt: skip
        #: One-way latency added between two actors (either order), on top of loopback's own:
        #: bytes and closes reach the receiver that much later, in order.
        self.link_latency = dict(link_latency or {})
        # Lab host -> real address and back. Loopback lab hosts are their own address now;
        # the others get one of the run's block when it is claimed (_claim), in actor order.
        self._loopback_of: dict[str, str] = {}
        self._lab_of: dict[str, str] = {}
        self._block_hosts: list[str] = []
        for st in self.runtime.actors.values():
            if st.host in self._loopback_of or st.host in self._block_hosts:
                continue
            try:
                own = _own_loopback(st.host)
            except ValueError as exc:
                raise ValueError(f"actor {st.name!r}: {exc}") from None
            if own is None:
                self._block_hosts.append(st.host)
            else:
                self._loopback_of[st.host] = own
                self._lab_of.setdefault(own, st.host)
        if len(self._block_hosts) > MAX_BLOCKS * BLOCK_SIZE:
            raise ValueError(
                f"{len(self._block_hosts)} lab hosts: a run's {MAX_BLOCKS} loopback blocks "
                f"hold {MAX_BLOCKS * BLOCK_SIZE}"
            )
        self._block: LoopbackBlock | None = None
        self._block_used = 0
        self._give_back: weakref.finalize[[], LiveNetwork] | None = None
        #: Blocks claimed after the first when its addresses ran out (a load run's clients).
        self._more_blocks: list[LoopbackBlock] = []
        #: Lab address -> real loopback endpoint, for things outside the run.
        self.external: dict[Address, _RealAddr] = {}
        lab_hosts: dict[str, set[str]] = {}
        for lab, (host, port) in (external or {}).items():
            require_loopback(host)
            self.external[lab] = (str(ipaddress.ip_address(host)), int(port))
            lab_hosts.setdefault(self.external[lab][0], set()).add(lab.host)
        #: Lab host -> real loopback host, for a thing outside the run that shares an actor's
        #: lab host and has ports that are not known before the run (an external TURN
        #: server's relays at Expressway-E's address): a connect to such a host at a port no
        #: actor of the run listens on goes to the real host at the same port.
        self.external_hosts: dict[str, str] = {}
        for lab_host, host in (external_hosts or {}).items():
            self.external_hosts[lab_host] = str(ipaddress.ip_address(require_loopback(host)))
            lab_hosts.setdefault(self.external_hosts[lab_host], set()).add(lab_host)
        # Sources on an external endpoint's host read as its lab host, when that is unambiguous.
        self._external_lab_host = {
            real: next(iter(labs))
            for real, labs in lab_hosts.items()
            if len(labs) == 1 and real not in self._lab_of
        }
        # Blocks a claim skips: they hold addresses this run uses outside its block.
        self._not_in_block = [
            *self._lab_of, *(host for host, _ in self.external.values()),
            *self.external_hosts.values(),
        ]  # fmt: skip
        self._backlog = backlog
        self._rbuf = memoryview(bytearray(READ_SIZE))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._make_transport: _TransportMaker | None = None
        self._clock: Callable[[], float] = lambda: 0.0
        self._t0 = 0.0
        self._done: asyncio.Future[None] | None = None
        self._transports: set[asyncio.Transport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._listening: dict[_RealAddr, _Listener] = {}
        self._outgoing: dict[_PairKey, _Outgoing] = {}
        # Connections between two actors whose first end is known and the second not yet:
        # key -> (link, True when the client end came first and the server's is awaited).
        self._halfway: dict[_PairKey, tuple[Link, bool]] = {}
        self._internal_error: BaseException | None = None
        self._next_port: dict[str, int] = {}

    @property
    def errors(self) -> list[tuple[str, BaseException]]:
        """(actor name, exception) for every actor exception, in order."""
        return self.runtime.errors

    @property
    def read_pauses(self) -> int:
        """How many times a relay's reading was paused because its other side could not keep
        up (backpressure)."""
        return self.runtime.writes.read_pauses

    # -- running -------------------------------------------------------------------------------

    def run(self, until: float, stop: StopWhen | None = None) -> Trace:
        """Run for ``until`` wall seconds or until ``stop(trace)``; return the trace. Called
        where an event loop already runs (a Jupyter notebook, an asyncio program), the run gets
        a loop of its own in a thread and this call waits for it: the caller's loop cannot be
        re-entered (``asyncio.run`` refuses), and blocking it for the call's few seconds is what
        a synchronous call means. Inside asyncio code, ``await`` :meth:`arun` instead."""

        async def main() -> None:
            # The task's result stays None: asyncio.run (3.11) formats the main task's repr
            # when it restores the SIGINT handler, and a Trace result would be repr'd whole.
            await self.arun(until, stop)

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(main())
            return self.trace
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="labsim-live") as pool:
            pool.submit(asyncio.run, main()).result()
        return self.trace

    async def arun(self, until: float, stop: StopWhen | None = None) -> Trace:
        """:meth:`run` inside a running event loop (pytest-asyncio tests, other asyncio code)."""
        runtime = self.runtime
        runtime.begin(stop)
        try:
            self._claim()
            loop = asyncio.get_running_loop()
            self._loop = loop
            self._make_transport = _transport_maker(loop)
            self._clock = loop.time
            self._t0 = loop.time()
            self._done = loop.create_future()
            deadline = loop.call_later(until, runtime.request_stop)
            try:
                runtime.start_all()
                if not runtime.stopping:
                    await self._done
            finally:
                deadline.cancel()
                await self._shutdown()
        finally:
            self._release_block()
        if self._internal_error is not None:
            raise RuntimeError("the live runtime failed") from self._internal_error
        return self.trace

    @property
    def block(self) -> LoopbackBlock | None:
        """The run's loopback block: None until claimed, released (``held`` False) after."""
        return self._block

    def loopback_of(self, host: str) -> str:
        """The loopback address standing in for lab host ``host`` in this run (an actor's, or
        one an actor connected to). Asked before the run, it claims the run's block then, so
        a peer outside the run can be aimed at an actor; after the run it still answers."""
        self._claim()
        return self._loopback_of[host]

    def _claim(self) -> None:
        """Claim the run's block (once) and give each actor's lab host its address."""
        if self._block is not None:
            return
        block = claim_block(self._not_in_block)
        self._block = block
        # A network that never runs gives the block back when it is collected.
        self._give_back = weakref.finalize(self, block.release)
        for host in self._block_hosts:
            self._give_address(host)

    def _release_block(self) -> None:
        if self._give_back is not None:
            self._give_back()  # runs block.release once; later calls do nothing
        for block in self._more_blocks:
            block.release()

    def _give_address(self, host: str) -> str:
        """The next free address of the run's blocks for lab host ``host``; a full block is
        followed by another claimed then (up to :data:`MAX_BLOCKS`)."""
        assert self._block is not None
        block = self._more_blocks[-1] if self._more_blocks else self._block
        if self._block_used >= BLOCK_SIZE:
            if len(self._more_blocks) + 1 >= MAX_BLOCKS:
                raise ValueError(f"no loopback address left in {block} for lab host {host}")
            block = claim_block(self._not_in_block)
            self._more_blocks.append(block)
            weakref.finalize(self, block.release)
            self._block_used = 0
        self._block_used += 1
        real = block.address(self._block_used)
        self._loopback_of[host] = real
        self._lab_of[real] = host
        return real

    def _real_host(self, host: str) -> str:
        """Where a connect to lab host ``host`` goes: its address in this run; a lab host no
        actor has gets a block address of its own, where nothing listens (refused)."""
        real = self._loopback_of.get(host)
        if real is not None:
            return real
        own = _own_loopback(host)
        return own if own is not None else self._give_address(host)

    def now(self) -> float:
        return self._clock() - self._t0

    def stop(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def soon(self, fn: Callable[..., object], *args: object) -> None:
        assert self._loop is not None
        self._loop.call_soon(fn, *args)

    def later(self, delay: float, fn: Callable[..., object], *args: object) -> Handle:
        assert self._loop is not None
        return self._loop.call_later(delay, fn, *args)

    def _internal(self, exc: BaseException) -> None:
        """A bug of this runtime inside a loop callback: stop, and let arun raise it."""
        if self._internal_error is None:
            self._internal_error = exc
        self.runtime.request_stop()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _shutdown(self) -> None:
        self.runtime.release_all()  # timers, listeners, connect tasks
        for task in list(self._tasks):
            task.cancel()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for transport in list(self._transports):
            transport.abort()
        # abort() closes the socket in the loop's next round (connection_lost).
        for _ in range(1000):
            if not self._transports:
                break
            await asyncio.sleep(0)
        self._halfway.clear()
        self._outgoing.clear()

    # -- mapping -------------------------------------------------------------------------------

    def _lab_host(self, real_host: str) -> str:
        return self._lab_of.get(real_host) or self._external_lab_host.get(real_host) or real_host

    def _far_name(self, end: End) -> str:
        """``by`` for a close this end learns from its socket: the far side is outside the run,
        or (when an actor's close was not recorded first) the network."""
        record = self.trace.connections[end.link.gid]
        far = record.server if end.is_client else record.client
        return EXTERNAL if far == EXTERNAL else NETWORK

    @staticmethod
    def _abort(transport: asyncio.Transport, reset: bool) -> None:
        if reset:
            reset_transport(transport)
        else:
            transport.abort()

    # -- listeners -----------------------------------------------------------------------------

    def listen(self, st: ActorState, address: Address) -> tuple[Address, object] | str:
        assert self._loop is not None
        lo = require_loopback(self._loopback_of[st.host])
        sock = socket.socket(socket.AF_INET6 if ":" in lo else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind((lo, address.port))
            sock.listen(self._backlog)
        except OSError as exc:
            sock.close()
            return f"cannot listen on {lo}:{address.port}: {exc.strerror or exc}"
        port: int = sock.getsockname()[1]
        listener = _Listener(st, Address(address.host, port), sock, (lo, port))
        self._listening[listener.key] = listener
        self._loop.add_reader(sock.fileno(), self._accept_ready, listener)
        return listener.address, listener

    def unlisten(self, handle: object) -> None:
        assert self._loop is not None and isinstance(handle, _Listener)
        listener = handle
        if self._listening.get(listener.key) is listener:
            del self._listening[listener.key]
        # Connections still in its accept queue are reset by the kernel: never accepted.
        for key in [k for k, (_, client_first) in self._halfway.items() if client_first]:
            if key[1] == listener.key:
                del self._halfway[key]
        if listener.retry is not None:
            listener.retry.cancel()
        if listener.sock.fileno() >= 0:
            self._loop.remove_reader(listener.sock.fileno())
            listener.sock.close()

    def _accept_ready(self, listener: _Listener) -> None:
        for _ in range(self._backlog):
            try:
                sock, _peer = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # out of file descriptors, most likely: pause a little
                self.trace.log(self.now(), listener.st.name, f"accept failed: {exc}", "warning")
                assert self._loop is not None
                self._loop.remove_reader(listener.sock.fileno())
                listener.retry = self._loop.call_later(0.1, self._accept_again, listener)
                return
            sock.setblocking(False)
            if self._make_transport is None:
                self._spawn(self._adopt(sock, listener))
                continue
            # The selector loop's own transport, made here: the same transport
            # connect_accepted_socket makes, without its Task, Future and coroutine (a TURN
            # server accepts one connection per allocation, and those were a visible share of
            # each). connection_made and the first read follow in the loop's next round.
            stream = _Stream(self, listener)
            try:
                transport = self._make_transport(sock, stream)
            except Exception:  # noqa: BLE001 - as _adopt: the connection is lost, not the run
                sock.close()
                continue
            # Held from now on, so a run ending before connection_made still closes it.
            self._transports.add(transport)

    def _accept_again(self, listener: _Listener) -> None:
        listener.retry = None
        if self._loop is not None and self._listening.get(listener.key) is listener:
            self._loop.add_reader(listener.sock.fileno(), self._accept_ready, listener)

    async def _adopt(self, sock: socket.socket, listener: _Listener) -> None:
        assert self._loop is not None
        stream = _Stream(self, listener)
        try:
            await self._loop.connect_accepted_socket(lambda: stream, sock=sock)
        except BaseException as exc:
            if stream.transport is None:
                sock.close()
            if not isinstance(exc, Exception):
                raise

    # -- connecting ----------------------------------------------------------------------------

    def connect(self, st: ActorState, effect: Connect, blocked: BlockHow | None) -> object:
        out = _Outgoing(st, effect.conn, effect.remote)
        out.local_port = effect.local_port
        if blocked == "refuse":
            self.soon(self._fail, out, FAILS_AS[blocked], "refused")
            return out
        if blocked == "blackhole":
            # Nothing goes on the wire: the loopback would answer at once, a firewall would not.
            out.task = self._spawn(self._black_hole(out, effect.timeout))
            return out
        target = self.external.get(effect.remote)
        if target is None and effect.remote.host in self.external_hosts:
            # Decided when the connect runs, once every actor of the run listens.
            out.task = self._spawn(self._connect(out, None, effect.timeout))
            return out
        if target is None:
            try:
                target = (self._real_host(effect.remote.host), effect.remote.port)
            except ValueError as exc:
                self.soon(self._fail, out, "unreachable", f"unreachable: {exc}")
                return out
        out.task = self._spawn(self._connect(out, target, effect.timeout))
        return out

    def _external_host(self, remote: Address) -> _RealAddr | None:
        """Where a connect to ``remote`` goes when its lab host is an external host's
        (``external_hosts``) and no actor of the run listens at that port; else None."""
        real = self.external_hosts.get(remote.host)
        if real is None:
            return None
        own = self._loopback_of.get(remote.host)
        if own is not None and (own, remote.port) in self._listening:
            return None
        return real, remote.port

    async def _black_hole(self, out: _Outgoing, timeout: float) -> None:
        await asyncio.sleep(timeout)
        self._fail(out, FAILS_AS["blackhole"], "timeout")

    def cancel_connect(self, handle: object) -> None:
        assert isinstance(handle, _Outgoing)
        if handle.task is not None:
            handle.task.cancel()

    def _attempt_live(self, out: _Outgoing) -> bool:
        return out.st.alive and out.st.connecting.get(out.conn) is out

    def _fail(self, out: _Outgoing, how: ConnectFailure, reason: str) -> None:
        if self._attempt_live(out):
            self.runtime.connect_failed(out.st, out.conn, out.remote, how, reason)

    def _client_socket(self, family: int, source: str, wanted: int = 0) -> socket.socket:
        """A socket bound to the actor's loopback address and ``wanted`` port, or else the next
        port of the per-host counter (40000 up, as the virtual runtime numbers them, so both
        runtimes show the same ports); the kernel picks when none of the next ones binds."""
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            # A port of an earlier run may still be in TIME_WAIT: it can be bound again.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if wanted:
                try:
                    sock.bind((source, wanted))
                    return sock
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
            port = self._next_port.get(source, EPHEMERAL_FIRST)
            for _ in range(_BIND_ATTEMPTS):
                candidate, port = port, EPHEMERAL_FIRST if port >= EPHEMERAL_LAST else port + 1
                try:
                    sock.bind((source, candidate))
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
                    continue
                self._next_port[source] = port
                return sock
            sock.bind((source, 0))
            return sock
        except BaseException:
            sock.close()
            raise

    async def _connect(self, out: _Outgoing, target: _RealAddr | None, timeout: float) -> None:
        assert self._loop is not None
        sock: socket.socket | None = None
        how: ConnectFailure
        if target is None:
            remote = out.remote
            target = self._external_host(remote) or (self._real_host(remote.host), remote.port)
        try:
            source = require_loopback(self._loopback_of[out.st.host])
            require_loopback(target[0])
            family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
            if (":" in source) != (family == socket.AF_INET6):
                raise NonLoopbackError(f"{source} cannot reach {target[0]}: another IP version")
            async with asyncio.timeout(timeout):
                for attempt in range(_BIND_ATTEMPTS):
                    # Peers see the actor's address (and the asked-for port on the first try).
                    sock = self._client_socket(family, source, 0 if attempt else out.local_port)
                    out.key = (sock.getsockname()[:2], target)
                    self._outgoing[out.key] = out
                    try:
                        await self._loop.sock_connect(sock, target)
                        break
                    except OSError as exc:
                        if exc.errno != errno.EADDRNOTAVAIL or attempt == _BIND_ATTEMPTS - 1:
                            raise
                    # The same four-tuple is still in TIME_WAIT from an earlier run: next port.
                    del self._outgoing[out.key]
                    sock.close()
                    sock = None
            assert sock is not None
            connected, sock = sock, None  # the transport owns it from here
            await self._loop.create_connection(lambda: _Stream(self, out), sock=connected)
            return
        except TimeoutError:
            how, reason = "timeout", "timeout"
        except ConnectionRefusedError:
            how, reason = "refused", "refused"
        except NonLoopbackError as exc:
            # labsim will not send a SYN off the loopback: for the run there is no route.
            how, reason = "unreachable", f"refused by labsim: {exc}"
        except OSError as exc:
            how, reason = _failure_of(exc), exc.strerror or str(exc)
        finally:
            if sock is not None:
                sock.close()
            if out.key is not None and self._outgoing.get(out.key) is out:
                del self._outgoing[out.key]
                # Failed or cancelled before our end existed: an accepted end waits in vain.
                self._forget_halfway(out.key, client_first=False)
        self._fail(out, how, reason)

    # -- connections ---------------------------------------------------------------------------

    def _made(self, stream: _Stream, transport: asyncio.Transport) -> None:
        """A socket of the run is up: an accepted one or a connected one."""
        self._transports.add(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Every write of an actor is a message it means to send now. asyncio sets
            # TCP_NODELAY only on sockets created with proto=IPPROTO_TCP, which ours (and
            # accepted ones) are not; without it Nagle holds a second small message until the
            # first is ACKed, and the peer's delayed ACK (40 ms on Linux) stalls the call.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        origin = stream.origin
        if isinstance(origin, _Outgoing):
            key = origin.key
            if key is None or self.runtime.stopping or not self._attempt_live(origin):
                self._abort(transport, reset=True)  # the actor gave up (or died) meanwhile
                if key is not None:
                    self._forget_halfway(key, client_first=False)
                return
            self._client_made(stream, transport, origin, key)
            return
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        key = ((peer[0], peer[1]), (local[0], local[1]))
        listener = origin
        if (
            self.runtime.stopping
            or not listener.st.alive
            or self._listening.get(listener.key) is not listener
        ):
            self._abort(transport, reset=True)
            self._forget_halfway(key, client_first=True)
            return
        self._server_made(stream, transport, listener, key)

    def _forget_halfway(self, key: _PairKey, *, client_first: bool) -> None:
        """The end awaited under ``key`` will not come: drop the entry waiting for it."""
        waiting = self._halfway.get(key)
        if waiting is not None and waiting[1] is client_first:
            del self._halfway[key]

    def _client_made(
        self, stream: _Stream, transport: asyncio.Transport, out: _Outgoing, key: _PairKey
    ) -> None:
        st = out.st
        self._outgoing.pop(key, None)
        client_addr = Address(st.host, key[0][1])
        waiting = self._halfway.pop(key, None)
        if waiting is not None and not waiting[1]:
            link = waiting[0]  # the server end came first
        else:
            listener = self._listening.get(key[1])
            if listener is not None:
                link = self.runtime.open_link(
                    st.name, client_addr, listener.st.name, listener.address, out.conn
                )
                self._halfway[key] = (link, True)
            else:
                link = self.runtime.open_link(st.name, client_addr, EXTERNAL, out.remote, out.conn)
        end = self.runtime.client_end(link, st, out.conn, client_addr, out.remote, transport)
        stream.end = end
        self.runtime.connected(end)

    def _server_made(
        self, stream: _Stream, transport: asyncio.Transport, listener: _Listener, key: _PairKey
    ) -> None:
        st = listener.st
        waiting = self._halfway.pop(key, None)
        if waiting is not None and waiting[1]:
            link = waiting[0]  # the client end came first
            client_addr = self.trace.connections[link.gid].client_addr
        else:
            out = self._outgoing.get(key)
            if out is not None:  # an actor of the run, whose connect has not returned yet
                client_addr = Address(out.st.host, key[0][1])
                link = self.runtime.open_link(
                    out.st.name, client_addr, st.name, listener.address, out.conn
                )
                self._halfway[key] = (link, False)
            else:
                client_addr = Address(self._lab_host(key[0][0]), key[0][1])
                link = self.runtime.open_link(EXTERNAL, client_addr, st.name, listener.address)
        end = self.runtime.server_end(link, st, listener.address, client_addr, transport)
        stream.end = end
        self.runtime.accepted(end)

    def _lost(self, stream: _Stream, exc: Exception | None) -> None:
        transport = stream.transport
        if transport is not None:
            self._transports.discard(transport)
        end = stream.end
        if end is not None and end.open:
            self._arrive_close(end, exc is not None, self._far_name(end))

    # -- data ----------------------------------------------------------------------------------

    @staticmethod
    def _transport(end: End) -> asyncio.Transport:
        transport = end.io
        assert isinstance(transport, asyncio.Transport)
        return transport

    def write(self, end: End, data: bytes) -> None:
        self._transport(end).write(data)

    def alive(self, end: End) -> bool:
        return not self._transport(end).is_closing()

    def abort(self, end: End) -> None:
        self._abort(self._transport(end), reset=True)

    def _delay(self, end: End) -> float:
        peer = end.peer
        if peer is None or not self.link_latency:
            return 0.0
        a, b = peer.st.name, end.st.name
        return self.link_latency.get((a, b), self.link_latency.get((b, a), 0.0))

    def _arrive(self, end: End, data: bytes) -> None:
        """Bytes read from ``end``'s socket reach the actor after the link's latency."""
        delay = self._delay(end)
        if delay and self._loop is not None:
            self._loop.call_later(delay, self.runtime.received, end, data)
        else:
            self.runtime.received(end, data)

    def _arrive_close(self, end: End, reset: bool, by: str) -> None:
        delay = self._delay(end)
        if delay and self._loop is not None:
            # Behind the data still travelling on this link, as a FIN or RST would be.
            self._loop.call_later(delay, self.runtime.peer_closed, end, reset, by)
        else:
            self.runtime.peer_closed(end, reset, by)

    def reading(self, end: End, on: bool) -> None:
        transport = self._transport(end)
        if transport.is_closing():
            return
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def close(self, end: End, reset: bool) -> None:
        if reset:
            self._abort(self._transport(end), reset=True)
        else:
            self._transport(end).close()  # FIN once the buffered data is out
