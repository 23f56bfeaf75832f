"""Start a process whose `wait()` returns when it exits, on every Python version.

On Python 3.11, `asyncio.subprocess.Process.wait()` returns only once the
process has exited and all its pipes are closed (the transport wakes the
waiters in `_call_connection_lost`); from 3.12 on, at the exit itself. A task
or warm worker that leaves a background child holding its stdout/stderr pipe
would not be seen to end until that child ends: the pilot would wait for the
timeout (or forever) before it kills the group. Here the protocol resolves a
future in `process_exited`, and `wait()` waits for that, while the rest of
`Process` (`stdout`, `stderr`, `pid`, `returncode`, signals) is asyncio's own.
The pipes may still be open when `wait()` returns: callers drain their readers
with a time limit, then `close_pipes()`.
"""

from __future__ import annotations

import asyncio
from asyncio.subprocess import SubprocessStreamProtocol
from typing import Any

#: asyncio's own default (`asyncio.streams._DEFAULT_LIMIT`)
STREAM_LIMIT = 2**16
#: seconds a SIGKILLed process (or group) is given to be seen gone: it dies asynchronously
KILL_WAIT = 5.0


class _ExitProtocol(SubprocessStreamProtocol):
    """asyncio's protocol for `create_subprocess_exec`, plus `exited`: the return code, at the exit."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited: asyncio.Future[int] = loop.create_future()
        self._exit_transport: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self._exit_transport = transport
        super().connection_made(transport)

    def process_exited(self) -> None:
        super().process_exited()
        assert self._exit_transport is not None  # connection_made always comes first
        code = self._exit_transport.get_returncode()
        if code is not None and not self.exited.done():
            self.exited.set_result(code)


class Process(asyncio.subprocess.Process):
    """An `asyncio.subprocess.Process` whose `wait()` does not wait for its pipes to close."""

    def __init__(
        self, transport: asyncio.SubprocessTransport, protocol: _ExitProtocol, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(transport, protocol, loop)
        self._exited = protocol.exited
        self._pipes_transport = transport

    async def wait(self) -> int:
        """The return code, once the process has exited (a cancelled wait leaves the others waiting)."""
        return await asyncio.shield(self._exited)

    def close_pipes(self) -> None:
        """Close our ends of its pipes (its readers are done or cancelled), and its transport once it has exited.

        Otherwise a detached process still holding them (its own session, out of
        the group's reach) keeps them, and their transport, open as long as it lives.
        The transport itself waits for the exit: closed before, it has asyncio poll
        the process, and so reap it behind the child watcher's back (which then
        reports 255 and warns). Its pipes do not wait: a process that never exits
        (stuck on hung storage) or a loop closed first must not keep them open.
        """
        if self._exited.done():
            self._pipes_transport.close()
            return
        for fd in (0, 1, 2):  # a cancelled caller that killed it and cannot wait
            if (pipe := self._pipes_transport.get_pipe_transport(fd)) is not None:
                pipe.close()
        self._exited.add_done_callback(lambda _: self._pipes_transport.close())


async def start_process(program: str, *args: str, **kwds: Any) -> Process:
    """`asyncio.create_subprocess_exec(program, *args, **kwds)`, with a `wait()` that returns at the exit."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(
        lambda: _ExitProtocol(STREAM_LIMIT, loop), program, *args, **kwds
    )
    return Process(transport, protocol, loop)
