"""Runs task-processor tasks in Python: a worker for `WorkerService/Work`.

What lives here: `Worker` (one stream to the server, handlers per kind,
reconnecting, draining on SIGTERM), `Job` (what a handler is given) and
`PermanentError`. What does not: the generated code, which is imported from
`taskprocessor.v1` (generate it with grpcio-tools, see docs/clients.md).

    worker = Worker("127.0.0.1:50051", worker_name="thumbnails", max_concurrent=4)

    @worker.handler("thumbnail")
    def thumbnail(job):
        for step in range(10):
            if job.cancelled.wait(0.2):
                return None          # the outcome of a cancelled run is discarded
            job.progress(step * 10, f"step {step + 1} of 10")
        return {"thumbnail": job.data["image"] + ".small.png"}

    worker.run()                     # until SIGTERM or SIGINT, then drains

Handlers are plain functions, each run in a thread of its own: grpcio's
synchronous API is threads underneath anyway, blocking code (image libraries,
HTTP clients) works unchanged, and cancellation is a `threading.Event` the
handler checks or waits on. A handler's return value (anything JSON can hold)
completes the task; an exception fails the run with `str(exception)` as the
task's error, and the task's retry policy decides what happens next, unless
it is a `PermanentError`, which fails the task at once.
"""

import dataclasses
import logging
import math
import queue
import random
import signal
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

import grpc
from google.protobuf import json_format, struct_pb2

from taskprocessor.v1 import task_service_pb2
from taskprocessor.v1 import worker_service_pb2 as pb
from taskprocessor.v1 import worker_service_pb2_grpc as pb_grpc

__all__ = ["Backoff", "Job", "PermanentError", "Worker"]

LOGGER = logging.getLogger("task_processor_worker")

# Stream ends that are the worker's configuration, not the network's: a kind
# the server does not run, a bad token, a missing role. Retrying cannot fix
# them, so `Worker.run` raises them instead of reconnecting.
NOT_RETRIED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)

# A stream that stayed open this long, or brought an assignment, was a good
# connection: the back-off starts over after it.
GOOD_CONNECTION_SECONDS = 10.0

# HTTP/2 keepalive, as taskctl does it: a ping every 10 s, also while no task
# runs, so a server that froze or vanished is noticed within about 20 s and
# the worker reconnects instead of waiting on a dead stream forever.
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)

Handler = Callable[["Job"], Any]


class PermanentError(Exception):
    """Raised by a handler for a failure no retry can fix (bad input, say):
    the task ends FAILED at once, whatever its retry policy."""


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Exponential back-off with full jitter: the n-th wait is drawn from
    [0, min(maximum, initial * 2**n)), so that many workers cut off by the
    same server restart do not all reconnect in the same instant."""

    initial: float = 0.5
    maximum: float = 30.0

    def delay(self, failures: int, draw: Callable[[], float] = random.random) -> float:
        """The wait before the next attempt after `failures` failed ones in a row."""
        ceiling = min(self.maximum, self.initial * 2 ** min(failures, 62))
        return ceiling * draw()


class Job:
    """One run of one task, as a handler sees it.

    `data` is the task's input decoded from JSON (None when it has none);
    `task` is the whole `Task` message, RUNNING; `cancelled` is set when the
    server cancels this run (a client cancelled the task, it timed out, the
    server is shutting down) or the stream to the server is gone. Once it is
    set, nothing the handler returns matters any more: it should stop soon.
    """

    def __init__(
        self, task: task_service_pb2.Task, trace_context: Dict[str, str], session
    ):
        self.task = task
        self.task_id: str = task.id
        self.attempt: int = task.attempt
        self.kind: str = task.kind
        self.data: Any = _from_value(task.data) if task.HasField("data") else None
        # W3C trace context (traceparent, tracestate) of the task's creation,
        # for handlers that trace; empty when it was created outside a trace.
        self.trace_context: Dict[str, str] = dict(trace_context)
        self.cancelled = threading.Event()
        # Why the run was cancelled, in words; empty until it is.
        self.cancel_reason: str = ""
        self._session = session

    def progress(self, percent: float, message: str = "") -> None:
        """Reports how far the run is (0 to 100) to the task's watchers.

        Cheap and safe to call from the handler's thread at any time: after a
        cancellation, or once the stream is gone, it does nothing.
        """
        if self.cancelled.is_set():
            return
        percent = int(max(0, min(100, percent)))
        self._session.send(
            pb.WorkRequest(
                progress=pb.WorkProgress(
                    task_id=self.task_id,
                    attempt=self.attempt,
                    progress=task_service_pb2.TaskProgress(
                        percent=percent, message=message
                    ),
                )
            )
        )

    def _cancel(self, reason: str) -> None:
        if not self.cancelled.is_set():
            self.cancel_reason = reason
            self.cancelled.set()


class Worker:
    """Runs the handlers of the kinds it serves for tasks a server assigns.

    One `Work` stream, at most `max_concurrent` tasks running on it. When the
    stream ends without the worker asking (the server restarted, the network
    failed), the worker reconnects with back-off; the server runs the tasks
    that were cut short again, so handlers must be safe to run twice. The
    handlers of the lost stream are cancelled, and the next stream opens
    only once they have returned (or after `grace_period`, with a warning),
    so that no more than `max_concurrent` handlers ever run at once.
    """

    def __init__(
        self,
        address: str,
        *,
        worker_name: str = "worker",
        max_concurrent: int = 1,
        ca_file: Optional[str] = None,
        token: Optional[str] = None,
        grace_period: float = 25.0,
        backoff: Backoff = Backoff(),
    ):
        """`address` is host:port. With `ca_file` (PEM) the connection is TLS,
        verified against that CA; `token` is sent as `authorization: Bearer`,
        which gRPC allows over TLS only. `grace_period` is how long a drain
        lets running handlers finish: 25 s fits inside Kubernetes' default 30 s
        between SIGTERM and SIGKILL.
        """
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent}")
        if token is not None and ca_file is None:
            raise ValueError("a token is sent over TLS only: give ca_file too")
        self.address = address
        self.worker_name = worker_name
        self.max_concurrent = max_concurrent
        # Read once, here, so that a wrong path fails at once, not on every
        # reconnection.
        self._root_certificates: Optional[bytes] = None
        if ca_file is not None:
            with open(ca_file, "rb") as file:
                self._root_certificates = file.read()
        self.token = token
        self.grace_period = grace_period
        self.backoff = backoff
        self._handlers: Dict[str, Handler] = {}
        self._lock = threading.Lock()
        self._draining = threading.Event()
        self._session: Optional[_Session] = None
        # The last stream that ended, whose handlers may still be returning.
        self._ended_session: Optional[_Session] = None

    def handle(self, kind: str, handler: Handler) -> None:
        """Registers the handler of a kind (one of the server's worker kinds)."""
        if kind in self._handlers:
            raise ValueError(f"kind {kind!r} already has a handler")
        self._handlers[kind] = handler

    def handler(self, kind: str) -> Callable[[Handler], Handler]:
        """The decorator form of `handle`."""

        def register(function: Handler) -> Handler:
            self.handle(kind, function)
            return function

        return register

    def run(self, *, handle_signals: bool = True) -> None:
        """Serves until drained, then returns; raises the configuration errors
        (INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED) as
        `grpc.RpcError`. A worker runs once: after a drain, `run` returns at
        once.

        With `handle_signals` (and on the main thread, the only one Python
        lets set them), SIGTERM and SIGINT start a drain, and a second one
        closes the stream at once. The serving happens on another thread so
        that the signal handler never runs while this one holds a lock the
        drain needs.
        """
        if not self._handlers:
            raise ValueError("no handler registered: call handle() first")
        failure: list = []

        def serve() -> None:
            try:
                self._serve()
            except BaseException as error:  # handed to the caller below
                failure.append(error)

        serving = threading.Thread(target=serve, name="task-processor-worker")
        previous = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for signal_number in (signal.SIGTERM, signal.SIGINT):
                previous[signal_number] = signal.signal(signal_number, self._on_signal)
        try:
            serving.start()
            while serving.is_alive():
                serving.join(0.2)
        finally:
            for signal_number, handler in previous.items():
                signal.signal(signal_number, handler)
        if failure:
            raise failure[0]

    def drain(self) -> None:
        """Stops taking tasks: sends `drain`, lets the running handlers finish
        for up to `grace_period`, then closes the stream (the server runs what
        is still unfinished again, elsewhere) and makes `run` return.
        Thread-safe; a second call closes the stream at once."""
        with self._lock:
            again = self._draining.is_set()
            self._draining.set()
            session = self._session
        if session is None:
            return
        if again:
            session.close("the worker stopped")
            return
        LOGGER.info("draining: no new tasks, %d running", session.running())
        session.send(pb.WorkRequest(drain=pb.WorkDrain()))
        timer = threading.Timer(
            self.grace_period, session.close, ("grace period over",)
        )
        timer.daemon = True
        timer.start()

    def _on_signal(self, signal_number, frame) -> None:
        del frame  # Python passes it; draining needs nothing from it.
        LOGGER.info("%s received", signal.Signals(signal_number).name)
        self.drain()

    def _serve(self) -> None:
        """Connects, serves until the stream ends, and reconnects with
        back-off until drained."""
        failures = 0
        while not self._draining.is_set():
            started = time.monotonic()
            try:
                assigned = self._serve_one_stream()
            except grpc.RpcError as error:
                if error.code() in NOT_RETRIED:
                    raise
                assigned = False
                LOGGER.warning(
                    "stream ended: %s: %s", error.code().name, error.details()
                )
            else:
                if not self._draining.is_set():
                    LOGGER.warning("the server ended the stream")
            if assigned or time.monotonic() - started >= GOOD_CONNECTION_SECONDS:
                failures = 0
            if self._draining.is_set():
                break
            delay = self.backoff.delay(failures)
            failures += 1
            LOGGER.info("reconnecting in %.1f s", delay)
            self._draining.wait(delay)
        LOGGER.info("stopped")

    def _serve_one_stream(self) -> bool:
        """One `Work` stream, from hello to its end; says whether it brought
        any assignment. Raises the stream's error unless the worker closed it
        itself while draining."""
        hello = pb.WorkRequest(
            hello=pb.WorkerHello(
                kinds=sorted(self._handlers),
                max_concurrent=self.max_concurrent,
                worker_name=self.worker_name,
            )
        )
        session = _Session(hello)
        self._wait_for_lost_handlers()
        with self._lock:
            if self._draining.is_set():
                return False
            # From here on a drain sends `drain` on this stream.
            self._session = session
        assigned = False
        try:
            with self._open_channel() as channel:
                session.call = pb_grpc.WorkerServiceStub(channel).Work(
                    session.requests()
                )
                for response in session.call:
                    which = response.WhichOneof("message")
                    if which == "assignment":
                        assigned = True
                        self._start(session, response.assignment)
                    elif which == "cancellation":
                        session.cancel(response.cancellation)
        except grpc.RpcError as error:
            if not (error.code() == grpc.StatusCode.CANCELLED and session.closed_by_us):
                raise
        finally:
            with self._lock:
                self._session = None
                self._ended_session = session
            session.end("the stream to the server ended")
        return assigned

    def _wait_for_lost_handlers(self) -> None:
        """Waits until the handlers of the last stream, cancelled when it
        ended, have returned: a new stream brings up to `max_concurrent` new
        tasks, and with the old handlers still going the worker would run
        more than that. A handler that ignores its cancellation holds the
        reconnection up for `grace_period` at most. A drain ends the wait."""
        with self._lock:
            ended = self._ended_session
            self._ended_session = None
        if ended is None:
            return
        deadline = time.monotonic() + self.grace_period
        while not self._draining.is_set():
            left = deadline - time.monotonic()
            if ended.wait_for_handlers(min(max(left, 0.0), 0.2)):
                return
            if left <= 0:
                LOGGER.warning(
                    "reconnecting with %d handler(s) of the lost stream still running",
                    ended.handlers_running(),
                )
                return

    def _open_channel(self) -> grpc.Channel:
        if self._root_certificates is None:
            return grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._root_certificates
        )
        if self.token is not None:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(self.token)
            )
        return grpc.secure_channel(self.address, credentials, options=CHANNEL_OPTIONS)

    def _start(self, session: "_Session", assignment: pb.WorkAssignment) -> None:
        job = Job(assignment.task, assignment.trace_context, session)
        handler = self._handlers.get(job.kind)
        session.add(job)
        thread = threading.Thread(
            target=_run_job,
            args=(session, job, handler),
            name=f"task-{job.task_id}-{job.attempt}",
            # A handler that ignores its cancellation must not keep the
            # process alive after the drain's grace period.
            daemon=True,
        )
        # Counted before it starts, so a stream that ends at once still
        # waits for it.
        session.handler_started()
        try:
            thread.start()
        except BaseException:
            session.handler_returned()
            raise


def _run_job(session: "_Session", job: Job, handler: Optional[Handler]) -> None:
    """Runs one handler and sends its one outcome."""
    try:
        outcome = _outcome_of(job, handler)
        # Sent after a cancellation too: the server discards it, and only
        # then frees the stream's slot for another task.
        session.finish(job, pb.WorkRequest(outcome=outcome))
    finally:
        session.handler_returned()


def _outcome_of(job: Job, handler: Optional[Handler]) -> pb.WorkOutcome:
    """What the handler made of the job, as the outcome to send."""
    outcome = pb.WorkOutcome(task_id=job.task_id, attempt=job.attempt)
    if handler is None:
        # The server assigns only the kinds of the hello; this is a guard.
        outcome.failure.message = f"this worker has no handler for kind {job.kind!r}"
        outcome.failure.permanent = True
        return outcome
    try:
        result = handler(job)
    except Exception as error:  # a failed run, not a failed worker
        if not job.cancelled.is_set():
            LOGGER.exception("task %s attempt %d failed", job.task_id, job.attempt)
        outcome.failure.message = str(error) or type(error).__name__
        outcome.failure.permanent = isinstance(error, PermanentError)
        return outcome
    try:
        outcome.result.CopyFrom(_to_value(result))
    except (json_format.ParseError, ValueError, TypeError) as error:
        outcome.failure.message = f"the handler's result is not JSON: {error}"
        outcome.failure.permanent = True
    return outcome


class _Session:
    """The state of one stream: what to send, and the jobs assigned on it.

    Jobs belong to the stream they came on: once it ends, their outcomes
    cannot be delivered (the server runs those tasks again), so they are
    cancelled and whatever they send is dropped.
    """

    def __init__(self, hello: pb.WorkRequest):
        self.call = None
        self.closed_by_us = False
        self._outgoing: "queue.Queue[Optional[pb.WorkRequest]]" = queue.Queue()
        self._outgoing.put(hello)
        self._lock = threading.Lock()
        self._jobs: Dict[Tuple[str, int], Job] = {}
        self._ended = False
        # Handler threads of this stream that have not returned; unlike
        # `_jobs`, which forgets them when the stream ends.
        self._handlers_running = 0
        self._handlers_returned = threading.Condition(self._lock)

    def requests(self):
        """The request stream grpcio sends from: queued messages until None."""
        while True:
            message = self._outgoing.get()
            if message is None:
                return
            yield message

    def send(self, message: pb.WorkRequest) -> None:
        with self._lock:
            if not self._ended:
                self._outgoing.put(message)

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[(job.task_id, job.attempt)] = job

    def handler_started(self) -> None:
        with self._lock:
            self._handlers_running += 1

    def handler_returned(self) -> None:
        with self._lock:
            self._handlers_running -= 1
            if self._handlers_running == 0:
                self._handlers_returned.notify_all()

    def handlers_running(self) -> int:
        with self._lock:
            return self._handlers_running

    def wait_for_handlers(self, timeout: float) -> bool:
        """Whether every handler of this stream has returned, waiting up to
        `timeout` seconds for it."""
        with self._lock:
            return self._handlers_returned.wait_for(
                lambda: self._handlers_running == 0, timeout
            )

    def running(self) -> int:
        with self._lock:
            return len(self._jobs)

    def finish(self, job: Job, outcome: pb.WorkRequest) -> None:
        with self._lock:
            if (
                self._jobs.pop((job.task_id, job.attempt), None) is not None
                and not self._ended
            ):
                self._outgoing.put(outcome)

    def cancel(self, cancellation: pb.WorkCancellation) -> None:
        with self._lock:
            job = self._jobs.get((cancellation.task_id, cancellation.attempt))
        if job is not None:
            LOGGER.info(
                "task %s attempt %d cancelled: %s",
                job.task_id,
                job.attempt,
                cancellation.reason,
            )
            job._cancel(cancellation.reason)

    def close(self, reason: str) -> None:
        """Ends the stream from this side; the server gives back its tasks."""
        with self._lock:
            if self._ended or self.call is None:
                return
            self.closed_by_us = True
            running = len(self._jobs)
        LOGGER.warning(
            "closing the stream (%s) with %d task(s) still running", reason, running
        )
        self.call.cancel()

    def end(self, reason: str) -> None:
        """The stream is over: stop sending, and cancel what still runs."""
        with self._lock:
            self._ended = True
            jobs = list(self._jobs.values())
            self._jobs.clear()
            self._outgoing.put(None)
        for job in jobs:
            job._cancel(reason)


def _from_value(value: struct_pb2.Value) -> Any:
    """A protobuf Value as plain JSON data. Whole numbers come back as int
    (Value holds every number as a double, so 42 would otherwise be 42.0)."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {
            key: _from_value(item) for key, item in value.struct_value.fields.items()
        }
    if kind == "list_value":
        return [_from_value(item) for item in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        if math.isfinite(number) and number.is_integer() and abs(number) <= 2**53:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def _to_value(data: Any) -> struct_pb2.Value:
    """Plain JSON data (dict, list, str, number, bool, None) as a protobuf Value."""
    return json_format.ParseDict(data, struct_pb2.Value())
