// The official MCP TypeScript SDK (1.32.2) as a client of Switchboard over
// Streamable HTTP (StreamableHTTPClientTransport), with the agent token as
// the bearer.
//
// Run by tests/support/node_harness.lua, which starts the server with
// http.listen on a loopback port and exports:
//   SB_HTTP_URL        http://127.0.0.1:PORT/mcp
//   SWITCHBOARD_TOKEN  an agent token allowed to call the Examples tools
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const STEP_TIMEOUT_MS = 15_000;

function env() {
  const missing = ['SB_HTTP_URL', 'SWITCHBOARD_TOKEN'].filter((k) => !process.env[k]);
  if (missing.length) {
    assert.fail(`missing environment: ${missing.join(', ')} -- run through tests/support/node_harness.lua`);
  }
  return { url: new URL(process.env.SB_HTTP_URL), token: process.env.SWITCHBOARD_TOKEN };
}

async function connect(url, token) {
  const transport = new StreamableHTTPClientTransport(url, {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
  const client = new Client({ name: 'switchboard-http-tests', version: '1.0.0' });
  await client.connect(transport, { timeout: STEP_TIMEOUT_MS });
  return { client, transport };
}

test('SDK 1.32.2 over Streamable HTTP: initialize, list and call tools, with a session id', async () => {
  const { url, token } = env();
  const { client, transport } = await connect(url, token);
  try {
    assert.equal(client.getServerVersion()?.name, 'switchboard');
    assert.match(transport.sessionId ?? '', /^[0-9a-f]{32}$/);
    const { tools } = await client.listTools(undefined, { timeout: STEP_TIMEOUT_MS });
    const names = tools.map((t) => t.name).sort();
    assert.ok(names.includes('example_clock'), names.join(','));
    assert.ok(names.includes('example_fetch'), names.join(','));
    const clock = await client.callTool({ name: 'example_clock', arguments: {} }, undefined,
      { timeout: STEP_TIMEOUT_MS });
    assert.notEqual(clock.isError, true, JSON.stringify(clock));
    assert.equal(typeof clock.structuredContent, 'object');
    const fetched = await client.callTool({ name: 'example_fetch', arguments: { path: '/hello.json' } }, undefined,
      { timeout: STEP_TIMEOUT_MS });
    assert.notEqual(fetched.isError, true, JSON.stringify(fetched));
    await client.ping({ timeout: STEP_TIMEOUT_MS });
    await transport.terminateSession();
  } finally {
    await client.close();
  }
});

test('SDK over HTTP: a wrong bearer token is refused with 401', async () => {
  const { url } = env();
  await assert.rejects(connect(url, 'sbt_not-a-real-token-at-all-000000'), (err) => {
    assert.match(String(err?.message ?? err), /401|nauthorized/);
    return true;
  });
});
