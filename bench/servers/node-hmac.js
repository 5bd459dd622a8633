// A ceiling of `loadgen bench` (dev/bench): node:http plus Khoros HMAC v2 verification, storing
// nothing. One process, one thread: what a plain Node.js webhook receiver costs per request.
//
// Every POST: read the body, check the signature exactly as shared/src/auth/hmac.rs does
// (fingerprint `ts|METHOD|host/path?query|raw body|sorted x-smm-* headers`, HMAC-SHA256 with
// the key's secret, standard base64, compared with `x-auth-signature-v2`; timestamp within the
// allowed skew), then answer 202 with the ingress' body, or 401. `GET /readyz` answers 200.
//
//   LISTEN=127.0.0.1:8093 KHOROS_HMAC_KEYS=key=secret[,key2=secret2] [HMAC_MAX_SKEW_MS=60000] \
//     node bench/servers/node-hmac.js
'use strict';

const http = require('node:http');
const crypto = require('node:crypto');

/** The ingress' answer to an accepted event. */
const ACCEPTED = '{"status":"accepted"}';

/** `key=secret,key2=secret2`, as the ingress' KHOROS_HMAC_KEYS (a secret may contain `=`). */
function parseKeys(raw) {
  const keys = new Map();
  for (const pair of (raw || '').split(',').map((p) => p.trim()).filter(Boolean)) {
    const at = pair.indexOf('=');
    if (at <= 0 || at === pair.length - 1) throw new Error('each KHOROS_HMAC_KEYS entry must be key=secret');
    keys.set(pair.slice(0, at).trim(), pair.slice(at + 1).trim());
  }
  if (keys.size === 0) throw new Error('KHOROS_HMAC_KEYS needs at least one key=secret');
  return keys;
}

/** Host name without scheme or port, lower-cased (`Bridge.Example.com:8443` -> `bridge.example.com`). */
function hostWithoutPort(raw) {
  let host = (raw || '').trim();
  const scheme = host.indexOf('://');
  if (scheme >= 0) host = host.slice(scheme + 3);
  host = host.split('/')[0];
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    if (end >= 0) host = host.slice(0, end + 1);
  } else {
    const colon = host.lastIndexOf(':');
    if (colon >= 0 && /^[0-9]*$/.test(host.slice(colon + 1))) host = host.slice(0, colon);
  }
  return host.toLowerCase();
}

/** `:name:value` for every `x-smm-*` value (comma-split, trimmed), sorted and concatenated. */
function smmHeaders(headers) {
  const parts = [];
  for (const [name, value] of Object.entries(headers)) {
    if (!name.startsWith('x-smm-')) continue;
    for (const one of [].concat(value).join(',').split(',')) parts.push(`:${name}:${one.trim()}`);
  }
  return parts.sort().join('');
}

/** The header's single value, or undefined. */
function header(req, name) {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function verify(req, body, keys, maxSkewMs) {
  const apiKey = header(req, 'x-auth-apikey');
  const timestamp = header(req, 'x-auth-timestamp');
  const presented = header(req, 'x-auth-signature-v2');
  if (apiKey === undefined || timestamp === undefined || presented === undefined) return false;
  const secret = keys.get(apiKey);
  if (secret === undefined) return false;
  const fingerprint = Buffer.concat([
    Buffer.from(`${timestamp}|${req.method.toUpperCase()}|${hostWithoutPort(req.headers.host)}${req.url}|`),
    body,
    Buffer.from(`|${smmHeaders(req.headers)}`),
  ]);
  const expected = Buffer.from(crypto.createHmac('sha256', secret).update(fingerprint).digest('base64'));
  const given = Buffer.from(presented.trim());
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) return false;
  const ts = Number(timestamp.trim());
  return Number.isInteger(ts) && Math.abs(Date.now() - ts) <= maxSkewMs;
}

function main() {
  const keys = parseKeys(process.env.KHOROS_HMAC_KEYS);
  const maxSkewMs = Number(process.env.HMAC_MAX_SKEW_MS || 60000);
  const listen = process.env.LISTEN || '127.0.0.1:8093';
  const colon = listen.lastIndexOf(':');
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/readyz') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ready');
      return;
    }
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      if (req.method === 'POST' && verify(req, Buffer.concat(chunks), keys, maxSkewMs)) {
        res.writeHead(202, { 'content-type': 'application/json' });
        res.end(ACCEPTED);
      } else {
        res.writeHead(401);
        res.end();
      }
    });
  });
  server.listen(Number(listen.slice(colon + 1)), listen.slice(0, colon), () => {
    console.log(`node-hmac on http://${listen}`);
  });
  for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
}

main();
