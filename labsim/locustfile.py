"""A Locust user class placing sharing calls (docs/locust.md): ``locust -f $(labsim locustfile
--path) --host labsim://HOST:PORT``.

Each :class:`SharingCallUser` places one sharing call after another, each from a Skype client
and a Skype Edge of its own (:func:`labsim.serve.place_call`), against the target at Locust's
``--host``: Expressway-E's SIP address of ``labsim serve`` (``labsim://127.A.B.1:5060``; the
port defaults to the scenario's). Every call is one Locust request of type ``sharing-call``
named after the scenario; its response time is the call's setup time (the sharing INVITE
leaving the client to CMS's ACK of the post-ICE reINVITE reaching it), or, for a call that
never got there, the time until it ended; a call whose outcome is not the scenario's expected
one (``sharing-established`` for a healthy scenario) fails with :class:`CallFailed`, which names
the outcome and why.

Locust runs its users as gevent greenlets and monkey-patches the standard library; labsim's live
runtime is asyncio. Each call therefore runs on a native thread of gevent's thread pool
(``get_hub().threadpool.spawn(...).get()`` lets the other greenlets run while it waits), with
an event loop of its own in that thread; the pool is made as large as ``--labsim-threads``
so every user's call can be up at once.

Numbering: the target gives each client address one participant for its whole life
(:mod:`labsim.serve`), so call numbers must never repeat against one target. Worker ``i`` of
``--expect-workers W`` (a lone process: ``i`` 0, ``W`` 1) places calls ``first + i``,
``first + i + W``, ``first + i + 2W`` …, where ``first`` is ``--labsim-first-call`` (default 1;
raise it to call a target a second time without restarting it).

Options (Locust passes them from the master to its workers): ``--labsim-scenario`` (a bundled
name or a file; default ``sharing-call``), ``--labsim-hold`` (seconds each call stays up),
``--labsim-first-call``, ``--labsim-calls-per-user`` (each user stops after that many calls, so
a run places exactly users × that many: every call is in the master's statistics before the
run time is up), ``--labsim-threads``.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import gevent
from locust import User, constant, events, task
from locust.env import Environment
from locust.exception import StopUser

from labsim.actors.meeting import MAX_CALLS
from labsim.scenario import Scenario, bundled, load
from labsim.serve import SkypeCall, TargetAddress, parse_target, place_call, with_hold

#: The request type of every call in Locust's statistics.
REQUEST_TYPE = "sharing-call"


class CallFailed(Exception):
    """A call that did not reach the scenario's expected outcome: its outcome and why."""


def _options(parser: Any, **_kw: Any) -> None:
    group = parser.add_argument_group("labsim")
    group.add_argument("--labsim-scenario", default="sharing-call",
                       help="Scenario the calls follow (bundled name or file).")  # fmt: skip
    group.add_argument("--labsim-hold", type=float, default=None,
                       help="Seconds each call stays up (the scenario's call.hold).")  # fmt: skip
    group.add_argument("--labsim-first-call", type=int, default=1,
                       help="First call number (client address) of this run.")  # fmt: skip
    group.add_argument("--labsim-calls-per-user", type=int, default=0,
                       help="Calls each user places before it stops (0: no limit), as "
                       "SIPp's -m bounds its calls.")  # fmt: skip
    group.add_argument("--labsim-threads", type=int, default=1024,
                       help="Native threads for calls up at once, per process.")  # fmt: skip


# locust types its events, not EventHook.add_listener.
events.init_command_line_parser.add_listener(_options)  # type: ignore[no-untyped-call]


class _Plan:
    """What every user of this process shares: the scenario, the target and the numbers."""

    def __init__(self, env: Environment) -> None:
        opts = env.parsed_options
        name = getattr(opts, "labsim_scenario", None) or "sharing-call"
        path = bundled(name) or name
        sc: Scenario = load(path)
        hold = getattr(opts, "labsim_hold", None)
        self.scenario = with_hold(sc, hold) if hold is not None else sc
        if not env.host:
            raise ValueError("no target: give --host labsim://HOST:PORT (labsim serve prints it)")
        self.target: TargetAddress = parse_target(
            env.host, self.scenario.actors.expressway_e.sip_port
        )
        runner = env.runner
        index = max(0, int(getattr(runner, "worker_index", 0) or 0))
        workers = max(1, int(getattr(opts, "expect_workers", 1) or 1))
        if index >= workers:
            raise ValueError(f"worker index {index} with --expect-workers {workers}: call "
                             "numbers would repeat")  # fmt: skip
        first = int(getattr(opts, "labsim_first_call", 1) or 1)
        self._numbers = itertools.count(first + index, workers)
        self.calls_per_user = max(0, int(getattr(opts, "labsim_calls_per_user", 0) or 0))
        self._lock = threading.Lock()
        pool = gevent.get_hub().threadpool
        pool.maxsize = max(pool.maxsize, int(getattr(opts, "labsim_threads", 1024) or 1024))

    def next_call(self) -> int:
        with self._lock:
            number = next(self._numbers)
        if number > MAX_CALLS:
            raise CallFailed(f"call numbers are used up (at most {MAX_CALLS} against one "
                             "target): restart the target")  # fmt: skip
        return number


_plans: dict[int, _Plan] = {}


def _plan(env: Environment) -> _Plan:
    plan = _plans.get(id(env))
    if plan is None:
        plan = _plans[id(env)] = _Plan(env)
    return plan


def _forget(environment: Environment, **_kw: Any) -> None:
    # A new test (a new spawn message) may bring a new host or options.
    _plans.pop(id(environment), None)


events.test_stop.add_listener(_forget)  # type: ignore[no-untyped-call]


class SharingCallUser(User):
    """One Skype user placing sharing calls one after another (see the module docstring)."""

    wait_time = constant(0)
    placed = 0

    @task
    def sharing_call(self) -> None:
        env = self.environment
        plan = _plan(env)
        if plan.calls_per_user and self.placed >= plan.calls_per_user:
            raise StopUser()
        self.placed += 1
        sc = plan.scenario
        number = plan.next_call()
        pool = gevent.get_hub().threadpool
        try:
            call: SkypeCall = pool.spawn(place_call, sc, plan.target, number).get()
        except Exception as exc:  # noqa: BLE001 - any failure is this request's
            env.events.request.fire(
                request_type=REQUEST_TYPE, name=sc.name, response_time=0.0,
                response_length=0, exception=exc, context={"call": number},
            )  # fmt: skip
            return
        expected = sc.expect.outcome
        ok = call.outcome.name == expected and not call.errors
        seconds = call.setup if call.setup is not None else call.wall
        exception = None if ok else CallFailed(f"call {number}: {call.verdict}")
        if call.errors:
            exception = CallFailed(f"call {number}: {'; '.join(call.errors)}")
        env.events.request.fire(
            request_type=REQUEST_TYPE, name=sc.name, response_time=seconds * 1000.0,
            response_length=0, exception=exception,
            context={"call": number, "outcome": call.outcome.name, "ended": call.ended},
        )  # fmt: skip
