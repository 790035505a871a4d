// The official MCP TypeScript SDK (1.32.2) as a client of Switchboard,
// through the `switchboard connect` stdio bridge.
//
// Run by tests/run.sh, which starts the server and exports:
//   SB_BIN             path to the switchboard binary
//   SB_SOCKET          the agent socket of the running server
//   SWITCHBOARD_TOKEN  an agent token allowed to call the Examples tools
// The server's example_fetch upstream must serve /hello.json = {"hello":"world"}.
//
//   node --test tests/node/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, statSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { ErrorCode, McpError } from '@modelcontextprotocol/sdk/types.js';

const STEP_TIMEOUT_MS = 15_000;
const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

// A relative path as given (from the cwd) if it exists, else from the repo root:
// the harness may run node from tests/node with paths meant for the root.
function locate(p) {
  if (isAbsolute(p) || existsSync(p)) return resolve(p);
  const fromRoot = resolve(REPO_ROOT, p);
  return existsSync(fromRoot) ? fromRoot : resolve(p);
}

// Missing setup is a failure, never a skip.
function env() {
  const missing = ['SB_BIN', 'SB_SOCKET', 'SWITCHBOARD_TOKEN'].filter((k) => !process.env[k]);
  if (missing.length) {
    assert.fail(
      `missing environment: ${missing.join(', ')} -- run through tests/run.sh ` +
        '(it starts the server and exports SB_BIN, SB_SOCKET, SWITCHBOARD_TOKEN)',
    );
  }
  const SB_BIN = locate(process.env.SB_BIN);
  const SB_SOCKET = locate(process.env.SB_SOCKET);
  const { SWITCHBOARD_TOKEN } = process.env;
  assert.ok(existsSync(SB_BIN), `SB_BIN=${SB_BIN} does not exist`);
  assert.ok(existsSync(SB_SOCKET), `SB_SOCKET=${SB_SOCKET} does not exist (is the server running?)`);
  assert.ok(statSync(SB_SOCKET).isSocket(), `SB_SOCKET=${SB_SOCKET} is not a socket`);
  return { SB_BIN, SB_SOCKET, SWITCHBOARD_TOKEN };
}

// A client on a fresh `switchboard connect` child; stderr is collected so a
// failure can show what the bridge said.
function makeClient({ SB_BIN, SB_SOCKET }, childEnv) {
  const transport = new StdioClientTransport({
    command: SB_BIN,
    args: ['connect', '--socket', SB_SOCKET],
    env: childEnv,
    stderr: 'pipe',
  });
  const stderr = [];
  transport.stderr?.on('data', (chunk) => stderr.push(chunk.toString()));
  const client = new Client({ name: 'switchboard-sdk-tests', version: '1.0.0' }, { capabilities: {} });
  return { client, transport, stderr: () => stderr.join('') };
}

// Re-throws err with the bridge's stderr attached.
function withStderr(err, stderr) {
  const text = stderr();
  if (text && err && typeof err === 'object' && 'message' in err) {
    err.message += `\n--- switchboard connect stderr ---\n${text.trimEnd()}`;
  }
  return err;
}

const opts = { timeout: STEP_TIMEOUT_MS };

function textOf(result) {
  return (result.content ?? [])
    .filter((c) => c.type === 'text')
    .map((c) => c.text)
    .join('\n');
}

test('SDK client: initialize, list, call, errors, ping', { timeout: 60_000 }, async () => {
  const e = env();
  const { client, transport, stderr } = makeClient(e, { ...process.env, SWITCHBOARD_TOKEN: e.SWITCHBOARD_TOKEN });
  try {
    await client.connect(transport, opts);
  } catch (err) {
    throw withStderr(err, stderr);
  }
  try {
    // initialize
    const info = client.getServerVersion();
    assert.ok(info, 'no serverInfo after initialize');
    assert.equal(info.name, 'switchboard');
    assert.equal(typeof info.version, 'string');
    const caps = client.getServerCapabilities();
    assert.ok(caps?.tools, `server capabilities lack tools: ${JSON.stringify(caps)}`);
    const instructions = client.getInstructions();
    assert.ok(instructions === undefined || typeof instructions === 'string');

    // tools/list
    const { tools } = await client.listTools(undefined, opts);
    const names = tools.map((t) => t.name);
    for (const want of ['example_clock', 'example_fetch']) {
      assert.ok(names.includes(want), `tools/list lacks ${want}: ${JSON.stringify(names)}`);
    }
    for (const t of tools) {
      assert.equal(t.inputSchema?.type, 'object', `${t.name}: inputSchema.type must be "object"`);
    }

    // example_clock
    const clock = await client.callTool({ name: 'example_clock', arguments: {} }, undefined, opts);
    assert.notEqual(clock.isError, true, `example_clock failed: ${textOf(clock)}`);
    assert.ok(clock.structuredContent, 'example_clock: no structuredContent');
    assert.equal(typeof clock.structuredContent.unix, 'number', 'example_clock: unix is not a number');
    const now = Date.now() / 1000;
    assert.ok(Math.abs(clock.structuredContent.unix - now) < 300, `example_clock: unix ${clock.structuredContent.unix} far from now ${now}`);
    assert.ok(textOf(clock).length > 0, 'example_clock: no text content');

    // example_fetch against the harness's upstream
    const fetched = await client.callTool(
      { name: 'example_fetch', arguments: { path: '/hello.json' } },
      undefined,
      opts,
    );
    assert.notEqual(fetched.isError, true, `example_fetch failed: ${textOf(fetched)}`);
    assert.ok(fetched.structuredContent, 'example_fetch: no structuredContent');
    assert.equal(fetched.structuredContent.status, 200);
    assert.equal(fetched.structuredContent.json?.hello, 'world', `example_fetch: ${JSON.stringify(fetched.structuredContent)}`);

    // unknown tool: a JSON-RPC error -32602, which the SDK raises
    await assert.rejects(
      client.callTool({ name: 'no_such_tool_xyz', arguments: {} }, undefined, opts),
      (err) => {
        assert.ok(err instanceof McpError, `expected McpError, got ${err}`);
        assert.equal(err.code, ErrorCode.InvalidParams, `expected -32602, got ${err.code}: ${err.message}`);
        return true;
      },
    );

    // bad argument type: the tool result carries isError and names the field
    const bad = await client.callTool({ name: 'example_clock', arguments: { tz: 5 } }, undefined, opts);
    assert.equal(bad.isError, true, `example_clock {tz: 5} should be isError: ${JSON.stringify(bad)}`);
    assert.match(textOf(bad), /tz/, `error text should mention tz: ${textOf(bad)}`);

    // ping
    const pong = await client.ping(opts);
    assert.deepEqual(pong, {});

    // the session still works after the errors
    const again = await client.callTool({ name: 'example_clock', arguments: {} }, undefined, opts);
    assert.equal(typeof again.structuredContent?.unix, 'number');
  } catch (err) {
    throw withStderr(err, stderr);
  } finally {
    await client.close();
  }
});

test('SDK client without SWITCHBOARD_TOKEN is refused at initialize', { timeout: 30_000 }, async () => {
  const e = env();
  const childEnv = { ...process.env };
  delete childEnv.SWITCHBOARD_TOKEN;
  const { client, transport, stderr } = makeClient(e, childEnv);
  try {
    const started = Date.now();
    await assert.rejects(client.connect(transport, opts), (err) => {
      assert.ok(err instanceof Error, `expected an Error, got ${err}`);
      return true;
    });
    // refused, not left hanging until the SDK's request timeout
    const waited = Date.now() - started;
    assert.ok(waited < STEP_TIMEOUT_MS - 2000, `initialize was not refused promptly (${waited} ms)`);
    assert.equal(client.getServerVersion(), undefined, 'a refused client must not have serverInfo');
  } catch (err) {
    throw withStderr(err, stderr);
  } finally {
    await client.close().catch(() => {});
  }
});
