// An example worker for tasks of kind `email`: `node example-worker.js`.
//
// The server must hand `email` out to workers (`--worker-kinds email`).
// Configured from the environment, like the tests:
//   TASK_PROCESSOR_ADDR     host:port of the server (default 127.0.0.1:50051)
//   TASK_PROCESSOR_CA_FILE  PEM of the CA of the server's certificate: TLS
//   TASK_PROCESSOR_TOKEN    a bearer token whose principal has the role `work`
// SIGTERM or Ctrl-C drains it: no new task, the running ones finish (30 s at
// most), then it exits 0. A second one stops them at once (they run again
// elsewhere).

import { setTimeout as sleep } from 'node:timers/promises';

import { PermanentError, Worker } from './worker.js';

const address = process.env.TASK_PROCESSOR_ADDR || '127.0.0.1:50051';
const worker = new Worker({
  address,
  caFile: process.env.TASK_PROCESSOR_CA_FILE || undefined,
  token: process.env.TASK_PROCESSOR_TOKEN || undefined,
  workerName: `example-worker-${process.pid}`,
  maxConcurrent: 4,
});

worker.handle('email', async ({ data, taskId, signal, progress }) => {
  // Bad input will not get better on a retry.
  if (typeof data?.to !== 'string') {
    throw new PermanentError('data.to: the address to send to is required');
  }
  const steps = ['rendering', 'connecting', 'sending', 'confirming'];
  for (const [index, step] of steps.entries()) {
    progress((index / steps.length) * 100, `${step} (${index + 1} of ${steps.length})`);
    // Rejects as soon as the task is cancelled: stop working on it.
    await sleep(500, undefined, { signal });
  }
  console.log(`task ${taskId}: sent to ${data.to}`);
  return { sent: true, to: data.to };
});

worker.on('connected', () => console.log(`connected to ${address}`));
worker.on('reconnecting', ({ error, delayMilliseconds }) =>
  console.log(`stream ended (${error.message}); reconnecting in ${delayMilliseconds} ms`),
);
worker.on('draining', () => console.log('draining: finishing the running tasks'));

try {
  await worker.run();
  console.log('drained, exiting');
} catch (error) {
  console.error(`worker stopped: ${error.message}`);
  process.exitCode = 1;
}
