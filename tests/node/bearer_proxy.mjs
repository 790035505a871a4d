// A test-only reverse proxy that adds the agent's bearer token: the MCP
// conformance suite (@modelcontextprotocol/conformance 0.1.13) has no way to
// send an Authorization header, and Switchboard refuses every request
// without one. Everything else (Host, Origin, the body, the event streams)
// passes through unchanged, so the suite's DNS-rebinding checks reach the
// server as sent.
//   node bearer_proxy.mjs LISTEN_PORT TARGET_PORT   (token in SWITCHBOARD_TOKEN)
import http from 'node:http';

const [listenPort, targetPort] = process.argv.slice(2).map(Number);
const token = process.env.SWITCHBOARD_TOKEN;
if (!listenPort || !targetPort || !token) {
  console.error('usage: SWITCHBOARD_TOKEN=… node bearer_proxy.mjs LISTEN_PORT TARGET_PORT');
  process.exit(2);
}

const server = http.createServer((req, res) => {
  const headers = { ...req.headers, authorization: `Bearer ${token}` };
  const up = http.request(
    { host: '127.0.0.1', port: targetPort, method: req.method, path: req.url, headers },
    (upRes) => {
      res.writeHead(upRes.statusCode ?? 502, upRes.headers);
      upRes.pipe(res);
    },
  );
  up.on('error', (err) => {
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
    res.end(`proxy: ${err.message}\n`);
  });
  res.on('close', () => up.destroy());
  req.pipe(up);
});
server.listen(listenPort, '127.0.0.1', () => console.log(`proxy listening on ${listenPort}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
