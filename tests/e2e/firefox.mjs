// The demo's whole flow in Debian's Firefox ESR, driven over WebDriver BiDi (puppeteer-core), against
// the server on its embedded defaults (no flags, no environment): anchor, co-host and viewer, with
// video frames decoded and audio packets arriving on every page; then a second co-host, so the
// viewer's grid takes the co-hosts' lowest simulcast layer and the anchor's best, which Firefox
// must send (a layer nobody watched was paused, and must come back when asked for).
//
// Firefox never pairs its candidates with a loopback address, so this is the test that the default
// media address is reachable from a browser on the same machine. Run it through `firefox-netns`, which
// gives it a network namespace of its own with one private test address: the defaults' ports are free
// there, and the only non-loopback address Firefox and the server can use is that one.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import puppeteer from 'puppeteer-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const bin = process.env.MICLINK_BIN ?? path.join(root, 'target/debug/miclink');
const firefox = process.env.FIREFOX ?? '/usr/bin/firefox-esr';
// The embedded default.
const base = 'http://127.0.0.1:8080';
const deadline = Date.now() + 240_000;

const log = (...a) => console.log(`[firefox ${((Date.now() - started) / 1000).toFixed(1)}s]`, ...a);
const started = Date.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, check, timeout = 30_000) {
  const end = Math.min(Date.now() + timeout, deadline);
  let last;
  for (;;) {
    try {
      last = await check();
      if (last === true) return;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(last)}`);
    await sleep(300);
  }
}

function startServer() {
  // No configuration at all: the README's `cargo run --release`.
  const env = { PATH: process.env.PATH, HOME: process.env.HOME ?? '/tmp', RUST_LOG: process.env.RUST_LOG || 'info,rtc=error,rtc_ice=error,rtc_dtls=error' };
  const server = spawn(bin, [], { env, stdio: ['ignore', 'inherit', 'inherit'] });
  server.on('exit', (code, signal) => {
    if (!stopping) {
      console.error(`the server exited (${code ?? signal})`);
      process.exit(1);
    }
  });
  return server;
}

let stopping = false;
const server = startServer();
await until('the server', async () => (await fetch(`${base}/healthz`)).ok);

const browser = await puppeteer.launch({
  browser: 'firefox',
  executablePath: firefox,
  headless: true,
  protocol: 'webDriverBiDi',
  extraPrefsFirefox: {
    // Fake camera and microphone, no permission prompt, playback without a gesture.
    'media.navigator.streams.fake': true,
    'media.navigator.permission.disabled': true,
    'media.autoplay.default': 0,
    'media.autoplay.blocking_policy': 0,
  },
});

async function join(room, name, role) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.on('pageerror', (e) => log(`[${name}] page error: ${e.message}`));
  await page.goto(`${base}/`);
  await page.locator('#room').fill(room);
  await page.locator('#name').fill(name);
  await page.locator(`input[name=role][value=${role}]`).click();
  await page.locator('#join').click();
  await until(`${name} on stage`, () => page.evaluate(() => !!window.miclink.state()?.me));
  const user = await page.evaluate(() => window.miclink.state().me.user);
  log(`${name} joined as ${role}`);
  return { page, name, user };
}

// Decoded video frames rise for every remote publisher, and audio packets arrive.
async function mediaFlowing(p, remotes) {
  await until(`media on ${p.name}'s page`, async () => {
    const before = await p.page.evaluate(() => window.miclink.stats());
    await sleep(1000);
    const after = await p.page.evaluate(() => window.miclink.stats());
    const ok = remotes.every((r) => {
      const a = before[r.user];
      const b = after[r.user];
      return (
        a?.audio && b?.audio && b.audio.packetsReceived > a.audio.packetsReceived &&
        a.video && b.video && b.video.framesDecoded > a.video.framesDecoded
      );
    });
    return ok || after;
  }, 45_000);
  const routes = await p.page.evaluate(() => window.miclink.routes());
  log(`media flowing on ${p.name}'s page`, JSON.stringify(routes));
}

let failed = false;
try {
  const room = `firefox-${process.pid}`;
  const anchor = await join(room, 'Anchor Fox', 'anchor');
  const guest = await join(room, 'Guest Fox', 'audience');
  const viewer = await join(room, 'Viewer Fox', 'audience');

  // The guest applies with video and the anchor accepts; every page then shows `tiles` tiles.
  async function link(g, pages, tiles) {
    await g.page.select('#link-mode', 'video');
    log(`${g.name} applies`);
    await g.page.evaluate(() => document.querySelector('#apply').click());
    await until(`${g.name}'s application at the anchor`, () =>
      anchor.page.evaluate(() => document.querySelectorAll('#applications li').length === 1),
    );
    log('anchor accepts');
    // The list is rendered again every second (countdowns): click in the page, not through a
    // locator that may hold a replaced element.
    await anchor.page.evaluate(() => document.querySelector('#applications li button.primary').click());
    await until(`${g.name} on every page`, async () => {
      for (const p of pages) {
        const n = await p.page.evaluate(() => document.querySelectorAll('#tiles .tile').length);
        if (n !== tiles) return `${p.name}: ${n} tiles`;
      }
      return true;
    });
  }
  await link(guest, [anchor, guest, viewer], 2);

  const A = { user: anchor.user };
  const G = { user: guest.user };
  await mediaFlowing(anchor, [G]);
  await mediaFlowing(guest, [A]);
  await mediaFlowing(viewer, [A, G]);
  // Firefox pairs with the host's own address, never with loopback: that is why the defaults
  // bind every address.
  for (const p of [anchor, guest, viewer]) {
    const routes = await p.page.evaluate(() => window.miclink.routes());
    for (const [leg, r] of Object.entries(routes)) {
      if (leg === 'publish' && p === viewer) continue;
      if (!r) throw new Error(`${p.name}: no selected pair on the ${leg} connection`);
      if (r.remote?.startsWith('127.')) throw new Error(`${p.name}: ${leg} pairs with loopback ${r.remote}`);
    }
  }
  log('anchor, co-host and viewer decode each other');

  // Simulcast from Firefox: a second co-host turns the viewer's tiles into a grid, whose small
  // tiles ask for the lowest layer (paused until now: nobody watched it) and whose big tile keeps
  // the top one. The decoder's frame heights show what arrived.
  const guest2 = await join(room, 'Second Fox', 'audience');
  await link(guest2, [anchor, guest, guest2, viewer], 3);
  const G2 = { user: guest2.user };
  await mediaFlowing(viewer, [A, G, G2]);
  await until('the layers the grid asks for', async () => {
    const layers = await viewer.page.evaluate(() =>
      Object.fromEntries([...document.querySelectorAll('#tiles .tile')].map((t) => [t.dataset.user, t.dataset.layer])),
    );
    const s = await viewer.page.evaluate(() => window.miclink.stats());
    const h = (u) => s[u.user]?.video?.frameHeight ?? 0;
    const [big, small1, small2] = [h(A), h(G), h(G2)];
    // The big tile gets the best layer the anchor sends: the top one, or the middle one while
    // Firefox's encoder leaves the top out because the machine's CPU is short (it adapts so,
    // and a CI machine running four Firefox pages is).
    const ok =
      ['high', 'medium'].includes(layers[A.user]) && layers[G.user] === 'low' && layers[G2.user] === 'low' &&
      small1 > 0 && small2 > 0 && big >= 2 * Math.max(small1, small2);
    return ok || { layers, big, small1, small2 };
  }, 40_000);
  const s = await viewer.page.evaluate(() => window.miclink.stats());
  log(`decoded heights: anchor ${s[A.user].video.frameHeight}, co-hosts ${s[G.user].video.frameHeight} and ${s[G2.user].video.frameHeight}`);
  log('PASS: anchor, co-hosts and viewer decode each other in Firefox on the embedded defaults, simulcast layers as the tiles need');
} catch (e) {
  failed = true;
  console.error(`FAIL: ${e.stack ?? e}`);
} finally {
  stopping = true;
  await browser.close().catch(() => {});
  server.kill('SIGTERM');
}
process.exit(failed ? 1 : 0);
