// One WatchTasks stream over Server-Sent Events for the whole page, with no
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
    const resuming = this.resumeToken !== '';
    const url = resuming
      ? `/api/v1/watch?resumeToken=${encodeURIComponent(this.resumeToken)}`
      : '/api/v1/watch?sendInitial=true';
    if (!resuming) this.pending = new Map();
    const source = new EventSource(url);
    this.source = source;
    let opened = false;
    source.addEventListener('open', () => {
      opened = true;
      this.failures = 0;
      this.setState(this.pending ? 'loading' : 'live');
    });
    source.addEventListener('message', (event) => this.receive(event.data));
    source.addEventListener('error', (event) => {
      if (source !== this.source) return;
      source.close();
      // An `error` event that carries data is the server's (ABORTED for a
      // client that fell behind, UNAVAILABLE at shutdown): resume from the
      // last token. One without data is the connection failing.
      if (event.data) {
        this.reconnect();
      } else if (!opened && resuming) {
        this.whyRefused(url);
      } else {
        this.reconnect();
      }
    });
  }

  /**
   * EventSource cannot read a refused answer's status, so ask again with
   * fetch: a token refused as expired (412) or as other filters (400)
   * means listing again; anything else, retrying the same token later.
   */
  async whyRefused(url) {
    const abort = new AbortController();
    try {
      const response = await fetch(url, { signal: abort.signal, headers: { accept: 'text/event-stream' } });
      abort.abort();
      if (response.status === 412 || response.status === 400) {
        this.relist();
        return;
      }
    } catch {
      // The server is unreachable: retry below.
    }
    this.reconnect();
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
