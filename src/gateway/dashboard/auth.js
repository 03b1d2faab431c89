// The bearer token of a server started with --auth-principals. The page and
// its files are served to anyone; every API call needs the token, which the
// reader types in once (signin.js) when a call is answered 401.
//
// It is kept in sessionStorage: it survives a reload of this tab and dies
// with the tab. Never localStorage (which keeps it on disk after the browser
// closes and shares it with every tab), never a URL (which lands in history
// and server logs), never the console.

const KEY = 'task-processor.token';

/**
 * `change` when the token is set or cleared; `required` (detail: the
 * server's message) when a call was answered 401.
 */
export const auth = new EventTarget();

/** The token held, or ''. Storage can be refused (a locked-down browser). */
export function token() {
  try {
    return sessionStorage.getItem(KEY) ?? '';
  } catch {
    return '';
  }
}

/** The Authorization header value, or null without a token. */
export function authorization() {
  const held = token();
  return held ? `Bearer ${held}` : null;
}

export function signIn(value) {
  sessionStorage.setItem(KEY, value);
  auth.dispatchEvent(new Event('change'));
}

export function signOut() {
  try {
    sessionStorage.removeItem(KEY);
  } catch {
    // Nothing was stored.
  }
  auth.dispatchEvent(new Event('change'));
}

/** Called by api.js on a 401: the token is missing or refused. */
export function required(message) {
  auth.dispatchEvent(new CustomEvent('required', { detail: message }));
}
