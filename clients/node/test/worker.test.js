// The Node worker library (worker.js) and its example (example-worker.js),
// running tasks for the real server.
//
// Like task_service.test.js: the server's address comes from
// TASK_PROCESSOR_ADDR, and TASK_PROCESSOR_CA_FILE and TASK_PROCESSOR_TOKEN
// switch to TLS with a token (whose principal needs the roles read, write and
// work). The server must hand the kinds `node-test` and `email` out to
// workers (`--worker-kinds ...,email,node-test`); the Python tests use other
// kinds, so the two suites never take each other's tasks. The tests of this
// file run one after another, and each stops its workers before it ends, so
// a task goes to the worker of the test that created it.
//
// The last test drives example-worker.js with the real taskctl, from
// ${CARGO_TARGET_DIR:-target}/debug/taskctl at the repository's root (what
// the build step made).
//
// Waiting is on events or by polling with a deadline, never a bare sleep.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, afterEach, before, describe, test } from 'node:test';

import grpc from '@grpc/grpc-js';

import { call, connect, fromValue, toValue, waitForReady } from '../client.js';
import { CancelledError, PermanentError, Worker, WorkerServiceClient } from '../worker.js';

const KIND = 'node-test';
const EXAMPLE_KIND = 'email';
const TEST_TIMEOUT_MILLISECONDS = 60_000;
const WAIT_MILLISECONDS = 20_000;
const TERMINAL = new Set(['TASK_STATUS_COMPLETED', 'TASK_STATUS_FAILED', 'TASK_STATUS_CANCELLED']);
const CA_FILE = process.env.TASK_PROCESSOR_CA_FILE || undefined;
const TOKEN = process.env.TASK_PROCESSOR_TOKEN || undefined;
const NODE_DIRECTORY = fileURLToPath(new URL('..', import.meta.url));
const REPOSITORY_ROOT = path.resolve(NODE_DIRECTORY, '..', '..');
const EXAMPLE_WORKER = path.join(NODE_DIRECTORY, 'example-worker.js');
const TASKCTL = path.resolve(
  REPOSITORY_ROOT,
  process.env.CARGO_TARGET_DIR || 'target',
  'debug',
  'taskctl',
);

/** A promise and the functions that settle it, for a test to wait on a handler and back. */
function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((resolvePromise, rejectPromise) => {
    resolve = resolvePromise;
    reject = rejectPromise;
  });
  return { promise, resolve, reject };
}

/** Rejects after `milliseconds` with a message saying what never happened. */
function within(promise, what, milliseconds = WAIT_MILLISECONDS) {
  let timer;
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what}: not within ${milliseconds} ms`)),
      milliseconds,
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Calls `probe` until it returns something truthy, or fails at the deadline. */
async function poll(probe, what, milliseconds = WAIT_MILLISECONDS) {
  const deadline = Date.now() + milliseconds;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) assert.fail(`${what}: not within ${milliseconds} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** A loopback port nothing listens on (bound, then released). */
function unusedPort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A child process with its output collected, and a promise of its exit. */
function spawnProcess(command, args, env) {
  // An undefined value removes the variable.
  const childEnv = Object.fromEntries(
    Object.entries({ ...process.env, ...env }).filter(([, value]) => value !== undefined),
  );
  const child = spawn(command, args, { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  const output = { stdout: '', stderr: '' };
  child.stdout.setEncoding('utf8').on('data', (text) => {
    output.stdout += text;
  });
  child.stderr.setEncoding('utf8').on('data', (text) => {
    output.stderr += text;
  });
  const exited = new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, ...output }));
  });
  return { child, output, exited };
}

describe('Worker from Node', () => {
  let address;
  let clients;

  before(async () => {
    address = process.env.TASK_PROCESSOR_ADDR;
    assert.ok(
      address,
      'TASK_PROCESSOR_ADDR is not set: start task-processor and set it to its host:port (.ci/run does both)',
    );
    assert.ok(CA_FILE || !TOKEN, 'TASK_PROCESSOR_TOKEN is set without TASK_PROCESSOR_CA_FILE');
    clients = connect(address, { ca: CA_FILE && readFileSync(CA_FILE), token: TOKEN });
    await waitForReady(clients.tasks, WAIT_MILLISECONDS);
  });

  after(() => clients?.close());

  /** The tasks the current test created. */
  let createdIds = [];

  // A test that failed half-way may leave a task pending; cancelled, it
  // cannot reach the next test's worker and fail that test too.
  afterEach(async () => {
    const ids = createdIds;
    createdIds = [];
    for (const id of ids) {
      const task = await getTask(id);
      if (!TERMINAL.has(task.status)) await call(clients.tasks, 'CancelTask', { id });
    }
  });

  async function create(data, { kind = KIND, ...fields } = {}) {
    const task = await call(clients.tasks, 'CreateTask', {
      name: `node worker test ${kind}`,
      kind,
      data: toValue(data),
      labels: { 'worker-test-run': randomUUID() },
      ...fields,
    });
    createdIds.push(task.id);
    return task;
  }

  function getTask(id) {
    return call(clients.tasks, 'GetTask', { id });
  }

  /**
   * Watches a task until `predicate(task)` holds, and returns that state,
   * with every state seen; fails when the watch ends first or at the deadline.
   */
  function watchUntil(id, predicate, what) {
    const watch = clients.tasks.WatchTask({ id }, { deadline: Date.now() + WAIT_MILLISECONDS });
    const seen = [];
    return new Promise((resolve, reject) => {
      watch.on('data', ({ task }) => {
        seen.push(task);
        if (predicate(task)) {
          resolve({ task, seen });
          watch.cancel();
        }
      });
      watch.on('error', (error) => {
        if (error.code !== grpc.status.CANCELLED) reject(new Error(`${what}: ${error.message}`));
      });
      watch.on('end', () =>
        reject(new Error(`${what}: the watch ended at ${seen.at(-1)?.status} without it`)),
      );
    });
  }

  function finished(id) {
    return watchUntil(id, (task) => TERMINAL.has(task.status), `task ${id} finishing`).then(
      ({ task }) => task,
    );
  }

  /** An in-process worker for KIND, running; drain it (stopWorker) before the test ends. */
  function startWorker(handler, options = {}) {
    const workerName = `node-test-${randomUUID().slice(0, 8)}`;
    const worker = new Worker({
      address,
      caFile: CA_FILE,
      token: TOKEN,
      workerName,
      maxConcurrent: 1,
      drainGraceMilliseconds: 5_000,
      ...options,
    });
    worker.handle(KIND, handler);
    // signals: [] leaves the test runner's own SIGTERM and SIGINT alone.
    const done = worker.run({ signals: [] });
    return { worker, workerName, done };
  }

  async function stopWorker({ worker, done }) {
    worker.drain();
    await within(done, 'the worker stopping after drain()');
  }

  test(
    'a task runs on the worker and completes with its result',
    { timeout: TEST_TIMEOUT_MILLISECONDS },
    async () => {
      const data = { text: 'hello from node', list: [1, 2.5, null, true], nested: { ok: true } };
      const running = startWorker(async (job) => ({
        echoed: job.data,
        taskId: job.taskId,
        attempt: job.attempt,
        kind: job.task.kind,
        when: new Date(0),
      }));
      try {
        const created = await create(data);
        const task = await finished(created.id);
        assert.equal(task.status, 'TASK_STATUS_COMPLETED', task.error);
        assert.deepEqual(fromValue(task.result), {
          echoed: data,
          taskId: created.id,
          attempt: 1,
          kind: KIND,
          when: '1970-01-01T00:00:00.000Z',
        });
        assert.ok(task.node.endsWith(`/${running.workerName}`), `node ${task.node}`);
      } finally {
        await stopWorker(running);
      }
    },
  );

  test(
    'progress reaches a watcher while the task runs',
    { timeout: TEST_TIMEOUT_MILLISECONDS },
    async () => {
      // The handler reports, then waits until the test has seen the report:
      // nothing depends on how fast either side is.
      const progressSeen = deferred();
      const running = startWorker(async (job) => {
        job.progress(30, 'a third');
        job.progress(66.6, 'two thirds');
        await within(progressSeen.promise, 'the test seeing the progress');
        return 'done';
      });
      try {
        const created = await create({});
        const { task } = await watchUntil(
          created.id,
          (state) => state.progress?.message === 'two thirds',
          'progress "two thirds" reaching the watcher',
        );
        assert.equal(task.status, 'TASK_STATUS_RUNNING');
        assert.equal(task.progress.percent, 67, 'rounded to a whole percent');
        progressSeen.resolve();
        const last = await finished(created.id);
        assert.equal(last.status, 'TASK_STATUS_COMPLETED', last.error);
        assert.equal(fromValue(last.result), 'done');
      } finally {
        progressSeen.resolve();
        await stopWorker(running);
      }
    },
  );

  test(
    'a thrown error fails the run with its message, and the retry policy runs it again',
    { timeout: TEST_TIMEOUT_MILLISECONDS },
    async () => {
      const attempts = [];
      const running = startWorker(async (job) => {
        attempts.push(job.attempt);
        throw new Error(`disk quota exceeded on attempt ${job.attempt}`);
      });
      try {
        const created = await create(
          {},
          {
            retry_policy: { max_attempts: 2, initial_backoff: { seconds: 0, nanos: 100_000_000 } },
          },
        );
        const task = await finished(created.id);
        assert.equal(task.status, 'TASK_STATUS_FAILED');
        assert.match(task.error, /disk quota exceeded on attempt 2/);
        assert.equal(task.attempt, 2);
        assert.deepEqual(attempts, [1, 2]);
      } finally {
        await stopWorker(running);
      }
    },
  );

  test(
    'a PermanentError fails the task at once, whatever the retry policy',
    { timeout: TEST_TIMEOUT_MILLISECONDS },
    async () => {
      let calls = 0;
      const running = startWorker(async () => {
        calls += 1;
        throw new PermanentError('no such mailbox');
      });
      try {
        const created = await create(
          {},
          {
            retry_policy: { max_attempts: 3, initial_backoff: { seconds: 0, nanos: 100_000_000 } },
          },
        );
        const task = await finished(created.id);
        assert.equal(task.status, 'TASK_STATUS_FAILED');
        assert.match(task.error, /no such mailbox/);
        assert.equal(task.attempt, 1, 'no retry');
        assert.equal(calls, 1);
      } finally {
        await stopWorker(running);
      }
    },
  );

  test(
    "CancelTask aborts the job's signal, the task is CANCELLED, and the slot frees",
    { timeout: TEST_TIMEOUT_MILLISECONDS },
    async () => {
      const started = deferred();
      const aborted = deferred();
      // One slot: the second task can run only once the cancelled run's
      // outcome has been sent.
      const running = startWorker(
        async (job) => {
          if (job.data.wait === false) return 'second';
          started.resolve(job.taskId);
          await new Promise((resolve) =>
            job.signal.addEventListener('abort', resolve, { once: true }),
          );
          aborted.resolve(job.signal.reason);
          throw job.signal.reason;
        },
        { maxConcurrent: 1 },
      );
      try {
        const created = await create({ wait: true });
        assert.equal(await within(started.promise, 'the handler starting'), created.id);

        const cancelled = await call(clients.tasks, 'CancelTask', { id: created.id });
        assert.equal(cancelled.status, 'TASK_STATUS_CANCELLED');

        const reason = await within(aborted.promise, "the job's signal aborting");
        assert.ok(reason instanceof CancelledError);
        assert.equal(reason.name, 'AbortError');
        assert.equal(reason.cancellationCause, 'CANCELLATION_CAUSE_CANCELLED');
        assert.match(reason.message, /cancel/i);
        assert.equal(
          (await getTask(created.id)).status,
          'TASK_STATUS_CANCELLED',
          'the ignored outcome changes nothing',
        );

        const second = await create({ wait: false });
        const task = await finished(second.id);
        assert.equal(task.status, 'TASK_STATUS_COMPLETED', task.error);
        assert.equal(fromValue(task.result), 'second');
      } finally {
        await stopWorker(running);
      }
    },
  );

  test(
    'drain() lets the running task finish, takes no other, and run() resolves',
    { timeout: TEST_TIMEOUT_MILLISECONDS },
    async () => {
      const started = deferred();
      const release = deferred();
      const handled = [];
      const draining = startWorker(
        async (job) => {
          handled.push(job.taskId);
          started.resolve();
          await within(release.promise, 'the test releasing the handler');
          return 'finished while draining';
        },
        { maxConcurrent: 1, drainGraceMilliseconds: WAIT_MILLISECONDS },
      );
      let next;
      try {
        const first = await create({});
        await within(started.promise, 'the handler starting');
        draining.worker.drain();
        // Created while the only slot is busy, so it cannot be assigned
        // before the server has read the drain (which comes first on the stream).
        const second = await create({});
        release.resolve();
        await within(draining.done, 'run() resolving after the drain');
        const firstTask = await getTask(first.id);
        assert.equal(firstTask.status, 'TASK_STATUS_COMPLETED', firstTask.error);
        assert.equal(fromValue(firstTask.result), 'finished while draining');
        assert.deepEqual(handled, [first.id], 'nothing assigned after the drain');
        assert.equal((await getTask(second.id)).status, 'TASK_STATUS_PENDING');

        // The next worker takes what the drained one left.
        next = startWorker(async () => 'picked up');
        const secondTask = await finished(second.id);
        assert.equal(secondTask.status, 'TASK_STATUS_COMPLETED', secondTask.error);
      } finally {
        release.resolve();
        await stopWorker(draining);
        if (next) await stopWorker(next);
      }
    },
  );

  /**
   * Starts a task on a worker whose handler never finishes on its own,
   * calls `stop(worker)`, and checks that run() resolves, the handler's
   * signal aborts, and the task runs again, as a new attempt, elsewhere.
   */
  async function checkGivenBack(stop, drainGraceMilliseconds) {
    const started = deferred();
    const aborted = deferred();
    const stuck = startWorker(
      async (job) => {
        started.resolve();
        await new Promise((resolve) =>
          job.signal.addEventListener('abort', resolve, { once: true }),
        );
        aborted.resolve(job.signal.reason);
        throw job.signal.reason;
      },
      { drainGraceMilliseconds },
    );
    let next;
    try {
      const created = await create({});
      await within(started.promise, 'the handler starting');
      stop(stuck.worker);
      await within(stuck.done, 'run() resolving');
      const reason = await within(aborted.promise, "the job's signal aborting");
      assert.equal(reason.cancellationCause, 'WORKER_STOPPED');

      next = startWorker(async (job) => ({ attempt: job.attempt }));
      const task = await finished(created.id);
      assert.equal(task.status, 'TASK_STATUS_COMPLETED', task.error);
      assert.ok(
        fromValue(task.result).attempt >= 2,
        `ran again as a new attempt: ${JSON.stringify(fromValue(task.result))}`,
      );
    } finally {
      await stopWorker(stuck);
      if (next) await stopWorker(next);
    }
  }

  test(
    'after the drain grace period the running task is given back and runs again',
    { timeout: TEST_TIMEOUT_MILLISECONDS },
    () => checkGivenBack((worker) => worker.drain(), 300),
  );

  test(
    'a second drain() closes at once: the running task is given back and runs again',
    { timeout: TEST_TIMEOUT_MILLISECONDS },
    // A grace period far longer than the test may wait: only the second call can end it.
    () =>
      checkGivenBack((worker) => {
        worker.drain();
        worker.drain();
      }, 100 * WAIT_MILLISECONDS),
  );

  test(
    "a task's timeout aborts the job's signal, and the task fails",
    { timeout: TEST_TIMEOUT_MILLISECONDS },
    async () => {
      const aborted = deferred();
      const running = startWorker(async (job) => {
        await new Promise((resolve) =>
          job.signal.addEventListener('abort', resolve, { once: true }),
        );
        aborted.resolve(job.signal.reason);
        throw job.signal.reason;
      });
      try {
        const created = await create({}, { timeout_seconds: 1 });
        const reason = await within(aborted.promise, "the job's signal aborting at the timeout");
        assert.equal(reason.cancellationCause, 'CANCELLATION_CAUSE_TIMED_OUT');
        assert.match(reason.message, /timed out/);
        const task = await finished(created.id);
        assert.equal(task.status, 'TASK_STATUS_FAILED');
        assert.match(task.error, /timed out/);
      } finally {
        await stopWorker(running);
      }
    },
  );

  test(
    'a kind the server does not hand out rejects run() with INVALID_ARGUMENT',
    { timeout: TEST_TIMEOUT_MILLISECONDS },
    async () => {
      const worker = new Worker({
        address,
        caFile: CA_FILE,
        token: TOKEN,
        workerName: 'node-test-bad-kind',
      });
      worker.handle('node-test-no-such-kind', async () => null);
      await assert.rejects(within(worker.run({ signals: [] }), 'run() rejecting'), (error) => {
        assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
        assert.match(error.details, /hello\.kinds/);
        return true;
      });
    },
  );

  test(
    'a wrong token rejects run() with UNAUTHENTICATED, without retrying',
    {
      timeout: TEST_TIMEOUT_MILLISECONDS,
      skip: !TOKEN && 'TASK_PROCESSOR_TOKEN is not set: this server needs no token',
    },
    async () => {
      const worker = new Worker({
        address,
        caFile: CA_FILE,
        token: `${TOKEN}-not`,
        workerName: 'node-test-bad-token',
      });
      worker.handle(KIND, async () => null);
      let reconnects = 0;
      worker.on('reconnecting', () => {
        reconnects += 1;
      });
      await assert.rejects(within(worker.run({ signals: [] }), 'run() rejecting'), (error) => {
        assert.equal(error.code, grpc.status.UNAUTHENTICATED);
        return true;
      });
      assert.equal(reconnects, 0);
    },
  );

  test(
    'with no server it reconnects with growing, capped back-off until drained',
    { timeout: TEST_TIMEOUT_MILLISECONDS },
    async () => {
      const worker = new Worker({
        address: `127.0.0.1:${await unusedPort()}`,
        reconnectInitialMilliseconds: 20,
        reconnectMaxMilliseconds: 80,
      });
      worker.handle(KIND, async () => null);
      const delays = [];
      const enoughAttempts = deferred();
      const codes = new Set();
      worker.on('reconnecting', ({ error, delayMilliseconds }) => {
        codes.add(error.code);
        delays.push(delayMilliseconds);
        if (delays.length === 5) enoughAttempts.resolve();
      });
      const done = worker.run({ signals: [] });
      await within(enoughAttempts.promise, 'five reconnect attempts');
      worker.drain();
      await within(done, 'run() resolving after drain()');
      assert.deepEqual([...codes], [grpc.status.UNAVAILABLE]);
      // Each delay is within [ceiling / 2, ceiling], the ceiling doubling from 20 up to 80.
      for (const [index, ceiling] of [20, 40, 80, 80, 80].entries()) {
        assert.ok(
          delays[index] >= ceiling / 2 && delays[index] <= ceiling,
          `delay ${index}: ${delays[index]} for ceiling ${ceiling}`,
        );
      }
    },
  );

  test(
    'a lost stream is opened again only once its handlers have settled',
    { timeout: TEST_TIMEOUT_MILLISECONDS },
    async () => {
      // A scripted server: the first stream assigns one task and ends; the
      // second ends once the worker drains.
      const hellos = [];
      const server = new grpc.Server();
      server.addService(WorkerServiceClient.service, {
        Work: (stream) => {
          stream.on('data', (request) => {
            if (request.hello) {
              hellos.push(request.hello);
              if (hellos.length === 1) {
                const task = { id: 'task-1', kind: KIND, attempt: 1, status: 'TASK_STATUS_RUNNING' };
                stream.write({ assignment: { task } });
                stream.end();
              }
            } else if (request.drain) {
              stream.end();
            }
          });
          stream.on('error', () => {});
        },
        ListWorkers: (_call, callback) => callback(null, { workers: [] }),
      });
      const port = await new Promise((resolvePort, rejectPort) =>
        server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, bound) =>
          error ? rejectPort(error) : resolvePort(bound),
        ),
      );
      const started = deferred();
      const release = deferred();
      const abortedWhileRunning = [];
      const worker = new Worker({
        address: `127.0.0.1:${port}`,
        reconnectInitialMilliseconds: 10,
        reconnectMaxMilliseconds: 20,
      });
      // Slow to notice its abort, as a handler inside a blocking call is.
      worker.handle(KIND, async ({ signal }) => {
        started.resolve();
        await release.promise;
        abortedWhileRunning.push(signal.aborted);
        return null;
      });
      try {
        const done = worker.run({ signals: [] });
        await within(started.promise, "the first stream's task starting");
        // The back-off is at most 20 ms: without the wait, a second stream
        // would open well within this second.
        const quietUntil = Date.now() + 1_000;
        while (Date.now() < quietUntil) {
          assert.equal(hellos.length, 1, 'a new stream opened while the handler ran');
          await new Promise((resolveTick) => setTimeout(resolveTick, 20));
        }
        release.resolve();
        const reopenedBy = Date.now() + WAIT_MILLISECONDS;
        while (hellos.length < 2) {
          assert.ok(Date.now() < reopenedBy, 'no new stream after the handler settled');
          await new Promise((resolveTick) => setTimeout(resolveTick, 10));
        }
        worker.drain();
        await within(done, 'run() resolving after drain()');
        assert.deepEqual(abortedWhileRunning, [true], "the lost stream's handler was aborted");
      } finally {
        release.resolve();
        server.forceShutdown();
      }
    },
  );

  const exampleEnv = {
    TASK_PROCESSOR_ADDR: process.env.TASK_PROCESSOR_ADDR,
    TASK_PROCESSOR_CA_FILE: CA_FILE ?? '',
    TASK_PROCESSOR_TOKEN: TOKEN ?? '',
  };

  test(
    'SIGTERM drains example-worker.js: its running task completes and it exits 0',
    { timeout: TEST_TIMEOUT_MILLISECONDS },
    async () => {
      const example = spawnProcess(process.execPath, [EXAMPLE_WORKER], exampleEnv);
      try {
        const created = await create({ to: 'drain@example.com' }, { kind: EXAMPLE_KIND });
        // Running, and past its first step: SIGTERM comes mid-task.
        await watchUntil(
          created.id,
          (task) => task.status === 'TASK_STATUS_RUNNING' && task.progress?.percent > 0,
          'the example reporting progress',
        );
        example.child.kill('SIGTERM');
        const { code, signal, stdout, stderr } = await within(
          example.exited,
          'example-worker.js exiting after SIGTERM',
        );
        assert.equal(
          code,
          0,
          `exit ${code} (signal ${signal}); stdout:\n${stdout}\nstderr:\n${stderr}`,
        );
        assert.match(stdout, /draining/);
        const task = await getTask(created.id);
        assert.equal(
          task.status,
          'TASK_STATUS_COMPLETED',
          `within the grace period; ${task.error}`,
        );
        assert.deepEqual(fromValue(task.result), { sent: true, to: 'drain@example.com' });
      } finally {
        example.child.kill('SIGKILL');
        await example.exited;
      }
    },
  );

  test(
    'example-worker.js runs tasks created from taskctl, live progress and cancel included',
    { timeout: TEST_TIMEOUT_MILLISECONDS },
    async () => {
      assert.ok(existsSync(TASKCTL), `no taskctl at ${TASKCTL}: build it (cargo build --bins)`);
      const taskctlFlags = ['--addr', address, ...(CA_FILE ? ['--ca', CA_FILE] : [])];
      // The token by environment, as docs/taskctl.md advises (out of the
      // process list); nothing else from the caller's TASKCTL_* variables.
      const taskctlEnv = {
        TASKCTL_TOKEN: TOKEN,
        TASKCTL_ADDR: undefined,
        TASKCTL_CALL_TIMEOUT: undefined,
      };
      const taskctl = (...args) =>
        within(
          spawnProcess(TASKCTL, [...taskctlFlags, ...args], taskctlEnv).exited,
          `taskctl ${args[0]}`,
        );
      const createWithTaskctl = async (to) => {
        const created = await taskctl(
          'create',
          `node email to ${to}`,
          '--kind',
          EXAMPLE_KIND,
          '--data',
          JSON.stringify({ to }),
          '-o',
          'json',
        );
        assert.equal(created.code, 0, created.stderr);
        return JSON.parse(created.stdout).id;
      };

      const example = spawnProcess(process.execPath, [EXAMPLE_WORKER], exampleEnv);
      let cancelWatch;
      try {
        // One task, followed to its end by taskctl watch: a line per state.
        const id = await createWithTaskctl('ada@example.com');
        const watched = await taskctl('watch', id);
        assert.equal(
          watched.code,
          0,
          `watch exits 0 for a completed task:\n${watched.stdout}${watched.stderr}`,
        );
        const progressLines = watched.stdout
          .split('\n')
          .filter((line) => /^RUNNING\s+\d+%\s+\S+ \(\d of 4\)$/.test(line));
        assert.ok(progressLines.length >= 1, `progress lines in:\n${watched.stdout}`);
        assert.match(watched.stdout, /^COMPLETED\s+100%/m);
        assert.match(watched.stdout, /completed after .*"sent":true.*"to":"ada@example.com"/);

        // Another, cancelled with taskctl while taskctl watch follows it.
        const second = await createWithTaskctl('grace@example.com');
        cancelWatch = spawnProcess(TASKCTL, [...taskctlFlags, 'watch', second], taskctlEnv);
        await poll(
          () => /^RUNNING\s+\d+%\s+\S+ \(\d of 4\)$/m.test(cancelWatch.output.stdout),
          'taskctl watch printing progress',
        );
        const cancelled = await taskctl('cancel', second);
        assert.equal(cancelled.code, 0, cancelled.stderr);
        assert.match(cancelled.stdout, /^STATUS:\s+CANCELLED$/m);
        const watchEnd = await within(cancelWatch.exited, 'taskctl watch ending with the cancel');
        assert.equal(
          watchEnd.code,
          4,
          `watch exits 4 for a cancelled task:\n${watchEnd.stdout}${watchEnd.stderr}`,
        );
        assert.match(watchEnd.stdout, /^CANCELLED/m);
        const got = await taskctl('get', second, '-o', 'json');
        assert.equal(JSON.parse(got.stdout).status, 'TASK_STATUS_CANCELLED');

        example.child.kill('SIGTERM');
        const { code, stdout, stderr } = await within(
          example.exited,
          'example-worker.js exiting after SIGTERM',
        );
        assert.equal(
          code,
          0,
          `example-worker.js after SIGTERM; stdout:\n${stdout}\nstderr:\n${stderr}`,
        );
      } finally {
        cancelWatch?.child.kill('SIGKILL');
        example.child.kill('SIGKILL');
        await example.exited;
      }
    },
  );
});
