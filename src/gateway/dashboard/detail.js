// A task's page: everything the Task message holds, with its data, result
// and error as text, and live status and progress from its own WatchTask
// stream over Server-Sent Events (`/api/v1/tasks/{id}/watch`), which sends
// every progress step where the page-wide WatchTasks stream may merge them.

import { CODE, ApiError, cancelTask, getTask } from './api.js';
import { openEventStream } from './sse.js';
import {
  TERMINAL, alertBox, cancellable, el, jsonBlock, labelList, progressBar, replaceChildren,
  statusBadge, statusName, timeElement,
} from './dom.js';
import { describe } from './tasks.js';

/** How long to wait before watching again after the stream broke. */
const RETRY_MS = 2000;

export function mount(main, _live, id) {
  let source = null;
  let retryTimer = null;
  let left = false;
  let shown = null;
  /** What the page shows besides progress; a change redraws it. */
  let shape = '';
  let bar = null;
  let barText = null;
  const message = el('div', { class: 'messages' });
  const content = el('div', { class: 'detail' }, el('p', { class: 'muted' }, 'Loading…'));
  const heading = el('h1', { tabindex: -1 }, 'Task');
  replaceChildren(main,
    el('p', {}, el('a', { href: '#/tasks' }, '← All tasks')),
    el('div', { class: 'view-head' }, heading),
    message,
    content);

  start();

  /** Reads the task, then follows it while it can still change. */
  function start() {
    getTask(id).then((task) => {
      if (left) return;
      replaceChildren(message);
      show(task);
      if (!TERMINAL.has(statusName(task.status))) watch();
    }).catch((error) => {
      if (left) return;
      replaceChildren(message, alertBox(describe(error)));
      // A task that is gone stays gone; anything else (the server
      // restarting) is tried again.
      if (error instanceof ApiError && error.code === CODE.NOT_FOUND) {
        if (!shown) replaceChildren(content);
      } else if (error instanceof ApiError && error.code === CODE.UNAUTHENTICATED) {
        // The sign-in form is shown; signing in mounts this page again.
      } else {
        retryTimer = setTimeout(start, RETRY_MS);
      }
    });
  }

  function watch() {
    source = openEventStream(`/api/v1/tasks/${encodeURIComponent(id)}/watch`, {
      onMessage: (data) => {
        let answer;
        try {
          answer = JSON.parse(data);
        } catch {
          return;
        }
        if (answer?.task) show(answer.task);
        // The server ends the stream after a terminal state; closing
        // first means its end is not taken for a broken connection.
        if (answer?.task && TERMINAL.has(statusName(answer.task.status))) stop();
      },
      onError: ({ status }) => {
        // The connection broke, or the server ended the watch with an
        // error event (UNAVAILABLE at shutdown): read the task and watch
        // again (a watch's first message is the current state, so nothing
        // is missed; a task deleted meanwhile is then reported as gone).
        // Not after a 401: signing in mounts this page again.
        stop();
        if (status !== 401 && !left && !(shown && TERMINAL.has(statusName(shown.status)))) {
          retryTimer = setTimeout(start, RETRY_MS);
        }
      },
    });
  }

  function stop() {
    source?.close();
    source = null;
  }

  function show(task) {
    // A revision older than what is shown (a get overtaken by the watch)
    // would go back in time.
    if (shown && revision(task) < revision(shown)) return;
    shown = task;
    const percent = Number(task.progress?.percent ?? 0);
    const progressMessage = task.progress?.message ?? '';
    const progressText = `${percent}%${progressMessage ? ` — ${progressMessage}` : ''}`;
    // Progress alone changes in place, so that a reader's focus (on the
    // Cancel button, in the data) survives a task reporting every second.
    const nextShape = JSON.stringify([task.status, task.attempt, task.error, task.runAfter,
      task.node, task.startedAt, task.completedAt, task.result !== undefined]);
    if (nextShape === shape && bar && barText) {
      bar.value = percent;
      bar.dataset.percent = String(percent);
      bar.textContent = `${percent}%`;
      barText.textContent = progressText;
      return;
    }
    shape = nextShape;
    const name = task.name || '(no name)';
    heading.textContent = name;
    document.title = `${name} · task-processor`;
    const status = statusName(task.status);
    const retrying = status === 'RETRYING';
    const maxAttempts = task.retryPolicy?.maxAttempts;
    const cancel = cancellable(task)
      ? el('button', { type: 'button', class: 'danger', onclick: () => cancel_(task.id) }, 'Cancel task')
      : null;
    bar = progressBar(task, 'Progress');
    barText = el('span', { class: 'progress-text' }, progressText);
    replaceChildren(content,
      el('section', { class: 'card status-card', 'aria-label': 'Status' },
        el('div', { class: 'status-line' }, statusBadge(task), cancel),
        el('div', { class: 'progress-line' }, bar, barText),
        retrying
          ? el('p', { class: 'retry-note' },
            `Run ${task.attempt} failed; next attempt at `, timeElement(task.runAfter), '.')
          : null),
      el('section', { class: 'card', 'aria-labelledby': 'facts-title' },
        el('h2', { id: 'facts-title' }, 'Details'),
        el('dl', { class: 'facts' },
          fact('ID', el('code', {}, task.id)),
          fact('Kind', task.kind),
          fact('Status', status),
          fact('Attempt', maxAttempts ? `${task.attempt} of at most ${maxAttempts}` : String(task.attempt ?? 0)),
          fact(retrying ? 'Next attempt' : 'Run after', timeElement(task.runAfter)),
          fact('Priority', String(task.priority ?? 0)),
          fact('Timeout', task.timeoutSeconds ? `${task.timeoutSeconds} s` : 'none'),
          fact('Queue timeout', task.queueTimeoutSeconds ? `${task.queueTimeoutSeconds} s` : 'none'),
          fact('Retry policy', task.retryPolicy
            ? `${task.retryPolicy.maxAttempts} attempts, back-off ${task.retryPolicy.initialBackoff} ×${task.retryPolicy.backoffMultiplier} up to ${task.retryPolicy.maxBackoff}`
            : '—'),
          fact('Node', task.node || '—'),
          fact('Labels', labelList(task.labels)),
          fact('Created', timeElement(task.createdAt)),
          fact('Started', timeElement(task.startedAt)),
          fact('Completed', timeElement(task.completedAt)),
          fact('Revision', String(task.revision ?? '')),
          task.description ? fact('Description', task.description) : null)),
      task.error
        ? el('section', { class: 'card', 'aria-labelledby': 'error-title' },
          el('h2', { id: 'error-title' }, retrying ? 'Last error' : 'Error'),
          el('pre', { class: 'error-text', tabindex: 0 }, task.error))
        : null,
      el('section', { class: 'card', 'aria-labelledby': 'data-title' },
        el('h2', { id: 'data-title' }, 'Data'), jsonBlock(task.data, 'Data')),
      el('section', { class: 'card', 'aria-labelledby': 'result-title' },
        el('h2', { id: 'result-title' }, 'Result'), jsonBlock(task.result, 'Result')));
  }

  async function cancel_(taskId) {
    try {
      show(await cancelTask(taskId));
      replaceChildren(message, alertBox('Cancelled.', 'info'));
      // The button is gone with the status it was for: keep focus on the page.
      heading.focus();
    } catch (error) {
      replaceChildren(message, alertBox(`Cannot cancel: ${describe(error)}`));
    }
  }

  return () => {
    left = true;
    clearTimeout(retryTimer);
    stop();
  };
}

function fact(term, value) {
  return [el('dt', {}, term), el('dd', {}, value ?? '—')];
}

function revision(task) {
  const text = String(task.revision ?? '0');
  return /^[0-9]+$/.test(text) ? BigInt(text) : 0n;
}
