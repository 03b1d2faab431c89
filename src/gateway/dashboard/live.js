// One WatchTasks stream over Server-Sent Events (read by sse.js) for the whole page, with no
// filter: it keeps the counts by status, and tells the views of every
// change so that a table row or a detail page follows its task live.
//
// Counts come from this stream (its initial list, then every change), not
// from list calls: ListTasks has no count, so counting by listing means
// paging through every task again on each change, and a count read between
// two pages can be off. The stream instead sends each task once, then every
// change in order, so the counts stay exact as long as the stream is
// followed without a gap, which resume tokens guarantee; when a token is
// refused (expired: FAILED_PRECONDITION) the counts are rebuilt from a
// fresh initial list, as the contract says to. Only each task's status and
// revision are kept, not its data.
//
// A deleted task is sent once more with its last state, which the stream
// does not mark: it is recognised by a revision not above the one already
// held (every real change raises the revision, and nothing is repeated), or,
// for a task never seen, by a finished status (a task created while we
// watch is first seen PENDING).

import { STATUSES, TERMINAL, statusName } from './dom.js';
import { openEventStream } from './sse.js';

/** Waits before reconnecting, doubling up to the last. */
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 5000, 10000];

export class LiveTasks extends EventTarget {
  constructor() {
    super();
    /** id → {status, revision}, once the initial list is complete. */
    this.tasks = new Map();
    /** The initial list being received, until initialDone. */
    this.pending = null;
    this.resumeToken = '';
    this.source = null;
    this.failures = 0;
    this.state = 'connecting';
    this.timer = null;
    this.ready = false;
  }

  start() {
    this.connect();
  }

  /**
   * Counts by status name, plus `total`; null before the first list is
   * complete. While a list is rebuilt, the last complete counts stand.
   */
  counts() {
    if (!this.ready) return null;
    const counts = Object.fromEntries(STATUSES.map((status) => [status, 0]));
    for (const { status } of this.tasks.values()) counts[status] = (counts[status] ?? 0) + 1;
    counts.total = this.tasks.size;
    return counts;
  }

  connect() {
    clearTimeout(this.timer);
    this.source?.close();
    const resuming = this.resumeToken !== '';
    const url = resuming
      ? `/api/v1/watch?resumeToken=${encodeURIComponent(this.resumeToken)}`
      : '/api/v1/watch?sendInitial=true';
    if (!resuming) this.pending = new Map();
    let opened = false;
    const source = openEventStream(url, {
      onOpen: () => {
        opened = true;
        this.failures = 0;
        this.setState(this.pending ? 'loading' : 'live');
      },
      onMessage: (data) => this.receive(data),
      onError: ({ data, status }) => {
        if (source !== this.source) return;
        this.source = null;
        if (data) {
          // The server's `error` event (ABORTED for a client that fell
          // behind, UNAVAILABLE at shutdown): resume from the last token.
          this.reconnect();
        } else if (status === 401) {
          // No token, or a refused one: wait for the sign-in (app.js
          // calls restart), rather than retry what cannot succeed.
          this.setState('signed-out');
        } else if (!opened && resuming && (status === 412 || status === 400)) {
          // The token was refused as expired (412) or as for other
          // filters (400): list again.
          this.relist();
        } else {
          // The connection failed or ended, or another refusal: retry
          // the same token later.
          this.reconnect();
        }
      },
    });
    this.source = source;
  }

  /**
   * Starts over with a fresh list, for another token: what was counted
   * was what the last one could see.
   */
  restart() {
    this.source?.close();
    this.source = null;
    this.failures = 0;
    this.tasks = new Map();
    this.ready = false;
    this.emit('counts');
    this.relist();
  }

  /** Drops the token: the next connection starts with a fresh list. */
  relist() {
    this.resumeToken = '';
    this.connect();
  }

  reconnect() {
    this.setState('reconnecting');
    const delay = RECONNECT_DELAYS_MS[Math.min(this.failures, RECONNECT_DELAYS_MS.length - 1)];
    this.failures += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (typeof message.resumeToken === 'string' && message.resumeToken) {
      this.resumeToken = message.resumeToken;
    }
    if (message.task) {
      if (this.pending) {
        this.pending.set(message.task.id, entry(message.task));
      } else {
        this.apply(message.task);
      }
    }
    if (message.initialDone && this.pending) {
      const again = this.ready;
      this.tasks = this.pending;
      this.pending = null;
      this.ready = true;
      this.setState('live');
      this.emit('counts');
      // Listed again after a refused token: changes may have been missed
      // while no stream was followed, so the views read theirs again.
      if (again) this.emit('resync');
    }
  }

  apply(task) {
    const held = this.tasks.get(task.id);
    const next = entry(task);
    const deleted = held ? next.revision <= held.revision : TERMINAL.has(next.status);
    if (deleted) {
      if (held) this.tasks.delete(task.id);
      this.emit('counts');
      return;
    }
    this.tasks.set(task.id, next);
    this.emit('counts');
    this.dispatchEvent(new CustomEvent('task', { detail: task }));
  }

  setState(state) {
    this.state = state;
    this.emit('state');
  }

  emit(type) {
    this.dispatchEvent(new Event(type));
  }
}

/** What is kept of a task. `revision` is a uint64, written as a string. */
function entry(task) {
  const revision = /^[0-9]+$/.test(String(task.revision)) ? BigInt(task.revision) : 0n;
  return { status: statusName(task.status), revision };
}

/** Lets a view drop its listeners when it is left. */
export function listen(target, type, listener, cleanups) {
  target.addEventListener(type, listener);
  cleanups.push(() => target.removeEventListener(type, listener));
}
