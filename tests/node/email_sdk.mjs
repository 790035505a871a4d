// The email integration package (examples/integrations/email) through the
// official MCP SDK client, over `switchboard connect`: list, read, a send
// escalated and approved (sent exactly once, counted by the package's
// simulator), a Safety Gateway hold, and no answer carrying the API key.
//
// Run by examples/integrations/email/tests/sdk_spec.lua, which starts the
// simulator and a server, connects a tenant and exports:
//   SB_BIN, SB_SOCKET, SB_CONFIG    the binary, the agent socket, the server's config
//   SB_EMAIL_TOKEN                  an agent token holding the Email group
//   SB_EMAIL_TENANT                 its tenant (autonomous sends off)
//   SB_EMAIL_SIM                    the simulator's URL
//   SB_EMAIL_SECRET                 the API key's secret part (must never come back)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';

const require = createRequire(import.meta.url);
const Ajv2020 = require('ajv/dist/2020').default;
const addFormats = require('ajv-formats').default;

const opts = { timeout: 20_000 };

function env() {
  const need = ['SB_BIN', 'SB_SOCKET', 'SB_CONFIG', 'SB_EMAIL_TOKEN', 'SB_EMAIL_TENANT', 'SB_EMAIL_SIM',
    'SB_EMAIL_SECRET'];
  const missing = need.filter((k) => !process.env[k]);
  if (missing.length) assert.fail(`missing environment: ${missing.join(', ')} (run through sdk_spec.lua)`);
  return process.env;
}

const textOf = (r) => (r.content ?? []).filter((c) => c.type === 'text').map((c) => c.text).join('\n');
const stats = async (e) => (await fetch(`${e.SB_EMAIL_SIM}/__sim/stats`)).json();

test('email package through the MCP SDK client', { timeout: 90_000 }, async () => {
  const e = env();
  const answers = [];
  const transport = new StdioClientTransport({
    command: e.SB_BIN, args: ['connect', '--socket', e.SB_SOCKET],
    env: { ...process.env, SWITCHBOARD_TOKEN: e.SB_EMAIL_TOKEN }, stderr: 'pipe',
  });
  const client = new Client({ name: 'switchboard-email-tests', version: '1.0.0' }, { capabilities: {} });
  await client.connect(transport, opts);
  const call = async (name, args) => {
    const r = await client.callTool({ name, arguments: args }, undefined, opts);
    answers.push(JSON.stringify(r));
    return r;
  };
  try {
    // the Email group: its two tools and the package's instructions
    const { tools } = await client.listTools(undefined, opts);
    answers.push(JSON.stringify(tools));
    assert.deepEqual(tools.map((t) => t.name).sort(), ['email_search', 'email_send']);
    const send = tools.find((t) => t.name === 'email_send');
    assert.equal(send.annotations?.readOnlyHint, false);
    assert.equal(tools.find((t) => t.name === 'email_search').annotations?.readOnlyHint, true);
    assert.match(client.getInstructions() ?? '', /Email tools/);
    // every schema compiles in a strict JSON Schema 2020-12 validator
    const ajv = new Ajv2020({ strict: true, allErrors: true });
    addFormats(ajv);
    const validators = {};
    for (const t of tools) {
      ajv.compile(t.inputSchema);
      validators[t.name] = ajv.compile(t.outputSchema);
    }
    const valid = (name, r) => assert.ok(validators[name](r.structuredContent),
      `${name}: ${JSON.stringify(validators[name].errors)}`);

    // a read before anything was sent
    const empty = await call('email_search', { to: 'ana@example.com' });
    assert.notEqual(empty.isError, true, textOf(empty));
    assert.equal(empty.structuredContent.count, 0);
    valid('email_search', empty);

    // a gated send: escalated, nothing reaches SendGrid
    const before = await stats(e);
    const gated = await call('email_send', { to: 'ana@example.com', subject: 'Your visit', body: 'See you at 3pm.' });
    assert.equal(gated.isError, true);
    assert.equal(gated.structuredContent.status, 'escalated', textOf(gated));
    valid('email_send', gated);
    assert.equal((await stats(e)).send_posts, before.send_posts);

    // a person approves it: it runs once
    const id = String(gated.structuredContent.escalation_id);
    const admin = (...args) => execFileSync(e.SB_BIN, ['admin', '--config', e.SB_CONFIG, '--json', ...args],
      { encoding: 'utf8' });
    const approved = JSON.parse(admin('escalation', 'approve', id, '--tenant', e.SB_EMAIL_TENANT));
    answers.push(JSON.stringify(approved));
    assert.equal(approved.status, 'approved');
    assert.equal(approved.result?.data?.outcome, 'sent', JSON.stringify(approved));
    assert.throws(() => admin('escalation', 'approve', id, '--tenant', e.SB_EMAIL_TENANT));
    const after = await stats(e);
    assert.equal(after.sends, before.sends + 1);
    assert.equal(after.send_posts, before.send_posts + 1);

    // the read shows it
    const found = await call('email_search', { to: 'ana@example.com', limit: 5 });
    assert.equal(found.structuredContent.count, 1, textOf(found));
    assert.equal(found.structuredContent.messages[0].subject, 'Your visit');
    valid('email_search', found);

    // a PII hold: a card number in the body
    const held = await call('email_send', { to: 'ana@example.com', subject: 'Billing',
      body: 'The card on file is 4111 1111 1111 1111.' });
    assert.equal(held.isError, true);
    assert.equal(held.structuredContent.status, 'held', textOf(held));
    assert.match(textOf(held), /safety_gateway/);
    valid('email_send', held);
    assert.equal((await stats(e)).send_posts, after.send_posts);

    // bad arguments name the field
    const bad = await call('email_send', { to: 'not-an-address', subject: 's', body: 'b' });
    assert.equal(bad.isError, true);
    assert.match(textOf(bad), /to/);

    for (const a of answers) assert.ok(!a.includes(e.SB_EMAIL_SECRET), 'an answer carries the API key');
  } finally {
    await client.close();
  }
});
