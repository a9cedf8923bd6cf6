// The demo page: lobby, stage with tiles, the anchor's and the audience's controls. All state comes
// from the server's replies and events (docs/protocol.md); the page keeps only what the protocol
// leaves to clients: pending requests it has seen, with their deadlines.

import { Signal } from './signal.js';
import { Media, MediaError } from './media.js';
import { RoomMessages } from './messages.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const ownServer = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
// `?server=` points the page at another miclink server. The join token goes there, so the page
// connects only to its own server or to one the operator listed (`demo_servers`, which the
// server also names in its Content-Security-Policy).
const serverUrl = params.get('server') ?? ownServer;

// On a server that checks join tokens (rule 10), the page is opened with `?token=<JWT>`, a link
// the operator's own login makes: the token names the room, the user and the role, and goes
// with the join. (Its signature is the server's to check; the page only reads the claims.)
// It is taken out of the address bar at once (so no history entry, bookmark, shared link or
// screenshot carries it) and kept in this tab only, for a reload to rejoin.
const TOKEN_KEY = 'miclink-token';
const token = params.get('token') ?? sessionStorage.getItem(TOKEN_KEY);
if (params.has('token')) {
  sessionStorage.setItem(TOKEN_KEY, params.get('token'));
  params.delete('token');
  const rest = params.toString();
  history.replaceState(history.state, '', `${location.pathname}${rest ? `?${rest}` : ''}${location.hash}`);
}
const claims = token ? tokenClaims(token) : null;

// Whether the page may connect to `url`: its own server always; another only when the server's
// configuration lists it.
async function allowedServer(url) {
  if (url === ownServer) return true;
  try {
    const res = await fetch('/demo-config.json', { cache: 'no-store' });
    const { servers } = await res.json();
    return Array.isArray(servers) && servers.includes(url);
  } catch {
    return false;
  }
}

function tokenClaims(jwt) {
  try {
    const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(part + '='.repeat((4 - (part.length % 4)) % 4)), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

const ENDED_TEXT = {
  anchor_left: 'The anchor ended the live.',
  anchor_lost: "The anchor's connection was lost.",
  server_shutdown: 'The server is shutting down.',
};

let S = null; // the state of the room we are in, null in the lobby

// --- lobby ---------------------------------------------------------------------------------

function userId() {
  if (typeof claims?.sub === 'string') return claims.sub;
  // One id per tab, kept across reloads of the tab so a reload takes the same place back.
  let id = sessionStorage.getItem('miclink-user');
  if (!id) {
    id = `u-${crypto.getRandomValues(new Uint32Array(1))[0].toString(36)}`;
    sessionStorage.setItem('miclink-user', id);
  }
  return id;
}

// The room this tab is in, kept across reloads so a reload rejoins it (rule 9: the same user
// takes their place back, seat included) instead of dropping the user in the lobby.
const PLACE_KEY = 'miclink-place';

function savePlace(place) {
  if (place) sessionStorage.setItem(PLACE_KEY, JSON.stringify(place));
  else sessionStorage.removeItem(PLACE_KEY);
}

function savedPlace() {
  try {
    return JSON.parse(sessionStorage.getItem(PLACE_KEY) ?? 'null');
  } catch {
    return null;
  }
}

function initLobby() {
  $('name').value ||= `Guest ${Math.floor(Math.random() * 900 + 100)}`;
  if (params.get('room')) $('room').value = params.get('room');
  if (typeof claims?.room === 'string') $('room').value = claims.room;
  const tokenRole = [...document.querySelectorAll('input[name="role"]')].find((r) => r.value === claims?.role);
  if (tokenRole) tokenRole.checked = true;
  $('join-form').addEventListener('submit', (e) => {
    e.preventDefault();
    join().catch((err) => showLobbyError(err.message));
  });
  // A reload rejoins where the tab was, unless its token is for another room now.
  const place = savedPlace();
  if (place && typeof claims?.room === 'string' && place.room !== claims.room) savePlace(null);
  else if (place) {
    $('room').value = place.room;
    $('name').value = place.name;
    const radio = document.querySelector(`input[name="role"][value="${place.role}"]`);
    if (radio) radio.checked = true;
    join().catch((err) => {
      savePlace(null);
      showLobbyError(err.message);
    });
  }
}

function showLobbyError(text) {
  $('lobby-error').textContent = text;
  $('lobby-error').hidden = !text;
  $('join').disabled = false;
}

const JOIN_ERRORS = {
  room_not_found: 'Nobody is live in this room yet. Ask the anchor to go live, or go live yourself.',
  room_exists: 'Someone else is already live in this room. Pick another room.',
  unauthorized: token
    ? 'Your login token was refused: it has expired, or is for another room or role.'
    : 'This server needs a login token to join.',
  unavailable: 'The server is shutting down. Try again in a moment.',
};

async function join() {
  showLobbyError('');
  $('join').disabled = true;
  const picked = new FormData($('join-form')).get('role');
  // An anchor whose media comes from an encoder (OBS, WHIP): the page keeps the controls and
  // publishes nothing itself.
  const encoder = picked === 'encoder';
  const role = encoder ? 'anchor' : picked;
  const fields = { room: $('room').value.trim(), user: userId(), role, name: $('name').value.trim() };
  if (token) fields.token = token;
  const state = {
    role,
    encoder,
    me: null,
    users: [],
    audienceCount: 0,
    applications: new Map(), // anchor: applicant -> {info, deadline}
    invites: new Map(), // anchor: invitee -> deadline
    myRequest: null, // audience: {deadline}
    invitation: null, // audience: {from, deadline}
    audience: [],
    streams: new Map(), // user -> remote MediaStream
    wantVideo: true,
    starting: false,
    ended: false,
    seats: [], // the room's seats, for their locks
    speakers: new Set(), // who the server says is talking
    blocked: new Map(), // user -> {mic, camera}: kept off by the anchor or a seat lock
    wishes: new Map(), // user -> the layer last asked for with set_subscription
    layers: new Map(), // user -> {video, reason}: the layer the server sends us, and why
    myMute: { audio: false, video: false }, // what this member turned off themselves
  };
  if (!(await allowedServer(serverUrl))) {
    throw new Error(
      `This page connects only to its own server, not to ${serverUrl}: the server's operator can allow it (demo_servers).`,
    );
  }
  const signal = new Signal(serverUrl, {
    onEvent: (ev) => S === state && onEvent(ev),
    onState: (st, code) => S === state && onConnState(st, code),
  });
  try {
    await signal.open();
  } catch (e) {
    throw new Error(`${e.message} Check that the miclink server is running.`);
  }
  let result;
  try {
    result = await signal.join(fields);
  } catch (e) {
    signal.stop();
    throw new Error(JOIN_ERRORS[e.code] ?? `Could not join: ${e.message}`);
  }
  state.signal = signal;
  state.media = new Media(signal, result.ice_servers, {
    onRemoteStream: (user, stream) => {
      state.streams.set(user, stream);
      stream.onremovetrack = () => render();
      render();
    },
    onError: (text) => toast(text, 'bad'),
    relayOnly: params.get('relay') === '1',
    // A publish connection that broke is published again while the seat holds.
    onPublishBroken: (video) => {
      if (S === state && !state.ended && !state.encoder && (state.role === 'anchor' || mySeat())) startPublishing(video);
    },
  });
  state.messages = new RoomMessages({
    send: (topic, data) => signal.request('send_message', { topic, data }),
    me: result.me.user,
  });
  S = state;
  savePlace({ room: fields.room, role: picked, name: fields.name });
  applyRoom(result);
  $('lobby').hidden = true;
  $('stage').hidden = false;
  $('ended').hidden = true;
  $('join').disabled = false;
  onConnState('open');
  render();
  // The anchor goes live; a member who joined again while seated (a reload) publishes again.
  if (encoder) showEncoder(fields.room, fields.user);
  else if (role === 'anchor') startPublishing(true);
  else syncPublishing();
}

// Where the anchor's encoder publishes: the server attaches it to this page's session when its
// bearer names this user (or carries this user's token on a server that checks them).
function showEncoder(room, user) {
  $('whip-url').textContent = new URL(`/whip/${encodeURIComponent(room)}`, location.href).href;
  // On a server that checks tokens the encoder's bearer is the anchor's join token.
  $('whip-token').textContent = token ?? user;
  $('encoder-info').hidden = false;
}

function applyRoom(result) {
  S.me = result.me;
  S.room = result.room.room;
  S.maxSeats = result.room.max_seats;
  S.users = result.room.seats.filter((s) => s.user).map((s) => s.user);
  S.seats = result.room.seats;
  applyBlocked();
  S.audienceCount = result.room.audience_count;
  $('room-title').textContent = `Room ${S.room}`;
  // A server before protocol version 3 sends no metadata: no banner.
  S.messages.setMetadata(result.metadata ?? '');
  applyRequests(result.requests ?? []);
  if (S.role === 'anchor') refreshAudience();
}

// The pending requests a join or resume reply lists: whatever was in flight on an old socket.
function applyRequests(requests) {
  const me = S.me.user;
  for (const r of requests) {
    if (S.role === 'anchor') {
      if (r.to === me) S.applications.set(r.from.user, { info: r.from, camera: r.open_camera, deadline: deadline(r.timeout_s) });
      else if (r.from.user === me) S.invites.set(r.to, deadline(r.timeout_s));
    } else if (r.from.user === me) {
      S.myRequest = { deadline: deadline(r.timeout_s) };
    } else if (r.to === me) {
      S.invitation = { from: r.from, deadline: deadline(r.timeout_s) };
      S.wantVideo = r.open_camera;
      showInvitation();
    }
  }
}

// --- events --------------------------------------------------------------------------------

function nameOf(user) {
  return (
    S.users.find((u) => u.user === user)?.name ??
    S.audience.find((u) => u.user === user)?.name ??
    S.applications.get(user)?.info.name ??
    user
  );
}

function deadline(timeoutS) {
  return timeoutS > 0 ? Date.now() + timeoutS * 1000 : null;
}

function onEvent(ev) {
  switch (ev.type) {
    case 'subscribe_offer':
      S.media.subscribeOffer(ev.sdp, !!ev.new_connection, ev.offer_id);
      return;
    case 'ice':
      return; // the server is ICE-lite: its candidates are all in its SDP
    case 'link_request':
      if (S.role === 'anchor') {
        // What the applicant asks for is the request's open_camera; their UserInfo says what
        // their seat would allow, which is not known yet.
        S.applications.set(ev.from.user, { info: ev.from, camera: ev.open_camera, deadline: deadline(ev.timeout_s) });
        toast(`${ev.from.name} wants to link`);
      } else {
        S.invitation = { from: ev.from, deadline: deadline(ev.timeout_s) };
        S.wantVideo = ev.open_camera;
        showInvitation();
      }
      break;
    case 'link_cancelled': {
      const who = nameOf(ev.user);
      const why = { cancelled: 'cancelled', timeout: 'timed out', left: 'ended: they left' }[ev.reason] ?? ev.reason;
      if (S.role === 'anchor') {
        S.applications.delete(ev.user);
        S.invites.delete(ev.user);
        toast(`${who}'s request ${why}`);
      } else {
        S.invitation = null;
        $('invitation').close();
        toast(`The invitation from ${who} ${why}`);
      }
      break;
    }
    case 'link_accepted':
      if (S.role === 'anchor') {
        S.invites.delete(ev.user);
        toast(`${nameOf(ev.user)} accepted your invitation`, 'good');
      } else {
        S.myRequest = null;
        toast('The anchor accepted: you are linked', 'good');
      }
      break;
    case 'link_rejected':
      if (S.role === 'anchor') {
        S.invites.delete(ev.user);
        toast(`${nameOf(ev.user)} rejected your invitation`);
      } else {
        S.myRequest = null;
        toast(ev.reason === 'seats_full' ? 'Every seat is taken' : 'The anchor rejected your request', 'bad');
      }
      break;
    case 'link_timeout':
      if (S.role === 'anchor') {
        S.invites.delete(ev.user);
        toast(`${nameOf(ev.user)} did not answer: the invitation timed out`);
      } else {
        S.myRequest = null;
        toast('The anchor did not answer: your request timed out', 'bad');
      }
      break;
    case 'connected_users_updated':
      S.users = ev.users;
      applyBlocked();
      for (const u of ev.joined) S.applications.delete(u.user);
      if (S.role === 'anchor') refreshAudience();
      break;
    case 'link_terminated':
      toast('The anchor disconnected you', 'bad');
      break;
    case 'link_exited':
      toast(`${ev.user.name} hung up`);
      break;
    case 'audience_count':
      S.audienceCount = ev.count;
      if (S.role === 'anchor') refreshAudience();
      break;
    case 'room_ended':
      ended('The live has ended', ENDED_TEXT[ev.reason] ?? `The room ended (${ev.reason}).`);
      return;
    case 'kicked':
      if (ev.reason === 'kicked_by_anchor') ended('You were removed', 'The anchor removed you from this room.');
      else ended('You joined from somewhere else', 'This tab was replaced by a newer one with the same user.');
      return;
    case 'seats_updated':
      S.seats = ev.seats;
      break;
    case 'media_state': {
      const u = S.users.find((x) => x.user === ev.user);
      if (u) Object.assign(u, { mic: ev.mic, camera: ev.camera });
      const was = S.blocked.get(ev.user) ?? { mic: false, camera: false };
      const now = { mic: !!ev.mic_blocked, camera: !!ev.camera_blocked };
      S.blocked.set(ev.user, now);
      if (ev.user === S.me.user) myMediaState(ev.by, was, now);
      break;
    }
    case 'active_speakers':
      S.speakers = new Set(ev.speakers.map((s) => s.user));
      renderTiles();
      return;
    case 'publisher_layers':
      // Dynacast: pause the simulcast layers nobody watches.
      S.media.setLayers(ev.video).catch((e) => console.debug('miclink: layers', e));
      return;
    case 'room_message':
      S.messages.message(ev);
      return;
    case 'room_metadata':
      S.messages.setMetadata(ev.metadata);
      return;
    case 'subscription_state':
      S.layers.set(ev.user, { video: ev.video, reason: ev.reason });
      renderTiles();
      return;
    case 'resumed':
      applyRoom(ev.result);
      toast('Reconnected', 'good');
      break;
    case 'resume_failed':
      ended('Connection lost', 'The connection was down for too long and you have left the room.');
      return;
    case 'error':
      toast(`Server: ${ev.message}`, 'bad');
      return;
    default:
      return; // events this page does not know yet are ignored (the protocol may grow)
  }
  syncPublishing();
  render();
}

function onConnState(st, code) {
  const el = $('conn');
  el.hidden = st === 'open';
  el.textContent = st === 'reconnecting' ? 'Reconnecting…' : 'Offline';
  el.className = `pill conn ${st}`;
  if (st === 'closed' && !S.ended && code !== 4001) {
    ended('Disconnected', 'The server closed the connection.');
  }
}

function ended(title, text) {
  if (S.ended) return;
  S.ended = true;
  savePlace(null);
  S.media?.close();
  S.signal.stop();
  $('invitation').close();
  $('ended-title').textContent = title;
  $('ended-text').textContent = text;
  $('ended').hidden = false;
  toast(text);
}

// --- publishing follows the seat -----------------------------------------------------------

function mySeat() {
  return S.users.find((u) => u.user === S.me.user) ?? null;
}

function syncPublishing() {
  if (S.ended || S.role === 'anchor') return;
  const seat = mySeat();
  if (seat && !S.media.publishing && !S.starting) {
    // A new link starts with the microphone on and the camera as asked for (the server starts
    // the seat the same way: open_camera false leaves the camera off by the member's choice).
    const blocked = S.blocked.get(S.me.user) ?? { mic: false, camera: false };
    S.myMute = { audio: blocked.mic, video: !S.wantVideo || blocked.camera };
    startPublishing(S.wantVideo);
  }
  if (!seat && S.media.publishing) S.media.stopPublish();
}

async function startPublishing(video) {
  S.starting = true;
  banner('');
  try {
    await S.media.publish({ video });
    // A republish (a new camera, a broken connection) keeps what the member had turned off.
    S.media.setEnabled('audio', !S.myMute.audio);
    S.media.setEnabled('video', !S.myMute.video);
    fillDevices();
  } catch (e) {
    const text = e instanceof MediaError ? e.message : `Publishing failed: ${e.message}`;
    banner(text, () => startPublishing(video));
  } finally {
    S.starting = false;
  }
  render();
}

// Who the anchor or a seat lock keeps muted, as the users list says (a page that joins or
// reloads learns it there; `media_state` brings the changes).
function applyBlocked() {
  S.blocked.clear();
  for (const u of S.users) {
    const b = { mic: !!u.mic_blocked, camera: !!u.camera_blocked };
    S.blocked.set(u.user, b);
    if (u.user === S.me.user) {
      if (b.mic) S.myMute.audio = true;
      if (b.camera) S.myMute.video = true;
    }
  }
}

// What the anchor or the seat did to this member's own media.
function myMediaState(by, was, now) {
  const whose = by === 'seat' ? "Your seat's" : "The anchor turned off your";
  for (const [kind, field, word] of [
    ['audio', 'mic', 'microphone'],
    ['video', 'camera', 'camera'],
  ]) {
    if (now[field] && !was[field]) {
      S.myMute[kind] = true;
      S.media.setEnabled(kind, false);
      toast(by === 'seat' ? `${whose} ${word} was locked by the anchor` : `${whose} ${word}`, 'bad');
    } else if (was[field] && !now[field]) {
      toast(`You may turn your ${word} on again`, 'good');
    }
  }
}

// Turn this member's own microphone (`audio`) or camera on or off.
async function setMine(kind, on) {
  const field = kind === 'audio' ? 'mic' : 'camera';
  if (S.starting) return; // a publish is under way; its end re-renders the switches
  if (!on) {
    S.myMute[kind] = true;
    S.media.setEnabled(kind, false);
  }
  try {
    // The server first: it refuses what the anchor keeps off, before any device opens.
    await S.signal.request('set_media', { [field]: on });
    if (on && kind === 'video' && !S.media.hasVideo) {
      // Linked with the microphone only: publish again, now with the camera.
      S.wantVideo = true;
      S.myMute.video = false;
      await startPublishing(true);
    }
    if (on) {
      S.myMute[kind] = false;
      S.media.setEnabled(kind, true);
    }
  } catch (e) {
    toast(e.code === 'muted_by_anchor' ? `The anchor keeps your ${kind === 'audio' ? 'microphone' : 'camera'} off for now` : e.message, 'bad');
  }
  render();
}

let devicesFilled = false;
async function fillDevices() {
  const list = await S.media.deviceList().catch(() => []);
  for (const [kind, id] of [
    ['audio', 'mic-device'],
    ['video', 'cam-device'],
  ]) {
    const select = $(id);
    const chosen = S.media.devices[kind] ?? '';
    select.replaceChildren(
      ...[{ id: '', label: 'Default' }, ...list.filter((d) => d.kind === kind)].map((d) => {
        const o = document.createElement('option');
        o.value = d.id;
        o.textContent = d.label;
        o.selected = d.id === chosen;
        return o;
      }),
    );
  }
  devicesFilled = true;
}

function banner(text, retry) {
  $('banner').hidden = !text;
  $('banner-text').textContent = text;
  $('banner-retry').hidden = !retry;
  $('banner-retry').onclick = retry ?? null;
}

// --- actions -------------------------------------------------------------------------------

async function act(promise, after) {
  try {
    const result = await promise;
    after?.(result);
  } catch (e) {
    toast(e.message, 'bad');
  }
  render();
}

function initActions() {
  $('apply').onclick = () => {
    const timeout = Number($('apply-timeout').value) || 0;
    S.wantVideo = $('link-mode').value === 'video';
    act(S.signal.request('request_link', { timeout_s: timeout, open_camera: S.wantVideo }), () => {
      S.myRequest = { deadline: deadline(timeout) };
    });
  };
  $('cancel-apply').onclick = () =>
    act(S.signal.request('cancel_link'), () => {
      S.myRequest = null;
    });
  $('hang-up').onclick = () => act(S.signal.request('terminate_link'));
  $('leave').onclick = () => leave();
  $('end-live').onclick = () => leave();
  $('back').onclick = () => {
    S = null;
    $('ended').hidden = true;
    $('stage').hidden = true;
    $('lobby').hidden = false;
    $('viewers').hidden = true;
    $('conn').hidden = true;
    $('room-title').textContent = '';
    $('tiles').replaceChildren();
  };
  const answer = (accept, video) => {
    const inv = S.invitation;
    if (!inv) return;
    S.invitation = null;
    $('invitation').close();
    S.wantVideo = video;
    act(S.signal.request('respond_link', { user: inv.from.user, accept }));
  };
  $('accept-video').onclick = () => answer(true, true);
  $('accept-audio').onclick = () => answer(true, false);
  $('reject-invite').onclick = () => answer(false, false);
  $('toggle-mic').onclick = () => setMine('audio', S.myMute.audio);
  $('toggle-cam').onclick = () => setMine('video', S.myMute.video || !S.media.hasVideo);
  for (const [kind, id] of [
    ['audio', 'mic-device'],
    ['video', 'cam-device'],
  ]) {
    $(id).onchange = () => act(S.media.useDevice(kind, $(id).value));
  }
  navigator.mediaDevices?.addEventListener?.('devicechange', () => S && devicesFilled && fillDevices());
  // Escape closes the dialog without an answer; the invitation stays open until it times out.
  $('invitation').addEventListener('cancel', (e) => e.preventDefault());
}

async function leave() {
  const s = S;
  try {
    await s.signal.request('leave');
  } catch {
    // leaving over a dead socket: the server's grace period ends the session
  }
  if (s.role === 'anchor') ended('You ended the live', 'Everyone in the room was told the live ended.');
  else {
    ended('You left the room', '');
  }
}

let audienceTimer = null;
function refreshAudience() {
  // Coalesced: count changes come in bursts when many viewers arrive.
  clearTimeout(audienceTimer);
  audienceTimer = setTimeout(async () => {
    if (!S || S.ended || S.role !== 'anchor') return;
    try {
      const { users } = await S.signal.request('list_audience', { limit: 200 });
      S.audience = users;
      render();
    } catch (e) {
      console.debug('miclink: list_audience', e);
    }
  }, 200);
}

function invite(user) {
  const video = $('invite-camera').checked;
  act(S.signal.request('request_link', { user, timeout_s: 60, open_camera: video }), () => {
    S.invites.set(user, deadline(60));
  });
}

function showInvitation() {
  $('inviter').textContent = S.invitation.from.name;
  $('accept-video').hidden = !S.wantVideo;
  if (!$('invitation').open) $('invitation').showModal();
}

// --- rendering -----------------------------------------------------------------------------

function secondsLeft(dl) {
  return dl == null ? '' : ` · ${Math.max(0, Math.ceil((dl - Date.now()) / 1000))} s left`;
}

function render() {
  if (!S) return;
  const anchor = S.role === 'anchor';
  $('viewers').hidden = false;
  $('viewer-count').textContent = S.audienceCount;
  $('anchor-panel').hidden = !anchor;
  $('audience-panel').hidden = anchor;
  renderTiles();
  renderMyMedia();
  if (anchor) renderAnchorPanel();
  else renderAudiencePanel();
  if (S.invitation) $('invite-left').textContent = secondsLeft(S.invitation.deadline);
}

function renderTiles() {
  const box = $('tiles');
  const n = S.users.length;
  box.className = `tiles ${n <= 1 ? 'solo' : n === 2 ? 'dual' : 'grid'}`;
  box.dataset.count = n;
  const keep = new Set(S.users.map((u) => u.user));
  for (const el of [...box.children]) if (!keep.has(el.dataset.user)) el.remove();
  S.users.forEach((u, i) => {
    let el = box.querySelector(`[data-user="${CSS.escape(u.user)}"]`);
    if (!el) {
      el = $('tile-template').content.firstElementChild.cloneNode(true);
      el.dataset.user = u.user;
      const user = u.user;
      el.querySelector('.kick').onclick = () => act(S.signal.request('disconnect_user', { user }));
      el.querySelector('.remove').onclick = () => act(S.signal.request('kick_user', { user, ban_s: 600 }));
      // `false` mutes, `true` lifts the anchor's mute.
      el.querySelector('.mute-mic').onclick = () =>
        act(S.signal.request('mute_member', { user, mic: !!S.blocked.get(user)?.mic }));
      el.querySelector('.mute-cam').onclick = () =>
        act(S.signal.request('mute_member', { user, camera: !!S.blocked.get(user)?.camera }));
      el.querySelector('.move').onchange = (e) => {
        const seat = Number(e.target.value);
        e.target.value = '';
        if (seat) act(S.signal.request('move_seat', { user, seat }));
      };
    }
    if (box.children[i] !== el) box.insertBefore(el, box.children[i] ?? null);
    const self = u.user === S.me.user;
    const stream = self ? S.media.local : S.streams.get(u.user);
    const video = el.querySelector('video');
    if (video.srcObject !== (stream ?? null)) {
      video.srcObject = stream ?? null;
      video.muted = self; // never play our own microphone back
      if (stream) video.play().catch(() => {});
    }
    const hasVideo = !!stream?.getVideoTracks().some((t) => t.readyState === 'live');
    el.classList.toggle('no-video', !hasVideo);
    el.classList.toggle('self', self);
    el.querySelector('.avatar').textContent = (u.name || u.user).slice(0, 1).toUpperCase();
    el.querySelector('.badge').textContent = u.seat === 0 ? 'Anchor' : `Seat ${u.seat}`;
    el.querySelector('.name').textContent = self ? `${u.name} (you)` : u.name;
    const hasAudio = !!stream?.getAudioTracks().some((t) => t.readyState === 'live');
    const devices = el.querySelector('.devices');
    devices.querySelector('.mic').classList.toggle('off', !(u.mic && hasAudio));
    devices.querySelector('.cam').classList.toggle('off', !(u.camera && hasVideo));
    devices.title = `microphone ${u.mic && hasAudio ? 'on' : 'off'}, camera ${u.camera && hasVideo ? 'on' : 'off'}`;
    el.classList.toggle('speaking', S.speakers.has(u.user));
    if (!self) wishFor(u.user, tileLayer(box, i));
    const layer = S.layers.get(u.user);
    el.dataset.layer = layer?.video ?? '';
    el.classList.toggle('low-bandwidth', layer?.reason === 'bandwidth');
    const controls = el.querySelector('.controls');
    controls.hidden = !(S.role === 'anchor' && u.seat !== 0);
    if (!controls.hidden) renderTileControls(el, u);
  });
}

// The layer a tile needs: the big ones (alone, side by side, the first of a grid) the top one,
// the small grid tiles the lowest.
function tileLayer(box, i) {
  return box.classList.contains('grid') && i > 0 ? 'low' : 'high';
}

// Ask the server for at most `video` of `user`'s video, once per change.
function wishFor(user, video) {
  if (S.wishes.get(user) === video) return;
  S.wishes.set(user, video);
  S.signal.request('set_subscription', { user, video }).catch((e) => {
    S.wishes.delete(user);
    console.debug('miclink: set_subscription', e);
  });
}

function freeSeats() {
  const taken = new Set(S.users.map((u) => u.seat));
  const out = [];
  for (let i = 1; i < S.maxSeats; i++) if (!taken.has(i) && !S.seats[i]?.locked) out.push(i);
  return out;
}

function renderTileControls(el, u) {
  const blocked = S.blocked.get(u.user) ?? { mic: false, camera: false };
  // A seat lock is lifted from the seats panel, not from the member's tile.
  const seat = S.seats[u.seat] ?? {};
  const mic = el.querySelector('.mute-mic');
  mic.textContent = seat.audio_locked ? 'Mic locked' : blocked.mic ? 'Allow mic' : 'Mute mic';
  mic.disabled = !!seat.audio_locked;
  mic.classList.toggle('on', blocked.mic);
  const cam = el.querySelector('.mute-cam');
  cam.textContent = seat.video_locked ? 'Cam locked' : blocked.camera ? 'Allow cam' : 'Mute cam';
  cam.disabled = !!seat.video_locked;
  cam.classList.toggle('on', blocked.camera);
  el.querySelector('.remove').title = 'Remove from the room; they cannot come back for 10 minutes';
  const move = el.querySelector('.move');
  const seats = freeSeats();
  const want = ['', ...seats].join(',');
  if (move.dataset.seats !== want) {
    move.dataset.seats = want;
    const first = document.createElement('option');
    first.value = '';
    first.textContent = 'Move…';
    move.replaceChildren(
      first,
      ...seats.map((i) => {
        const o = document.createElement('option');
        o.value = String(i);
        o.textContent = `to seat ${i}`;
        return o;
      }),
    );
  }
  move.disabled = seats.length === 0;
}

function renderMyMedia() {
  const seated = S.role === 'anchor' || !!mySeat();
  $('my-media').hidden = !seated || !S.media.publishing;
  if ($('my-media').hidden) return;
  const blocked = S.blocked.get(S.me.user) ?? { mic: false, camera: false };
  const micOff = S.myMute.audio;
  const camOff = S.myMute.video || !S.media.hasVideo;
  $('toggle-mic').textContent = micOff ? 'Unmute microphone' : 'Mute microphone';
  $('toggle-mic').classList.toggle('off', micOff);
  $('toggle-cam').textContent = camOff ? 'Turn camera on' : 'Turn camera off';
  $('toggle-cam').classList.toggle('off', camOff);
  const held = [blocked.mic && 'microphone', blocked.camera && 'camera'].filter(Boolean);
  $('blocked-note').hidden = held.length === 0;
  $('blocked-note').textContent = held.length
    ? `The anchor has turned off your ${held.join(' and ')}. You can turn it on again once the anchor allows it.`
    : '';
  $('toggle-mic').disabled = blocked.mic && micOff;
  $('toggle-cam').disabled = blocked.camera && camOff;
}

function item(label, sub, buttons) {
  const li = document.createElement('li');
  const text = document.createElement('span');
  text.className = 'who';
  text.textContent = label;
  const small = document.createElement('small');
  small.textContent = sub;
  text.append(small);
  li.append(text, ...buttons);
  return li;
}

function button(label, onclick, cls = '') {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = label;
  b.className = cls;
  b.onclick = onclick;
  return b;
}

function renderAnchorPanel() {
  const apps = [...S.applications.entries()];
  $('applications').replaceChildren(
    ...apps.map(([user, a]) => {
      const li = item(a.info.name, `${a.camera ? 'camera + mic' : 'mic only'}${secondsLeft(a.deadline)}`, [
        button('Accept', () => act(S.signal.request('respond_link', { user, accept: true })), 'primary'),
        button('Reject', () =>
          act(S.signal.request('respond_link', { user, accept: false }), () => S.applications.delete(user)),
        ),
      ]);
      li.dataset.user = user;
      return li;
    }),
  );
  $('app-count').textContent = apps.length ? `(${apps.length})` : '';
  $('no-applications').hidden = apps.length > 0;
  const seated = new Set(S.users.map((u) => u.user));
  const viewers = S.audience.filter((u) => !seated.has(u.user));
  $('audience-list').replaceChildren(
    ...viewers.map((u) => {
      const dl = S.invites.get(u.user);
      const invited = S.invites.has(u.user);
      const applied = S.applications.has(u.user);
      const li = item(u.name, invited ? `invited${secondsLeft(dl)}` : applied ? 'applied' : 'watching', [
        invited
          ? button('Cancel invite', () =>
              act(S.signal.request('cancel_link', { user: u.user }), () => S.invites.delete(u.user)),
            )
          : button('Invite', () => invite(u.user), applied ? '' : 'primary'),
      ]);
      li.dataset.user = u.user;
      li.querySelector('button').disabled = applied;
      return li;
    }),
  );
  $('no-audience').hidden = viewers.length > 0;
  renderSeatList();
}

// The anchor's view of every audience seat, with its locks.
function renderSeatList() {
  const rows = [];
  for (let i = 1; i < S.maxSeats; i++) {
    const seat = S.seats[i] ?? { locked: false, audio_locked: false };
    const who = S.users.find((u) => u.seat === i);
    const state = [who ? who.name : 'free', seat.locked && 'locked', seat.audio_locked && 'mic locked']
      .filter(Boolean)
      .join(' · ');
    const buttons = [
      button(seat.locked ? 'Unlock' : 'Lock', () => act(S.signal.request('lock_seat', { seat: i, lock: !seat.locked }))),
    ];
    if (who) {
      buttons.push(
        button(seat.audio_locked ? 'Unlock mic' : 'Lock mic', () =>
          act(S.signal.request('lock_seat', { seat: i, lock_audio: !seat.audio_locked })),
        ),
      );
    }
    const li = item(`Seat ${i}`, state, []);
    const box = document.createElement('span');
    box.className = 'buttons';
    box.append(...buttons);
    li.append(box);
    li.dataset.seat = String(i);
    li.classList.toggle('locked', !!seat.locked);
    rows.push(li);
  }
  $('seat-list').replaceChildren(...rows);
}

function renderAudiencePanel() {
  const seat = mySeat();
  $('apply-box').hidden = !!seat || !!S.myRequest;
  $('pending-box').hidden = !!seat || !S.myRequest;
  $('linked-box').hidden = !seat;
  if (S.myRequest) $('pending-left').textContent = secondsLeft(S.myRequest.deadline);
  if (seat) $('linked-seat').textContent = `Seat ${seat.seat}, ${S.media.local?.getVideoTracks().length ? 'camera and microphone' : 'microphone only'}.`;
  $('apply').disabled = S.users.length >= S.maxSeats;
  $('apply').title = $('apply').disabled ? 'Every seat is taken' : '';
}

async function renderStats() {
  if (!S || S.ended) return;
  let stats;
  try {
    stats = await S.media.stats(S.me.user);
  } catch {
    return;
  }
  for (const el of $('tiles').children) {
    const s = stats[el.dataset.user];
    const box = el.querySelector('.stats');
    if (!s) {
      box.textContent = '';
      continue;
    }
    const kbps = ((s.video?.bitrate ?? 0) + (s.audio?.bitrate ?? 0)) / 1000;
    const parts = [`${kbps.toFixed(0)} kbit/s`];
    if (s.video?.fps != null) parts.push(`${s.video.fps.toFixed(0)} fps`);
    if (s.video?.frameHeight) parts.push(`${s.video.frameHeight}p`);
    if (el.dataset.layer) parts.push(el.dataset.layer);
    if (s.rtt != null) parts.push(`rtt ${(s.rtt * 1000).toFixed(0)} ms`);
    box.textContent = parts.join(' · ');
  }
}

// --- toasts --------------------------------------------------------------------------------

function toast(text, kind = '') {
  if (!text) return;
  const el = document.createElement('div');
  el.className = `toast ${kind}`;
  el.textContent = text;
  $('toasts').append(el);
  setTimeout(() => el.remove(), 6000);
}

// --- start ---------------------------------------------------------------------------------

initLobby();
initActions();
setInterval(() => {
  // countdowns and the disappearance of expired items between events
  if (S && !S.ended) render();
}, 1000);
setInterval(renderStats, 1000);

// For the end-to-end tests and for curious users in the console: the media counters per user.
window.miclink = {
  stats: () => (S ? S.media.stats(S.me.user) : Promise.resolve({})),
  // What the subscribe connection holds: [mid, direction, track id, publishing user].
  receivers: () => S?.media.receivers() ?? [],
  // The pair each connection uses: { subscribe, publish }, each { type, protocol, local, remote }.
  routes: () => (S ? S.media.routes() : Promise.resolve({})),
  state: () => (S ? { role: S.role, me: S.me, users: S.users, audienceCount: S.audienceCount } : null),
  // Who the server last named as talking.
  speakers: () => (S ? [...S.speakers] : []),
  // A steady tone instead of the microphone (on) or the microphone again (off).
  tone: (on) => (S ? S.media.tone(on) : Promise.resolve(false)),
};
