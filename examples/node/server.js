// A plain Node.js HTTP server for keel's HTTP workers, unmodified but for where it listens:
// the socket keel passes as fd 3 (LISTEN_FDS=1), else KEEL_SOCKET or PORT.
//
// Routes: /  /pid  /headers  /cached  /count  /sleep?ms=N  /echo (POST)  /big?bytes=N  /crash
// /health  /sick (from then on /health answers 500)
'use strict';
const http = require('http');

let requests = 0;
let cached = 0;
let sick = false;

const server = http.createServer((req, res) => {
  requests += 1;
  const url = new URL(req.url, 'http://localhost');
  const reply = (status, body, headers = {}) => {
    const data = Buffer.isBuffer(body) ? body : Buffer.from(body);
    res.writeHead(status, {
      'Content-Type': 'text/plain; charset=utf-8',
      'Content-Length': data.length,
      ...headers,
    });
    res.end(data);
  };
  switch (url.pathname) {
    case '/':
      return reply(200, 'Hello from Node\n');
    case '/pid':
      return reply(200, String(process.pid));
    case '/headers':
      return reply(200, JSON.stringify(req.headers), { 'Content-Type': 'application/json' });
    case '/cached':
      cached += 1;
      return reply(200, `cached ${process.pid} ${cached}\n`, { 'Cache-Control': 'public, max-age=60' });
    case '/count':
      return reply(200, String(requests));
    case '/sleep': {
      const ms = Number(url.searchParams.get('ms') || 0);
      return setTimeout(() => reply(200, `slept ${ms} ms`), ms);
    }
    case '/echo': {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      return req.on('end', () =>
        reply(200, Buffer.concat(chunks), {
          'Content-Type': req.headers['content-type'] || 'application/octet-stream',
        }));
    }
    case '/big': {
      // BYTES bytes of 'x', written as the client (through keel) takes them.
      let left = Number(url.searchParams.get('bytes') || 0);
      const chunk = Buffer.alloc(64 * 1024, 'x');
      res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': left });
      const more = () => {
        while (left > 0) {
          const part = left >= chunk.length ? chunk : chunk.subarray(0, left);
          left -= part.length;
          if (!res.write(part)) return res.once('drain', more);
        }
        res.end();
      };
      return more();
    }
    case '/crash':
      return process.kill(process.pid, 'SIGKILL');
    case '/health':
      return sick ? reply(500, 'sick\n') : reply(200, 'ok\n');
    case '/sick':
      sick = true;
      return reply(200, 'from now on /health answers 500\n');
    default:
      return reply(404, 'not found\n');
  }
});

if (process.env.LISTEN_FDS === '1' && process.env.LISTEN_PID === String(process.pid)) {
  server.listen({ fd: 3 });
} else if (process.env.PORT) {
  server.listen(Number(process.env.PORT), '127.0.0.1');
} else if (process.env.KEEL_SOCKET) {
  server.listen(process.env.KEEL_SOCKET);
} else {
  server.listen(3000, '127.0.0.1');
}

// keel sends SIGTERM once the worker's open requests are answered: stop accepting, let
// kept-alive connections go, and exit.
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
  setTimeout(() => process.exit(0), 5000).unref();
});
