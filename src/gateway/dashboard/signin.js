// The sign-in form and the Sign out button, for a server with
// authentication on. The form appears only when a call was answered 401
// (missing or unknown token), with the server's reason; a 403 never shows
// it, as another token would not be asked for: the views show the
// server's message (which role is lacking) instead.

import { auth, signIn, signOut, token } from './auth.js';
import { alertBox, el, replaceChildren } from './dom.js';

/** Headers allow visible ASCII only; anything else would make fetch throw. */
const TOKEN_PATTERN = /^[\x21-\x7e]+$/;

/** Fills `section` (the form's place) and `button` (Sign out) and keeps them current. */
export function mountSignIn(section, button) {
  const input = el('input', {
    id: 'signin-token', name: 'token', type: 'password', required: true,
    autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'signin-reason',
  });
  const reason = el('p', { id: 'signin-reason' });
  const problem = el('div', { class: 'messages' });
  const form = el('form', { class: 'signin-form', novalidate: true },
    el('div', { class: 'field grow' }, el('label', { for: 'signin-token' }, 'Token'), input),
    el('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  replaceChildren(section,
    el('h2', { id: 'signin-title' }, 'Sign in'),
    reason, problem, form);
  section.setAttribute('aria-labelledby', 'signin-title');

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!TOKEN_PATTERN.test(value)) {
      input.setAttribute('aria-invalid', 'true');
      replaceChildren(problem, alertBox(value
        ? 'A token is letters, digits and punctuation, without spaces.'
        : 'Enter your token.'));
      input.focus();
      return;
    }
    input.value = '';
    input.removeAttribute('aria-invalid');
    replaceChildren(problem);
    section.hidden = true;
    // The views and the live stream start again with the token (app.js).
    signIn(value);
  });
  button.addEventListener('click', () => signOut());

  auth.addEventListener('required', (event) => {
    const held = token() !== '';
    reason.textContent = held
      ? `The server refused the token: ${event.detail || 'unauthenticated'}. Enter another.`
      : 'This server needs a bearer token for its API. Enter yours; it is kept for this tab only.';
    const wasHidden = section.hidden;
    section.hidden = false;
    // Focus the field once, when the form appears, not on every refused call.
    if (wasHidden) input.focus();
  });
  auth.addEventListener('change', showButton);
  showButton();

  function showButton() {
    button.hidden = token() === '';
  }
}
