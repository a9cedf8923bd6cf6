// The demo's end-to-end tests: Debian's Chromium (/usr/bin/chromium, installed by tests/run) with
// fake camera and microphone, against the server binary that `cargo test` has just built.
import { defineConfig } from '@playwright/test';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { composeServers } from './compose.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const bin = process.env.MICLINK_BIN ?? path.join(root, 'target/debug/miclink');
const http = process.env.MICLINK_E2E_HTTP ?? '127.0.0.1:18480';
const media = process.env.MICLINK_E2E_MEDIA ?? '127.0.0.1:18482';
// A second server that hands out TURN credentials for a coturn on loopback (relay tests).
const relayHttp = process.env.MICLINK_E2E_RELAY_HTTP ?? '127.0.0.1:18490';
const relayMedia = process.env.MICLINK_E2E_RELAY_MEDIA ?? '127.0.0.1:18492';
const turnPort = process.env.MICLINK_E2E_TURN_PORT ?? '18478';
const turnSecret = 'e2e-turn-secret-0123456789';
const log = process.env.MICLINK_E2E_LOG ? 'pipe' : 'ignore';
const rustLog = process.env.RUST_LOG ?? 'info,rtc=error,rtc_ice=error,rtc_dtls=error';

export default defineConfig({
  testDir: '.',
  timeout: 180_000,
  expect: { timeout: 20_000 },
  // One browser with several pages is what the machine (two cores) can carry; tests share one
  // server and use their own rooms.
  workers: 1,
  retries: 0,
  reporter: [['list']],
  outputDir: path.join(root, 'target/e2e-results'),
  use: {
    baseURL: `http://${http}`,
    viewport: { width: 1280, height: 800 },
    trace: 'retain-on-failure',
    launchOptions: {
      executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
      args: [
        '--use-fake-device-for-media-stream',
        '--use-fake-ui-for-media-stream',
        '--autoplay-policy=no-user-gesture-required',
        '--allow-loopback-in-peer-connection',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        // This machine's network is closed: without these Chromium keeps dialing Google's hosts.
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    },
  },
  webServer: [
    {
      command: `"${bin}"`,
      url: `http://${http}/healthz`,
      reuseExistingServer: false,
      timeout: 30_000,
      stdout: log,
      stderr: 'pipe',
      env: {
        MICLINK_HTTP_ADDR: http,
        MICLINK_MEDIA_ADDR: media,
        MICLINK_RESUME_GRACE_S: '15',
        // A signaling server the demo may be pointed at with ?server= (nothing listens there):
        // the page's refusal of servers not listed is tested beside it.
        MICLINK_DEMO_SERVERS: 'ws://127.0.0.1:9/ws',
        // rtc's own info and warn lines (state changes, DTLS extensions it skips) would drown
        // the report.
        RUST_LOG: rustLog,
      },
    },
    {
      // Debian's coturn (tests/run installs it), with the credentials scheme miclink signs for.
      command:
        `/usr/bin/turnserver -n --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 ` +
        `--listening-port=${turnPort} --min-port=18500 --max-port=18700 --use-auth-secret ` +
        `--static-auth-secret=${turnSecret} --realm=miclink.test --allow-loopback-peers ` +
        `--no-tls --no-dtls --no-cli --fingerprint --log-file=stdout --simple-log`,
      port: Number(turnPort),
      reuseExistingServer: false,
      timeout: 30_000,
      stdout: log,
      stderr: 'pipe',
    },
    {
      command: `"${bin}"`,
      url: `http://${relayHttp}/healthz`,
      reuseExistingServer: false,
      timeout: 30_000,
      stdout: log,
      stderr: 'pipe',
      env: {
        MICLINK_HTTP_ADDR: relayHttp,
        MICLINK_MEDIA_ADDR: relayMedia,
        MICLINK_ICE_SERVERS: `turn:127.0.0.1:${turnPort}?transport=udp`,
        MICLINK_TURN_SECRET: turnSecret,
        RUST_LOG: rustLog,
      },
    },
    // deploy/compose.yaml's cluster (Redis, coturn, nodes a, b and c), as processes: the
    // cluster test runs on exactly what the file configures. (Web servers start in order, so
    // Redis is up before the nodes: a node whose Redis does not answer at start does not start.)
    ...composeServers({ root, bin, rustLog, log }).servers,
  ],
});
