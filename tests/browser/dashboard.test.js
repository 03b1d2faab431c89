// The dashboard at GET / in Debian's headless Chromium (/usr/bin/chromium,
// never a downloaded browser), driven by playwright-core, against the real
// server: live table and counts, detail with data, result and a moving
// progress bar, create (with a bad-JSON error and a server error), cancel,
// filters and paging, untrusted data rendered as text, a phone-sized
// screen, the keyboard alone. Every page fails its test if it requests
// another host or logs an error it did not expect.
//
// Run: cd tests/browser && npm ci && npm test (with TASK_PROCESSOR_ADDR, or
// after `cargo build`, which makes the binary these tests then start).

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

import { rest, server } from './server.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SCREENSHOTS = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'target', 'browser');
const TIMEOUT_MS = 20_000;
/** A label only this run's tasks carry, so a shared server's others never interfere. */
const RUN = `r${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
const XSS_IMG = '<img src=x onerror=window.__xss=1>';
const XSS_SCRIPT = '<script>window.__xss=2</script>';

let target;
let api;
let browser;

before(async () => {
  target = await server();
  api = rest(target.base);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // As root (a CI container), Chromium only starts without its sandbox.
    chromiumSandbox: process.getuid?.() !== 0,
  });
  mkdirSync(SCREENSHOTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  await target?.stop();
});

/**
 * A fresh page that records every request and every console error. `check`
 * asserts none went to another host and no error was logged, except
 * messages matching `allowed`.
 */
async function open(path = '/', { viewport = { width: 1280, height: 800 } } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  const origin = new URL(target.base).origin;
  const requests = [];
  const errors = [];
  page.on('request', (request) => requests.push(request.url()));
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(message.text());
  });
  page.on('pageerror', (error) => errors.push(`uncaught: ${error.message}`));
  await page.goto(`${target.base}${path}`);
  await page.locator('#counts .count').first().waitFor();
  return {
    page,
    requests,
    async check(allowed = null) {
      const foreign = requests.filter((url) => new URL(url).origin !== origin);
      assert.deepEqual(foreign, [], 'requests to another host');
      const unexpected = errors.filter((text) => !(allowed && allowed.test(text)));
      assert.deepEqual(unexpected, [], 'console errors');
      await context.close();
    },
  };
}

/** Shows only tasks with `label` (key=value) in the table, as a user would. */
async function filterByLabel(page, label) {
  await page.fill('#filter-labels', label);
  await page.click('form.filters button[type=submit]');
  await page.locator('main[aria-busy]').waitFor({ state: 'detached' });
}

function row(page, id) {
  return page.locator(`tr[data-id="${id}"]`);
}

async function waitForRowStatus(page, id, status) {
  await page.locator(`tr[data-id="${id}"][data-status="${status}"]`).waitFor();
}

const labels = (extra = {}) => ({ run: RUN, ...extra });

test('loads from this host only, shows a task created before, and one created after live until it completes', async () => {
  const earlier = await api.create({ name: 'created before', kind: 'echo', data: { n: 1 }, labels: labels() });
  const { page, requests, check } = await open('/');
  assert.equal(await page.title(), 'task-processor');
  await filterByLabel(page, `run=${RUN}`);
  await row(page, earlier.id).waitFor();

  // Created after the page loaded: it must appear and finish without a reload.
  const navigations = requests.filter((url) => url.endsWith('/')).length;
  const later = await api.create({ name: 'created after', kind: 'sleep', data: { seconds: 1 }, labels: labels() });
  await row(page, later.id).waitFor();
  await waitForRowStatus(page, later.id, 'COMPLETED');
  assert.equal(requests.filter((url) => url.endsWith('/')).length, navigations, 'no reload');
  assert.equal(await row(page, later.id).locator('a.task-link').textContent(), 'created after');

  // The counts follow the live stream too.
  await page.waitForFunction(() =>
    Number(document.querySelector('#counts [data-status=COMPLETED] .count-value')?.textContent) >= 2);
  assert.equal(await page.locator('#connection').textContent(), 'live');
  await page.screenshot({ path: join(SCREENSHOTS, 'dashboard.png'), fullPage: true });
  await check();
});

test('the live stream resumes with its last token, and lists again when the token is refused', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  const watches = [];
  let served = 0;
  // The first stream is the server's initial list cut short (one message,
  // then the connection ends); the token it carried is then refused as
  // expired (412), as after a restart; the page must list again.
  await page.route('**/api/v1/watch?**', async (route) => {
    const url = route.request().url();
    watches.push(new URL(url).search);
    if (url.includes('resumeToken=')) {
      await route.fulfill({
        status: 412,
        contentType: 'application/json',
        body: JSON.stringify({ code: 9, message: 'the resume_token has expired', details: [] }),
      });
    } else if (served === 0) {
      served += 1;
      await route.fulfill({
        status: 200,
        contentType: 'text/event-stream',
        body: 'data: {"initialDone":false,"resumeToken":"first-token","task":{"id":"x","status":"TASK_STATUS_PENDING","revision":"1"}}\n\n',
      });
    } else {
      await route.continue();
    }
  });
  const task = await api.create({ name: 'counted', kind: 'echo', labels: labels() });
  await api.waitFor(task.id, 'COMPLETED');
  await page.goto(`${target.base}/`);
  await page.locator('#connection', { hasText: 'live' }).waitFor();
  // The stream is read with fetch, which sees the refusal's status
  // itself: 412, so list again.
  assert.deepEqual(watches.slice(0, 3),
    ['?sendInitial=true', '?resumeToken=first-token', '?sendInitial=true']);
  // The counts are the real server's, not the cut-short list's.
  await page.waitForFunction(() =>
    Number(document.querySelector('#counts [data-status=COMPLETED] .count-value')?.textContent) >= 1);
  assert.equal(await page.locator('#counts [data-status=PENDING] .count-value').textContent(), '0');
  await context.close();
});

test('the detail page shows data and result', async () => {
  // Keys in order: a JSON object is a protobuf Struct, a map the server sorts.
  const data = { image: 'cat.png', nested: { ok: true }, sizes: [64, 128] };
  const task = await api.create({ name: 'detail', kind: 'echo', data, labels: labels({ view: 'detail' }) });
  await api.waitFor(task.id, 'COMPLETED');
  const { page, check } = await open(`/#/tasks/${task.id}`);
  await page.locator('pre[aria-label=Data]').waitFor();
  assert.equal(await page.locator('h1').textContent(), 'detail');
  assert.equal(await page.locator('pre[aria-label=Data]').textContent(), JSON.stringify(data, null, 2));
  assert.equal(await page.locator('pre[aria-label=Result]').textContent(), JSON.stringify(data, null, 2));
  assert.equal(await page.locator('.status-card .badge').textContent(), 'COMPLETED');
  assert.match(await page.locator('dl.facts').textContent(), /view=detail/);
  await page.screenshot({ path: join(SCREENSHOTS, 'detail.png'), fullPage: true });
  await check();
});

test('the progress bar moves while a demo task runs', async () => {
  const { page, check } = await open('/');
  const task = await api.create({ name: 'progress', kind: 'demo', data: { n: 1 }, labels: labels() });
  await page.evaluate((id) => { window.location.hash = `#/tasks/${id}`; }, task.id);
  await page.locator('.status-card progress').waitFor();
  // Sample the bar's value in the page until the task is done.
  const seen = await page.evaluate(async () => {
    const values = [];
    const until = Date.now() + 15_000;
    while (Date.now() < until) {
      const bar = document.querySelector('.status-card progress');
      if (bar && values.at(-1) !== bar.value) values.push(bar.value);
      if (document.querySelector('.status-card .badge')?.textContent === 'COMPLETED') break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return values;
  });
  const between = seen.filter((value) => value > 0 && value < 100);
  assert.ok(between.length >= 2, `progress values seen: ${seen}`);
  assert.equal(seen.at(-1), 100, `progress values seen: ${seen}`);
  for (let index = 1; index < seen.length; index += 1) {
    assert.ok(seen[index] >= seen[index - 1], `progress went back: ${seen}`);
  }
  await check();
});

test('the create form refuses bad JSON, shows the server\'s error, and creates a task', async () => {
  const { page, requests, check } = await open('/#/new');
  await page.locator('form.create').waitFor();
  await page.fill('#create-name', 'from the form');
  await page.fill('#create-kind', 'echo');
  await page.fill('#create-data', '{"broken": ');
  await page.fill('#create-labels', `run=${RUN}\nsource=form`);
  const posts = () => requests.filter((url) => url.endsWith('/api/v1/tasks')).length;
  const before = posts();
  await page.click('form.create button[type=submit]');
  const dataError = page.locator('#create-data-error');
  await dataError.waitFor();
  assert.match(await dataError.textContent(), /not valid JSON/);
  assert.equal(await page.getAttribute('#create-data', 'aria-invalid'), 'true');
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'create-data');
  assert.equal(posts(), before, 'nothing sent');

  // A rule only the server knows: an unknown kind. Its message is shown.
  await page.fill('#create-data', '{"from": "form"}');
  await page.fill('#create-kind', 'no-such-kind');
  await page.click('form.create button[type=submit]');
  const refused = page.locator('.messages .alert');
  await refused.waitFor();
  assert.match(await refused.textContent(), /kind/);
  assert.match(await refused.textContent(), /INVALID_ARGUMENT/);

  await page.fill('#create-kind', 'echo');
  await page.click('form.create button[type=submit]');
  await page.waitForURL(/#\/tasks\/[0-9a-f-]{36}$/);
  const id = decodeURIComponent(new URL(page.url()).hash.split('/').pop());
  const task = await api.waitFor(id, 'COMPLETED');
  assert.equal(task.name, 'from the form');
  assert.deepEqual(task.data, { from: 'form' });
  assert.deepEqual(task.labels, { run: RUN, source: 'form' });
  // The browser logs the refused request's 400 itself.
  await check(/status of 400/);
});

test('cancel stops a running task from the table', async () => {
  const task = await api.create({ name: 'to cancel', kind: 'sleep', data: { seconds: 60 }, labels: labels({ cancel: 'yes' }) });
  const { page, check } = await open('/');
  await filterByLabel(page, `cancel=yes, run=${RUN}`);
  await waitForRowStatus(page, task.id, 'RUNNING');
  await row(page, task.id).getByRole('button', { name: /Cancel/ }).click();
  await waitForRowStatus(page, task.id, 'CANCELLED');
  // The button is gone with the status; focus stays in the row, on its link.
  assert.equal(await page.evaluate(() => document.activeElement?.closest('tr')?.dataset.id), task.id);
  assert.equal((await api.get(task.id)).status, 'TASK_STATUS_CANCELLED');
  await check();
});

test('the status filter and paging show the right tasks', async () => {
  const group = labels({ paging: 'yes' });
  const done = [];
  for (let index = 0; index < 12; index += 1) {
    done.push(await api.create({ name: `page ${index}`, kind: 'echo', labels: group }));
  }
  const running = await api.create({ name: 'still running', kind: 'sleep', data: { seconds: 60 }, labels: group });
  await api.waitFor(running.id, 'RUNNING');
  for (const task of done) await api.waitFor(task.id, 'COMPLETED');

  const { page, check } = await open('/');
  await page.selectOption('#filter-page-size', '10');
  await page.selectOption('#filter-status', 'RUNNING');
  await filterByLabel(page, `paging=yes, run=${RUN}`);
  const ids = async () => page.locator('tbody tr[data-id]').evaluateAll(
    (rows) => rows.map((tr) => tr.dataset.id));
  assert.deepEqual(await ids(), [running.id]);

  await page.selectOption('#filter-status', 'COMPLETED');
  await filterByLabel(page, `paging=yes, run=${RUN}`);
  const first = await ids();
  assert.deepEqual(first, done.slice(0, 10).map((task) => task.id), 'oldest first, 10 a page');
  assert.equal(await page.locator('.pager .page-label').textContent(), 'Page 1');
  await page.getByRole('button', { name: 'Next page' }).click();
  await page.locator('.pager .page-label', { hasText: 'Page 2' }).waitFor();
  await page.locator('main[aria-busy]').waitFor({ state: 'detached' });
  assert.deepEqual(await ids(), done.slice(10).map((task) => task.id));
  assert.equal(await page.getByRole('button', { name: 'Next page' }).isDisabled(), true);
  await page.getByRole('button', { name: 'Previous page' }).click();
  await page.locator('.pager .page-label', { hasText: 'Page 1' }).waitFor();
  await page.locator('main[aria-busy]').waitFor({ state: 'detached' });
  assert.deepEqual(await ids(), first);
  await api.cancel(running.id);
  await check();
});

test('schedules are listed and can be paused, resumed and deleted', async () => {
  const schedule = await api.createSchedule({
    cron: '@every 1h',
    task: { name: `hourly ${RUN}`, kind: 'echo', labels: labels() },
  });
  const { page, check } = await open('/#/schedules');
  const line = page.locator(`tr[data-id="${schedule.id}"]`);
  await line.waitFor();
  assert.match(await line.textContent(), /@every 1h/);
  assert.match(await line.textContent(), /Active/);
  await line.getByRole('button', { name: /^Pause/ }).click();
  await line.getByRole('button', { name: /^Resume/ }).waitFor();
  assert.equal((await api.getSchedule(schedule.id)).paused, true);
  await line.getByRole('button', { name: /^Resume/ }).click();
  await line.getByRole('button', { name: /^Pause/ }).waitFor();
  assert.equal((await api.getSchedule(schedule.id)).paused, false);
  page.once('dialog', (dialog) => dialog.accept());
  await line.getByRole('button', { name: /^Delete/ }).click();
  await line.waitFor({ state: 'detached' });
  await api.getSchedule(schedule.id, 404);
  await check();
});

test('markup in a task\'s name, labels and data is shown as text, never run', async () => {
  const name = `${XSS_IMG}${XSS_SCRIPT}`;
  const data = { html: XSS_IMG, script: XSS_SCRIPT };
  const task = await api.create({
    name,
    description: XSS_IMG,
    kind: 'echo',
    data,
    labels: labels({ xss: XSS_IMG }),
  });
  await api.waitFor(task.id, 'COMPLETED');
  const { page, requests, check } = await open('/');
  await filterByLabel(page, `run=${RUN}, xss=${XSS_IMG}`);
  await row(page, task.id).waitFor();
  assert.equal(await row(page, task.id).locator('a.task-link').textContent(), name);
  assert.match(await row(page, task.id).locator('ul.labels').textContent(), /xss=<img src=x onerror=window.__xss=1>/);
  const injected = () => page.evaluate(() => ({
    xss: window.__xss,
    images: document.querySelectorAll('img').length,
    scripts: [...document.querySelectorAll('script')].map((script) => script.src),
  }));
  const origin = new URL(target.base).origin;
  assert.deepEqual(await injected(), { xss: undefined, images: 0, scripts: [`${origin}/dashboard/app.js`] });

  await row(page, task.id).locator('a.task-link').click();
  await page.locator('pre[aria-label=Data]').waitFor();
  assert.equal(await page.locator('h1').textContent(), name);
  assert.equal(await page.locator('pre[aria-label=Data]').textContent(), JSON.stringify(data, null, 2));
  assert.match(await page.locator('dl.facts').textContent(), /<img src=x onerror=window.__xss=1>/);
  assert.deepEqual(await injected(), { xss: undefined, images: 0, scripts: [`${origin}/dashboard/app.js`] });
  assert.deepEqual(requests.filter((url) => new URL(url).pathname === '/x'), [], 'the image was never fetched');
  await check();
});

test('on a 375 px wide screen nothing scrolls sideways and the create form is reachable', async () => {
  await api.create({
    name: `a-very-long-task-name-without-any-space-${'x'.repeat(120)}`,
    kind: 'echo',
    data: { long: 'y'.repeat(400) },
    labels: labels({ phone: 'a-long-label-value-'.repeat(6) }),
  });
  const { page, check } = await open('/', { viewport: { width: 375, height: 667 } });
  await filterByLabel(page, `run=${RUN}`);
  await page.locator('tbody tr[data-id]').first().waitFor();
  const overflow = () => page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    clientWidth: document.documentElement.clientWidth,
  }));
  let sizes = await overflow();
  assert.ok(sizes.scrollWidth <= sizes.clientWidth, `the table page is ${JSON.stringify(sizes)}`);
  await page.screenshot({ path: join(SCREENSHOTS, 'phone.png') });

  await page.locator('tbody tr[data-id] a.task-link').first().click();
  await page.locator('pre[aria-label=Data]').waitFor();
  sizes = await overflow();
  assert.ok(sizes.scrollWidth <= sizes.clientWidth, `the detail page is ${JSON.stringify(sizes)}`);

  await page.getByRole('link', { name: 'New task' }).first().click();
  const submit = page.locator('form.create button[type=submit]');
  await submit.scrollIntoViewIfNeeded();
  assert.ok(await submit.isVisible());
  assert.ok(await page.locator('#create-name').isVisible());
  sizes = await overflow();
  assert.ok(sizes.scrollWidth <= sizes.clientWidth, `the create page is ${JSON.stringify(sizes)}`);
  await check();
});

test('the keyboard alone opens a task and submits the create form', async () => {
  const task = await api.create({ name: 'by keyboard', kind: 'echo', labels: labels({ keys: 'yes' }) });
  await api.waitFor(task.id, 'COMPLETED');
  const { page, check } = await open('/');

  /** Presses Tab until `predicate` holds for the focused element. */
  async function tabTo(description, predicate, argument) {
    for (let presses = 0; presses < 80; presses += 1) {
      await page.keyboard.press('Tab');
      if (await page.evaluate(predicate, argument)) return;
    }
    assert.fail(`Tab never reached ${description}`);
  }
  const focusVisible = () => page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle !== 'none');

  await tabTo('the label filter', () => document.activeElement?.id === 'filter-labels');
  assert.ok(await focusVisible(), 'focus is visible');
  await page.keyboard.type(`keys=yes, run=${RUN}`);
  await page.keyboard.press('Enter');
  await row(page, task.id).waitFor();
  await tabTo('the task link', (id) => document.activeElement?.closest('tr')?.dataset.id === id
    && document.activeElement.matches('a.task-link'), task.id);
  assert.ok(await focusVisible(), 'focus is visible');
  await page.keyboard.press('Enter');
  await page.waitForURL(new RegExp(`#/tasks/${task.id}$`));
  await page.locator('h1', { hasText: 'by keyboard' }).waitFor();

  // Focus on a task's Cancel button survives the task changing: a flaky
  // task fails its first runs and retries after back-offs of seconds, so it
  // changes (RUNNING, RETRYING, RUNNING…) while it stays cancellable.
  const running = await api.create({
    name: 'keeps focus',
    kind: 'flaky',
    data: { failures: 3 },
    retryPolicy: { maxAttempts: 5, initialBackoff: '1s' },
    labels: labels({ keys: 'yes' }),
  });
  await page.goBack();
  await row(page, running.id).waitFor();
  await tabTo('the Cancel button of the running task', (id) => document.activeElement?.closest('tr')?.dataset.id === id
    && document.activeElement.matches('button'), running.id);
  const revisionBefore = Number(await row(page, running.id).getAttribute('data-revision'));
  await page.waitForFunction(({ id, before }) =>
    Number(document.querySelector(`tr[data-id="${id}"]`)?.dataset.revision) > before,
  { id: running.id, before: revisionBefore });
  assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Cancel keeps focus');
  await page.keyboard.press('Enter');
  await waitForRowStatus(page, running.id, 'CANCELLED');

  await tabTo('the New task link', () => document.activeElement?.matches('nav a[data-view=new]'));
  await page.keyboard.press('Enter');
  await page.locator('form.create').waitFor();
  await tabTo('the name field', () => document.activeElement?.id === 'create-name');
  await page.keyboard.type('typed by keyboard');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Control+A');
  await page.keyboard.type('echo');
  await tabTo('the labels field', () => document.activeElement?.id === 'create-labels');
  await page.keyboard.type(`run=${RUN}`);
  await tabTo('the submit button', () => document.activeElement?.matches('form.create button[type=submit]'));
  await page.keyboard.press('Enter');
  await page.waitForURL(/#\/tasks\/[0-9a-f-]{36}$/);
  await page.locator('h1', { hasText: 'typed by keyboard' }).waitFor();
  await check();
});
