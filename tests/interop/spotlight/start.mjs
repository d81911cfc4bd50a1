// Spotlight sidecar for tracegate's interop tests, started through the library API.
//
// Usage: node start.mjs [PORT]   (or SPOTLIGHT_PORT=PORT node start.mjs)
//
// Why not the `spotlight` command line: the CLI entry (dist/run.js) imports
// dist/instrument.js, which calls Sentry.init() with Spotlight's own hosted DSN,
// and it listens on every interface. The library entry (`setupSpotlight` from the
// package root, dist/server/main.js) never initialises a Sentry client, so
// @sentry/node stays a no-op and nothing leaves this machine.
//
// The library has no host option: it calls @hono/node-server's serve() with a port
// only, which makes node listen on all interfaces. We therefore pin every
// http.Server.listen() without an explicit host to 127.0.0.1 before starting it.
//
// Prints `SPOTLIGHT READY http://127.0.0.1:PORT` on stdout once listening and runs
// until SIGTERM/SIGINT.

import http from "node:http";

const HOST = "127.0.0.1";

function parsePort(raw) {
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    console.error(`start.mjs: invalid port ${JSON.stringify(raw)}; pass 1-65535 as argv[2] or SPOTLIGHT_PORT`);
    process.exit(2);
  }
  return port;
}

const port = parsePort(process.argv[2] ?? process.env.SPOTLIGHT_PORT);

// Keep the sidecar from writing captured payloads to files or reporting anywhere.
delete process.env.SPOTLIGHT_CAPTURE;
delete process.env.SENTRY_DSN;
delete process.env.SENTRY_SPOTLIGHT;

const originalListen = http.Server.prototype.listen;
http.Server.prototype.listen = function listenOnLoopback(...args) {
  // serve() calls listen(port, hostname=undefined, callback); the EADDRINUSE retry calls listen(port).
  if (typeof args[0] === "number" && (args.length === 1 || typeof args[1] !== "string")) {
    const [listenPort, maybeHost, ...rest] = args;
    const tail = maybeHost === undefined ? rest : [maybeHost, ...rest];
    return originalListen.call(this, listenPort, HOST, ...tail);
  }
  return originalListen.apply(this, args);
};

const { setupSpotlight } = await import("@spotlightjs/spotlight");

const quietLogger = {
  info: (message) => console.error("[spotlight]", message),
  warn: (message) => console.error("[spotlight]", message),
  error: (message) => console.error("[spotlight]", message),
  debug: () => {},
};

const server = await setupSpotlight({ port, isStandalone: true, logger: quietLogger });
if (!server) {
  // setupSpotlight returns undefined when another sidecar already answers on this port.
  console.error(`start.mjs: a Spotlight sidecar already runs on port ${port}; refusing to share it`);
  process.exit(3);
}

const address = server.address();
if (!address || typeof address === "string" || address.address !== HOST) {
  console.error(`start.mjs: sidecar is not bound to ${HOST}: ${JSON.stringify(address)}`);
  process.exit(4);
}

console.log(`SPOTLIGHT READY http://${HOST}:${address.port}`);

// setupSpotlight's own SIGINT/SIGTERM handlers only close the server gracefully,
// and open SSE streams keep it alive: exit at once instead (nothing to flush).
const stop = () => process.exit(0);
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
