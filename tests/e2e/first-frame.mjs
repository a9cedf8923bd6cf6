// Measures, in Chromium, the time from a viewer pressing Join to the first decoded frame of the
// anchor's video, directly and only through a TURN relay (coturn on loopback), and what a reload
// costs: a viewer's reload to its first frame, an anchor's reload as its viewer's freeze. A
// benchmark, not a test: `node tests/e2e/first-frame.mjs [trials]` after `cargo build
// --release`; figures go to benches/RESULTS.md. Starts its own server and coturn on loopback ports.
import { chromium } from '@playwright/test';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const trials = Number(process.argv[2] ?? 7);
const http = '127.0.0.1:18590';
const turnPort = 18578;
const secret = 'first-frame-turn-secret-0123';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const children = [];
const start = (cmd, args, env = {}) => {
  const c = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: 'ignore' });
  children.push(c);
  return c;
};
process.on('exit', () => children.forEach((c) => c.kill()));

start('/usr/bin/turnserver', [
  '-n', '--listening-ip=127.0.0.1', '--relay-ip=127.0.0.1', `--listening-port=${turnPort}`,
  '--min-port=18600', '--max-port=18800', '--use-auth-secret', `--static-auth-secret=${secret}`,
  '--realm=miclink.test', '--allow-loopback-peers', '--no-tls', '--no-dtls', '--no-cli',
  '--fingerprint',
]);
start(path.join(root, 'target/release/miclink'), [], {
  MICLINK_HTTP_ADDR: http,
  MICLINK_MEDIA_ADDR: '127.0.0.1:18592',
  MICLINK_ICE_SERVERS: `turn:127.0.0.1:${turnPort}?transport=udp`,
  MICLINK_TURN_SECRET: secret,
  RUST_LOG: 'warn',
});
for (let i = 0; ; i++) {
  try {
    if ((await fetch(`http://${http}/healthz`)).ok) break;
  } catch {}
  if (i > 100) throw new Error('the server did not start');
  await sleep(100);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: [
    '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
    '--autoplay-policy=no-user-gesture-required', '--allow-loopback-in-peer-connection',
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});

async function page(url, room, name, role) {
  const context = await browser.newContext();
  const p = await context.newPage();
  await p.goto(url);
  await p.getByLabel('Room').fill(room);
  await p.getByLabel('Your name').fill(name);
  await p.getByLabel(role === 'anchor' ? 'Anchor: go live' : 'Audience: watch').check();
  return { context, p };
}

async function firstFrame(relay, n) {
  const url = `http://${http}/${relay ? '?relay=1' : ''}`;
  const room = `ff-${relay ? 'relay' : 'direct'}-${n}`;
  const anchor = await page(url, room, 'Anchor', 'anchor');
  await anchor.p.getByRole('button', { name: 'Join' }).click();
  const anchorUser = await anchor.p.waitForFunction(() => window.miclink.state()?.me?.user).then((h) => h.jsonValue());
  // The anchor's video is flowing at the server before the viewer comes.
  await sleep(3000);
  const viewer = await page(url, room, 'Viewer', 'audience');
  const t0 = Date.now();
  await viewer.p.getByRole('button', { name: 'Join' }).click();
  for (;;) {
    const stats = await viewer.p.evaluate(() => window.miclink.stats());
    if ((stats[anchorUser]?.video?.framesDecoded ?? 0) > 0) break;
    if (Date.now() - t0 > 30_000) throw new Error(`${room}: no frame in 30 s`);
    await sleep(20);
  }
  const ms = Date.now() - t0;
  await viewer.context.close();
  await anchor.context.close();
  return ms;
}

// Frames the page has decoded of `user`'s video.
const decoded = (p, user) => p.evaluate((u) => window.miclink.stats().then((s) => s[u]?.video?.framesDecoded ?? 0), user);

// Reloads in a live room: the viewer's (time from reload to its first decoded frame of the
// anchor) and the anchor's (the longest stretch without a new decoded frame at the viewer, from
// the reload until 10 s later: what the audience sees as a freeze).
async function reloads(n) {
  const url = `http://${http}/`;
  const room = `ff-reload-${n}`;
  const anchor = await page(url, room, 'Anchor', 'anchor');
  await anchor.p.getByRole('button', { name: 'Join' }).click();
  const anchorUser = await anchor.p.waitForFunction(() => window.miclink.state()?.me?.user).then((h) => h.jsonValue());
  const viewer = await page(url, room, 'Viewer', 'audience');
  await viewer.p.getByRole('button', { name: 'Join' }).click();
  while ((await decoded(viewer.p, anchorUser)) < 30) await sleep(50);
  let t0 = Date.now();
  await viewer.p.reload();
  for (;;) {
    if ((await decoded(viewer.p, anchorUser).catch(() => 0)) > 0) break;
    if (Date.now() - t0 > 30_000) throw new Error(`${room}: the viewer got no frame in 30 s after its reload`);
    await sleep(20);
  }
  const viewerMs = Date.now() - t0;
  while ((await decoded(viewer.p, anchorUser)) < 30) await sleep(50);
  t0 = Date.now();
  await anchor.p.reload();
  let last = await decoded(viewer.p, anchorUser);
  let lastAt = t0;
  let freeze = 0;
  while (Date.now() - t0 < 10_000) {
    await sleep(20);
    const now = await decoded(viewer.p, anchorUser);
    if (now > last) {
      freeze = Math.max(freeze, Date.now() - lastAt);
      last = now;
      lastAt = Date.now();
    }
  }
  freeze = Math.max(freeze, Date.now() - lastAt);
  await viewer.context.close();
  await anchor.context.close();
  return { viewerMs, freeze };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const line = (what, times) =>
  console.log(`${what} median ${median(times)} ms, min ${Math.min(...times)}, max ${Math.max(...times)} (${times.join(', ')})`);
for (const relay of [false, true]) {
  const times = [];
  for (let n = 0; n < trials; n++) times.push(await firstFrame(relay, n));
  line(`${relay ? 'relay ' : 'direct'}: join to first decoded frame`, times);
}
const runs = [];
for (let n = 0; n < trials; n++) runs.push(await reloads(n));
line('viewer reload to first decoded frame', runs.map((r) => r.viewerMs));
line("anchor reload: the viewer's longest freeze", runs.map((r) => r.freeze));
await browser.close();
process.exit(0);
