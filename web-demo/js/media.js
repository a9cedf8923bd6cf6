// The two peer connections of a member: `publish` (offered by us, sendonly camera and microphone,
// only while we hold a seat) and `subscribe` (offered by the server, carrying every other seat's
// tracks, re-offered when that set changes). The msid stream id of a forwarded track is the
// publishing user's id, which is how a track finds its tile.
//
// Both recover by themselves: a subscribe connection that fails (or stays disconnected) is
// replaced by asking the server for a new one (`resubscribe`); an offer marked `new_connection`
// is answered on a new RTCPeerConnection; a publish connection that fails is published again.

// How long a connection may stay "disconnected" before it counts as broken.
const DISCONNECTED_GRACE_MS = 4000;
// Rebuilding a failed connection: the first retry's wait, and the longest.
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 10_000;

export class MediaError extends Error {}

// The simulcast layers every camera is published in (contract rule 14: rids q, h, f).
const SIMULCAST = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', maxBitrate: 1_500_000 },
];
const RID_LAYER = { q: 'low', h: 'medium', f: 'high' };

// getUserMedia failures in words a person can act on.
function describeCaptureError(e, video) {
  const what = video ? 'camera and microphone' : 'microphone';
  switch (e.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return `Access to the ${what} was refused. Allow it in the browser's site settings and try again.`;
    case 'NotFoundError':
    case 'OverconstrainedError':
      return `No ${what} was found on this device.`;
    case 'NotReadableError':
    case 'AbortError':
      return `The ${what} is in use by another application or could not be started.`;
    default:
      return `Could not open the ${what}: ${e.message || e.name}.`;
  }
}

// Credentials younger than this are used as they are: well within the shortest life the server
// gives them (turn_ttl_s is at least a minute, an hour by default).
const CREDENTIALS_FRESH_MS = 50 * 1000;

export class Media {
  constructor(signal, iceServers, { onRemoteStream, onError, onPublishBroken, relayOnly }) {
    this.signal = signal;
    // relayOnly: media only through the TURN servers of the join reply (?relay=1), to check a
    // TURN setup or to hide this browser's addresses.
    this.config = {
      iceServers,
      bundlePolicy: 'max-bundle',
      iceTransportPolicy: relayOnly ? 'relay' : 'all',
    };
    // When the servers' credentials were made (the join reply's: now).
    this.configAt = Date.now();
    this.onRemoteStream = onRemoteStream;
    this.onError = onError;
    this.onPublishBroken = onPublishBroken;
    this.publishVideo = true;
    // The chosen microphone and camera (device ids; null = the browser's default).
    this.devices = { audio: null, video: null };
    // While a test tone replaces the microphone: the microphone's own track.
    this.micTrack = null;
    this.sub = null;
    this.pub = null;
    // Failures in a row of each leg, for the retry's back-off.
    this.failures = { sub: 0, pub: 0 };
    this.local = null;
    // The subscribe connection's offers are answered one at a time, in order.
    this.offers = Promise.resolve();
    // track id -> publishing user, for the statistics.
    this.trackUser = new Map();
    // previous byte and frame counters, for rates between two samples.
    this.last = new Map();
  }

  get publishing() {
    return this.pub !== null;
  }

  // The ICE servers for a connection about to be made: TURN credentials let a relay start only
  // for a while (an hour by default) after the server made them, so a connection made later in
  // a long session asks for fresh ones (and one made soon after the join saves the round trip).
  // A server that does not know the request keeps the old ones.
  async freshConfig() {
    if (Date.now() - this.configAt < CREDENTIALS_FRESH_MS) return this.config;
    try {
      const { ice_servers: iceServers } = await this.signal.request('ice_servers');
      if (Array.isArray(iceServers)) {
        this.config = { ...this.config, iceServers };
        this.configAt = Date.now();
      }
    } catch (e) {
      console.debug('miclink: ice_servers', e);
    }
    return this.config;
  }

  subscribeOffer(sdp, newConnection, offerId) {
    this.offers = this.offers.then(() => this.answer(sdp, newConnection, offerId)).catch((e) => {
      // Answered after the server had replaced the offer: its newer offer is on the way.
      if (/replaced by offer/.test(e.message)) return;
      this.onError(`The server's media offer failed: ${e.message}`);
    });
  }

  async answer(sdp, newConnection, offerId) {
    if (newConnection && this.sub) {
      this.sub.close();
      this.sub = null;
    }
    if (!this.sub) {
      const pc = new RTCPeerConnection(await this.freshConfig());
      pc.ontrack = (e) => {
        const stream = e.streams[0];
        if (!stream) return;
        this.trackUser.set(e.track.id, stream.id);
        this.onRemoteStream(stream.id, stream);
      };
      pc.onicecandidate = (e) => this.trickle('subscribe', e.candidate);
      this.watch(pc, 'sub', () => this.resubscribe());
      this.sub = pc;
    }
    await this.sub.setRemoteDescription({ type: 'offer', sdp });
    const answer = await this.sub.createAnswer();
    await this.sub.setLocalDescription(answer);
    await this.signal.request('subscribe_answer', {
      sdp: this.sub.localDescription.sdp,
      offer_id: offerId,
    });
  }

  // Call `broken` when `pc` fails, or stays disconnected past the grace. Replaced or closed
  // connections are not watched any more.
  watch(pc, leg, broken) {
    let timer = null;
    pc.onconnectionstatechange = () => {
      clearTimeout(timer);
      if (pc !== this.sub && pc !== this.pub) return;
      if (pc.connectionState === 'connected') this.failures[leg] = 0;
      // A connection that fails at once (no candidate pair at all) would otherwise be rebuilt in
      // a tight loop: each failure in a row waits twice as long, from half a second to ten.
      const retry = () => {
        const wait = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** this.failures[leg]);
        this.failures[leg] = Math.min(this.failures[leg] + 1, 16);
        timer = setTimeout(() => {
          if (pc === this.sub || pc === this.pub) broken();
        }, wait);
      };
      if (pc.connectionState === 'failed') retry();
      else if (pc.connectionState === 'disconnected') timer = setTimeout(retry, DISCONNECTED_GRACE_MS);
    };
  }

  // Ask the server for a new subscribe connection (its offer will say `new_connection`).
  resubscribe() {
    this.signal.request('resubscribe').catch((e) => console.debug('miclink: resubscribe', e));
  }

  trickle(pc, candidate) {
    if (!candidate || !candidate.candidate) return;
    // The server also learns our address from our connectivity checks, so a lost candidate is
    // harmless; errors are only logged.
    this.signal.request('ice', { pc, candidate: candidate.toJSON() }).catch((e) => {
      console.debug('miclink: ice not taken', e);
    });
  }

  // Open the camera (when `video`) and the microphone and publish them. Returns the local stream.
  async publish({ video }) {
    this.stopPublish();
    this.publishVideo = video;
    let stream;
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new MediaError('This page needs camera access, which browsers allow only on https:// or localhost.');
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: this.constraints('audio'),
        video: video ? this.constraints('video') : false,
      });
    } catch (e) {
      throw new MediaError(describeCaptureError(e, video));
    }
    const pc = new RTCPeerConnection(await this.freshConfig());
    this.pub = pc;
    this.local = stream;
    for (const track of stream.getTracks()) {
      const init = { direction: 'sendonly', streams: [stream] };
      // Video goes out in three simulcast layers (180p, 360p, 720p from a 720p camera; the
      // browser drops those its input is too small for), and the server sends each viewer the
      // one that fits its tile and its bandwidth.
      if (track.kind === 'video') init.sendEncodings = SIMULCAST;
      pc.addTransceiver(track, init);
    }
    pc.onicecandidate = (e) => this.trickle('publish', e.candidate);
    this.watch(pc, 'pub', () => this.onPublishBroken?.(this.publishVideo));
    try {
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      const { sdp } = await this.signal.request('publish', { sdp: pc.localDescription.sdp });
      if (this.pub !== pc) return stream; // replaced or stopped meanwhile
      await pc.setRemoteDescription({ type: 'answer', sdp });
    } catch (e) {
      if (this.pub === pc) this.stopPublish();
      throw e;
    }
    return stream;
  }

  constraints(kind) {
    const id = this.devices[kind];
    const device = id ? { deviceId: { exact: id } } : {};
    if (kind === 'audio') return id ? device : true;
    return { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 24 }, ...device };
  }

  // Dynacast: send only the simulcast layers somebody watches (`publisher_layers`); none when
  // nobody watches the video at all.
  async setLayers(watched) {
    const sender = this.pub?.getSenders().find((s) => s.track?.kind === 'video');
    if (!sender) return;
    const params = sender.getParameters();
    if (!params.encodings?.length) return;
    let changed = false;
    for (const e of params.encodings) {
      const layer = e.rid ? RID_LAYER[e.rid] : 'high';
      const active = e.rid ? watched.includes(layer) : watched.length > 0;
      if (e.active !== active) {
        e.active = active;
        changed = true;
      }
    }
    if (changed) await sender.setParameters(params);
  }

  get hasVideo() {
    return !!this.local?.getVideoTracks().length;
  }

  // Turn the local track of `kind` on or off without renegotiating: off, the browser sends
  // silence or black frames, which the server does not forward while the mute holds.
  setEnabled(kind, on) {
    for (const t of this.local?.getTracks() ?? []) if (t.kind === kind) t.enabled = on;
    if (kind === 'audio' && this.micTrack) this.micTrack.enabled = on;
    if (kind === 'audio' && this.toneTrack) this.toneTrack.enabled = on;
  }

  // Use microphone or camera `deviceId` from now on, switching the running track in place.
  async useDevice(kind, deviceId) {
    this.devices[kind] = deviceId || null;
    const sender = this.pub?.getSenders().find((s) => s.track?.kind === kind);
    if (!sender || !this.local) return;
    let track;
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ [kind]: this.constraints(kind) });
      track = stream.getTracks()[0];
    } catch (e) {
      throw new MediaError(describeCaptureError(e, kind === 'video'));
    }
    const old = kind === 'audio' && this.micTrack ? this.micTrack : sender.track;
    track.enabled = old.enabled;
    if (kind === 'audio' && this.micTrack) this.micTrack = track;
    else await sender.replaceTrack(track);
    this.local.removeTrack(old);
    old.stop();
    this.local.addTrack(track);
  }

  // The cameras and microphones the browser offers: [{kind: 'audio'|'video', id, label}].
  async deviceList() {
    const all = (await navigator.mediaDevices?.enumerateDevices?.()) ?? [];
    return all
      .filter((d) => d.kind === 'audioinput' || d.kind === 'videoinput')
      .map((d, i) => ({
        kind: d.kind === 'audioinput' ? 'audio' : 'video',
        id: d.deviceId,
        label: d.label || `${d.kind === 'audioinput' ? 'Microphone' : 'Camera'} ${i + 1}`,
      }));
  }

  // A steady tone instead of the microphone (a sound check; the browser tests use it to make a
  // member talk). Returns whether there was a microphone to replace.
  async tone(on) {
    const sender = this.pub?.getSenders().find((s) => s.track?.kind === 'audio');
    if (!sender) return false;
    if (on && !this.micTrack) {
      this.toneContext ??= new AudioContext();
      await this.toneContext.resume();
      const osc = this.toneContext.createOscillator();
      osc.frequency.value = 440;
      const out = this.toneContext.createMediaStreamDestination();
      osc.connect(out);
      osc.start();
      this.toneOsc = osc;
      this.micTrack = sender.track;
      const track = out.stream.getAudioTracks()[0];
      track.enabled = this.micTrack.enabled;
      this.toneTrack = track;
      await sender.replaceTrack(track);
    } else if (!on && this.micTrack) {
      await sender.replaceTrack(this.micTrack);
      this.toneOsc?.stop();
      this.micTrack = null;
      this.toneTrack = null;
    }
    return true;
  }

  stopPublish() {
    this.toneOsc?.stop();
    this.micTrack?.stop();
    this.micTrack = null;
    this.toneTrack = null;
    if (this.pub) this.pub.close();
    this.pub = null;
    if (this.local) for (const t of this.local.getTracks()) t.stop();
    this.local = null;
  }

  close() {
    this.stopPublish();
    if (this.sub) this.sub.close();
    this.sub = null;
  }

  receivers() {
    if (!this.sub) return [];
    return this.sub.getTransceivers().map((t) => [
      t.mid,
      t.currentDirection,
      t.receiver.track.id,
      this.trackUser.get(t.receiver.track.id) ?? null,
    ]);
  }

  // The local candidate type ('host', 'srflx', 'relay') of each connection's selected pair.
  // The pair each connection uses: candidate type, transport and both ends. Chromium names the
  // selected pair on its transport stats; Firefox has no transport stats and marks the pair.
  async routes() {
    const route = async (pc) => {
      if (!pc) return null;
      const report = await pc.getStats();
      let pair = null;
      report.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId) ?? pair;
        if (s.type === 'candidate-pair' && s.selected && s.state === 'succeeded') pair = s;
      });
      if (!pair) return null;
      const local = report.get(pair.localCandidateId);
      const remote = report.get(pair.remoteCandidateId);
      const where = (c) => (c ? `${c.address ?? c.ip}:${c.port}` : null);
      return { type: local?.candidateType ?? null, protocol: local?.protocol ?? null, local: where(local), remote: where(remote) };
    };
    return { subscribe: await route(this.sub), publish: await route(this.pub) };
  }

  // One sample of every flowing track: `{user -> {video?, audio?, rtt}}`, with bitrate (bit/s) and
  // frame rate computed against the previous sample. `self` is the member's own published media.
  async stats(selfUser) {
    const out = {};
    const entry = (user) => (out[user] ??= { rtt: null });
    const now = performance.now();
    const rate = (key, bytes, frames) => {
      const prev = this.last.get(key);
      this.last.set(key, { t: now, bytes, frames });
      if (!prev || now <= prev.t) return { bitrate: null, fps: null };
      const dt = (now - prev.t) / 1000;
      return {
        bitrate: Math.max(0, ((bytes - prev.bytes) * 8) / dt),
        fps: frames == null ? null : Math.max(0, (frames - prev.frames) / dt),
      };
    };
    if (this.sub) {
      const report = await this.sub.getStats();
      let rtt = null;
      report.forEach((s) => {
        if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
          rtt = s.currentRoundTripTime ?? rtt;
        }
      });
      // Tracks the server removed stay in the report with frozen counters: only live ones count.
      const live = new Set(
        this.sub
          .getTransceivers()
          .filter((t) => t.currentDirection === 'recvonly' || t.currentDirection === 'sendrecv')
          .map((t) => t.receiver.track.id),
      );
      report.forEach((s) => {
        if (s.type !== 'inbound-rtp' || !live.has(s.trackIdentifier)) return;
        const user = this.trackUser.get(s.trackIdentifier);
        if (!user) return;
        const e = entry(user);
        const frames = s.kind === 'video' ? (s.framesDecoded ?? 0) : null;
        e[s.kind] = {
          packetsReceived: s.packetsReceived ?? 0,
          packetsLost: s.packetsLost ?? 0,
          bytesReceived: s.bytesReceived ?? 0,
          framesDecoded: frames,
          frameHeight: s.frameHeight ?? null,
          ...rate(`in:${s.ssrc}`, s.bytesReceived ?? 0, frames),
        };
        e.rtt = rtt;
      });
    }
    if (this.pub && selfUser) {
      const report = await this.pub.getStats();
      const e = entry(selfUser);
      report.forEach((s) => {
        if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
          e.rtt = s.currentRoundTripTime ?? e.rtt;
        }
        if (s.type === 'outbound-rtp') {
          // Simulcast: one per layer; the figures are their sums, the frames the top layer's.
          const frames = s.kind === 'video' ? (s.framesEncoded ?? 0) : null;
          const r = rate(`out:${s.ssrc}`, s.bytesSent ?? 0, frames);
          const was = e[s.kind];
          e[s.kind] = {
            packetsSent: (was?.packetsSent ?? 0) + (s.packetsSent ?? 0),
            framesEncoded: Math.max(was?.framesEncoded ?? 0, frames ?? 0),
            bitrate: (was?.bitrate ?? 0) + (r.bitrate ?? 0),
            fps: Math.max(was?.fps ?? 0, r.fps ?? 0),
          };
        }
      });
    }
    return out;
  }
}
