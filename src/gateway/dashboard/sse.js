// Server-Sent Events read with fetch, in place of EventSource, which can
// send no Authorization header and hides a refused answer's status. It
// reads the text/event-stream format by the HTML standard's rules, as far
// as this server uses it (src/gateway/watch.rs): `data:` lines (joined by
// newlines), an `event:` name (`error` for the server's last event when
// the RPC failed), `:` comments (keep-alives) ignored, a blank line ending
// each event. `id:` and `retry:` are ignored: resuming is by the
// resumeToken inside the data, and reconnecting is the caller's.

import { send } from './api.js';

/**
 * Opens `path` as an event stream. Handlers, each optional:
 * - onOpen(): the server answered 200 with an event stream;
 * - onMessage(data): an event without a name (or named `message`);
 * - onError({data, status}): the stream is over, called once, after which
 *   nothing else is: `data` is the JSON of the server's `error` event;
 *   `status` is the HTTP status of an answer that was not a stream (before
 *   onOpen); neither when the connection failed or the server ended the
 *   stream (as EventSource reports them: an `error` without data).
 * Returns {close()}; once closed, no handler is called.
 */
export function openEventStream(path, handlers) {
  const abort = new AbortController();
  let closed = false;
  const close = () => {
    closed = true;
    abort.abort();
  };
  const finish = (detail) => {
    if (closed) return;
    close();
    handlers.onError?.(detail);
  };
  // Aborting rejects the pending read; that and a network failure both end here.
  read().catch(() => finish({}));
  return { close };

  async function read() {
    const response = await send(path, {
      signal: abort.signal,
      cache: 'no-store',
      headers: { accept: 'text/event-stream' },
    });
    if (closed) return;
    const type = response.headers.get('content-type') ?? '';
    if (!response.ok || !type.startsWith('text/event-stream')) {
      finish({ status: response.status });
      return;
    }
    handlers.onOpen?.();
    const parser = eventParser((name, data) => {
      if (closed) return;
      if (name === 'error') {
        finish({ data });
      } else if (name === 'message') {
        handlers.onMessage?.(data);
      }
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { done, value } = await reader.read();
      if (closed) return;
      if (done) break;
      parser(decoder.decode(value, { stream: true }));
    }
    finish({});
  }
}

/**
 * A function taking the stream's text in pieces of any size (a network
 * chunk may end mid-line) and calling `dispatch(name, data)` for each
 * complete event.
 */
function eventParser(dispatch) {
  let buffer = '';
  let name = '';
  let data = [];
  return (text) => {
    buffer += text;
    for (;;) {
      const end = buffer.search(/\r\n|\r|\n/);
      if (end < 0) return;
      // A `\r` last in a piece may be the first half of `\r\n`: wait for more.
      if (buffer[end] === '\r' && end === buffer.length - 1) return;
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer.startsWith('\r\n', end) ? 2 : 1));
      if (line === '') {
        if (data.length > 0) dispatch(name || 'message', data.join('\n'));
        name = '';
        data = [];
      } else if (!line.startsWith(':')) {
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? '' : line.slice(colon + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (field === 'data') data.push(value);
        else if (field === 'event') name = value;
      }
    }
  };
}
