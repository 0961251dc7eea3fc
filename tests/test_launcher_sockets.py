"""The launcher's sockets over real loopback TCP, driven by server-side sockets of this test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import zmq

from melissa_nb.protocol import (
    Drop,
    Hello,
    Job,
    Options,
    SimuStatus,
    Stop,
    TextRequest,
    Timeout,
    decode_launcher_message,
)
from melissa_nb.study.launcher_sockets import Launcher

JOBS = {3: Job(3, "study.3.1", (1.5, -2.0))}


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.term()


@contextmanager
def server_sockets(context: zmq.Context, launcher: Launcher) -> Iterator[tuple[zmq.Socket, ...]]:
    """What a server rank connects: SUB (launcher PUB), PUSH (launcher PULL), REQ (launcher REP)."""
    subscriber = context.socket(zmq.SUB)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"")
    subscriber.connect(f"tcp://127.0.0.1:{launcher.ports.pull}")
    pusher = context.socket(zmq.PUSH)
    pusher.connect(f"tcp://127.0.0.1:{launcher.ports.push}")
    requester = context.socket(zmq.REQ)
    requester.connect(f"tcp://127.0.0.1:{launcher.ports.req}")
    try:
        yield subscriber, pusher, requester
    finally:
        for socket in (subscriber, pusher, requester):
            socket.close(linger=0)


def ask(launcher: Launcher, requester: zmq.Socket, request: bytes) -> bytes:
    """Send a request and service the launcher until the reply arrives (bounded)."""
    requester.send(request)
    deadline = time.monotonic() + 10
    while not requester.poll(0):
        assert time.monotonic() < deadline, "no reply from the launcher"
        launcher.service(0.01)
    return requester.recv()


def test_requests_are_answered(context: zmq.Context) -> None:
    launcher = Launcher(context, JOBS.get, options="-p 2 -s 4")
    try:
        with server_sockets(context, launcher) as (_, _, requester):
            reply = ask(launcher, requester, TextRequest("options").encode())
            assert Options.decode(reply) == Options("-p 2 -s 4")
            assert Job.decode(ask(launcher, requester, b"simu_info 3\0"), 2) == JOBS[3]
            assert Drop.decode(ask(launcher, requester, b"simu_info 9")) == Drop(9, "")
            assert Hello.decode(ask(launcher, requester, b"test_timeout")) == Hello()
            assert ask(launcher, requester, b"simu_info x") == b""  # malformed: still a reply
        assert launcher.rejected["bad_request"] == 1
        assert launcher.requests == {"options": 1, "simu_info": 2, "test_timeout": 1}
    finally:
        launcher.close()


def test_server_messages_come_back_and_garbage_is_counted(context: zmq.Context) -> None:
    launcher = Launcher(context, JOBS.get, options="")
    try:
        with server_sockets(context, launcher) as (_, pusher, _):
            sent = [SimuStatus(3, 2), Timeout(4), Stop()]
            pusher.send(b"\x01")
            for message in sent:
                pusher.send(message.encode())
            received = []
            deadline = time.monotonic() + 10
            while len(received) < len(sent):
                assert time.monotonic() < deadline, f"only {received} arrived"
                received += launcher.service(0.05)
        assert received == sent
        assert launcher.rejected["short_frame"] == 1
    finally:
        launcher.close()


def test_hello_heartbeat_and_published_jobs_reach_every_subscriber(context: zmq.Context) -> None:
    launcher = Launcher(context, JOBS.get, options="", heartbeat=0.05)
    try:
        with server_sockets(context, launcher) as (subscriber, _, _):
            seen: set[type] = set()
            deadline = time.monotonic() + 10
            while seen != {Hello, Job}:
                assert time.monotonic() < deadline, f"only {seen} arrived"
                launcher.service(0.01)
                launcher.publish(JOBS[3])  # PUB drops until the subscription lands: repeat
                while subscriber.poll(0):
                    message = decode_launcher_message(subscriber.recv())
                    seen.add(type(message))
                    if isinstance(message, Job):
                        assert message == JOBS[3]
    finally:
        launcher.close()
