// Every schema in tools/list compiles in a strict JSON Schema 2020-12
// validator (ajv, strict mode, with the standard formats), and every result
// of the calls below validates against its tool's outputSchema with it.
// The official SDK client (1.32.2) lists and calls through `switchboard
// connect`; it also checks structuredContent with its own validator.
//
// Run by tests/run.sh (tests/support/node_harness.lua), which exports:
//   SB_BIN, SB_SOCKET   the binary and the agent socket of the running server
//   SWITCHBOARD_TOKEN   an agent token for the Examples tools
//   SB_TWILIO_TOKEN     an agent token for the Twilio tools, its tenant
//                       connected to the Twilio simulator (tests/fixtures/sim.lua)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';

const require = createRequire(import.meta.url);
const Ajv2020 = require('ajv/dist/2020').default;
const addFormats = require('ajv-formats').default;

const STEP_TIMEOUT_MS = 15_000;
const opts = { timeout: STEP_TIMEOUT_MS };
const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DIALECT = 'https://json-schema.org/draft/2020-12/schema';

function locate(p) {
  if (isAbsolute(p) || existsSync(p)) return resolve(p);
  const fromRoot = resolve(REPO_ROOT, p);
  return existsSync(fromRoot) ? fromRoot : resolve(p);
}

// Missing setup is a failure, never a skip.
function env() {
  const missing = ['SB_BIN', 'SB_SOCKET', 'SWITCHBOARD_TOKEN', 'SB_TWILIO_TOKEN'].filter((k) => !process.env[k]);
  if (missing.length) {
    assert.fail(`missing environment: ${missing.join(', ')} -- run through tests/run.sh`);
  }
  return { SB_BIN: locate(process.env.SB_BIN), SB_SOCKET: locate(process.env.SB_SOCKET) };
}

// A strict validator: unknown keywords, unknown formats, types left out
// where a keyword needs one, required properties not declared: all errors.
function strictAjv() {
  const ajv = new Ajv2020({ strict: true, allErrors: true });
  addFormats(ajv);
  return ajv;
}

async function connect(token) {
  const e = env();
  const transport = new StdioClientTransport({
    command: e.SB_BIN,
    args: ['connect', '--socket', e.SB_SOCKET],
    env: { ...process.env, SWITCHBOARD_TOKEN: token },
    stderr: 'pipe',
  });
  const stderr = [];
  transport.stderr?.on('data', (chunk) => stderr.push(chunk.toString()));
  const client = new Client({ name: 'switchboard-schema-tests', version: '1.0.0' }, { capabilities: {} });
  try {
    await client.connect(transport, opts);
  } catch (err) {
    err.message += `\n--- switchboard connect stderr ---\n${stderr.join('')}`;
    throw err;
  }
  return client;
}

// Compile every tool's schemas; returns name -> { input, output } validators.
function compileAll(tools) {
  const out = {};
  for (const t of tools) {
    const v = {};
    for (const [kind, schema] of [['input', t.inputSchema], ['output', t.outputSchema]]) {
      if (schema === undefined && kind === 'output') continue;
      assert.equal(schema?.$schema, DIALECT, `${t.name}: ${kind}Schema must declare $schema ${DIALECT}`);
      assert.equal(schema.type, 'object', `${t.name}: ${kind}Schema.type must be "object"`);
      try {
        v[kind] = strictAjv().compile(schema);
      } catch (err) {
        assert.fail(`${t.name}: ${kind}Schema does not compile in ajv strict mode: ${err.message}`);
      }
    }
    out[t.name] = v;
  }
  return out;
}

function textOf(r) {
  return (r.content ?? []).filter((c) => c.type === 'text').map((c) => c.text).join('\n');
}

// Call a tool, check the arguments against its exported inputSchema and
// the result against its outputSchema (strictly), and the JSON text block.
async function call(client, validators, name, args) {
  const v = validators[name];
  assert.ok(v, `${name} is not listed`);
  assert.ok(v.input(args), `${name} ${JSON.stringify(args)}: refused by its own inputSchema: ${JSON.stringify(v.input.errors)}`);
  const r = await client.callTool({ name, arguments: args }, undefined, opts);
  assert.equal(r.content?.[0]?.type, 'text', `${name}: the first block is not the paragraph`);
  if (r.structuredContent !== undefined) {
    assert.ok(v.output, `${name}: structuredContent without an outputSchema`);
    assert.ok(v.output(r.structuredContent),
      `${name} ${JSON.stringify(args)}: the result does not match its outputSchema: ` +
        `${JSON.stringify(v.output.errors)}\n${JSON.stringify(r.structuredContent)}`);
    assert.equal(r.content[1]?.type, 'text', `${name}: no JSON text block after the paragraph`);
    assert.deepEqual(JSON.parse(r.content[1].text), r.structuredContent, `${name}: the JSON block differs`);
  }
  return r;
}

test('every exported schema compiles in ajv strict mode (JSON Schema 2020-12)', { timeout: 60_000 }, async () => {
  for (const token of [process.env.SWITCHBOARD_TOKEN, process.env.SB_TWILIO_TOKEN]) {
    const client = await connect(token);
    try {
      const { tools } = await client.listTools(undefined, opts);
      assert.ok(tools.length >= 2);
      compileAll(tools);
    } finally {
      await client.close();
    }
  }
});

test('exported input schemas say what the server checks, in standard terms', { timeout: 60_000 }, async () => {
  const client = await connect(process.env.SB_TWILIO_TOKEN);
  try {
    const { tools } = await client.listTools(undefined, opts);
    const v = compileAll(tools);
    const names = tools.map((t) => t.name).sort();
    assert.deepEqual(names, ['twilio_account_overview', 'twilio_lookup_phone', 'twilio_manage_calls',
      'twilio_search_messages', 'twilio_send_sms', 'twilio_send_whatsapp', 'twilio_verify_phone']);
    const sms = v.twilio_send_sms.input;
    assert.ok(sms({ to: '+14155550123', body: 'hi' }));
    assert.ok(!sms({ to: '4155550123', body: 'hi' }), 'an E.164 number needs its plus');
    assert.ok(!sms({ to: '+14155550123', body: 'hi', media_url: 'ftp://example.com/a.png' }));
    assert.ok(sms({ to: '+14155550123', body: 'hi', media_url: 'https://example.com/a.png' }));
    const calls = v.twilio_manage_calls.input;
    assert.ok(calls({ action: 'list_recent', start_time_after: '2026-11-01' }), 'a date');
    assert.ok(calls({ action: 'list_recent', start_time_after: '2026-11-01T09:00:00Z' }), 'a date-time');
    assert.ok(!calls({ action: 'list_recent', start_time_after: 'yesterday' }));
    assert.ok(!calls({ action: 'get_details', call_sid: 'CA123' }));
    // an output schema refuses an empty result
    for (const t of tools) assert.ok(!v[t.name].output({}), `${t.name}: outputSchema accepts {}`);
  } finally {
    await client.close();
  }
});

test('every Twilio tool result validates against its outputSchema in ajv strict mode', { timeout: 120_000 }, async () => {
  const client = await connect(process.env.SB_TWILIO_TOKEN);
  try {
    const { tools } = await client.listTools(undefined, opts);
    const v = compileAll(tools);
    const ANA = '+14155550123';
    const ok = async (name, args) => {
      const r = await call(client, v, name, args);
      assert.notEqual(r.isError, true, `${name} ${JSON.stringify(args)} failed: ${textOf(r)}`);
      return r;
    };
    for (const action of ['account_info', 'list_phone_numbers', 'usage_summary']) {
      await ok('twilio_account_overview', { action });
    }
    await ok('twilio_lookup_phone', { phone_number: ANA });
    await ok('twilio_lookup_phone', { phone_number: '+14155550124', fields: ['line_type_intelligence', 'caller_name', 'sim_swap'] });
    await ok('twilio_lookup_phone', { phone_number: '+14155550199', fields: [] });
    const list = await ok('twilio_manage_calls', { action: 'list_recent', limit: 5 });
    const callSid = list.structuredContent.calls[0].sid;
    await ok('twilio_manage_calls', { action: 'get_details', call_sid: callSid });
    await ok('twilio_manage_calls', { action: 'get_recordings', call_sid: callSid });
    await ok('twilio_search_messages', { action: 'search', limit: 10 });
    await ok('twilio_search_messages', { action: 'get_details', message_sid: 'SM00000000000000000000000000000001' });
    const media = await ok('twilio_search_messages', { action: 'get_media', message_sid: 'MM00000000000000000000000000000003' });
    const links = media.content.filter((c) => c.type === 'resource_link');
    assert.equal(links.length, media.structuredContent.count);
    for (const l of links) {
      assert.match(l.uri, /^http:\/\/127\.0\.0\.1:\d+\/2010-04-01\/Accounts\/AC\w+\/Messages\/MM\w+\/Media\/ME\w+$/);
      assert.match(l.mimeType, /^image\//);
      assert.match(l.name, /^ME[0-9a-f]{32}$/);
    }
    await ok('twilio_send_sms', { to: ANA, body: 'Your appointment is tomorrow at 10:00.' });
    await ok('twilio_send_whatsapp', { to: ANA, body: 'See you tomorrow.' });
    await ok('twilio_send_whatsapp', { to: ANA, template_sid: 'HX00000000000000000000000000000001',
      template_variables: { 1: 'Ana' } });
    await ok('twilio_verify_phone', { action: 'send_code', to: ANA });
    await ok('twilio_verify_phone', { action: 'check_code', to: ANA, code: '000000' });
    // errors carry structured data too: it matches the schema's error shape
    const missing = await call(client, v, 'twilio_search_messages',
      { action: 'get_details', message_sid: `SM${'9'.repeat(32)}` });
    assert.equal(missing.isError, true);
    assert.equal(typeof missing.structuredContent?.error?.message, 'string');
    const rejected = await call(client, v, 'twilio_send_whatsapp',
      { to: ANA, template_sid: 'HX00000000000000000000000000000002' });
    assert.equal(rejected.isError, true);
  } finally {
    await client.close();
  }
});
