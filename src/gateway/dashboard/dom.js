// Building the page without ever parsing data as HTML. Task names, labels,
// data, results and errors are untrusted: they only ever become Text nodes
// (`append` of a string) or attribute values set by name, never markup.
// No file of the dashboard uses an API that parses HTML or runs text as
// code (tests/it checks for their names); the Content-Security-Policy
// backs this up by refusing inline script.

/**
 * Creates an element. `attributes`: `class`, `on<event>` (a listener),
 * `dataset` (an object), `true` for a bare attribute, `null`/`false` to
 * leave one out; anything else is set by name as text. Children are nodes
 * or strings (which become Text nodes); null and false are skipped.
 */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') {
      node.className = value;
    } else if (name === 'dataset') {
      Object.assign(node.dataset, value);
    } else if (name.startsWith('on') && typeof value === 'function') {
      node.addEventListener(name.slice(2), value);
    } else {
      node.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) {
      append(node, child);
    } else {
      node.append(child instanceof Node ? child : String(child));
    }
  }
}

/** Replaces every child of `node` with `children`. */
export function replaceChildren(node, ...children) {
  node.replaceChildren();
  append(node, children);
}

/** A JSON value as indented text in a <pre>, for data and results. */
export function jsonBlock(value, label) {
  const text = value === undefined ? '(none)' : JSON.stringify(value, null, 2);
  return el('pre', { class: 'json', tabindex: 0, 'aria-label': label }, text);
}

/** The statuses a task can have, in the order a task goes through them. */
export const STATUSES = ['PENDING', 'RUNNING', 'RETRYING', 'COMPLETED', 'FAILED', 'CANCELLED'];

/** Statuses after which a task never changes again. */
export const TERMINAL = new Set(['COMPLETED', 'FAILED', 'CANCELLED']);

/** `TASK_STATUS_RUNNING` → `RUNNING`. */
export function statusName(status) {
  return String(status ?? '').replace(/^TASK_STATUS_/, '') || 'UNSPECIFIED';
}

/** Whether a task in `status` may still be cancelled. */
export function cancellable(task) {
  return !TERMINAL.has(statusName(task.status));
}

/** A status as a badge; the word is there, so color is never the only cue. */
export function statusBadge(task) {
  const name = statusName(task.status);
  return el('span', { class: `badge status-${name.toLowerCase()}` }, name);
}

/** A task's progress as a native <progress>, labelled for screen readers. */
export function progressBar(task, label) {
  const percent = Math.max(0, Math.min(100, Number(task.progress?.percent ?? 0)));
  const bar = el('progress', {
    max: 100,
    value: percent,
    'aria-label': label,
    dataset: { percent: String(percent) },
  }, `${percent}%`);
  return bar;
}

/** An RFC 3339 time as the reader's local time, in a <time>. */
export function timeElement(iso) {
  if (!iso) return el('span', { class: 'muted' }, '—');
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return el('span', {}, iso);
  return el('time', { datetime: iso, title: iso }, date.toLocaleString());
}

/** Labels as `key=value` chips. */
export function labelList(labels) {
  const entries = Object.entries(labels ?? {});
  if (entries.length === 0) return el('span', { class: 'muted' }, '—');
  return el('ul', { class: 'labels' },
    entries.map(([key, value]) => el('li', { class: 'label' }, `${key}=${value}`)));
}

/** The hash route of a task's detail page. */
export function taskHref(id) {
  return `#/tasks/${encodeURIComponent(id)}`;
}

/** A message box for errors and notices; `role=alert` so it is announced. */
export function alertBox(message, kind = 'error') {
  return el('p', { class: `alert alert-${kind}`, role: 'alert' }, message);
}
