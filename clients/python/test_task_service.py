"""TaskService and gRPC health, called from Python against the real server.

The server's address comes from TASK_PROCESSOR_ADDR (host:port); .ci/run
starts target/debug/task-processor on a free loopback port and sets it. With
no address, or no server there, every test fails: a client test that skips is
a client test that never ran.

Against a server with TLS and principals (.ci/run's second run), set
TASK_PROCESSOR_CA_FILE to the PEM file of the CA that signed the server's
certificate, and TASK_PROCESSOR_TOKEN to a token whose principal has the
roles read and write: every call then goes over TLS, verified with that CA,
with `authorization: Bearer <token>`, and one more test checks that calls
without the token, or with a wrong one, are refused UNAUTHENTICATED (it is
skipped without TASK_PROCESSOR_TOKEN, against a server that needs none).
"""

import os
import uuid

import grpc
import pytest
from google.protobuf import duration_pb2, json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from grpc_health.v1 import health_pb2, health_pb2_grpc

from taskprocessor.v1 import task_service_pb2 as pb
from taskprocessor.v1 import task_service_pb2_grpc as pb_grpc

# Deadline of every call, in seconds; a watch of an `echo` task ends at once.
CALL_TIMEOUT = 10
CONNECT_TIMEOUT = 10
TERMINAL = {
    pb.TASK_STATUS_COMPLETED,
    pb.TASK_STATUS_FAILED,
    pb.TASK_STATUS_CANCELLED,
}


# TLS and the token: both unset for a plaintext server without principals.
CA_FILE = os.environ.get("TASK_PROCESSOR_CA_FILE") or None
TOKEN = os.environ.get("TASK_PROCESSOR_TOKEN") or None


def open_channel(address: str, token) -> grpc.Channel:
    """A channel to the server: plaintext without CA_FILE; with it, TLS that
    verifies the server's certificate against that CA (and its name against
    the address's host), and, given a token, `authorization: Bearer <token>`
    on every call. gRPC sends call credentials over TLS only."""
    if CA_FILE is None:
        if token is not None:
            pytest.fail(
                "TASK_PROCESSOR_TOKEN is set without TASK_PROCESSOR_CA_FILE: "
                "the token is sent over TLS only",
                pytrace=False,
            )
        return grpc.insecure_channel(address)
    with open(CA_FILE, "rb") as file:
        credentials = grpc.ssl_channel_credentials(root_certificates=file.read())
    if token is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return grpc.secure_channel(address, credentials)


@pytest.fixture(scope="session")
def address():
    address = os.environ.get("TASK_PROCESSOR_ADDR")
    if not address:
        pytest.fail(
            "TASK_PROCESSOR_ADDR is not set: start task-processor and set it to "
            "its host:port (.ci/run does both)",
            pytrace=False,
        )
    return address


@pytest.fixture(scope="session")
def channel(address):
    with open_channel(address, TOKEN) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT)
        except grpc.FutureTimeoutError:
            pytest.fail(
                f"no task-processor answers at {address} "
                f"within {CONNECT_TIMEOUT} s"
                + (f" (TLS, CA {CA_FILE})" if CA_FILE else ""),
                pytrace=False,
            )
        yield channel


@pytest.fixture(scope="session")
def tasks(channel):
    return pb_grpc.TaskServiceStub(channel)


@pytest.fixture
def run_label():
    """A label unique to one test, so lists see only that test's tasks."""
    return {"client-test-run": uuid.uuid4().hex}


def json_value(value) -> struct_pb2.Value:
    return json_format.ParseDict(value, struct_pb2.Value())


def from_json_value(value: struct_pb2.Value):
    return json_format.MessageToDict(value)


def create(tasks, name, kind, data=None, labels=None) -> pb.Task:
    request = pb.CreateTaskRequest(name=name, kind=kind, labels=labels or {})
    if data is not None:
        request.data.CopyFrom(json_value(data))
    return tasks.CreateTask(request, timeout=CALL_TIMEOUT)


def test_health_is_serving_for_the_server_and_the_service(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "taskprocessor.v1.TaskService"):
        response = health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


def test_create_then_get_an_echo_task(tasks, run_label):
    data = {"greeting": "hello", "numbers": [1, 2.5, -3], "nested": {"ok": True}}
    created = create(tasks, "  python echo  ", "echo", data, run_label)
    assert created.status == pb.TASK_STATUS_PENDING
    assert uuid.UUID(created.id).version == 7
    assert created.name == "python echo", "stored trimmed"
    assert created.kind == "echo"
    assert created.revision >= 1
    assert created.HasField("created_at")
    assert dict(created.labels) == run_label
    assert from_json_value(created.data) == data

    fetched = tasks.GetTask(pb.GetTaskRequest(id=created.id), timeout=CALL_TIMEOUT)
    assert fetched.id == created.id
    assert fetched.name == "python echo"
    assert fetched.revision >= created.revision


def test_watch_an_echo_task_to_completion(tasks, run_label):
    data = {"text": "any Unicode \u00e9\u4e16\u0000 comes back", "list": [None, False]}
    created = create(tasks, "python watch", "echo", data, run_label)

    states = list(
        tasks.WatchTask(pb.WatchTaskRequest(id=created.id), timeout=CALL_TIMEOUT)
    )

    assert states, "the first message is the current state"
    revisions = [state.task.revision for state in states]
    assert revisions == sorted(revisions), "revision never goes down"
    statuses = [state.task.status for state in states]
    assert all(status not in TERMINAL for status in statuses[:-1])
    last = states[-1].task
    assert last.status == pb.TASK_STATUS_COMPLETED, last.error
    assert from_json_value(last.result) == data, "echo returns data unchanged"
    assert last.HasField("completed_at")
    assert last.attempt == 1


def test_list_pages_through_tasks_oldest_first(tasks, run_label):
    created_ids = [
        create(tasks, f"python list {number}", "echo", {"n": number}, run_label).id
        for number in range(3)
    ]

    listed_ids = []
    page_token = ""
    pages = 0
    while True:
        page = tasks.ListTasks(
            pb.ListTasksRequest(page_size=2, page_token=page_token, labels=run_label),
            timeout=CALL_TIMEOUT,
        )
        pages += 1
        assert len(page.tasks) <= 2
        listed_ids.extend(task.id for task in page.tasks)
        page_token = page.next_page_token
        if not page_token:
            break
        assert pages < 10, "paging ends"

    assert listed_ids == created_ids
    assert pages >= 2


def test_cancel_a_running_sleep_task(tasks, run_label):
    created = create(tasks, "python sleep", "sleep", {"seconds": 600}, run_label)
    watch = tasks.WatchTask(pb.WatchTaskRequest(id=created.id), timeout=CALL_TIMEOUT)
    for state in watch:
        if state.task.status == pb.TASK_STATUS_RUNNING:
            break
        assert state.task.status == pb.TASK_STATUS_PENDING
    else:
        pytest.fail("the watch ended before the task ran")

    cancelled = tasks.CancelTask(
        pb.CancelTaskRequest(id=created.id), timeout=CALL_TIMEOUT
    )
    assert cancelled.status == pb.TASK_STATUS_CANCELLED
    assert cancelled.HasField("completed_at")
    assert "cancel" in cancelled.error.lower()

    rest = [state.task.status for state in watch]
    assert rest[-1] == pb.TASK_STATUS_CANCELLED, "the watch ends with the cancel"
    again = tasks.CancelTask(pb.CancelTaskRequest(id=created.id), timeout=CALL_TIMEOUT)
    assert again.status == pb.TASK_STATUS_CANCELLED, "a repeated cancel succeeds"
    assert again.revision == cancelled.revision, "and changes nothing"
    fetched = tasks.GetTask(pb.GetTaskRequest(id=created.id), timeout=CALL_TIMEOUT)
    assert fetched.status == pb.TASK_STATUS_CANCELLED


def test_a_flaky_task_is_retried_until_it_completes(tasks, run_label):
    request = pb.CreateTaskRequest(
        name="python flaky",
        kind="flaky",
        labels=run_label,
        retry_policy=pb.RetryPolicy(
            max_attempts=2,
            initial_backoff=duration_pb2.Duration(nanos=200_000_000),
        ),
    )
    request.data.CopyFrom(json_value({"failures": 1}))
    created = tasks.CreateTask(request, timeout=CALL_TIMEOUT)
    assert created.retry_policy.max_attempts == 2
    assert created.retry_policy.initial_backoff.ToMilliseconds() == 200

    # The watch ends with the terminal state; the back-off is 0.2 s at most.
    states = list(
        tasks.WatchTask(pb.WatchTaskRequest(id=created.id), timeout=CALL_TIMEOUT)
    )

    last = states[-1].task
    assert last.status == pb.TASK_STATUS_COMPLETED, last.error
    assert last.attempt == 2, "the first run failed, the second completed"
    assert from_json_value(last.result) == {"attempts": 2}
    assert last.error == ""
    fetched = tasks.GetTask(pb.GetTaskRequest(id=created.id), timeout=CALL_TIMEOUT)
    assert fetched.status == pb.TASK_STATUS_COMPLETED
    assert fetched.attempt == 2


def violated_fields(error: grpc.RpcError) -> list:
    """The fields named by the google.rpc.BadRequest detail of an error."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries google.rpc.Status details"
    violations = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(bad_request.field_violations)
    return [violation.field for violation in violations]


def test_an_empty_name_is_invalid_argument_naming_the_field(tasks):
    with pytest.raises(grpc.RpcError) as raised:
        tasks.CreateTask(
            pb.CreateTaskRequest(name="", kind="echo"), timeout=CALL_TIMEOUT
        )
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in error.details()
    assert violated_fields(error) == ["name"]


def list_ids(tasks, labels) -> list:
    """The ids of every task carrying the labels, oldest first."""
    ids = []
    page_token = ""
    while True:
        page = tasks.ListTasks(
            pb.ListTasksRequest(page_token=page_token, labels=labels),
            timeout=CALL_TIMEOUT,
        )
        ids.extend(task.id for task in page.tasks)
        page_token = page.next_page_token
        if not page_token:
            return ids


def test_batch_create_answers_the_tasks_in_request_order(tasks, run_label):
    data = [{"n": number, "text": f"item {number}"} for number in range(3)]
    requests = [
        pb.CreateTaskRequest(
            name=f"python batch {number}",
            kind="echo",
            labels=run_label,
            data=json_value(item),
        )
        for number, item in enumerate(data)
    ]

    response = tasks.BatchCreateTasks(
        pb.BatchCreateTasksRequest(requests=requests), timeout=CALL_TIMEOUT
    )

    names = [task.name for task in response.tasks]
    assert names == ["python batch 0", "python batch 1", "python batch 2"]
    assert len({task.id for task in response.tasks}) == 3
    assert list_ids(tasks, run_label) == [task.id for task in response.tasks]
    for task, item in zip(response.tasks, data):
        assert task.kind == "echo"
        assert from_json_value(task.data) == item
        states = list(
            tasks.WatchTask(pb.WatchTaskRequest(id=task.id), timeout=CALL_TIMEOUT)
        )
        last = states[-1].task
        assert last.status == pb.TASK_STATUS_COMPLETED, last.error
        assert from_json_value(last.result) == item, "echo returns data unchanged"


def test_batch_create_with_a_bad_item_creates_nothing_and_names_it(tasks, run_label):
    requests = [
        pb.CreateTaskRequest(name=name, kind="echo", labels=run_label)
        for name in ("python fine", "", "python fine too")
    ]

    with pytest.raises(grpc.RpcError) as raised:
        tasks.BatchCreateTasks(
            pb.BatchCreateTasksRequest(requests=requests), timeout=CALL_TIMEOUT
        )

    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests[1].name" in error.details()
    assert violated_fields(error) == ["requests[1].name"]
    assert list_ids(tasks, run_label) == [], "all or nothing"


def test_an_unknown_id_is_not_found(tasks):
    with pytest.raises(grpc.RpcError) as raised:
        tasks.GetTask(pb.GetTaskRequest(id=str(uuid.uuid4())), timeout=CALL_TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_without_the_token_calls_are_unauthenticated_and_health_stays_open(
    address, tasks, run_label
):
    if TOKEN is None:
        pytest.skip("TASK_PROCESSOR_TOKEN is not set: this server needs no token")
    for token, message in ((None, "no bearer token"), (f"{TOKEN}-not", "unknown token")):
        with open_channel(address, token) as channel:
            other_tasks = pb_grpc.TaskServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                create(other_tasks, "python refused", "echo", labels=run_label)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED, token
            assert message in raised.value.details()
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert list_ids(tasks, run_label) == [], "no refused create reached the store"
