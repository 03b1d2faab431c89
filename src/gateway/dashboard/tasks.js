// The task table: a page of ListTasks (oldest first, as the API lists),
// filtered by status and labels, with paging by the server's page tokens.
// Rows follow their tasks live through the page's WatchTasks stream; a new
// task that matches the filter is added when the last page is shown (where
// the oldest-first order puts it), or makes the Next button appear.

import { ApiError, cancelTask, listTasks, parseLabels } from './api.js';
import {
  STATUSES, alertBox, cancellable, el, labelList, progressBar, replaceChildren, statusBadge,
  statusName, taskHref, timeElement,
} from './dom.js';
import { listen } from './live.js';

const PAGE_SIZES = [10, 25, 50, 100];

/** Columns, also the labels of a row's cells when rows become cards. */
const COLUMNS = ['Name', 'Status', 'Kind', 'Progress', 'Labels', 'Created', 'Actions'];

/** Kept while the reader visits a task and comes back. */
const state = {
  status: '',
  labelsText: '',
  labels: [],
  pageSize: 25,
  /** tokens[i] is the page token of page i; page 0's is empty. */
  tokens: [''],
  page: 0,
  nextPageToken: '',
};

export function mount(main, live) {
  const cleanups = [];
  const message = el('div', { class: 'messages' });
  const body = el('tbody');
  const pageLabel = el('span', { class: 'page-label', 'aria-live': 'polite' });
  const previous = el('button', { type: 'button', onclick: () => turn(-1) }, 'Previous page');
  const next = el('button', { type: 'button', onclick: () => turn(1) }, 'Next page');
  let rows = new Map();
  let refreshTimer = null;
  /** Numbers each list call, so that only the latest one's answer shows. */
  let loads = 0;

  const statusSelect = el('select', { id: 'filter-status', name: 'status' },
    el('option', { value: '' }, 'Any status'),
    STATUSES.map((status) => el('option', { value: status, selected: status === state.status }, status)));
  const labelInput = el('input', {
    id: 'filter-labels', name: 'labels', type: 'text', value: state.labelsText,
    placeholder: 'team=media, tier=gold', autocomplete: 'off', spellcheck: 'false',
    'aria-describedby': 'filter-labels-help',
  });
  const sizeSelect = el('select', { id: 'filter-page-size', name: 'pageSize' },
    PAGE_SIZES.map((size) => el('option', { value: size, selected: size === state.pageSize }, String(size))));
  const filters = el('form', { class: 'filters', 'aria-label': 'Filter tasks', onsubmit: applyFilters },
    el('div', { class: 'field' }, el('label', { for: 'filter-status' }, 'Status'), statusSelect),
    el('div', { class: 'field grow' },
      el('label', { for: 'filter-labels' }, 'Labels'), labelInput,
      el('small', { id: 'filter-labels-help' }, 'key=value, several separated by commas')),
    el('div', { class: 'field' }, el('label', { for: 'filter-page-size' }, 'Per page'), sizeSelect),
    el('div', { class: 'field actions' }, el('button', { type: 'submit' }, 'Apply filters')));

  const table = el('table', { class: 'tasks' },
    el('caption', { class: 'visually-hidden' }, 'Tasks, oldest first'),
    el('thead', {}, el('tr', {}, COLUMNS.map((name) => el('th', { scope: 'col' }, name)))),
    body);

  replaceChildren(main,
    el('div', { class: 'view-head' },
      el('h1', { tabindex: -1 }, 'Tasks'),
      el('a', { class: 'button primary', href: '#/new' }, 'New task')),
    filters,
    message,
    el('div', { class: 'table-scroll' }, table),
    el('nav', { class: 'pager', 'aria-label': 'Pages' }, previous, pageLabel, next));

  listen(live, 'task', (event) => onTask(event.detail), cleanups);
  listen(live, 'resync', () => load(), cleanups);
  load();

  function applyFilters(event) {
    event.preventDefault();
    let labels;
    try {
      labels = parseLabels(labelInput.value);
    } catch (error) {
      labelInput.setAttribute('aria-invalid', 'true');
      replaceChildren(message, alertBox(`Labels: ${error.message}`));
      labelInput.focus();
      return;
    }
    labelInput.removeAttribute('aria-invalid');
    state.status = statusSelect.value;
    state.labelsText = labelInput.value;
    state.labels = labels;
    state.pageSize = Number(sizeSelect.value) || 25;
    state.tokens = [''];
    state.page = 0;
    load();
  }

  function turn(step) {
    if (step > 0 && !state.nextPageToken) return;
    if (step < 0 && state.page === 0) return;
    state.page += step;
    if (step > 0) state.tokens[state.page] = state.nextPageToken;
    state.tokens.length = state.page + 1;
    load();
  }

  function filter() {
    return { statuses: state.status ? [state.status] : [], labels: state.labels };
  }

  async function load() {
    loads += 1;
    const requested = loads;
    main.setAttribute('aria-busy', 'true');
    try {
      const answer = await listTasks(filter(), state.pageSize, state.tokens[state.page]);
      if (requested !== loads) return;
      state.nextPageToken = answer?.nextPageToken ?? '';
      const tasks = Array.isArray(answer?.tasks) ? answer.tasks : [];
      rows = new Map();
      body.replaceChildren(...tasks.map((task) => row(task)));
      if (tasks.length === 0) {
        body.append(el('tr', { class: 'empty' }, el('td', { colspan: COLUMNS.length }, 'No task matches these filters.')));
      }
      replaceChildren(message);
    } catch (error) {
      if (requested === loads) replaceChildren(message, alertBox(describe(error)));
    } finally {
      if (requested === loads) {
        main.removeAttribute('aria-busy');
        updatePager();
      }
    }
  }

  function updatePager() {
    previous.disabled = state.page === 0;
    next.disabled = !state.nextPageToken;
    pageLabel.textContent = `Page ${state.page + 1}`;
  }

  function row(task) {
    const tr = el('tr', { dataset: { id: task.id } });
    fill(tr, task);
    rows.set(task.id, tr);
    return tr;
  }

  /**
   * Shows `task` in its row. Cells are redrawn one by one, and only when
   * what they show changed: the link and the Cancel button stay the same
   * elements while their task runs, so keyboard focus on them survives a
   * task reporting progress many times a second.
   */
  function fill(tr, task) {
    const name = task.name || '(no name)';
    const status = statusName(task.status);
    // A task that never reported progress (sleep, echo) shows none rather
    // than an empty bar next to COMPLETED.
    const percent = Number(task.progress?.percent ?? 0);
    const showsBar = status === 'RUNNING' || percent > 0;
    if (tr.cells.length !== COLUMNS.length) {
      tr.replaceChildren(...COLUMNS.map((column) => el('td', { dataset: { label: column } })));
    }
    const [nameCell, statusCell, kindCell, progressCell, labelsCell, createdCell, actionsCell] = tr.cells;
    const redraw = (cell, key, draw) => {
      if (cell.dataset.key === key) return;
      cell.dataset.key = key;
      replaceChildren(cell, draw());
    };
    redraw(nameCell, name, () => el('a', { href: taskHref(task.id), class: 'task-link' }, name));
    redraw(statusCell, status, () => statusBadge(task));
    redraw(kindCell, task.kind ?? '', () => task.kind);
    const bar = progressCell.querySelector('progress');
    if (showsBar && bar) {
      bar.value = percent;
      bar.dataset.percent = String(percent);
      bar.textContent = `${percent}%`;
    } else {
      redraw(progressCell, showsBar ? 'bar' : 'none', () => (showsBar
        ? progressBar(task, `Progress of ${name}`)
        : el('span', { class: 'muted' }, '—')));
    }
    redraw(labelsCell, JSON.stringify(task.labels ?? {}), () => labelList(task.labels));
    redraw(createdCell, task.createdAt ?? '', () => timeElement(task.createdAt));
    redraw(actionsCell, cancellable(task) ? `cancel:${name}` : 'none', () => (cancellable(task)
      ? el('button', { type: 'button', class: 'danger', onclick: () => cancel_(task.id, name) }, 'Cancel',
        el('span', { class: 'visually-hidden' }, ` ${name}`))
      : null));
    tr.dataset.status = status;
    tr.dataset.revision = String(task.revision ?? '0');
  }

  function onTask(task) {
    const tr = rows.get(task.id);
    if (tr) {
      if (newer(task, tr)) fill(tr, task);
      return;
    }
    if (!matches(task) || state.nextPageToken) return;
    if (rows.size < state.pageSize) {
      body.querySelector('tr.empty')?.remove();
      body.append(row(task));
    } else {
      // The page is full: list it again to learn the token of the page
      // the new task starts (once, however many tasks arrive together).
      clearTimeout(refreshTimer);
      refreshTimer = setTimeout(load, 300);
    }
  }

  /**
   * Whether `task` is news for its row: a change older than the row (a
   * list or cancel answer can overtake the stream) or the same one again
   * is dropped.
   */
  function newer(task, tr) {
    const revision = (text) => (/^[0-9]+$/.test(text) ? BigInt(text) : 0n);
    return revision(String(task.revision)) > revision(tr.dataset.revision ?? '0');
  }

  function matches(task) {
    if (state.status && statusName(task.status) !== state.status) return false;
    return state.labels.every(([key, value]) => task.labels?.[key] === value);
  }

  async function cancel_(id, name) {
    try {
      const task = await cancelTask(id);
      const tr = rows.get(id);
      if (tr && task && newer(task, tr)) fill(tr, task);
      replaceChildren(message, alertBox(`Cancelled ${name}.`, 'info'));
      // The button went with the status it was for: keep keyboard focus in
      // the row, on the task's link.
      tr?.querySelector('a.task-link')?.focus();
    } catch (error) {
      replaceChildren(message, alertBox(`Cannot cancel ${name}: ${describe(error)}`));
    }
  }

  return () => {
    clearTimeout(refreshTimer);
    for (const cleanup of cleanups) cleanup();
  };
}

export function describe(error) {
  return error instanceof ApiError ? error.describe() : String(error?.message ?? error);
}
