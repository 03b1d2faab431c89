// Schedules: a page of ListSchedules with pause, resume and delete, each the
// REST route of its RPC. Creating schedules stays with the API and taskctl
// for now.

import { listSchedules, scheduleAction } from './api.js';
import { alertBox, el, replaceChildren, taskHref, timeElement } from './dom.js';
import { describe } from './tasks.js';

const PAGE_SIZE = 25;
const COLUMNS = ['When', 'Task', 'State', 'Next firing', 'Last firing', 'Last task', 'Actions'];

export function mount(main) {
  const message = el('div', { class: 'messages' });
  const body = el('tbody');
  const tokens = [''];
  let page = 0;
  let nextPageToken = '';
  let left = false;
  const previous = el('button', { type: 'button', onclick: () => turn(-1) }, 'Previous page');
  const next = el('button', { type: 'button', onclick: () => turn(1) }, 'Next page');
  const pageLabel = el('span', { class: 'page-label' });

  replaceChildren(main,
    el('div', { class: 'view-head' }, el('h1', { tabindex: -1 }, 'Schedules')),
    message,
    el('div', { class: 'table-scroll' },
      el('table', { class: 'schedules' },
        el('caption', { class: 'visually-hidden' }, 'Schedules, oldest first'),
        el('thead', {}, el('tr', {}, COLUMNS.map((name) => el('th', { scope: 'col' }, name)))),
        body)),
    el('nav', { class: 'pager', 'aria-label': 'Pages' }, previous, pageLabel, next));
  load();

  function turn(step) {
    if ((step > 0 && !nextPageToken) || (step < 0 && page === 0)) return;
    page += step;
    if (step > 0) tokens[page] = nextPageToken;
    tokens.length = page + 1;
    load();
  }

  async function load() {
    try {
      const answer = await listSchedules(PAGE_SIZE, tokens[page]);
      if (left) return;
      nextPageToken = answer?.nextPageToken ?? '';
      const schedules = Array.isArray(answer?.schedules) ? answer.schedules : [];
      body.replaceChildren(...schedules.map(row));
      if (schedules.length === 0) {
        body.append(el('tr', { class: 'empty' }, el('td', { colspan: COLUMNS.length }, 'No schedules.')));
      }
    } catch (error) {
      if (!left) replaceChildren(message, alertBox(describe(error)));
    }
    previous.disabled = page === 0;
    next.disabled = !nextPageToken;
    pageLabel.textContent = `Page ${page + 1}`;
  }

  function row(schedule) {
    const template = schedule.task ?? {};
    const title = template.name || '(no name)';
    const act = (action, label) => el('button', {
      type: 'button',
      class: action === 'delete' ? 'danger' : null,
      onclick: () => run(schedule, action),
    }, label, el('span', { class: 'visually-hidden' }, ` schedule ${title}`));
    const cells = [
      [el('code', {}, schedule.cron), ` (${schedule.timeZone || 'UTC'})`],
      [title, el('span', { class: 'muted' }, ` · ${template.kind || 'default kind'}`)],
      schedule.paused ? 'Paused' : 'Active',
      schedule.paused ? el('span', { class: 'muted' }, '—') : timeElement(schedule.nextFireAt),
      timeElement(schedule.lastFireAt),
      schedule.lastTaskId ? el('a', { href: taskHref(schedule.lastTaskId) }, 'Open') : '—',
      [schedule.paused ? act('resume', 'Resume') : act('pause', 'Pause'), ' ', act('delete', 'Delete')],
    ];
    return el('tr', { dataset: { id: schedule.id } },
      cells.map((cell, index) => el('td', { dataset: { label: COLUMNS[index] } }, cell)));
  }

  async function run(schedule, action) {
    const title = schedule.task?.name || schedule.id;
    // Deleting cannot be undone: ask first (a native dialog, keyboard-ready).
    if (action === 'delete' && !window.confirm(`Delete the schedule of ${title}? Its tasks stay.`)) return;
    try {
      await scheduleAction(schedule.id, action);
      replaceChildren(message, alertBox(`${verb(action)} the schedule of ${title}.`, 'info'));
      await load();
    } catch (error) {
      replaceChildren(message, alertBox(`Cannot ${action} the schedule of ${title}: ${describe(error)}`));
    }
  }

  return () => {
    left = true;
  };
}

function verb(action) {
  return { pause: 'Paused', resume: 'Resumed', delete: 'Deleted' }[action] ?? action;
}
