// TaskService and gRPC health, called from Node against the real server.
//
// The server's address comes from TASK_PROCESSOR_ADDR (host:port); .ci/run
// starts target/debug/task-processor on a free loopback port and sets it.
// With no address, or no server there, every test fails: a client test that
// skips is a client test that never ran.
//
// Against a server with TLS and principals (.ci/run's second run), set
// TASK_PROCESSOR_CA_FILE to the PEM file of the CA that signed the server's
// certificate, and TASK_PROCESSOR_TOKEN to a token whose principal has the
// roles read and write: every call then goes over TLS, verified with that
// CA, with `authorization: Bearer <token>`, and one more test checks that
// calls without the token, or with a wrong one, are refused UNAUTHENTICATED
// (it is skipped without TASK_PROCESSOR_TOKEN, against a server that needs
// none).

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';

import grpc from '@grpc/grpc-js';

import { call, connect, fromValue, toValue, waitForReady } from '../client.js';

const CONNECT_TIMEOUT_MILLISECONDS = 10_000;
const CALL_TIMEOUT_MILLISECONDS = 10_000;
const TERMINAL = new Set(['TASK_STATUS_COMPLETED', 'TASK_STATUS_FAILED', 'TASK_STATUS_CANCELLED']);
// TLS and the token: both unset for a plaintext server without principals.
const CA_FILE = process.env.TASK_PROCESSOR_CA_FILE || undefined;
const TOKEN = process.env.TASK_PROCESSOR_TOKEN || undefined;
const CA = CA_FILE && readFileSync(CA_FILE);

/** A label unique to one test, so lists see only that test's tasks. */
function runLabel() {
  return { 'client-test-run': randomUUID() };
}

/** Reads a server stream to its end; rejects when it ends with an error. */
function readAll(stream) {
  return new Promise((resolve, reject) => {
    const messages = [];
    stream.on('data', (message) => messages.push(message));
    stream.on('error', reject);
    stream.on('end', () => resolve(messages));
  });
}

function deadline() {
  return { deadline: Date.now() + CALL_TIMEOUT_MILLISECONDS };
}

describe('TaskService from Node', () => {
  let address;
  let clients;

  before(async () => {
    address = process.env.TASK_PROCESSOR_ADDR;
    assert.ok(
      address,
      'TASK_PROCESSOR_ADDR is not set: start task-processor and set it to its host:port (.ci/run does both)',
    );
    assert.ok(CA || !TOKEN, 'TASK_PROCESSOR_TOKEN is set without TASK_PROCESSOR_CA_FILE: the token is sent over TLS only');
    clients = connect(address, { ca: CA, token: TOKEN });
    try {
      await waitForReady(clients.tasks, CONNECT_TIMEOUT_MILLISECONDS);
    } catch (error) {
      const tls = CA_FILE ? ` (TLS, CA ${CA_FILE})` : '';
      assert.fail(
        `no task-processor answers at ${address}${tls} within ${CONNECT_TIMEOUT_MILLISECONDS} ms: ${error.message}`,
      );
    }
  });

  after(() => clients?.close());

  function create(name, kind, data, labels) {
    const request = { name, kind, labels: labels ?? {} };
    if (data !== undefined) request.data = toValue(data);
    return call(clients.tasks, 'CreateTask', request);
  }

  test('health is SERVING for the server and for the service', async () => {
    for (const service of ['', 'taskprocessor.v1.TaskService']) {
      const response = await call(clients.health, 'check', { service });
      assert.equal(response.status, 'SERVING', `service "${service}"`);
    }
  });

  test('creates an echo task, then gets it', async () => {
    const labels = runLabel();
    const data = { greeting: 'hello', numbers: [1, 2.5, -3], nested: { ok: true } };
    const created = await create('  node echo  ', 'echo', data, labels);
    assert.equal(created.status, 'TASK_STATUS_PENDING');
    assert.match(created.id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.equal(created.name, 'node echo', 'stored trimmed');
    assert.equal(created.kind, 'echo');
    assert.ok(BigInt(created.revision) >= 1n);
    assert.ok(created.created_at, 'created_at is always set');
    assert.deepEqual({ ...created.labels }, labels);
    assert.deepEqual(fromValue(created.data), data);

    const fetched = await call(clients.tasks, 'GetTask', { id: created.id });
    assert.equal(fetched.id, created.id);
    assert.equal(fetched.name, 'node echo');
    assert.ok(BigInt(fetched.revision) >= BigInt(created.revision));
  });

  test('watches an echo task to completion', async () => {
    const data = { text: 'any Unicode \u00e9\u4e16\u0000 comes back', list: [null, false] };
    const created = await create('node watch', 'echo', data, runLabel());

    const states = await readAll(clients.tasks.WatchTask({ id: created.id }, deadline()));

    assert.ok(states.length > 0, 'the first message is the current state');
    const revisions = states.map((state) => BigInt(state.task.revision));
    for (let index = 1; index < revisions.length; index += 1) {
      assert.ok(revisions[index] >= revisions[index - 1], 'revision never goes down');
    }
    for (const state of states.slice(0, -1)) {
      assert.ok(!TERMINAL.has(state.task.status), 'only the last state is terminal');
    }
    const last = states.at(-1).task;
    assert.equal(last.status, 'TASK_STATUS_COMPLETED', last.error);
    assert.deepEqual(fromValue(last.result), data, 'echo returns data unchanged');
    assert.ok(last.completed_at);
    assert.equal(last.attempt, 1);
  });

  test('lists tasks a page at a time, oldest first', async () => {
    const labels = runLabel();
    const createdIds = [];
    for (const number of [0, 1, 2]) {
      createdIds.push((await create(`node list ${number}`, 'echo', { n: number }, labels)).id);
    }

    const listedIds = [];
    let pageToken = '';
    let pages = 0;
    do {
      const page = await call(clients.tasks, 'ListTasks', {
        page_size: 2,
        page_token: pageToken,
        labels,
      });
      pages += 1;
      assert.ok(page.tasks.length <= 2);
      listedIds.push(...page.tasks.map((task) => task.id));
      pageToken = page.next_page_token;
      assert.ok(pages < 10, 'paging ends');
    } while (pageToken);

    assert.deepEqual(listedIds, createdIds);
    assert.ok(pages >= 2);
  });

  test('cancels a running sleep task', async () => {
    const created = await create('node sleep', 'sleep', { seconds: 600 }, runLabel());
    const watch = clients.tasks.WatchTask({ id: created.id }, deadline());
    const statuses = [];
    const watchEnded = new Promise((resolve, reject) => {
      watch.on('error', reject);
      watch.on('end', resolve);
    });
    const running = new Promise((resolve, reject) => {
      watch.on('data', ({ task }) => {
        statuses.push(task.status);
        if (task.status === 'TASK_STATUS_RUNNING') resolve();
      });
      watch.on('end', () => reject(new Error(`the watch ended before the task ran: ${statuses}`)));
      watch.on('error', reject);
    });
    await running;

    const cancelled = await call(clients.tasks, 'CancelTask', { id: created.id });
    assert.equal(cancelled.status, 'TASK_STATUS_CANCELLED');
    assert.ok(cancelled.completed_at);
    assert.match(cancelled.error, /cancel/i);

    await watchEnded;
    assert.equal(statuses.at(-1), 'TASK_STATUS_CANCELLED', 'the watch ends with the cancel');
    const again = await call(clients.tasks, 'CancelTask', { id: created.id });
    assert.equal(again.status, 'TASK_STATUS_CANCELLED', 'a repeated cancel succeeds');
    assert.equal(again.revision, cancelled.revision, 'and changes nothing');
    const fetched = await call(clients.tasks, 'GetTask', { id: created.id });
    assert.equal(fetched.status, 'TASK_STATUS_CANCELLED');
  });

  test('retries a flaky task until it completes', async () => {
    const created = await call(clients.tasks, 'CreateTask', {
      name: 'node flaky',
      kind: 'flaky',
      labels: runLabel(),
      data: toValue({ failures: 1 }),
      retry_policy: { max_attempts: 2, initial_backoff: { seconds: 0, nanos: 200_000_000 } },
    });
    assert.equal(created.retry_policy.max_attempts, 2);
    assert.equal(created.retry_policy.initial_backoff.nanos, 200_000_000);

    // The watch ends with the terminal state; the back-off is 0.2 s at most.
    const states = await readAll(clients.tasks.WatchTask({ id: created.id }, deadline()));

    const last = states.at(-1).task;
    assert.equal(last.status, 'TASK_STATUS_COMPLETED', last.error);
    assert.equal(last.attempt, 2, 'the first run failed, the second completed');
    assert.deepEqual(fromValue(last.result), { attempts: 2 });
    assert.equal(last.error, '');
    const fetched = await call(clients.tasks, 'GetTask', { id: created.id });
    assert.equal(fetched.status, 'TASK_STATUS_COMPLETED');
    assert.equal(fetched.attempt, 2);
  });

  test('an empty name is INVALID_ARGUMENT naming the field', async () => {
    await assert.rejects(create('', 'echo'), (error) => {
      assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
      assert.match(error.details, /name/);
      assert.equal(
        error.metadata.get('grpc-status-details-bin').length,
        1,
        'a google.rpc.Status with a BadRequest detail rides along',
      );
      return true;
    });
  });

  /** Every task carrying the labels, oldest first, page after page. */
  async function listIds(labels) {
    const ids = [];
    let pageToken = '';
    do {
      const page = await call(clients.tasks, 'ListTasks', { page_token: pageToken, labels });
      ids.push(...page.tasks.map((task) => task.id));
      pageToken = page.next_page_token;
    } while (pageToken);
    return ids;
  }

  test('BatchCreateTasks answers the tasks in request order, and they complete', async () => {
    const labels = runLabel();
    const data = [0, 1, 2].map((number) => ({ n: number, text: `item ${number}` }));
    const requests = data.map((item, number) => ({
      name: `node batch ${number}`,
      kind: 'echo',
      labels,
      data: toValue(item),
    }));

    const { tasks } = await call(clients.tasks, 'BatchCreateTasks', { requests });

    assert.deepEqual(
      tasks.map((task) => task.name),
      ['node batch 0', 'node batch 1', 'node batch 2'],
    );
    assert.equal(new Set(tasks.map((task) => task.id)).size, 3);
    assert.deepEqual(await listIds(labels), tasks.map((task) => task.id));
    for (const [index, task] of tasks.entries()) {
      assert.equal(task.kind, 'echo');
      assert.deepEqual(fromValue(task.data), data[index]);
      const states = await readAll(clients.tasks.WatchTask({ id: task.id }, deadline()));
      const last = states.at(-1).task;
      assert.equal(last.status, 'TASK_STATUS_COMPLETED', last.error);
      assert.deepEqual(fromValue(last.result), data[index], 'echo returns data unchanged');
    }
  });

  test('BatchCreateTasks with a bad item creates nothing and names it', async () => {
    const labels = runLabel();
    const requests = ['node fine', '', 'node fine too'].map((name) => ({
      name,
      kind: 'echo',
      labels,
    }));

    await assert.rejects(call(clients.tasks, 'BatchCreateTasks', { requests }), (error) => {
      assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
      assert.match(error.details, /requests\[1\]\.name/);
      assert.equal(
        error.metadata.get('grpc-status-details-bin').length,
        1,
        'a google.rpc.Status with a BadRequest detail rides along',
      );
      return true;
    });
    assert.deepEqual(await listIds(labels), [], 'all or nothing');
  });

  test('an unknown id is NOT_FOUND', async () => {
    await assert.rejects(call(clients.tasks, 'GetTask', { id: randomUUID() }), (error) => {
      assert.equal(error.code, grpc.status.NOT_FOUND);
      return true;
    });
  });

  test(
    'without the token, calls are UNAUTHENTICATED and health stays open',
    { skip: !TOKEN && 'TASK_PROCESSOR_TOKEN is not set: this server needs no token' },
    async () => {
      const labels = runLabel();
      for (const [token, message] of [
        [undefined, /no bearer token/],
        [`${TOKEN}-not`, /unknown token/],
      ]) {
        const other = connect(address, { ca: CA, token });
        try {
          const request = { name: 'node refused', kind: 'echo', labels };
          await assert.rejects(call(other.tasks, 'CreateTask', request), (error) => {
            assert.equal(error.code, grpc.status.UNAUTHENTICATED, `token ${token}`);
            assert.match(error.details, message);
            return true;
          });
          const health = await call(other.health, 'check', { service: '' });
          assert.equal(health.status, 'SERVING');
        } finally {
          other.close();
        }
      }
      assert.deepEqual(await listIds(labels), [], 'no refused create reached the store');
    },
  );
});
