// The signaling client: one WebSocket speaking docs/protocol.md. Requests carry an id and resolve
// with the reply's result; events go to `onEvent`. A socket that drops while the user is in a room
// is reopened with backoff and the session is taken back with `resume`, so a short network loss
// keeps the user's seat and pending requests.

const REPLY_TIMEOUT_MS = 10_000;
// Close codes after which reconnecting would be wrong: replaced by a newer session (4001), or
// closed by the server for flooding (1008).
const FINAL_CLOSE_CODES = new Set([1008, 4001]);

export class SignalError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

export class Signal {
  constructor(url, { onEvent, onState }) {
    this.url = url;
    this.onEvent = onEvent;
    // "connecting" | "open" | "reconnecting" | "closed"
    this.onState = onState;
    this.ws = null;
    this.nextId = 1;
    this.waiting = new Map();
    this.session = null;
    this.stopped = false;
    this.retryTimer = null;
  }

  // Open the socket; resolves when it is open, rejects when the server cannot be reached.
  open() {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch (e) {
        reject(new SignalError('unreachable', `Bad server address ${this.url}: ${e.message}`));
        return;
      }
      this.ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        resolve();
      };
      ws.onmessage = (m) => this.receive(m.data);
      ws.onclose = (e) => {
        if (this.ws !== ws) return;
        this.failWaiting(new SignalError('disconnected', 'The connection to the server was lost.'));
        if (!opened) {
          reject(new SignalError('unreachable', `Cannot reach the server at ${this.url}.`));
          return;
        }
        this.dropped(e.code);
      };
    });
  }

  request(type, fields = {}) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new SignalError('disconnected', 'Not connected to the server.'));
    }
    const id = this.nextId++;
    ws.send(JSON.stringify({ id, type, ...fields }));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new SignalError('timeout', `The server did not answer "${type}".`));
      }, REPLY_TIMEOUT_MS);
      this.waiting.set(id, { resolve, reject, timer });
    });
  }

  // `join` and remember the session, so a later drop can be resumed.
  async join(fields) {
    const result = await this.request('join', fields);
    this.session = result.session;
    return result;
  }

  // Leave for good: no reconnect after this.
  stop() {
    this.stopped = true;
    this.session = null;
    clearTimeout(this.retryTimer);
    const ws = this.ws;
    this.ws = null;
    this.failWaiting(new SignalError('disconnected', 'Left.'));
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
    this.onState('closed');
  }

  receive(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      console.warn('miclink: a frame that is not JSON', data);
      return;
    }
    if (msg.type === 'reply') {
      const w = this.waiting.get(msg.id);
      if (!w) return;
      this.waiting.delete(msg.id);
      clearTimeout(w.timer);
      if (msg.ok) w.resolve(msg.result);
      else w.reject(new SignalError(msg.error?.code ?? 'error', msg.error?.message));
      return;
    }
    this.onEvent(msg);
  }

  failWaiting(err) {
    for (const w of this.waiting.values()) {
      clearTimeout(w.timer);
      w.reject(err);
    }
    this.waiting.clear();
  }

  dropped(code) {
    this.ws = null;
    if (this.stopped || !this.session || FINAL_CLOSE_CODES.has(code)) {
      this.onState('closed', code);
      return;
    }
    this.onState('reconnecting');
    this.retry(0);
  }

  // Reopen and resume; the server keeps the session for its grace period (15 s by default), so
  // the delays stay short and the attempts stop once `resume` says the session expired.
  retry(attempt) {
    const delay = Math.min(250 * 2 ** attempt, 4000);
    this.retryTimer = setTimeout(async () => {
      if (this.stopped) return;
      try {
        await this.open();
      } catch {
        this.retry(attempt + 1);
        return;
      }
      try {
        const result = await this.request('resume', { session: this.session });
        this.onState('open');
        this.onEvent({ type: 'resumed', result });
      } catch (e) {
        // A socket that closed under the resume is retried by its close handler; one that went
        // silent is closed so the handler runs.
        if (e.code === 'disconnected') return;
        if (e.code === 'timeout') {
          this.ws?.close();
          return;
        }
        this.stopped = true;
        this.onEvent({ type: 'resume_failed', code: e.code, message: e.message });
        this.stop();
      }
    }, delay);
  }
}
