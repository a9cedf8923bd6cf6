// The whole WHEP exchange: one receive-only offer per place, the server's answer, DELETE to
// leave. The server is ICE-lite and learns this browser's address from its checks, so the
// offer is sent once gathering is done and nothing is trickled.
const form = document.getElementById('play-form');
const status = document.getElementById('status');
const stop = document.getElementById('stop');
let session = null;

function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => pc.iceGatheringState === 'complete' && resolve();
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, 2000);
  });
}

async function play(room, places, token) {
  const pc = new RTCPeerConnection();
  const videos = document.getElementById('videos');
  videos.replaceChildren();
  for (let i = 0; i < places; i++) {
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addTransceiver('video', { direction: 'recvonly' });
  }
  pc.ontrack = (e) => {
    const id = e.streams[0]?.id ?? e.track.id;
    let v = document.getElementById(`place-${id}`);
    if (!v) {
      v = Object.assign(document.createElement('video'), { id: `place-${id}`, autoplay: true, playsInline: true, muted: true });
      v.srcObject = new MediaStream();
      videos.append(v);
    }
    v.srcObject.addTrack(e.track);
  };
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const headers = { 'Content-Type': 'application/sdp' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(`/whep/${encodeURIComponent(room)}`, { method: 'POST', headers, body: pc.localDescription.sdp });
  if (res.status !== 201) {
    pc.close();
    throw new Error(`${res.status}: ${(await res.text()).trim()}`);
  }
  await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
  return { pc, location: new URL(res.headers.get('Location'), location.href), headers };
}

form.addEventListener('submit', async (e) => {
  e.preventDefault();
  status.textContent = 'Connecting…';
  try {
    session = await play(form.room.value, Number(form.places.value) || 1, form.token.value.trim());
    window.whepPlayer = session.pc;
    status.textContent = 'Playing';
    stop.hidden = false;
  } catch (err) {
    status.textContent = `Could not play: ${err.message}`;
  }
});

stop.addEventListener('click', async () => {
  if (!session) return;
  const { Authorization } = session.headers;
  await fetch(session.location, { method: 'DELETE', headers: Authorization ? { Authorization } : {} }).catch(() => {});
  session.pc.close();
  session = null;
  stop.hidden = true;
  status.textContent = 'Stopped';
});

const params = new URLSearchParams(location.search);
if (params.get('room')) form.room.value = params.get('room');
