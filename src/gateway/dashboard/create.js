// The create form: a CreateTaskRequest from fields, checked here only for
// what the browser alone can tell (the data is JSON, labels are key=value,
// numbers are numbers); every other rule is the server's, whose error
// message (naming the field) is shown as it comes.

import { createTask, parseLabels } from './api.js';
import { alertBox, el, replaceChildren } from './dom.js';
import { describe } from './tasks.js';

/** The built-in kinds, offered as suggestions; any registered kind works. */
const KINDS = ['demo', 'echo', 'sleep', 'fail', 'flaky'];

export function mount(main) {
  const message = el('div', { class: 'messages' });
  const fields = {};
  const errors = {};

  /** A labelled field with its own error line, tied by aria-describedby. */
  function field(name, label, control, help) {
    control.id = `create-${name}`;
    control.name = name;
    fields[name] = control;
    errors[name] = el('p', { id: `create-${name}-error`, class: 'field-error', hidden: true });
    const described = [help ? `create-${name}-help` : null, `create-${name}-error`].filter(Boolean);
    control.setAttribute('aria-describedby', described.join(' '));
    return el('div', { class: 'field' },
      el('label', { for: control.id }, label),
      control,
      help ? el('small', { id: `create-${name}-help` }, help) : null,
      errors[name]);
  }

  const form = el('form', { class: 'create', novalidate: true, onsubmit: submit },
    field('name', 'Name (required)', el('input', { type: 'text', required: true, maxlength: 200, autocomplete: 'off' })),
    field('kind', 'Kind', el('input', { type: 'text', list: 'create-kinds', value: 'demo', autocomplete: 'off', spellcheck: 'false' }),
      'Empty means the server\'s default kind.'),
    el('datalist', { id: 'create-kinds' }, KINDS.map((kind) => el('option', { value: kind }))),
    field('data', 'Data (JSON)', el('textarea', { rows: 6, spellcheck: 'false' }, '{}'),
      'Any JSON value, for example {"seconds": 5} for sleep.'),
    field('labels', 'Labels', el('textarea', { rows: 2, spellcheck: 'false' }),
      'key=value, one per line or separated by commas.'),
    field('description', 'Description', el('input', { type: 'text', autocomplete: 'off' })),
    el('fieldset', {},
      el('legend', {}, 'Scheduling (optional)'),
      field('timeout', 'Timeout, seconds', el('input', { type: 'number', min: 0, step: 1, inputmode: 'numeric' }),
        '0 or empty: the server\'s default.'),
      field('priority', 'Priority', el('input', { type: 'number', min: -100, max: 100, step: 1 }),
        '−100 to 100; higher starts first.'),
      field('runAfter', 'Run after', el('input', { type: 'datetime-local', step: 1 }),
        'Your local time; empty: at once.'),
      field('maxAttempts', 'Max attempts', el('input', { type: 'number', min: 0, max: 100, step: 1 }),
        'Runs that may fail before the task fails; empty: the default.')),
    el('div', { class: 'form-actions' }, el('button', { type: 'submit', class: 'primary' }, 'Create task')));

  replaceChildren(main,
    el('p', {}, el('a', { href: '#/tasks' }, '← All tasks')),
    el('div', { class: 'view-head' }, el('h1', { tabindex: -1 }, 'New task')),
    message,
    form);

  async function submit(event) {
    event.preventDefault();
    for (const name of Object.keys(errors)) setError(name, null);
    replaceChildren(message);
    const request = read();
    if (!request) return;
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const task = await createTask(request);
      window.location.hash = `#/tasks/${encodeURIComponent(task.id)}`;
    } catch (error) {
      // The server names a field in a BadRequest detail: put its words
      // next to that field too.
      for (const violation of error.fieldViolations ?? []) {
        const field = String(violation.field ?? '');
        const name = FIELD_OF[field] ?? FIELD_OF[field.split(/[.[]/)[0]];
        if (name) setError(name, violation.description);
      }
      replaceChildren(message, alertBox(`The server refused the task: ${describe(error)}`));
      message.focus();
    } finally {
      button.disabled = false;
    }
  }

  /** The request, or null after marking the first field in error. */
  function read() {
    const request = { name: fields.name.value, kind: fields.kind.value.trim() };
    let first = null;
    const fail = (name, text) => {
      setError(name, text);
      first ??= name;
    };
    if (!fields.name.value.trim()) fail('name', 'A name is required.');
    const dataText = fields.data.value.trim();
    if (dataText) {
      try {
        request.data = JSON.parse(dataText);
      } catch (error) {
        fail('data', `Data is not valid JSON: ${error.message}`);
      }
    }
    try {
      const labels = parseLabels(fields.labels.value);
      if (labels.length) request.labels = Object.fromEntries(labels);
    } catch (error) {
      fail('labels', `Labels: ${error.message}`);
    }
    if (fields.description.value) request.description = fields.description.value;
    const whole = (name, min, max) => {
      const text = fields[name].value.trim();
      if (!text) return undefined;
      const number = Number(text);
      if (!Number.isInteger(number) || number < min || number > max) {
        fail(name, `Must be a whole number from ${min} to ${max}.`);
        return undefined;
      }
      return number;
    };
    const timeout = whole('timeout', 0, 4294967295);
    if (timeout) request.timeoutSeconds = timeout;
    const priority = whole('priority', -100, 100);
    if (priority) request.priority = priority;
    const maxAttempts = whole('maxAttempts', 0, 100);
    if (maxAttempts) request.retryPolicy = { maxAttempts };
    if (fields.runAfter.value) {
      const at = new Date(fields.runAfter.value);
      if (Number.isNaN(at.getTime())) fail('runAfter', 'Not a date and time.');
      else request.runAfter = at.toISOString();
    }
    if (first) {
      replaceChildren(message, alertBox('Please correct the marked fields.'));
      fields[first].focus();
      return null;
    }
    return request;
  }

  function setError(name, text) {
    const line = errors[name];
    line.textContent = text ?? '';
    line.hidden = !text;
    if (text) fields[name].setAttribute('aria-invalid', 'true');
    else fields[name].removeAttribute('aria-invalid');
  }

  message.tabIndex = -1;
  return () => {};
}

/** The request's field names, as the server names them, to the form's. */
const FIELD_OF = {
  name: 'name',
  kind: 'kind',
  data: 'data',
  labels: 'labels',
  description: 'description',
  timeout_seconds: 'timeout',
  priority: 'priority',
  run_after: 'runAfter',
  'retry_policy.max_attempts': 'maxAttempts',
};
