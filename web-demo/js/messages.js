// The room's messages and metadata on the page (protocol version 3): the chat strip (topic
// "chat"), the like counter (topic "like") and the banner the room's metadata makes. Everything
// here comes from other users or the integrator's backend, so it reaches the page as text only
// (textContent), never as markup. The page counts and shows what the server broadcasts: a line
// or a like appears when its `room_message` comes back, the sender's own included.

const $ = (id) => document.getElementById(id);

// Lines kept in the strip; older ones leave the DOM.
const KEEP_LINES = 50;
// `send_message`'s data: at most 2 KiB of UTF-8.
const MAX_DATA_BYTES = 2048;
const ERROR_SHOWN_MS = 6000;
// One error line on the page, so one timer, whichever room's object showed it.
let errorTimer = null;

const REFUSALS = {
  rate_limited: 'Slow down: at most 5 messages a second.',
  bad_request: 'The server refused the message.',
};

export class RoomMessages {
  // `send(topic, data)` sends a `send_message` and resolves with its reply's result; `me` is
  // this page's user id, to mark its own lines.
  constructor({ send, me }) {
    this.send = send;
    this.me = me;
    this.likes = 0;
    $('chat-lines').replaceChildren();
    $('chat-input').value = '';
    $('like-count').textContent = '0';
    this.showError('');
    this.setMetadata('');
    // One set of handlers for the page: a new room's object replaces the last one's.
    $('chat-form').onsubmit = (e) => {
      e.preventDefault();
      this.sendChat();
    };
    $('like-button').onclick = () => this.like();
  }

  async sendChat() {
    const input = $('chat-input');
    const text = input.value.trim();
    if (!text) return;
    if (new TextEncoder().encode(text).length > MAX_DATA_BYTES) {
      this.showError('Too long: a message is at most 2 KiB.');
      return;
    }
    input.value = '';
    try {
      await this.send('chat', text);
      this.showError('');
    } catch (e) {
      // Given back to edit or send again, unless something new was typed meanwhile.
      if (!input.value) input.value = text;
      this.showError(REFUSALS[e.code] ?? `Not sent: ${e.message}`);
    }
  }

  async like() {
    try {
      await this.send('like', '1');
    } catch (e) {
      this.showError(REFUSALS[e.code] ?? `Not sent: ${e.message}`);
    }
  }

  // A `room_message` event.
  message(ev) {
    if (typeof ev.topic !== 'string' || typeof ev.data !== 'string') return;
    if (ev.topic === 'chat') this.addLine(ev);
    else if (ev.topic === 'like') {
      this.likes += 1;
      $('like-count').textContent = String(this.likes);
    }
    // Other topics (gifts, an app's own) are for other clients.
  }

  addLine(ev) {
    const box = $('chat-lines');
    // Follow new lines only while the reader is at the bottom, not while they scroll back.
    const following = box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
    const from = ev.from && typeof ev.from === 'object' ? ev.from : null;
    const li = document.createElement('li');
    const who = document.createElement('span');
    who.className = 'from';
    who.textContent = from ? String(from.name || from.user || '?') : 'server';
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = ev.data;
    li.append(who, ': ', text);
    li.classList.toggle('server', !from);
    li.classList.toggle('anchor', from?.role === 'anchor');
    li.classList.toggle('mine', !!from && from.user === this.me);
    if (from) li.dataset.user = String(from.user);
    if (Number.isFinite(ev.at)) li.title = new Date(ev.at).toLocaleTimeString();
    box.append(li);
    while (box.children.length > KEEP_LINES) box.firstElementChild.remove();
    if (following) box.scrollTop = box.scrollHeight;
  }

  // The room's metadata, from the join (or resume) reply and `room_metadata`: hidden when empty,
  // a product card when it is JSON with a `title` (and maybe a `price`), else the text itself.
  setMetadata(metadata) {
    const text = typeof metadata === 'string' ? metadata : '';
    const card = productCard(text);
    const banner = $('room-banner');
    banner.hidden = !text.trim();
    banner.dataset.kind = card.price === null ? 'text' : 'product';
    banner.title = card.title;
    $('room-banner-title').textContent = card.title;
    $('room-banner-price').textContent = card.price ?? '';
    $('room-banner-price').hidden = !card.price;
  }

  showError(text) {
    clearTimeout(errorTimer);
    $('chat-error').textContent = text;
    $('chat-error').hidden = !text;
    if (text) errorTimer = setTimeout(() => this.showError(''), ERROR_SHOWN_MS);
  }
}

// `{title, price}` from metadata that is a JSON object with a non-empty string `title`; else the
// raw text as the title and a null price.
function productCard(text) {
  try {
    const v = JSON.parse(text);
    if (v && typeof v === 'object' && !Array.isArray(v) && typeof v.title === 'string' && v.title.trim()) {
      const price = typeof v.price === 'string' || typeof v.price === 'number' ? String(v.price) : '';
      return { title: v.title, price };
    }
  } catch {
    // not JSON: shown as it is
  }
  return { title: text, price: null };
}
