// The dashboard against a server with authentication on (--auth-principals):
// the API answers 401 until the reader signs in with a bearer token, which
// the page then sends on every call and on its event streams (read with
// fetch, as EventSource cannot send a header). The token must stay in
// sessionStorage, never in a URL or localStorage; a 403 must show the
// server's message without asking for a token again. This file starts a
// server of its own, since the other tests run without authentication.
//
// Run: cd tests/browser && npm ci && npm test (after `cargo build`).

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';

import { rest, server } from './server.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const TIMEOUT_MS = 20_000;
const RUN = `a${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
/** A writer's token and a reader's (no role write), as a person would make them. */
const WRITER = randomBytes(32).toString('base64url');
const READER = randomBytes(32).toString('base64url');
const sha256 = (text) => createHash('sha256').update(text).digest('hex');

let directory;
let target;
let browser;

before(async () => {
  directory = mkdtempSync(join(tmpdir(), 'dashboard-auth-'));
  const principals = join(directory, 'principals.yaml');
  writeFileSync(principals, [
    'principals:',
    '  - name: dashboard-writer',
    `    token_sha256: ${sha256(WRITER)}`,
    '    roles: [read, write]',
    '  - name: dashboard-reader',
    `    token_sha256: ${sha256(READER)}`,
    '    roles: [read]',
    '',
  ].join('\n'));
  target = await server(['--auth-principals', principals]);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    chromiumSandbox: process.getuid?.() !== 0,
  });
});

after(async () => {
  await browser?.close();
  await target?.stop();
  if (directory) rmSync(directory, { recursive: true, force: true });
});

test('with auth on, the page asks for a token, then follows a task live with it', async () => {
  // The server really refuses a call without a token.
  await rest(target.base).create({ name: 'no token', kind: 'echo' }, 401);
  const api = rest(target.base, WRITER);

  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  const origin = new URL(target.base).origin;
  const requests = [];
  const errors = [];
  page.on('request', (request) => requests.push({
    url: request.url(),
    authorization: request.headers().authorization ?? null,
  }));
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(message.text());
  });
  page.on('pageerror', (error) => errors.push(`uncaught: ${error.message}`));

  await page.goto(`${target.base}/`);
  const form = page.locator('#signin');
  await form.waitFor({ state: 'visible' });
  const field = page.getByLabel('Token');
  assert.equal(await field.getAttribute('type'), 'password');
  await page.locator('#connection', { hasText: 'signed out' }).waitFor();
  assert.equal(await page.locator('#signout').isVisible(), false);

  // The keyboard alone: the field has focus when the form appears.
  await page.waitForFunction(() => document.activeElement?.id === 'signin-token');
  await page.keyboard.type(WRITER);
  await page.keyboard.press('Enter');
  await form.waitFor({ state: 'hidden' });
  await page.locator('#connection', { hasText: 'live' }).waitFor();
  assert.equal(await page.locator('#signout').isVisible(), true);

  // A task created after signing in shows up and completes, live.
  await page.fill('#filter-labels', `run=${RUN}`);
  await page.click('form.filters button[type=submit]');
  await page.locator('main[aria-busy]').waitFor({ state: 'detached' });
  const task = await api.create({ name: 'behind auth', kind: 'sleep', data: { seconds: 1 }, labels: { run: RUN } });
  await page.locator(`tr[data-id="${task.id}"]`).waitFor();
  await page.locator(`tr[data-id="${task.id}"][data-status="COMPLETED"]`).waitFor();
  await page.waitForFunction(() =>
    Number(document.querySelector('#counts [data-status=COMPLETED] .count-value')?.textContent) >= 1);

  // Its own page follows it on the WatchTask stream, with the token too.
  await page.click(`tr[data-id="${task.id}"] a.task-link`);
  await page.locator('.status-card .badge', { hasText: 'COMPLETED' }).waitFor();

  // The token went in the header only: never in a URL, never to another host.
  for (const { url } of requests) {
    assert.ok(!url.includes(WRITER) && !url.includes(encodeURIComponent(WRITER)), `token in ${url}`);
    assert.equal(new URL(url).origin, origin, 'another host');
  }
  const streams = requests.filter(({ url }) => /\/api\/v1\/(watch|tasks\/[^/]+\/watch)/.test(url));
  assert.ok(streams.some(({ authorization }) => authorization === `Bearer ${WRITER}`), 'a stream sent the token');
  const lists = requests.filter(({ url }) => url.includes('/api/v1/tasks?'));
  assert.ok(lists.some(({ authorization }) => authorization === `Bearer ${WRITER}`), 'a list sent the token');
  // Kept for this tab only.
  const stored = await page.evaluate(() => ({
    session: Object.keys(sessionStorage).map((key) => sessionStorage.getItem(key)),
    local: Object.keys(localStorage).map((key) => localStorage.getItem(key)),
  }));
  assert.deepEqual(stored.session, [WRITER]);
  assert.deepEqual(stored.local, []);

  // Signing out forgets it and asks again.
  await page.click('#signout');
  await form.waitFor({ state: 'visible' });
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);

  // A principal without role write: its create is refused 403, shown with
  // the server's reason, and no token is asked for again.
  await page.getByLabel('Token').fill(READER);
  await page.click('#signin button[type=submit]');
  await form.waitFor({ state: 'hidden' });
  await page.goto(`${target.base}/#/new`);
  await page.locator('form.create').waitFor();
  await page.fill('#create-name', 'not allowed');
  await page.fill('#create-kind', 'echo');
  await page.click('form.create button[type=submit]');
  const refused = page.locator('.messages .alert');
  await refused.waitFor();
  assert.match(await refused.textContent(), /lacks role write/);
  assert.match(await refused.textContent(), /PERMISSION_DENIED/);
  assert.equal(await form.isVisible(), false, 'a 403 does not ask for a token');

  // The browser logs the refused requests' statuses itself.
  assert.deepEqual(errors.filter((text) => !/status of 40[13]/.test(text)), [], 'console errors');
  await context.close();
});
