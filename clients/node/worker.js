// A worker for taskprocessor.v1.WorkerService: runs tasks of the kinds the
// server hands out to workers (its `worker_kinds`), in this Node process.
//
//   const worker = new Worker({ address: '127.0.0.1:50051', maxConcurrent: 4 });
//   worker.handle('email', async (job) => {
//     job.progress(50, 'connecting');
//     return { sent: true, to: job.data.to };
//   });
//   await worker.run(); // resolves after SIGTERM/SIGINT, once drained
//
// One `Work` stream carries everything: the hello, assignments and
// cancellations from the server, progress and one outcome per assignment
// from us. What lives here is only the protocol's bookkeeping; what a task
// does is the handler's business. Like client.js, nothing is generated: the
// contract is read from proto/ when the module loads.

import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import path from 'node:path';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

import { LOADER_OPTIONS, channelCredentials, fromValue, toValue } from './client.js';

const WORKER_SERVICE_PROTO = path.join('taskprocessor', 'v1', 'worker_service.proto');

const packageDefinition = protoLoader.loadSync(WORKER_SERVICE_PROTO, LOADER_OPTIONS);
/** The generated-at-run-time client class of WorkerService (Work, ListWorkers). */
export const WorkerServiceClient =
  grpc.loadPackageDefinition(packageDefinition).taskprocessor.v1.WorkerService;

/**
 * Stream ends that reconnecting cannot fix: a hello the server refuses, or a
 * token it does not accept. run() rejects with them instead of retrying
 * forever with the same mistake.
 */
const CONFIGURATION_ERRORS = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.UNAUTHENTICATED,
  grpc.status.PERMISSION_DENIED,
]);

/** Thrown by a handler: the task FAILS at once, whatever its retry policy. */
export class PermanentError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = 'PermanentError';
  }
}

/**
 * The reason of a job's aborted signal. Named AbortError, like the errors
 * of fetch and timers/promises, so code that already tells aborts apart
 * from failures keeps working. `cancellationCause` is the server's
 * CancellationCause ('CANCELLATION_CAUSE_CANCELLED', ..._TIMED_OUT,
 * ..._SHUTTING_DOWN, ..._TAKEN_OVER), or 'STREAM_ENDED' / 'WORKER_STOPPED'
 * when the worker itself lost or closed the stream.
 */
export class CancelledError extends Error {
  constructor(message, cancellationCause) {
    super(message);
    this.name = 'AbortError';
    this.cancellationCause = cancellationCause;
  }
}

/**
 * Runs handlers for tasks of some kinds, one `Work` stream at a time.
 *
 * Events (all optional to listen to): 'connected' when the server accepted
 * the stream, 'reconnecting' ({ error, delayMilliseconds }) when it ended
 * and another is due, 'draining' once a drain started.
 */
export class Worker extends EventEmitter {
  /**
   * @param {object} options
   * @param {string} options.address host:port of the server
   * @param {string} [options.workerName] shown in Task.node and ListWorkers
   * @param {number} [options.maxConcurrent] tasks run at once (1 to 10000)
   * @param {string} [options.caFile] PEM of the CA that signed the server's certificate: TLS
   * @param {string} [options.token] bearer token (its principal needs the role `work`); needs caFile
   * @param {number} [options.drainGraceMilliseconds] how long a drain waits for running handlers
   * @param {number} [options.reconnectInitialMilliseconds] first back-off after a lost stream
   * @param {number} [options.reconnectMaxMilliseconds] the back-off's cap
   */
  constructor({
    address,
    workerName = 'worker',
    maxConcurrent = 1,
    caFile,
    token,
    drainGraceMilliseconds = 30_000,
    reconnectInitialMilliseconds = 500,
    reconnectMaxMilliseconds = 30_000,
  }) {
    super();
    if (!address) throw new TypeError('Worker: address (host:port) is required');
    if (!Number.isInteger(maxConcurrent) || maxConcurrent < 1) {
      throw new TypeError(`Worker: maxConcurrent must be a positive integer, got ${maxConcurrent}`);
    }
    this.workerName = workerName;
    this.maxConcurrent = maxConcurrent;
    this.drainGraceMilliseconds = drainGraceMilliseconds;
    this.reconnectInitialMilliseconds = reconnectInitialMilliseconds;
    this.reconnectMaxMilliseconds = reconnectMaxMilliseconds;
    const ca = caFile ? readFileSync(caFile) : undefined;
    this.#client = new WorkerServiceClient(address, channelCredentials({ ca, token }), {
      // A server that froze or a route that vanished closes nothing: only
      // pings notice, and then the stream ends and we reconnect. 10 s is what
      // taskctl uses, so the server's keepalive policy accepts it.
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 10_000,
    });
  }

  #client;
  /** kind → handler. */
  #handlers = new Map();
  /** `${taskId}/${attempt}` → { connection, controller } for each job without an outcome yet. */
  #running = new Map();
  /** The open stream, or null between streams. */
  #connection = null;
  #draining = false;
  /** run() was called. */
  #started = false;
  /** Ends the back-off sleep early when a drain starts. */
  #wakeUp = null;
  #graceTimer = null;

  /**
   * Registers the handler of a kind: `async (job) => result`. `job` has
   * `data` (the task's data as JSON), `taskId`, `attempt`, `task` (the whole
   * Task), `traceContext`, `progress(percent, message)` and `signal` (aborts
   * on cancellation, timeout, server shutdown or a lost stream). Its return
   * value (as JSON) completes the task; a throw fails it (retried by the
   * task's policy), a PermanentError fails it for good.
   */
  handle(kind, handler) {
    if (typeof handler !== 'function')
      throw new TypeError(`Worker.handle(${kind}): not a function`);
    this.#handlers.set(kind, handler);
    return this;
  }

  /**
   * Runs until drained: connects, runs what it is assigned, and reconnects
   * with exponential back-off and jitter whenever the stream ends without
   * us asking (server restart, network loss). Rejects on a configuration
   * error (INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED); resolves
   * after drain(), which the `signals` (SIGTERM and SIGINT by default; []
   * for none) call.
   */
  async run({ signals = ['SIGTERM', 'SIGINT'] } = {}) {
    if (this.#handlers.size === 0)
      throw new Error('Worker.run: no handler; call handle(kind, handler) first');
    // Its channel closes at the end, so a Worker runs once.
    if (this.#started) throw new Error('Worker.run: a Worker runs once; make another');
    this.#started = true;
    const drain = () => this.drain();
    for (const signal of signals) process.on(signal, drain);
    try {
      // Failed streams since the last one the server accepted: the back-off's exponent.
      let failures = 0;
      while (!this.#draining) {
        const { status, accepted, connection } = await this.#work();
        if (this.#draining) break;
        if (CONFIGURATION_ERRORS.has(status.code)) throw statusError(status);
        await this.#handlersSettled(connection);
        if (this.#draining) break;
        failures = accepted ? 0 : failures + 1;
        const delayMilliseconds = this.#backoff(failures);
        this.emit('reconnecting', { error: statusError(status), delayMilliseconds });
        await this.#sleep(delayMilliseconds);
      }
    } finally {
      for (const signal of signals) process.off(signal, drain);
      clearTimeout(this.#graceTimer);
      this.#client.close();
    }
  }

  /**
   * Stops taking tasks: tells the server (`drain`), lets running handlers
   * finish and send their outcomes for up to drainGraceMilliseconds, then
   * aborts the rest and closes the stream, which gives their tasks back to
   * run again. run() resolves once the stream is over. A second call (a
   * second Ctrl-C) does not wait for the grace period: it closes at once.
   */
  drain() {
    const connection = this.#connection;
    if (this.#draining) {
      if (connection) this.#close(connection);
      return;
    }
    this.#draining = true;
    this.emit('draining');
    this.#wakeUp?.();
    if (!connection) return;
    // The server ends the stream with OK once every assignment has its
    // outcome; the timer is for handlers that take longer than we may wait.
    send(connection, { drain: {} });
    this.#graceTimer = setTimeout(() => this.#close(connection), this.drainGraceMilliseconds);
  }

  /** One Work stream, from hello to its status: resolves { status, accepted }. */
  #work() {
    return new Promise((resolve) => {
      const call = this.#client.Work();
      // `handlers`: the promises of this stream's handlers that have not
      // settled, kept after the stream ends (unlike #running's entries).
      const connection = { call, open: true, accepted: false, handlers: new Set() };
      this.#connection = connection;
      // Headers mean the server took the stream (it sends them on accepting
      // the call, before any message): the back-off starts over.
      call.on('metadata', () => {
        connection.accepted = true;
        this.emit('connected');
      });
      call.on('data', (response) => this.#receive(connection, response));
      // Every end, OK or not, comes as 'status'; a failed one comes as
      // 'error' too, which must have a listener or it would throw.
      call.on('error', () => {});
      call.on('status', (status) => {
        connection.open = false;
        if (this.#connection === connection) this.#connection = null;
        // The server gives these tasks to another run, so their outcomes
        // would go nowhere: stop the handlers.
        this.#abortJobs(
          connection,
          `the stream to the server ended: ${status.details}`,
          'STREAM_ENDED',
        );
        resolve({ status, accepted: connection.accepted, connection });
      });
      send(connection, {
        hello: {
          kinds: [...this.#handlers.keys()],
          max_concurrent: this.maxConcurrent,
          worker_name: this.workerName,
        },
      });
    });
  }

  #receive(connection, response) {
    switch (response.message) {
      case 'assignment':
        this.#start(connection, response.assignment);
        break;
      case 'cancellation': {
        const { task_id: taskId, attempt, reason, cause } = response.cancellation;
        const job = this.#running.get(jobKey(taskId, attempt));
        // Missing: the handler has already returned and its outcome is on its way.
        if (job?.connection === connection) job.controller.abort(new CancelledError(reason, cause));
        break;
      }
      default:
        // A message a newer server knows and we do not: nothing to do.
        break;
    }
  }

  #start(connection, { task, trace_context: traceContext }) {
    // Buffered after the stream ended: the server has taken the task back.
    if (!connection.open) return;
    const key = jobKey(task.id, task.attempt);
    const controller = new AbortController();
    const ids = { task_id: task.id, attempt: task.attempt };
    this.#running.set(key, { connection, controller });
    const job = {
      taskId: task.id,
      attempt: task.attempt,
      task,
      traceContext: { ...traceContext },
      signal: controller.signal,
      progress: (percent, message = '') => {
        // After an abort or the outcome the server ignores it anyway; spare the bytes.
        if (controller.signal.aborted || !this.#running.has(key)) return;
        const clamped = Math.min(100, Math.max(0, Math.round(Number(percent) || 0)));
        send(connection, {
          progress: { ...ids, progress: { percent: clamped, message: String(message) } },
        });
      },
    };
    const settled = runHandler(this.#handlers.get(task.kind), job).then((outcome) => {
      this.#running.delete(key);
      connection.handlers.delete(settled);
      // Also after a cancellation: the server frees the slot only on an outcome.
      send(connection, { outcome: { ...ids, ...outcome } });
    });
    connection.handlers.add(settled);
  }

  /**
   * Waits until the handlers of a lost stream (aborted when it ended) have
   * settled, for up to drainGraceMilliseconds, or until a drain starts: the
   * next stream brings up to maxConcurrent new tasks, and with the old
   * handlers still going the worker would run more than that. A handler
   * that ignores its signal holds the reconnection up for that long at most.
   */
  async #handlersSettled(connection) {
    if (connection.handlers.size === 0) return;
    const settled = Promise.allSettled([...connection.handlers]);
    const gaveUp = this.#sleep(this.drainGraceMilliseconds);
    await Promise.race([settled, gaveUp]);
    // Ends the grace timer when the handlers won the race.
    this.#wakeUp?.();
  }

  /** Ends a drain that may wait no longer: the server gives the unfinished tasks back. */
  #close(connection) {
    clearTimeout(this.#graceTimer);
    this.#abortJobs(connection, 'the worker stopped before the task finished', 'WORKER_STOPPED');
    connection.call.cancel();
  }

  #abortJobs(connection, message, cause) {
    for (const job of this.#running.values()) {
      if (job.connection === connection) job.controller.abort(new CancelledError(message, cause));
    }
  }

  /** Exponential, capped, with jitter so that workers cut off together do not return together. */
  #backoff(failures) {
    const ceiling = Math.min(
      this.reconnectMaxMilliseconds,
      this.reconnectInitialMilliseconds * 2 ** Math.max(0, failures - 1),
    );
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  #sleep(milliseconds) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, milliseconds);
      this.#wakeUp = () => {
        clearTimeout(timer);
        resolve();
      };
    }).finally(() => {
      this.#wakeUp = null;
    });
  }
}

/** A handler's run as the outcome to send: never rejects. */
async function runHandler(handler, job) {
  try {
    // Cannot happen with a server that keeps to the hello's kinds.
    if (!handler) {
      throw new PermanentError(`this worker has no handler for kind "${job.task.kind}"`);
    }
    job.data = job.task.data == null ? null : fromValue(job.task.data);
    const result = await handler(job);
    // JSON's own rules (undefined → null, Dates → strings, toJSON), so a
    // result is what JSON.stringify would make of it.
    const json = JSON.stringify(result);
    return { result: toValue(json === undefined ? null : JSON.parse(json)) };
  } catch (error) {
    const message = (error instanceof Error ? error.message : String(error)) || String(error);
    return { failure: { message, permanent: error instanceof PermanentError } };
  }
}

/** Writes to a stream that is still open; a message for a closed one has nowhere to go. */
function send(connection, request) {
  if (connection.open) connection.call.write(request);
}

function jobKey(taskId, attempt) {
  return `${taskId}/${attempt}`;
}

/** A stream's final status as an Error like grpc-js's own: code, details, metadata. */
function statusError(status) {
  const name = Object.keys(grpc.status).find((key) => grpc.status[key] === status.code);
  return Object.assign(new Error(`${status.code} ${name}: ${status.details}`), {
    code: status.code,
    details: status.details,
    metadata: status.metadata,
  });
}
