// The server under test, and its REST API as the tests call it. With
// TASK_PROCESSOR_ADDR set (as .ci/run does once it started the binary), the
// tests use that server; otherwise they start target/debug/task-processor
// themselves on free loopback ports with an in-memory store, and read its
// address from the JSON "serving" log line, as .ci/run does.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

const REPOSITORY = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** How long the server may take to say it serves. */
const START_DEADLINE_MS = 60_000;

/**
 * Starts (or finds) the server; resolves to {base, stop}. With `extraArgs`
 * (--auth-principals, say) a server of its own is always started, as one
 * given by TASK_PROCESSOR_ADDR runs with other flags.
 */
export async function server(extraArgs = []) {
  const given = process.env.TASK_PROCESSOR_ADDR;
  if (given && extraArgs.length === 0) {
    return { base: `http://${given}`, stop: async () => {} };
  }
  const binary = process.env.TASK_PROCESSOR_BIN
    ?? join(process.env.CARGO_TARGET_DIR ?? join(REPOSITORY, 'target'), 'debug', 'task-processor');
  if (!existsSync(binary)) {
    throw new Error(`${binary} does not exist: run cargo build first, or set TASK_PROCESSOR_ADDR`);
  }
  const environment = { ...process.env };
  delete environment.RUST_LOG;
  const child = spawn(binary, [
    '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--store', 'memory',
    '--drain-period', '0s', '--shutdown-grace', '0s',
    '--log-format', 'json', '--log-level', 'info',
    // Slower than the default 2 s, so the progress bar has time to be seen moving.
    '--demo-duration', '4s',
    ...extraArgs,
  ], { env: environment, stdio: ['ignore', 'pipe', 'inherit'] });
  const address = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the server did not log "serving" in time')), START_DEADLINE_MS);
    child.once('exit', (code) => reject(new Error(`the server exited with ${code} before it served`)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      let entry;
      try {
        entry = JSON.parse(line);
      } catch {
        return;
      }
      if (entry.message === 'serving' && entry.address) {
        clearTimeout(timer);
        resolve(entry.address);
      }
    });
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  return {
    base: `http://${address}`,
    stop: async () => {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/**
 * The REST API of `base`, failing on any answer but the expected one, as
 * the principal of `token` when one is given.
 */
export function rest(base, token = null) {
  async function call(method, path, body, expected) {
    const headers = body === undefined ? {} : { 'content-type': 'application/json' };
    if (token) headers.authorization = `Bearer ${token}`;
    const response = await fetch(`${base}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    if (response.status !== expected) {
      throw new Error(`${method} ${path}: expected ${expected}, got ${response.status}: ${text}`);
    }
    return text ? JSON.parse(text) : null;
  }
  return {
    create: (request, expected = 201) => call('POST', '/api/v1/tasks', request, expected),
    get: (id) => call('GET', `/api/v1/tasks/${id}`, undefined, 200),
    cancel: (id) => call('POST', `/api/v1/tasks/${id}/cancel`, undefined, 200),
    createSchedule: (request) => call('POST', '/api/v1/schedules', request, 201),
    getSchedule: (id, expected = 200) => call('GET', `/api/v1/schedules/${id}`, undefined, expected),
    /** Polls until the task has `status` (a name such as COMPLETED). */
    async waitFor(id, status, deadlineMs = 20_000) {
      const until = Date.now() + deadlineMs;
      for (;;) {
        const task = await call('GET', `/api/v1/tasks/${id}`, undefined, 200);
        if (task.status === `TASK_STATUS_${status}`) return task;
        if (Date.now() > until) throw new Error(`task ${id} is ${task.status}, not ${status}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    },
  };
}
