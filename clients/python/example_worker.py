"""A Python worker for task-processor's `thumbnail` tasks.

It pretends to make a thumbnail: it reports progress in 20 steps over
`seconds` (2 unless the task's data says otherwise), stops early when the run
is cancelled, and returns where the thumbnail went. The server must run the
kind: `task-processor --worker-kinds thumbnail`. From the repository root, with
the client generated into clients/python/build/generated (docs/clients.md):

    PYTHONPATH=clients/python/build/generated:clients/python \\
        clients/python/.venv/bin/python clients/python/example_worker.py
    taskctl create cat --kind thumbnail --data '{"image": "cat.png", "size": 128}' --wait

TASK_PROCESSOR_ADDR is the server (127.0.0.1:50051 when unset); against a
server with TLS and principals, TASK_PROCESSOR_CA_FILE names the CA's PEM
file and TASK_PROCESSOR_TOKEN a token with the role `work`. SIGTERM or Ctrl-C
drains: no new tasks, the running ones finish, then it exits 0.
"""

import logging
import os
import socket

from task_processor_worker import PermanentError, Worker

STEPS = 20

worker = Worker(
    os.environ.get("TASK_PROCESSOR_ADDR", "127.0.0.1:50051"),
    worker_name=f"thumbnails@{socket.gethostname()}",
    max_concurrent=4,
    ca_file=os.environ.get("TASK_PROCESSOR_CA_FILE") or None,
    token=os.environ.get("TASK_PROCESSOR_TOKEN") or None,
)


@worker.handler("thumbnail")
def thumbnail(job):
    """{"image": "cat.png", "size": 128, "seconds": 2} -> {"thumbnail": "cat.128.png", ...}"""
    data = job.data if isinstance(job.data, dict) else {}
    image = data.get("image")
    if not isinstance(image, str) or not image:
        # Bad input stays bad: no retry can fix it.
        raise PermanentError('data needs "image", the name of the picture')
    size = data.get("size", 128)
    seconds = data.get("seconds", 2)
    for step in range(STEPS):
        job.progress(
            100 * step // STEPS, f"resizing {image}: step {step + 1} of {STEPS}"
        )
        # Waits one step, and wakes at once on a cancellation.
        if job.cancelled.wait(seconds / STEPS):
            logging.info("thumbnail of %s stopped: %s", image, job.cancel_reason)
            return None  # the server discards the outcome of a cancelled run
    stem, dot, extension = image.rpartition(".")
    name = f"{stem}.{size}.{extension}" if dot else f"{image}.{size}"
    return {"thumbnail": name, "size": size}


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    worker.run()
