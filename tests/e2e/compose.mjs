// deploy/compose.yaml, run as processes: its services' commands and environment, word for word,
// with the Debian packages the tests install in place of the images (redis-server, coturn's
// turnserver) and the binary `cargo test` built in place of the miclink image. What this cannot
// check is the images themselves; everything the file configures runs here.
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
    RUST_LOG: rustLog,
  };
  const file = path.join(root, 'deploy/compose.yaml');
  const compose = parse(interpolate(readFileSync(file, 'utf8'), env), { merge: true });
  const services = compose.services;
  const common = { reuseExistingServer: false, timeout: 60_000, stdout: log, stderr: 'pipe' };
  const portOf = (args, flag) => Number(args.find((a) => a.startsWith(`${flag}=`))?.split('=')[1]);

  // Redis: its command, on Debian's redis-server.
  const redis = services.redis.command;
  if (redis[0] !== 'redis-server') throw new Error('deploy/compose.yaml: redis runs redis-server');
  const redisPort = Number(redis[redis.indexOf('--port') + 1]);
  // coturn: the image's entry point is turnserver; its arguments as written.
  const turn = services.turn.command;
  const servers = [
    { ...common, command: ['/usr/bin/redis-server', ...redis.slice(1)].map(quote).join(' '), port: redisPort },
    { ...common, command: ['/usr/bin/turnserver', ...turn].map(quote).join(' '), port: portOf(turn, '--listening-port') },
  ];
  const nodes = {};
  for (const [name, service] of Object.entries(services)) {
    if (!service.environment?.MICLINK_NODE_ID) continue;
    const e = Object.fromEntries(Object.entries(service.environment).map(([k, v]) => [k, String(v)]));
    const port = e.MICLINK_HTTP_ADDR.split(':').pop();
    const url = `http://${host}:${port}`;
    nodes[e.MICLINK_NODE_ID] = { service: name, url, public: e.MICLINK_PUBLIC_URL };
    servers.push({ ...common, command: quote(bin), url: `${url}/healthz`, env: e });
  }
  return { servers, nodes };
}
