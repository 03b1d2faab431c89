// The dashboard's entry: the list of views and the hash router between
// them, the live counts by status, and the page-wide WatchTasks stream.
// Routes are hashes (`#/tasks/<id>`) so that the server serves one page and
// the back button and bookmarks work without it.

import { auth } from './auth.js';
import { el, replaceChildren } from './dom.js';
import { LiveTasks } from './live.js';
import { mountSignIn } from './signin.js';
import * as tasks from './tasks.js';
import * as detail from './detail.js';
import * as create from './create.js';
import * as schedules from './schedules.js';

/**
 * The views of the navigation, in its order. A new view (workers, once the
 * API lists them) is one more entry and one more module with `mount`.
 */
const VIEWS = [
  { path: 'tasks', title: 'Tasks', module: tasks },
  { path: 'new', title: 'New task', module: create },
  { path: 'schedules', title: 'Schedules', module: schedules },
];

const STATE_TEXT = {
  connecting: 'connecting…',
  loading: 'loading…',
  live: 'live',
  reconnecting: 'reconnecting…',
  'signed-out': 'signed out',
};

const live = new LiveTasks();
const main = document.getElementById('main');
const countsList = document.getElementById('counts');
const connection = document.getElementById('connection');
const navigation = document.getElementById('views');
let unmount = () => {};

for (const view of VIEWS) {
  navigation.append(el('li', {}, el('a', { href: `#/${view.path}`, dataset: { view: view.path } }, view.title)));
}

// Counts change with every task event; redraw them at most twice a second so
// that a busy server does not keep a screen reader (aria-live) talking.
let countsTimer = null;
live.addEventListener('counts', () => {
  countsTimer ??= setTimeout(() => {
    countsTimer = null;
    showCounts();
  }, 500);
});
live.addEventListener('state', () => {
  connection.textContent = STATE_TEXT[live.state] ?? live.state;
  connection.dataset.state = live.state;
});
window.addEventListener('hashchange', route);
mountSignIn(document.getElementById('signin'), document.getElementById('signout'));
// Signed in or out: what was shown was read with the other token (or none),
// so the live stream lists again and the view is read again.
auth.addEventListener('change', () => {
  live.restart();
  route();
});
live.start();
showCounts();
route();

function route() {
  const hash = window.location.hash.replace(/^#\/?/, '');
  const [first, ...rest] = hash.split('/');
  unmount();
  let current = 'tasks';
  if (first === 'tasks' && rest.length > 0 && rest[0]) {
    let id;
    try {
      id = decodeURIComponent(rest.join('/'));
    } catch {
      id = rest.join('/');
    }
    unmount = detail.mount(main, live, id);
  } else {
    const view = VIEWS.find((candidate) => candidate.path === (first || 'tasks'));
    if (view) {
      current = view.path;
      unmount = view.module.mount(main, live);
    } else {
      current = '';
      replaceChildren(main, el('h1', { tabindex: -1 }, 'Not found'),
        el('p', {}, 'No such page. ', el('a', { href: '#/tasks' }, 'See the tasks.')));
      unmount = () => {};
    }
  }
  if (first !== 'tasks' || rest.length === 0) document.title = 'task-processor';
  for (const link of navigation.querySelectorAll('a')) {
    if (link.dataset.view === current && !(current === 'tasks' && rest.length > 0)) {
      link.setAttribute('aria-current', 'page');
    } else {
      link.removeAttribute('aria-current');
    }
  }
  // Move focus to the new view's heading, as a page load would, so a
  // keyboard or screen-reader user starts there, but not on the first load.
  if (route.done) main.querySelector('h1')?.focus();
  route.done = true;
}

function showCounts() {
  const counts = live.counts();
  if (!counts) {
    replaceChildren(countsList, el('li', { class: 'muted' }, 'counting…'));
    return;
  }
  replaceChildren(countsList,
    el('li', { class: 'count total' }, el('span', { class: 'count-name' }, 'All'), el('span', { class: 'count-value' }, String(counts.total))),
    Object.entries(counts).filter(([name]) => name !== 'total').map(([name, value]) =>
      el('li', { class: `count status-${name.toLowerCase()}`, dataset: { status: name } },
        el('span', { class: 'count-name' }, name), el('span', { class: 'count-value' }, String(value)))));
}
