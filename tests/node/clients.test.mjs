// Real MCP clients list and call all seven Twilio tools, over Streamable
// HTTP (the agent token as the bearer) and over the `switchboard connect`
// bridge, against the Twilio simulator:
//   - the SDK 1.32.2 (@modelcontextprotocol/sdk) over HTTP (the bridge is in
//     schemas.test.mjs);
//   - the v2 client (@modelcontextprotocol/client 2.4.0) with version
//     negotiation 'auto' and pinned to 2026-07-28 (stateless: server/discover,
//     then each request with its _meta and, over HTTP, Mcp-Method/Mcp-Name);
//   - MCP Inspector's CLI (@modelcontextprotocol/inspector 1.0.3 --cli), run
//     as a child process, its JSON output checked.
//
// Run by tests/support/node_harness.lua, which exports:
//   SB_BIN, SB_SOCKET   the binary and the agent socket of the running server
//   SB_HTTP_URL         http://127.0.0.1:PORT/mcp
//   SB_TWILIO_TOKEN     an agent token for the Twilio tools, its tenant
//                       connected to the Twilio simulator (tests/fixtures/sim.lua)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, isAbsolute, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { Client as Client1 } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport as HTTP1 } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { Client as Client2, StreamableHTTPClientTransport as HTTP2 } from '@modelcontextprotocol/client';
import { StdioClientTransport as Stdio2 } from '@modelcontextprotocol/client/stdio';

const run = promisify(execFile);
const require = createRequire(import.meta.url);
const STEP_TIMEOUT_MS = 15_000;
const opts = { timeout: STEP_TIMEOUT_MS };
const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const MODERN = '2026-07-28';
const TOOLS = ['twilio_account_overview', 'twilio_lookup_phone', 'twilio_manage_calls', 'twilio_search_messages',
  'twilio_send_sms', 'twilio_send_whatsapp', 'twilio_verify_phone'];

function locate(p) {
  if (isAbsolute(p) || existsSync(p)) return resolve(p);
  const fromRoot = resolve(REPO_ROOT, p);
  return existsSync(fromRoot) ? fromRoot : resolve(p);
}

// Missing setup is a failure, never a skip.
function env() {
  const missing = ['SB_BIN', 'SB_SOCKET', 'SB_HTTP_URL', 'SB_TWILIO_TOKEN'].filter((k) => !process.env[k]);
  if (missing.length) {
    assert.fail(`missing environment: ${missing.join(', ')} -- run through tests/support/node_harness.lua`);
  }
  return { bin: locate(process.env.SB_BIN), socket: locate(process.env.SB_SOCKET),
           url: new URL(process.env.SB_HTTP_URL), token: process.env.SB_TWILIO_TOKEN };
}

function textOf(r) {
  return (r.content ?? []).filter((c) => c.type === 'text').map((c) => c.text).join('\n');
}

// One call of each tool against the simulator; the sends differ per client
// (label) so that no two are the same message, and each client verifies its
// own number (the simulator allows 5 codes per destination in 10 minutes).
let clients = 0;
function calls(label) {
  const to = '+14155550123';
  const verifyTo = `+141555501${40 + clients++}`;
  return [
    ['twilio_account_overview', { action: 'account_info' }, (s) => assert.match(s.sid, /^AC[0-9a-f]{32}$/)],
    ['twilio_lookup_phone', { phone_number: to }, (s) => assert.equal(s.valid, true)],
    ['twilio_manage_calls', { action: 'list_recent', limit: 5 }, (s) => assert.ok(s.calls.length > 0)],
    ['twilio_search_messages', { action: 'search', limit: 10 }, (s) => assert.ok(s.messages.length > 0)],
    ['twilio_send_sms', { to, body: `Reminder from ${label}: your appointment is tomorrow.` },
      (s) => assert.equal(s.outcome, 'sent')],
    ['twilio_send_whatsapp', { to, body: `See you tomorrow (${label}).` }, (s) => assert.equal(s.outcome, 'sent')],
    ['twilio_verify_phone', { action: 'send_code', to: verifyTo }, (s) => assert.equal(s.status, 'pending')],
  ];
}

// tools/list shows the seven tools; each is called once and succeeds with a
// result of its kind.
async function exercise(client, label) {
  const { tools } = await client.listTools(undefined, opts);
  assert.deepEqual(tools.map((t) => t.name).sort(), TOOLS, `${label}: tools/list`);
  for (const t of tools) assert.equal(t.inputSchema?.type, 'object', `${label}: ${t.name} inputSchema`);
  for (const [name, args, check] of calls(label)) {
    const r = await client.callTool({ name, arguments: args }, undefined, opts);
    assert.notEqual(r.isError, true, `${label}: ${name} ${JSON.stringify(args)} failed: ${textOf(r)}`);
    assert.ok(textOf(r).length > 0, `${label}: ${name}: no text`);
    assert.equal(typeof r.structuredContent, 'object', `${label}: ${name}: no structuredContent`);
    try {
      check(r.structuredContent);
    } catch (err) {
      err.message = `${label}: ${name}: ${err.message}\n${JSON.stringify(r.structuredContent)}`;
      throw err;
    }
  }
}

test('SDK 1.32.2 over Streamable HTTP lists and calls all seven Twilio tools', { timeout: 120_000 }, async () => {
  const e = env();
  const transport = new HTTP1(e.url, { requestInit: { headers: { Authorization: `Bearer ${e.token}` } } });
  const client = new Client1({ name: 'switchboard-clients-tests', version: '1.0.0' });
  await client.connect(transport, opts);
  try {
    assert.equal(client.getServerVersion()?.name, 'switchboard');
    await exercise(client, 'sdk 1.32.2 http');
  } finally {
    await transport.terminateSession().catch(() => {});
    await client.close();
  }
});

// The v2 client on each transport, in each negotiation mode.
const V2_TRANSPORTS = {
  http: (e) => new HTTP2(e.url, { requestInit: { headers: { Authorization: `Bearer ${e.token}` } } }),
  bridge: (e) => new Stdio2({ command: e.bin, args: ['connect', '--socket', e.socket],
                               env: { ...process.env, SWITCHBOARD_TOKEN: e.token }, stderr: 'pipe' }),
};
const V2_MODES = { auto: 'auto', [`pinned to ${MODERN}`]: { pin: MODERN } };

for (const [tname, makeTransport] of Object.entries(V2_TRANSPORTS)) {
  for (const [mname, mode] of Object.entries(V2_MODES)) {
    test(`@modelcontextprotocol/client 2.4.0 (${mname}) over ${tname} lists and calls all seven Twilio tools`,
      { timeout: 120_000 }, async () => {
        const e = env();
        const transport = makeTransport(e);
        const stderr = [];
        transport.stderr?.on('data', (chunk) => stderr.push(chunk.toString()));
        const client = new Client2({ name: 'switchboard-clients-tests', version: '2.0.0' },
          { versionNegotiation: { mode } });
        try {
          await client.connect(transport, opts);
          // the server offers 2026-07-28: auto takes it, as the pin does
          assert.equal(client.getNegotiatedProtocolVersion(), MODERN);
          assert.equal(client.getServerVersion()?.name, 'switchboard');
          assert.ok(client.getServerCapabilities()?.tools, 'no tools capability in server/discover');
          await exercise(client, `client 2.4.0 ${mname} ${tname}`);
          // a tool the agent does not have: a protocol error, not a crash
          await assert.rejects(client.callTool({ name: 'no_such_tool_xyz', arguments: {} }, undefined, opts),
            (err) => err.code === -32602);
          // the session still works after the error
          const again = await client.callTool({ name: 'twilio_lookup_phone', arguments: { phone_number: '+14155550124' } },
            undefined, opts);
          assert.notEqual(again.isError, true, textOf(again));
        } catch (err) {
          if (stderr.length) err.message += `\n--- switchboard connect stderr ---\n${stderr.join('')}`;
          throw err;
        } finally {
          await client.close().catch(() => {});
        }
      });
  }
}

// {{{ MCP Inspector's CLI (no browser, no network: --cli only talks to the target)

const INSPECTOR_DIR = dirname(require.resolve('@modelcontextprotocol/inspector/package.json'));
const INSPECTOR = resolve(INSPECTOR_DIR, 'cli', 'build', 'cli.js');

// Run `mcp-inspector --cli TARGET... ARGS...`; returns its JSON output. Its
// cwd is the package's own directory: the CLI finds its package.json
// relative to the cwd.
async function inspector(target, args, childEnv = {}) {
  let out;
  try {
    out = await run(process.execPath, [INSPECTOR, '--cli', ...target, ...args], {
      cwd: INSPECTOR_DIR, timeout: 60_000, maxBuffer: 16 * 1048576,
      env: { ...process.env, BROWSER: 'none', MCP_AUTO_OPEN_ENABLED: 'false', ...childEnv },
    });
  } catch (err) {
    assert.fail(`inspector ${args.join(' ')} failed (${err.code}): ${err.stderr ?? err.message}\n${err.stdout ?? ''}`);
  }
  try {
    return JSON.parse(out.stdout);
  } catch {
    return assert.fail(`inspector ${args.join(' ')}: the output is not JSON: ${out.stdout}\n${out.stderr}`);
  }
}

// --tool-arg k=v pairs (the CLI parses a value as JSON when it can)
function toolArgs(args) {
  const out = [];
  for (const [k, v] of Object.entries(args)) out.push('--tool-arg', `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`);
  return out;
}

const INSPECTOR_TARGETS = {
  'HTTP (--transport http, the bearer as --header)': (e) => ({
    target: [e.url.href, '--transport', 'http', '--header', `Authorization: Bearer ${e.token}`], env: {},
  }),
  'the bridge': (e) => ({ target: [e.bin, 'connect', '--socket', e.socket], env: { SWITCHBOARD_TOKEN: e.token } }),
};

for (const [tname, targetOf] of Object.entries(INSPECTOR_TARGETS)) {
  test(`MCP Inspector 1.0.3 CLI over ${tname} lists and calls all seven Twilio tools`, { timeout: 300_000 }, async () => {
    const e = env();
    const { target, env: childEnv } = targetOf(e);
    const listed = await inspector(target, ['--method', 'tools/list'], childEnv);
    assert.deepEqual(listed.tools.map((t) => t.name).sort(), TOOLS);
    for (const [name, args, check] of calls(`inspector ${tname}`)) {
      const r = await inspector(target, ['--method', 'tools/call', '--tool-name', name, ...toolArgs(args)], childEnv);
      assert.notEqual(r.isError, true, `${name}: ${textOf(r)}`);
      assert.equal(typeof r.structuredContent, 'object', `${name}: ${JSON.stringify(r)}`);
      check(r.structuredContent);
    }
    // a refused argument comes back as the tool's error, named
    const bad = await inspector(target, ['--method', 'tools/call', '--tool-name', 'twilio_lookup_phone',
      '--tool-arg', 'phone_number=4155550123'], childEnv);
    assert.equal(bad.isError, true, JSON.stringify(bad));
    assert.match(textOf(bad), /phone_number/);
  });
}

test('MCP Inspector CLI over HTTP without the bearer is refused (401), with no output', { timeout: 60_000 }, async () => {
  const e = env();
  await assert.rejects(
    run(process.execPath, [INSPECTOR, '--cli', e.url.href, '--transport', 'http', '--method', 'tools/list'],
      { cwd: INSPECTOR_DIR, timeout: 30_000 }),
    (err) => {
      assert.notEqual(err.code, 0);
      assert.match(`${err.stderr}`, /401|nauthorized/);
      assert.equal(err.stdout.trim(), '');
      return true;
    });
});

// }}}
