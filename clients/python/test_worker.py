"""The Python worker library (task_processor_worker.py) and example_worker.py,
against the real server, and against a scripted fake for what the real one
cannot be made to do on demand (end a stream UNAVAILABLE, say).

The server (TASK_PROCESSOR_ADDR, with TASK_PROCESSOR_CA_FILE and
TASK_PROCESSOR_TOKEN as in test_task_service.py) must run the worker kinds
`py-test` and `thumbnail` (.ci/run starts it with `--worker-kinds
thumbnail,email,py-test,node-test`); the token's principal needs the roles
read, write and work. The taskctl test runs
${CARGO_TARGET_DIR:-target}/debug/taskctl from the repository root.

Every wait has a deadline; no test sleeps and hopes. Tasks a test leaves
unfinished are cancelled when it ends, so no later test (nor the Node client's
tests, which use other kinds) finds them still waiting for a worker.
"""

import contextlib
import json
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent import futures

import grpc
import pytest
from google.protobuf import duration_pb2, json_format, struct_pb2

import task_processor_worker
from task_processor_worker import Backoff, PermanentError, Worker
from taskprocessor.v1 import task_service_pb2 as pb
from taskprocessor.v1 import task_service_pb2_grpc as pb_grpc
from taskprocessor.v1 import worker_service_pb2 as worker_pb
from taskprocessor.v1 import worker_service_pb2_grpc as worker_pb_grpc

# How long anything may take before the test fails: a call, a task to reach
# a state, a worker to stop.
DEADLINE = 20
CA_FILE = os.environ.get("TASK_PROCESSOR_CA_FILE") or None
TOKEN = os.environ.get("TASK_PROCESSOR_TOKEN") or None
CLIENT_DIR = pathlib.Path(__file__).resolve().parent
REPOSITORY_ROOT = CLIENT_DIR.parent.parent
GENERATED_DIR = CLIENT_DIR / "build" / "generated"
TERMINAL = {pb.TASK_STATUS_COMPLETED, pb.TASK_STATUS_FAILED, pb.TASK_STATUS_CANCELLED}


@pytest.fixture(scope="session")
def address():
    address = os.environ.get("TASK_PROCESSOR_ADDR")
    if not address:
        pytest.fail("TASK_PROCESSOR_ADDR is not set (.ci/run sets it)", pytrace=False)
    return address


@pytest.fixture(scope="session")
def channel(address):
    """A channel as the token's principal: plaintext, or TLS verified with
    CA_FILE."""
    if CA_FILE is None:
        channel = grpc.insecure_channel(address)
    else:
        credentials = grpc.ssl_channel_credentials(pathlib.Path(CA_FILE).read_bytes())
        if TOKEN is not None:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(TOKEN)
            )
        channel = grpc.secure_channel(address, credentials)
    with channel:
        yield channel


@pytest.fixture(scope="session")
def tasks(channel):
    return pb_grpc.TaskServiceStub(channel)


@pytest.fixture(scope="session")
def workers(channel):
    return worker_pb_grpc.WorkerServiceStub(channel)


@pytest.fixture
def created_ids(tasks):
    """Ids of the tasks a test creates: those not finished when it ends are
    cancelled, so that no later test finds them waiting for a worker."""
    ids = []
    yield ids
    for task_id in ids:
        task = tasks.GetTask(pb.GetTaskRequest(id=task_id), timeout=DEADLINE)
        if task.status not in TERMINAL:
            tasks.CancelTask(pb.CancelTaskRequest(id=task_id), timeout=DEADLINE)


@pytest.fixture
def create_task(tasks, created_ids):
    """Creates a task, of kind py-test unless told."""
    labels = {"worker-test-run": uuid.uuid4().hex}

    def create(data=None, kind="py-test", retry_policy=None, timeout_seconds=0):
        request = pb.CreateTaskRequest(
            name=f"python worker test {len(created_ids)}",
            kind=kind,
            labels=labels,
            timeout_seconds=timeout_seconds,
        )
        if data is not None:
            request.data.CopyFrom(json_format.ParseDict(data, struct_pb2.Value()))
        if retry_policy is not None:
            request.retry_policy.CopyFrom(retry_policy)
        task = tasks.CreateTask(request, timeout=DEADLINE)
        created_ids.append(task.id)
        return task

    return create


def watch_until(tasks, task_id, condition, description):
    """Follows the task until `condition(task)` holds; returns that state and
    the states seen on the way."""
    seen = []
    for state in tasks.WatchTask(pb.WatchTaskRequest(id=task_id), timeout=DEADLINE):
        seen.append(state.task)
        if condition(state.task):
            return state.task, seen
    pytest.fail(f"task {task_id} ended without {description}: {seen[-1:]}")


def final_state(tasks, task_id):
    """Follows the task to its end; returns the last state and all states."""
    states = [
        state.task
        for state in tasks.WatchTask(pb.WatchTaskRequest(id=task_id), timeout=DEADLINE)
    ]
    assert states[-1].status in TERMINAL
    return states[-1], states


def retry_policy(max_attempts):
    return pb.RetryPolicy(
        max_attempts=max_attempts,
        initial_backoff=duration_pb2.Duration(nanos=100_000_000),
    )


def result_of(task: pb.Task):
    return json_format.MessageToDict(task.result)


def wait_for(event: threading.Event, description: str) -> None:
    assert event.wait(DEADLINE), f"no {description} within {DEADLINE} s"


@contextlib.contextmanager
def running_worker(address, handler, kind="py-test", **options):
    """A Worker for one kind, run on a thread; drained and joined on exit,
    with its error (if any) raised there."""
    options.setdefault("worker_name", f"py-test-{uuid.uuid4().hex[:8]}")
    options.setdefault("grace_period", DEADLINE)
    worker = Worker(address, ca_file=CA_FILE, token=TOKEN, **options)
    worker.handle(kind, handler)
    failure = []

    def run():
        try:
            worker.run(handle_signals=False)
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield worker, thread
    finally:
        worker.drain()
        thread.join(worker.grace_period + DEADLINE)
    assert not thread.is_alive(), "the worker did not stop after a drain"
    if failure:
        raise failure[0]


def test_a_task_runs_on_the_worker_and_completes_with_its_result(
    address, tasks, create_task
):
    seen = {}

    def double(job):
        seen.update(
            data=job.data, task_id=job.task_id, attempt=job.attempt, node=job.task.node
        )
        return {"doubled": job.data["n"] * 2, "text": job.data["text"]}

    with running_worker(address, double) as (worker, _):
        created = create_task({"n": 21, "text": "h\u00e9llo \u4e16"})
        last, _ = final_state(tasks, created.id)

    assert last.status == pb.TASK_STATUS_COMPLETED, last.error
    assert result_of(last) == {"doubled": 42, "text": "h\u00e9llo \u4e16"}
    assert last.attempt == 1
    assert last.node.endswith("/" + worker.worker_name), last.node
    assert seen["data"] == {"n": 21, "text": "h\u00e9llo \u4e16"}
    assert type(seen["data"]["n"]) is int, "whole numbers come back as int"
    assert (seen["task_id"], seen["attempt"], seen["node"]) == (
        created.id,
        1,
        last.node,
    )


def test_progress_reaches_a_watcher_while_the_task_runs(address, tasks, create_task):
    release = threading.Event()
    data_seen = []

    def halfway(job):
        data_seen.append(job.data)
        job.progress(50, "halfway there")
        wait_for(release, "release from the test")
        return "done"

    with running_worker(address, halfway):
        created = create_task()
        running, _ = watch_until(
            tasks,
            created.id,
            lambda task: task.progress.percent == 50,
            "progress 50 %",
        )
        release.set()
        last, _ = final_state(tasks, created.id)

    assert running.status == pb.TASK_STATUS_RUNNING
    assert running.progress.message == "halfway there"
    assert last.status == pb.TASK_STATUS_COMPLETED, last.error
    assert result_of(last) == "done"
    assert data_seen == [None], "a task without data gives the handler None"


def test_an_exception_fails_the_run_and_the_retry_policy_runs_it_again(
    address, tasks, create_task
):
    def flaky(job):
        if job.attempt == 1:
            raise RuntimeError("disk quota exceeded")
        return {"attempt": job.attempt}

    with running_worker(address, flaky):
        created = create_task(retry_policy=retry_policy(2))
        last, states = final_state(tasks, created.id)

    retrying = [task for task in states if task.status == pb.TASK_STATUS_RETRYING]
    assert retrying and retrying[0].error == "disk quota exceeded", states
    assert last.status == pb.TASK_STATUS_COMPLETED, last.error
    assert (last.attempt, result_of(last)) == (2, {"attempt": 2})


def test_a_permanent_error_fails_the_task_at_once(address, tasks, create_task):
    attempts = []

    def refuse(job):
        attempts.append(job.attempt)
        raise PermanentError("no such image: cat.png")

    with running_worker(address, refuse):
        created = create_task({"image": "cat.png"}, retry_policy=retry_policy(3))
        last, _ = final_state(tasks, created.id)

    assert last.status == pb.TASK_STATUS_FAILED
    assert last.error == "no such image: cat.png"
    assert last.attempt == 1 and attempts == [1], "no retry"


def test_a_result_json_cannot_hold_fails_the_task(address, tasks, create_task):
    with running_worker(address, lambda job: {"when": object()}):
        created = create_task(retry_policy=retry_policy(3))
        last, _ = final_state(tasks, created.id)

    assert last.status == pb.TASK_STATUS_FAILED
    assert "not JSON" in last.error
    assert last.attempt == 1, "a broken result is permanent"


def test_a_cancel_reaches_the_handler_and_frees_the_slot(address, tasks, create_task):
    started = threading.Event()
    stopped = threading.Event()
    reasons = []

    def wait_for_cancel(job):
        if job.data.get("quick"):
            return "quick"
        started.set()
        if job.cancelled.wait(DEADLINE):
            reasons.append(job.cancel_reason)
            stopped.set()
        return "ignored: the run was cancelled"

    with running_worker(address, wait_for_cancel, max_concurrent=1):
        slow = create_task({"quick": False})
        wait_for(started, "start of the slow task")
        # One slot: the quick task waits until the worker answers the
        # cancelled run with an outcome.
        quick = create_task({"quick": True})
        cancelled = tasks.CancelTask(pb.CancelTaskRequest(id=slow.id), timeout=DEADLINE)
        wait_for(stopped, "cancellation in the handler")
        last_quick, _ = final_state(tasks, quick.id)
        last_slow, _ = final_state(tasks, slow.id)

    assert cancelled.status == pb.TASK_STATUS_CANCELLED
    assert len(reasons) == 1 and "cancel" in reasons[0], reasons
    assert (
        last_slow.status == pb.TASK_STATUS_CANCELLED
    ), "the discarded outcome changes nothing"
    assert last_quick.status == pb.TASK_STATUS_COMPLETED, last_quick.error
    assert result_of(last_quick) == "quick"


def test_a_timeout_reaches_the_handler_and_fails_the_task(address, tasks, create_task):
    stopped = threading.Event()
    reasons = []

    def too_slow(job):
        if job.cancelled.wait(DEADLINE):
            reasons.append(job.cancel_reason)
            stopped.set()
        return "too late"

    with running_worker(address, too_slow):
        created = create_task(timeout_seconds=1)
        last, _ = final_state(tasks, created.id)
        wait_for(stopped, "cancellation in the handler")

    assert last.status == pb.TASK_STATUS_FAILED
    assert "timed out" in last.error, last.error
    assert len(reasons) == 1 and "timed out" in reasons[0], reasons


def test_a_drain_lets_the_running_task_finish(address, tasks, create_task):
    started = threading.Event()
    release = threading.Event()

    def slow(job):
        started.set()
        wait_for(release, "release from the test")
        return {"finished": True}

    with running_worker(address, slow) as (worker, thread):
        created = create_task()
        wait_for(started, "start of the task")
        worker.drain()
        release.set()
        # The server ends the stream once the outcome is in; the grace
        # period (DEADLINE) is not what stops the worker.
        thread.join(DEADLINE / 2)
        assert not thread.is_alive(), "the server did not end the drained stream"
        last, _ = final_state(tasks, created.id)

    assert last.status == pb.TASK_STATUS_COMPLETED, last.error
    assert result_of(last) == {"finished": True}


def test_a_task_that_outlives_the_grace_period_runs_again(address, tasks, create_task):
    started = threading.Event()
    told = threading.Event()
    reasons = []

    def stubborn(job):
        started.set()
        job.cancelled.wait(DEADLINE)
        reasons.append(job.cancel_reason)
        told.set()
        return "too late"

    with running_worker(address, stubborn, grace_period=0.2) as (worker, thread):
        created = create_task()
        wait_for(started, "start of the task")
        worker.drain()
        thread.join(DEADLINE)
        assert not thread.is_alive(), "the grace period did not end the stream"
    # The handler runs in a thread of its own, which may still be on its
    # way from the cancellation to the list when run() has returned.
    wait_for(told, "the handler to be told")
    assert reasons == ["the stream to the server ended"], "the handler was told"
    given_back = tasks.GetTask(pb.GetTaskRequest(id=created.id), timeout=DEADLINE)
    assert given_back.status not in TERMINAL, given_back

    with running_worker(address, lambda job: {"attempt": job.attempt}):
        last, _ = final_state(tasks, created.id)

    assert last.status == pb.TASK_STATUS_COMPLETED, last.error
    assert last.attempt == 2 and result_of(last) == {"attempt": 2}


def poll_workers(workers, condition, description):
    """Polls ListWorkers until `condition(listed)` holds, within the deadline."""
    deadline = time.monotonic() + DEADLINE
    while True:
        listed = workers.ListWorkers(
            worker_pb.ListWorkersRequest(), timeout=DEADLINE
        ).workers
        if condition(listed):
            return listed
        if time.monotonic() > deadline:
            pytest.fail(f"no {description} within {DEADLINE} s: {listed}")
        time.sleep(0.05)


def test_the_worker_is_listed_while_it_is_connected(address, workers):
    with running_worker(address, lambda job: None, max_concurrent=7) as (worker, _):
        listed = poll_workers(
            workers,
            lambda listed: any(w.worker_name == worker.worker_name for w in listed),
            "worker listed",
        )
        [ours] = [w for w in listed if w.worker_name == worker.worker_name]
        assert list(ours.kinds) == ["py-test"]
        assert ours.max_concurrent == 7
        assert ours.in_flight == 0
    poll_workers(
        workers,
        lambda listed: all(w.worker_name != worker.worker_name for w in listed),
        "worker gone after the drain",
    )


def run_until_it_raises(worker):
    """Runs the worker on a thread and returns what it raised, failing the
    test if it kept running (reconnecting) instead."""
    outcome = futures.Future()

    def run():
        try:
            worker.run(handle_signals=False)
        except BaseException as error:
            outcome.set_result(error)
        else:
            outcome.set_result(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        return outcome.result(timeout=DEADLINE)
    except futures.TimeoutError:
        worker.drain()
        worker.drain()
        pytest.fail("the worker kept reconnecting")


def test_a_kind_the_server_does_not_run_is_raised_not_retried(address):
    worker = Worker(address, ca_file=CA_FILE, token=TOKEN)
    worker.handle("no-such-worker-kind", lambda job: None)

    error = run_until_it_raises(worker)

    assert isinstance(error, grpc.RpcError), error
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kinds" in error.details()


def test_a_wrong_token_is_raised_not_retried(address):
    if TOKEN is None:
        pytest.skip("TASK_PROCESSOR_TOKEN is not set: this server needs no token")
    worker = Worker(address, ca_file=CA_FILE, token=f"{TOKEN}-not")
    worker.handle("py-test", lambda job: None)

    error = run_until_it_raises(worker)

    assert isinstance(error, grpc.RpcError), error
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# example_worker.py in a process of its own, as a user runs it.


@pytest.fixture
def start_example_worker(address, tmp_path):
    """Starts example_worker.py; returns its Popen and a function that reads
    its log. Kills it at the end of the test if it still runs."""
    processes = []

    def start():
        log_path = tmp_path / f"example-worker-{len(processes)}.log"
        environment = dict(
            os.environ,
            TASK_PROCESSOR_ADDR=address,
            PYTHONPATH=os.pathsep.join([str(GENERATED_DIR), str(CLIENT_DIR)]),
            PYTHONUNBUFFERED="1",
        )
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, str(CLIENT_DIR / "example_worker.py")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        processes.append(process)
        return process, log_path.read_text

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def stop(process, read_log) -> str:
    """SIGTERMs the example worker; it must exit 0 within the deadline."""
    process.send_signal(signal.SIGTERM)
    try:
        status = process.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"the worker ignored SIGTERM for {DEADLINE} s; its log:\n{read_log()}"
        )
    assert status == 0, f"the worker exited {status}; its log:\n{read_log()}"
    return read_log()


def test_sigterm_drains_the_example_worker_and_its_task_completes(
    tasks, create_task, start_example_worker
):
    process, read_log = start_example_worker()
    created = create_task(
        {"image": "cat.png", "size": 64, "seconds": 3}, kind="thumbnail"
    )
    running, _ = watch_until(
        tasks, created.id, lambda task: task.progress.percent > 0, "progress"
    )

    log = stop(process, read_log)
    last, _ = final_state(tasks, created.id)

    assert running.status == pb.TASK_STATUS_RUNNING
    assert last.status == pb.TASK_STATUS_COMPLETED, f"{last.error}; log:\n{log}"
    assert result_of(last) == {"thumbnail": "cat.64.png", "size": 64}
    assert "SIGTERM received" in log and "draining" in log, log


def taskctl(address):
    """The command line of the real taskctl, with the address and TLS flags."""
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    binary = REPOSITORY_ROOT / target / "debug" / "taskctl"
    if not binary.is_file():
        pytest.fail(f"no taskctl at {binary}: cargo build --bins first", pytrace=False)
    command = [str(binary), "--addr", address]
    if CA_FILE is not None:
        command += ["--ca", CA_FILE]
    return command


def taskctl_environment():
    """taskctl takes the token from TASKCTL_TOKEN, out of the process list."""
    environment = dict(os.environ)
    environment.pop("TASKCTL_TOKEN", None)
    if TOKEN is not None:
        environment["TASKCTL_TOKEN"] = TOKEN
    return environment


def run_taskctl(address, *arguments) -> subprocess.CompletedProcess:
    return subprocess.run(
        taskctl(address) + list(arguments),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env=taskctl_environment(),
    )


def start_taskctl_watch(address, task_id):
    """`taskctl watch ID` into a pipe (one line per state), with a thread
    reading its lines into a queue so the test can wait with a deadline."""
    process = subprocess.Popen(
        taskctl(address) + ["watch", task_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=taskctl_environment(),
    )
    lines = queue.Queue()

    def read():
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return process, lines


def next_line(lines, seen) -> str:
    try:
        line = lines.get(timeout=DEADLINE)
    except queue.Empty:
        pytest.fail(f"taskctl watch printed nothing for {DEADLINE} s after: {seen}")
    assert line is not None, f"taskctl watch ended after: {seen}"
    seen.append(line)
    return line


def rest_of(process, lines, seen) -> int:
    """Reads the watch to its end; returns taskctl's exit code."""
    while True:
        try:
            line = lines.get(timeout=DEADLINE)
        except queue.Empty:
            process.kill()
            pytest.fail(f"taskctl watch did not end after: {seen}")
        if line is None:
            return process.wait(timeout=DEADLINE)
        seen.append(line)


def taskctl_create(address, name, data) -> str:
    created = run_taskctl(
        address,
        "create",
        name,
        "--kind",
        "thumbnail",
        "--data",
        json.dumps(data),
        "-o",
        "json",
    )
    assert created.returncode == 0, created.stderr
    return json.loads(created.stdout)["id"]


PROGRESS_LINE = re.compile(r"^RUNNING\s+(\d+)%\s+resizing cat\.png: step \d+ of 20$")


def test_the_example_worker_runs_tasks_from_taskctl_with_progress_and_cancel(
    address, created_ids, start_example_worker
):
    # Created before the worker starts, so the watch sees every state.
    first_id = taskctl_create(address, "py thumbnail", {"image": "cat.png", "size": 64})
    created_ids.append(first_id)
    watch, lines = start_taskctl_watch(address, first_id)
    first_seen = []
    assert next_line(lines, first_seen).startswith("PENDING")
    process, read_log = start_example_worker()

    status = rest_of(watch, lines, first_seen)

    assert status == 0, f"taskctl watch exited {status}: {first_seen}\n{read_log()}"
    percents = [
        int(match[1]) for match in map(PROGRESS_LINE.match, first_seen) if match
    ]
    assert any(0 < percent < 100 for percent in percents), first_seen
    assert percents == sorted(percents), first_seen
    assert first_seen[-2].startswith("COMPLETED 100%"), first_seen
    assert first_seen[-1].startswith(f"task {first_id} completed after "), first_seen
    assert first_seen[-1].endswith(': {"size":64,"thumbnail":"cat.64.png"}'), first_seen

    # A long one, cancelled with taskctl once its progress shows.
    second_id = taskctl_create(
        address, "py long thumbnail", {"image": "cat.png", "seconds": 60}
    )
    created_ids.append(second_id)
    watch, lines = start_taskctl_watch(address, second_id)
    second_seen = []
    while not PROGRESS_LINE.match(next_line(lines, second_seen)):
        pass
    cancelled = run_taskctl(address, "cancel", second_id)
    status = rest_of(watch, lines, second_seen)
    log = stop(process, read_log)

    assert cancelled.returncode == 0, cancelled.stderr
    assert re.search(
        r"^STATUS:\s+CANCELLED$", cancelled.stdout, re.MULTILINE
    ), cancelled.stdout
    assert status == 4, f"taskctl watch exited {status}: {second_seen}"
    assert second_seen[-1].startswith(f"task {second_id} cancelled after "), second_seen
    assert f"task {second_id} attempt 1 cancelled: " in log, log
    assert "thumbnail of cat.png stopped: " in log, "the handler saw the cancellation"


# The library against a scripted fake server.


class FakeWorkerService(worker_pb_grpc.WorkerServiceServicer):
    """Plays one script per `Work` stream, in order; records what came."""

    def __init__(self, scripts):
        self.scripts = list(scripts)
        self.hellos = []
        self.outcomes = []
        self.outcome_received = threading.Event()

    def Work(self, request_iterator, context):
        script = self.scripts.pop(0)
        self.hellos.append(next(request_iterator).hello)
        yield from script(self, request_iterator, context)


def end_with(code):
    def script(service, requests, context):
        context.abort(code, f"scripted {code.name}")
        yield  # never reached: a generator, as grpcio wants

    return script


def assign_one_then_end_on_drain(service, requests, context):
    """As the server does: one assignment; after a drain, the stream ends
    OK once the outcome is in."""
    task = pb.Task(
        id="task-1", kind="py-test", attempt=3, status=pb.TASK_STATUS_RUNNING
    )
    task.data.CopyFrom(json_format.ParseDict({"n": 2}, struct_pb2.Value()))
    yield worker_pb.WorkResponse(assignment=worker_pb.WorkAssignment(task=task))
    drained = False
    for message in requests:
        if message.HasField("outcome"):
            service.outcomes.append(message.outcome)
            service.outcome_received.set()
        drained = drained or message.HasField("drain")
        if drained and service.outcomes:
            return


@contextlib.contextmanager
def fake_server(service):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    worker_pb_grpc.add_WorkerServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_a_stream_that_ends_unavailable_is_opened_again():
    service = FakeWorkerService(
        [
            end_with(grpc.StatusCode.UNAVAILABLE),
            end_with(grpc.StatusCode.INTERNAL),
            assign_one_then_end_on_drain,
        ]
    )
    with fake_server(service) as fake_address:
        worker = Worker(
            fake_address,
            worker_name="fake-test",
            max_concurrent=3,
            backoff=Backoff(initial=0.01, maximum=0.05),
        )
        worker.handle(
            "py-test", lambda job: {"n": job.data["n"], "attempt": job.attempt}
        )
        thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False})
        thread.start()
        try:
            wait_for(service.outcome_received, "outcome on the third stream")
        finally:
            worker.drain()
            thread.join(DEADLINE)
    assert not thread.is_alive(), "the fake ended the drained stream, so run returns"
    assert len(service.hellos) == 3
    assert [list(hello.kinds) for hello in service.hellos] == [["py-test"]] * 3
    assert service.hellos[0].max_concurrent == 3
    assert service.hellos[0].worker_name == "fake-test"
    [outcome] = service.outcomes
    assert (outcome.task_id, outcome.attempt) == ("task-1", 3)
    assert json_format.MessageToDict(outcome.result) == {"n": 2, "attempt": 3}


def assign_one_then_end_unavailable(service, requests, context):
    """One assignment, then the stream is lost (as when the server dies)."""
    task = pb.Task(id="task-1", kind="py-test", attempt=1, status=pb.TASK_STATUS_RUNNING)
    yield worker_pb.WorkResponse(assignment=worker_pb.WorkAssignment(task=task))
    context.abort(grpc.StatusCode.UNAVAILABLE, "scripted loss of the stream")


def end_on_drain(service, requests, context):
    for message in requests:
        if message.HasField("drain"):
            return
    yield  # never reached: a generator, as grpcio wants


def test_a_lost_stream_is_opened_again_only_once_its_handlers_returned():
    """A handler slow to see its cancellation must not run beside the new
    stream's tasks: the worker would run more than max_concurrent."""
    service = FakeWorkerService([assign_one_then_end_unavailable, end_on_drain])
    started, release = threading.Event(), threading.Event()
    cancelled_while_running = []

    def stubborn(job):
        started.set()
        release.wait(DEADLINE)
        cancelled_while_running.append(job.cancelled.is_set())

    with fake_server(service) as fake_address:
        worker = Worker(
            fake_address,
            max_concurrent=1,
            backoff=Backoff(initial=0.01, maximum=0.02),
        )
        worker.handle("py-test", stubborn)
        thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False})
        thread.start()
        try:
            wait_for(started, "the first stream's task to start")
            # The back-off is at most 20 ms: without the wait, a second
            # stream would open well within this second.
            deadline = time.monotonic() + 1
            while time.monotonic() < deadline:
                assert len(service.hellos) == 1, "a new stream opened while the handler ran"
                time.sleep(0.02)
            release.set()
            deadline = time.monotonic() + DEADLINE
            while len(service.hellos) < 2:
                assert time.monotonic() < deadline, "no new stream after the handler returned"
                time.sleep(0.01)
        finally:
            release.set()
            worker.drain()
            thread.join(DEADLINE)
    assert not thread.is_alive()
    assert cancelled_while_running == [True], "the lost stream's handler was cancelled"
    assert service.outcomes == [], "its outcome went nowhere"


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    ],
)
def test_configuration_errors_are_raised_after_one_stream(code):
    service = FakeWorkerService([end_with(code), assign_one_then_end_on_drain])
    with fake_server(service) as fake_address:
        worker = Worker(fake_address, backoff=Backoff(initial=0.01, maximum=0.05))
        worker.handle("py-test", lambda job: None)
        error = run_until_it_raises(worker)
    assert isinstance(error, grpc.RpcError) and error.code() == code, error
    assert len(service.hellos) == 1


def test_a_drain_before_connecting_stops_at_once():
    worker = Worker("127.0.0.1:1", backoff=Backoff(initial=60, maximum=60))
    worker.handle("py-test", lambda job: None)
    worker.drain()
    started = time.monotonic()
    assert run_until_it_raises(worker) is None
    assert time.monotonic() - started < DEADLINE


def test_the_backoff_doubles_up_to_its_maximum_with_jitter_below():
    backoff = Backoff(initial=0.5, maximum=4)
    assert [backoff.delay(failures, draw=lambda: 1.0) for failures in range(6)] == [
        0.5,
        1,
        2,
        4,
        4,
        4,
    ]
    assert backoff.delay(100, draw=lambda: 0.25) == 1.0
    assert backoff.delay(3, draw=lambda: 0.0) == 0.0


def test_json_numbers_that_are_whole_become_int():
    value = json_format.ParseDict(
        {"n": 3, "x": 2.5, "big": 2.0**60, "list": [1, None, True, "s"]},
        struct_pb2.Value(),
    )
    data = task_processor_worker._from_value(value)
    assert data == {"n": 3, "x": 2.5, "big": 2.0**60, "list": [1, None, True, "s"]}
    assert type(data["n"]) is int and type(data["big"]) is float


def test_a_token_without_tls_is_refused():
    with pytest.raises(ValueError, match="TLS"):
        Worker("127.0.0.1:1", token="secret")


def test_a_second_drain_closes_the_stream_at_once():
    service = FakeWorkerService([assign_one_then_end_on_drain])
    started = threading.Event()
    reasons = []

    def stubborn(job):
        started.set()
        job.cancelled.wait(DEADLINE)
        reasons.append(job.cancel_reason)

    with fake_server(service) as fake_address:
        worker = Worker(fake_address, grace_period=60)
        worker.handle("py-test", stubborn)
        thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False})
        thread.start()
        wait_for(started, "start of the assigned task")
        worker.drain()
        worker.drain()
        thread.join(DEADLINE)
        assert not thread.is_alive(), "the second drain did not end the stream"
    assert reasons == ["the stream to the server ended"]
