// The demo's end-to-end tests: Debian's Chromium (/usr/bin/chromium, installed by tests/run) with
// fake camera and microphone, against the server binary that `cargo test` has just built.
import { defineConfig } from '@playwright/test';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const bin = process.env.MICLINK_BIN ?? path.join(root, 'target/debug/miclink');
const http = process.env.MICLINK_E2E_HTTP ?? '127.0.0.1:18480';
const media = process.env.MICLINK_E2E_MEDIA ?? '127.0.0.1:18482';
// A second server that hands out TURN credentials for a coturn on loopback (relay tests).
const relayHttp = process.env.MICLINK_E2E_RELAY_HTTP ?? '127.0.0.1:18490';
const relayMedia = process.env.MICLINK_E2E_RELAY_MEDIA ?? '127.0.0.1:18492';
const turnPort = process.env.MICLINK_E2E_TURN_PORT ?? '18478';
const turnSecret = 'e2e-turn-secret-0123456789';
// A cluster of two nodes, a and b, coordinated through a Redis on loopback (Debian's
// redis-server, installed by tests/run): one room across both.
const redisPort = process.env.MICLINK_E2E_REDIS_PORT ?? '18479';
const nodes = {
  a: { http: process.env.MICLINK_E2E_NODE_A_HTTP ?? '127.0.0.1:18510', media: '127.0.0.1:18512' },
  b: { http: process.env.MICLINK_E2E_NODE_B_HTTP ?? '127.0.0.1:18520', media: '127.0.0.1:18522' },
};
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
    {
      // Started before the nodes (web servers start in order): a node whose Redis does not
      // answer at start does not start.
      command:
        `/usr/bin/redis-server --port ${redisPort} --bind 127.0.0.1 --save '' --appendonly no ` +
        `--dir "${path.join(root, 'target')}"`,
      port: Number(redisPort),
      reuseExistingServer: false,
      timeout: 30_000,
      stdout: log,
      stderr: 'pipe',
    },
    ...Object.entries(nodes).map(([id, node]) => ({
      command: `"${bin}"`,
      url: `http://${node.http}/healthz`,
      reuseExistingServer: false,
      timeout: 30_000,
      stdout: log,
      stderr: 'pipe',
      env: {
        MICLINK_HTTP_ADDR: node.http,
        MICLINK_MEDIA_ADDR: node.media,
        MICLINK_REDIS_URL: `redis://127.0.0.1:${redisPort}`,
        MICLINK_NODE_ID: id,
        RUST_LOG: rustLog,
      },
    })),
  ],
});
