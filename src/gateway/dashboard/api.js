// Calls to the REST routes of this same origin, and their errors as the
// server wrote them: a JSON body {code, message, details}, where code is the
// gRPC code and details may hold a google.rpc.BadRequest naming fields.
// Every request, streams included (sse.js), goes through `send`, which adds
// the bearer token when one is held and reports a 401 to auth.js.

import { authorization, required } from './auth.js';

const CODE_NAMES = [
  'OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND',
  'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION',
  'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS',
  'UNAUTHENTICATED',
];

/** The gRPC code numbers the dashboard acts on. */
export const CODE = Object.freeze({
  INVALID_ARGUMENT: 3,
  NOT_FOUND: 5,
  PERMISSION_DENIED: 7,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
});

/**
 * fetch(path, init) with `authorization: Bearer <token>` when a token is
 * held. A 401 (no token, or one the server does not know) asks for one,
 * with the server's message; a 403 does not: the token is good, its
 * principal lacks a role, and the caller shows the server's message.
 */
export async function send(path, init = {}) {
  const headers = { ...init.headers };
  const value = authorization();
  if (value) headers.authorization = value;
  const response = await fetch(path, { ...init, headers });
  if (response.status === 401) {
    response.clone().json()
      .then((body) => required(typeof body?.message === 'string' ? body.message : ''))
      .catch(() => required(''));
  }
  return response;
}

/** An error answer of the server, or a request that never got one. */
export class ApiError extends Error {
  constructor(httpStatus, body) {
    const code = Number.isInteger(body?.code) ? body.code : 2;
    super(typeof body?.message === 'string' ? body.message : 'unknown error');
    this.httpStatus = httpStatus;
    this.code = code;
    this.details = Array.isArray(body?.details) ? body.details : [];
    this.retryAfter = null;
  }

  get codeName() {
    return CODE_NAMES[this.code] ?? `code ${this.code}`;
  }

  /** The field violations of a google.rpc.BadRequest detail, if any. */
  get fieldViolations() {
    return this.details.flatMap((detail) =>
      Array.isArray(detail?.fieldViolations) ? detail.fieldViolations : []);
  }

  /** One line for a person: what the server said, and its code. */
  describe() {
    const where = this.httpStatus ? `HTTP ${this.httpStatus}, ` : '';
    let text = `${this.message} (${where}${this.codeName})`;
    if (this.retryAfter) text += ` — try again in ${this.retryAfter} s`;
    return text;
  }
}

/**
 * `method path` with an optional JSON body; resolves to the answer's JSON,
 * rejects with an ApiError. A network failure is UNAVAILABLE, as gRPC
 * clients see it.
 */
export async function call(method, path, body) {
  const init = { method, headers: { accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await send(path, init);
  } catch (error) {
    throw new ApiError(0, { code: CODE.UNAVAILABLE, message: `cannot reach the server: ${error.message}` });
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) {
    const error = new ApiError(response.status, json ?? { code: 2, message: text || response.statusText });
    error.retryAfter = response.headers.get('retry-after');
    throw error;
  }
  return json;
}

/** A query string from pairs; repeated names are repeated parameters. */
export function query(pairs) {
  const search = new URLSearchParams();
  for (const [name, value] of pairs) {
    if (value !== undefined && value !== null && value !== '') search.append(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}

export const getTask = (id) => call('GET', `/api/v1/tasks/${encodeURIComponent(id)}`);
export const cancelTask = (id) => call('POST', `/api/v1/tasks/${encodeURIComponent(id)}/cancel`);
export const createTask = (request) => call('POST', '/api/v1/tasks', request);
export const listSchedules = (pageSize, pageToken) =>
  call('GET', `/api/v1/schedules${query([['pageSize', pageSize], ['pageToken', pageToken]])}`);

/** `filter`: {statuses: [...], labels: [[key, value], ...]}. */
export function listTasks(filter, pageSize, pageToken) {
  const pairs = [['pageSize', pageSize], ['pageToken', pageToken]];
  for (const status of filter.statuses) pairs.push(['status', `TASK_STATUS_${status}`]);
  for (const [key, value] of filter.labels) pairs.push(['label', `${key}=${value}`]);
  return call('GET', `/api/v1/tasks${query(pairs)}`);
}

export function scheduleAction(id, action) {
  const path = `/api/v1/schedules/${encodeURIComponent(id)}`;
  return action === 'delete' ? call('DELETE', path) : call('POST', `${path}/${action}`);
}

/**
 * Parses `key=value` pairs, one per line or separated by commas, as label
 * filters and task labels take them. Throws an Error naming the bad pair.
 */
export function parseLabels(text) {
  const pairs = [];
  const seen = new Set();
  for (const raw of text.split(/[\n,]/)) {
    const item = raw.trim();
    if (!item) continue;
    const equals = item.indexOf('=');
    if (equals <= 0) throw new Error(`"${item}" is not key=value`);
    const key = item.slice(0, equals).trim();
    if (seen.has(key)) throw new Error(`the key "${key}" is given twice`);
    seen.add(key);
    pairs.push([key, item.slice(equals + 1).trim()]);
  }
  return pairs;
}
