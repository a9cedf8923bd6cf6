// deploy/compose.yaml, run as processes: its services' commands and environment, word for word,
// with the Debian packages the tests install in place of the images (redis-server, coturn's
// turnserver) and the binary `cargo test` built in place of the miclink image. What this cannot
// check: the images themselves, and TURN relaying (coturn refuses loopback peers, and the file
// lets relays lead only to the host's address, which is loopback here); the rest the file
// configures runs here, and what a process cannot show (host networking, start order) is
// checked as written.
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { parse } from 'yaml';

// The host clients reach: loopback here (tests send traffic nowhere else).
export const host = '127.0.0.1';
// Secrets as an operator would make them (`openssl rand -hex 32`), new at each run: made where
// the config is loaded and inherited by the test workers, which sign join tokens with one.
process.env.MICLINK_E2E_JWT_SECRET ||= randomBytes(32).toString('hex');
process.env.MICLINK_E2E_TURN_SECRET ||= randomBytes(32).toString('hex');
process.env.MICLINK_E2E_CLUSTER_SECRET ||= randomBytes(32).toString('hex');
process.env.MICLINK_E2E_REDIS_PASSWORD ||= randomBytes(32).toString('hex');
export const jwtSecret = process.env.MICLINK_E2E_JWT_SECRET;
const turnSecret = process.env.MICLINK_E2E_TURN_SECRET;

// Compose's interpolation: `${VAR}`, `${VAR:-default}`, `${VAR:?error}`.
function interpolate(text, env) {
  return text.replace(/\$\{([A-Z0-9_]+)(?::([-?])([^}]*))?\}/g, (_, name, op, arg) => {
    const value = env[name];
    if (value !== undefined && value !== '') return value;
    if (op === '-') return arg;
    if (op === '?') throw new Error(`deploy/compose.yaml: ${arg}`);
    return '';
  });
}

const quote = (word) => `'${String(word).replace(/'/g, `'\\''`)}'`;

// The web servers of playwright.config.js for the compose file's services, and the nodes' URLs.
export function composeServers({ root, bin, rustLog, log }) {
  const env = {
    MICLINK_HOST: host,
    MICLINK_JWT_SECRET: jwtSecret,
    MICLINK_TURN_SECRET: turnSecret,
    MICLINK_CLUSTER_SECRET: process.env.MICLINK_E2E_CLUSTER_SECRET,
    MICLINK_REDIS_PASSWORD: process.env.MICLINK_E2E_REDIS_PASSWORD,
    RUST_LOG: rustLog,
  };
  const file = path.join(root, 'deploy/compose.yaml');
  const compose = parse(interpolate(readFileSync(file, 'utf8'), env), { merge: true });
  const services = compose.services;
  const common = { reuseExistingServer: false, timeout: 60_000, stdout: log, stderr: 'pipe' };
  const portOf = (args, flag) => Number(args.find((a) => a.startsWith(`${flag}=`))?.split('=')[1]);
  const expectAs = (what, got, want) => {
    if (got !== want) throw new Error(`deploy/compose.yaml: ${what} is ${JSON.stringify(got)}, not ${JSON.stringify(want)}`);
  };
  // Media is UDP on one port per node: every service is on the host's network, and the nodes
  // start once Redis answers its health check, on the port it listens on.
  for (const [name, service] of Object.entries(services)) expectAs(`${name}'s network_mode`, service.network_mode, 'host');

  // Redis: its command, on Debian's redis-server.
  const redis = services.redis.command;
  if (redis[0] !== 'redis-server') throw new Error('deploy/compose.yaml: redis runs redis-server');
  const redisPort = Number(redis[redis.indexOf('--port') + 1]);
  const check = services.redis.healthcheck.test;
  expectAs("redis's health check port", Number(check[check.indexOf('-p') + 1]), redisPort);
  // coturn: the image's entry point is turnserver; its arguments as written.
  const turn = services.turn.command;
  const servers = [
    { ...common, command: ['/usr/bin/redis-server', ...redis.slice(1)].map(quote).join(' '), port: redisPort },
    { ...common, command: ['/usr/bin/turnserver', ...turn].map(quote).join(' '), port: portOf(turn, '--listening-port') },
  ];
  const nodes = {};
  for (const [name, service] of Object.entries(services)) {
    if (!service.environment?.MICLINK_NODE_ID) continue;
    expectAs(`${name}'s start`, service.depends_on?.redis?.condition, 'service_healthy');
    const e = Object.fromEntries(Object.entries(service.environment).map(([k, v]) => [k, String(v)]));
    const port = e.MICLINK_HTTP_ADDR.split(':').pop();
    const url = `http://${host}:${port}`;
    nodes[e.MICLINK_NODE_ID] = { service: name, url, public: e.MICLINK_PUBLIC_URL };
    // Playwright adds its own environment to a server's: settings of the server's that the
    // file does not make are taken away, so the nodes run on the file's alone.
    const foreign = Object.keys(process.env).filter((k) => /^MICLINK_/.test(k) && !/^MICLINK_E2E_/.test(k) && !(k in e));
    const command = ['env', ...foreign.flatMap((k) => ['-u', k]), bin].map(quote).join(' ');
    servers.push({ ...common, command, url: `${url}/healthz`, env: e });
  }
  return { servers, nodes };
}
