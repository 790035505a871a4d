// The operator console in a real headless Chromium (Debian's chromium,
// driven by puppeteer-core; no browser download) against the runtime and
// the Twilio simulator.
//
// Run by tests/integration/console_spec.lua, which starts both and exports:
//   SB_CONSOLE_URL          http://127.0.0.1:PORT (the console listener)
//   SB_CONSOLE_LINK         a one-time operator login link
//   SB_CONSOLE_TENANT_LINK  a one-time login link for tenant "other"'s administrator
//   SB_AGENT_TOKEN          an agent token (of tenant "other")
//   SB_SIM_URL              the simulator (its /__sim control API)
//   SB_BIN, SB_SOCKET       `switchboard connect` for an MCP client
//   SB_ARTIFACTS            where the screenshots go
//   SB_CHROMIUM             the browser (default /usr/bin/chromium)
// Without SB_CONSOLE_URL (the MCP SDK harness runs every *.test.mjs) it is skipped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';

const E = process.env;
const SKIP = !E.SB_CONSOLE_URL && 'run by tests/integration/console_spec.lua';

const SIM = {
  account: 'AC00000000000000000000000000000001',
  main: ['SK00000000000000000000000000000001', 'acme-main-secret-000000000000001'],
  standard: ['SK00000000000000000000000000000002', 'acme-standard-secret-00000000002'],
  ana: '+14155550123',
};
const TIMEOUT = 20_000;

async function submit(page, selector) {
  await Promise.all([page.waitForNavigation({ waitUntil: 'load', timeout: TIMEOUT }), page.click(selector)]);
}

async function text(page, selector) {
  try {
    return await page.$eval(selector, (e) => e.textContent.trim());
  } catch (err) {
    const main = await page.$eval('main', (e) => e.textContent.replace(/\s+/g, ' ').slice(0, 400)).catch(() => '');
    throw new Error(`${err.message} on ${page.url()}: ${main}`);
  }
}

async function shot(page, name) {
  await page.screenshot({ path: join(E.SB_ARTIFACTS, `${name}.png`), fullPage: true });
}

async function simRequests(since) {
  const r = await fetch(`${E.SB_SIM_URL}/__sim/requests?since=${since}`);
  return r.json();
}

async function mcpClient(token) {
  const { Client } = await import('@modelcontextprotocol/sdk/client/index.js');
  const { StdioClientTransport } = await import('@modelcontextprotocol/sdk/client/stdio.js');
  const transport = new StdioClientTransport({
    command: E.SB_BIN, args: ['connect', '--socket', E.SB_SOCKET],
    env: { ...process.env, SWITCHBOARD_TOKEN: token }, stderr: 'pipe',
  });
  const client = new Client({ name: 'switchboard-console-tests', version: '1.0.0' }, { capabilities: {} });
  await client.connect(transport, { timeout: TIMEOUT });
  return client;
}

test('the operator console', { skip: SKIP, timeout: 240_000 }, async (t) => {
  const puppeteer = (await import('puppeteer-core')).default;
  const browser = await puppeteer.launch({
    executablePath: E.SB_CHROMIUM || '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const base = E.SB_CONSOLE_URL;
  const page = await browser.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const cspErrors = [];
  page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) cspErrors.push(m.text()); });
  const home = `${base}/t/acme/c/twilio`;
  let agentToken;
  let operatorCookie;

  try {
    await t.test('an agent token does not log in', async () => {
      await page.goto(`${base}/login`);
      await page.type('#token', E.SB_AGENT_TOKEN);
      await submit(page, '#login');
      assert.match(await text(page, '#login-error'), /agent token: agents cannot log in/);
      // nor as a bearer token on a page
      const r = await fetch(`${base}/t/other`, { headers: { Authorization: `Bearer ${E.SB_AGENT_TOKEN}` } });
      assert.equal(r.status, 401);
      assert.match(await r.text(), /Log in to the console/);
    });

    await t.test('the operator logs in with the one-time link, which works once', async () => {
      await page.goto(E.SB_CONSOLE_LINK);
      await shot(page, 'login');
      await submit(page, '#login');
      assert.equal(new URL(page.url()).pathname, '/tenants');
      const cookies = await page.cookies();
      const c = cookies.find((x) => x.name === 'sb_console');
      assert.ok(c, 'the session cookie');
      assert.equal(c.httpOnly, true);
      assert.equal(c.sameSite, 'Strict');
      operatorCookie = c.value;
      const again = await fetch(`${base}/login`, {
        method: 'POST', body: `token=${encodeURIComponent(new URL(E.SB_CONSOLE_LINK).searchParams.get('token'))}`,
        headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, redirect: 'manual',
      });
      assert.equal(again.status, 403);
      assert.match(await again.text(), /unknown, already used or expired/);
    });

    await t.test('tenants: list and feature codes', async () => {
      const rows = await page.$$eval('#tenants tbody tr td:first-child', (l) => l.map((e) => e.textContent.trim()));
      assert.deepEqual(rows, ['acme', 'other']);
      await page.type('input[aria-label="Feature edits for acme"]', '+custom.twilio');
      await Promise.all([page.waitForNavigation(), page.$eval('input[aria-label="Feature edits for acme"]',
        (e) => e.form.requestSubmit())]);
      assert.match(await text(page, '#flash'), /Tenant acme has: custom\.twilio/);
      await shot(page, 'tenants');
    });

    await t.test('connect: the CLI\'s messages for wrong keys, the numbers for the right one', async () => {
      await page.goto(home);
      await page.type('#f-account_sid', SIM.account);
      await page.type('#f-api_key_sid', SIM.main[0]);
      await page.type('#f-api_key_secret', '0123456789abcdef0123456789abcdef');
      await submit(page, '#connect');
      assert.match(await text(page, '#flash'), /this looks like an Auth Token/);
      // the values come back, the secret never
      assert.equal(await page.$eval('#f-account_sid', (e) => e.value), SIM.account);
      assert.equal(await page.$eval('#f-api_key_secret', (e) => e.value), '');
      await page.type('#f-api_key_secret', 'wrong-secret-000000000000000001');
      await submit(page, '#connect');
      assert.match(await text(page, '#flash'), /validation failed: Twilio refused these credentials \(error 20003\)/);
      await page.type('#f-api_key_secret', SIM.main[1]);
      await submit(page, '#connect');
      assert.match(await text(page, '#flash'), /Connected: 3 numbers loaded/);
      assert.equal(await text(page, '#status'), 'active');
      assert.equal(await text(page, '#account'), 'Acme Clinic');
      assert.equal(await text(page, '#autonomous'), 'Off');
      const numbers = await page.$$eval('#tab-table tbody tr td:first-child', (l) => l.map((e) => e.textContent));
      assert.equal(numbers.length, 3);
      assert.ok(numbers.includes('+14155550100'));
      const html = await page.content();
      assert.ok(!html.includes(SIM.main[1]), 'the secret is never shown');
      await shot(page, 'numbers');
      await shot(page, 'connection');
    });

    await t.test('test the connection; a revoked key shows error; an updated key active again', async () => {
      await page.goto(home);
      await submit(page, '#test');
      assert.match(await text(page, '#flash'), /The connection works/);
      const r = await fetch(`${E.SB_SIM_URL}/__sim/keys/${SIM.main[0]}/revoke`, { method: 'POST' });
      assert.equal(r.status, 200);
      await submit(page, '#test');
      assert.equal(await text(page, '#status'), 'error');
      assert.match(await text(page, '#reason'), /20003/);
      await page.type('#u-api_key_sid', SIM.standard[0]);
      await page.type('#u-api_key_secret', SIM.standard[1]);
      await submit(page, '#update');
      assert.match(await text(page, '#flash'), /Settings updated \(status active\)/);
      assert.equal(await text(page, '#status'), 'active');
      assert.equal(await page.$eval('#u-api_key_secret', (e) => e.value), '');
    });

    await t.test('agents: add one with the Twilio group; its token is shown once', async () => {
      await page.goto(`${base}/t/acme/agents`);
      await page.type('#agent-add input[name=name]', 'bot');
      await page.select('#agent-add select[name=tier]', 'owner');
      await page.select('#agent-add select[name=group]', 'Twilio Communications');
      await submit(page, '#agent-add button[type=submit]');
      agentToken = await text(page, '#new-token');
      assert.match(agentToken, /^sbt_/);
      await page.reload();
      assert.equal(await page.$('#new-token'), null);
      const groups = await page.$$eval('#agents tbody tr', (l) => l.map((r) => r.children[3].textContent));
      assert.deepEqual(groups, ['Twilio Communications']);
      await shot(page, 'agents');
    });

    let escalations;
    await t.test('sends with autonomous sends off are held for a person', async () => {
      const client = await mcpClient(agentToken);
      try {
        for (const body of ['Your results are ready.', 'Second message <b>bold</b>']) {
          const r = await client.callTool({ name: 'twilio_send_sms', arguments: { to: SIM.ana, body } },
            undefined, { timeout: TIMEOUT });
          assert.equal(r.isError, true);
          assert.match(r.content[0].text, /autonomous sends are disabled/);
        }
      } finally {
        await client.close();
      }
      await page.goto(`${base}/t/acme/escalations`);
      escalations = await page.$$eval('#escalations tbody tr', (l) => l.map((r) => r.id.replace('esc-', '')));
      assert.equal(escalations.length, 2);
      await shot(page, 'escalations');
    });

    await t.test('approve an escalation exactly once', async () => {
      const id = escalations[1]; // the older one
      const { last } = await simRequests(999999999);
      await page.goto(`${base}/t/acme/escalations/${id}`);
      assert.match(await text(page, '#esc-arguments'), /Your results are ready\./);
      await shot(page, 'escalation');
      const second = await browser.newPage();
      await second.goto(`${base}/t/acme/escalations/${id}`);
      await page.bringToFront();
      await submit(page, '#approve');
      assert.match(await text(page, '#flash'), /approved and run once/);
      assert.equal(await text(page, '#esc-status'), 'approved');
      // the same form again, from another tab opened before the approval
      await second.bringToFront();
      await submit(second, '#approve');
      assert.match(await text(second, '#flash'), /already decided/);
      await second.close();
      await page.bringToFront();
      const { requests } = await simRequests(last);
      const sends = requests.filter((r) => r.method === 'POST' && /Messages\.json$/.test(r.path));
      assert.equal(sends.length, 1);
    });

    await t.test('reject an escalation with a reason', async () => {
      const id = escalations[0];
      await page.goto(`${base}/t/acme/escalations/${id}`);
      assert.match(await text(page, '#esc-arguments'), /Second message <b>bold<\\?\/b>/);
      await page.type('#reject-reason', 'not <now>');
      await submit(page, '#reject');
      assert.equal(await text(page, '#esc-status'), 'rejected');
      assert.equal(await text(page, '#esc-note'), 'not <now>');
      await page.goto(`${base}/t/acme/escalations`);
      assert.ok(await page.$('#no-escalations'));
    });

    await t.test('autonomous sends: a cancelled dialog leaves them off, a confirmed one turns them on', async () => {
      await page.goto(home);
      assert.equal(await text(page, '#autonomous'), 'Off');
      await page.click('#autonomous-toggle');
      await page.waitForSelector('#dlg-autonomous[open]');
      await page.click('#autonomous-cancel');
      await page.waitForSelector('#dlg-autonomous:not([open])');
      await page.reload();
      assert.equal(await text(page, '#autonomous'), 'Off');
      await page.click('#autonomous-toggle');
      await page.waitForSelector('#dlg-autonomous[open]');
      await submit(page, '#autonomous-confirm');
      assert.match(await text(page, '#flash'), /Autonomous sends are on/);
      assert.equal(await text(page, '#autonomous'), 'On');
    });

    await t.test('recent messages, page by page', async () => {
      await page.goto(home);
      await submit(page, '#tab-messages');
      const first = await page.$$eval('#tab-table tbody tr', (l) => l.map((r) => r.textContent));
      assert.equal(first.length, 3);
      // the approved send is the newest, its body escaped as text
      assert.match(first[0], /Your results are ready\./);
      await shot(page, 'messages');
      await submit(page, '#next-page');
      const second = await page.$$eval('#tab-table tbody tr', (l) => l.map((r) => r.textContent));
      assert.ok(second.length >= 1);
      assert.ok(!second.some((r) => first.includes(r)), 'the second page has other messages');
    });

    await t.test('executions: the agent\'s calls, and the full detail', async () => {
      await page.goto(`${base}/t/acme/executions`);
      const rows = await page.$$eval('#executions tbody tr', (l) => l.map((r) => r.textContent));
      assert.ok(rows.length >= 1);
      assert.match(rows.join('\n'), /bot/);
      assert.match(rows.join('\n'), /twilio_send_sms/);
      await shot(page, 'executions');
      await submit(page, '.execution-link');
      const calls = await page.$$eval('#calls tbody tr', (l) => l.map((r) => r.textContent));
      assert.ok(calls.some((c) => /twilio_send_sms/.test(c)));
      await shot(page, 'execution');
    });

    await t.test('usage: a chart drawn from the simulator\'s usage records', async () => {
      await page.goto(`${base}/t/acme/usage?period=last-30-days`);
      const bars = await page.$$eval('svg.chart rect.bar', (l) => l.length);
      assert.ok(bars >= 3, `bars: ${bars}`);
      const cats = await page.$$eval('.usage-table tbody td:first-child', (l) => l.map((e) => e.textContent));
      assert.ok(cats.includes('sms-outbound'));
      const days = await page.$$eval('#sends-daily tbody tr', (l) => l.length);
      assert.ok(days >= 1);
      await shot(page, 'usage');
    });

    await t.test('audit: settings changes with who, and verify', async () => {
      await page.goto(`${base}/t/acme/audit`);
      const rows = await page.$$eval('#changes tbody tr', (l) => l.map((r) => r.textContent));
      assert.ok(rows.some((r) => /console: operator/.test(r) && /twilio\.autonomous_sends/.test(r)));
      await submit(page, '#verify');
      assert.match(await text(page, '#verify-result'), /The trail verifies/);
      await shot(page, 'audit');
    });

    await t.test('a form without its CSRF token is refused', async () => {
      await page.goto(home);
      // the dialog's own form, without its hidden _csrf field
      await page.$eval('#dlg-autonomous form', (f) => f.querySelector('input[name=_csrf]').remove());
      await page.click('#autonomous-toggle');
      await page.waitForSelector('#dlg-autonomous[open]');
      const [resp] = await Promise.all([page.waitForNavigation(), page.click('#autonomous-confirm')]);
      assert.equal(resp.status(), 403);
      assert.match(await text(page, '#message'), /missing its security token \(CSRF\); nothing was changed/);
      // nor with another session's token
      await page.goto(home);
      await page.$eval('#dlg-autonomous form input[name=_csrf]', (i) => { i.value = '0'.repeat(48); });
      await page.click('#autonomous-toggle');
      await page.waitForSelector('#dlg-autonomous[open]');
      const [resp2] = await Promise.all([page.waitForNavigation(), page.click('#autonomous-confirm')]);
      assert.equal(resp2.status(), 403);
      await page.goto(home);
      assert.equal(await text(page, '#autonomous'), 'On');
    });

    await t.test('disconnect only through its dialog; connecting again starts with autonomous sends off', async () => {
      await page.goto(home);
      await page.click('#disconnect');
      await page.waitForSelector('#dlg-disconnect[open]');
      await page.click('#disconnect-cancel');
      await page.waitForSelector('#dlg-disconnect:not([open])');
      await page.reload();
      assert.equal(await text(page, '#status'), 'active');
      await page.click('#disconnect');
      await page.waitForSelector('#dlg-disconnect[open]');
      await submit(page, '#disconnect-confirm');
      assert.match(await text(page, '#flash'), /Disconnected/);
      assert.ok(await page.$('#connect-form'));
      await page.type('#f-account_sid', SIM.account);
      await page.type('#f-api_key_sid', SIM.standard[0]);
      await page.type('#f-api_key_secret', SIM.standard[1]);
      await submit(page, '#connect');
      assert.match(await text(page, '#flash'), /Connected: 3 numbers loaded/);
      assert.equal(await text(page, '#autonomous'), 'Off');
    });

    await t.test('a stale session is refused', async () => {
      await page.goto(`${base}/tenants`);
      await submit(page, '.logout button');
      const r = await fetch(`${base}/tenants`, { headers: { Cookie: `sb_console=${operatorCookie}` } });
      assert.equal(r.status, 401);
      assert.match(await r.text(), /session has ended or expired/);
      const p = await fetch(`${base}/tenants/add`, {
        method: 'POST', body: 'name=late',
        headers: { Cookie: `sb_console=${operatorCookie}`, 'Content-Type': 'application/x-www-form-urlencoded' },
      });
      assert.equal(p.status, 401);
    });

    await t.test('a tenant administrator sees only their tenant', async () => {
      const ctx = await browser.createBrowserContext();
      const tp = await ctx.newPage();
      tp.setDefaultTimeout(TIMEOUT);
      await tp.goto(E.SB_CONSOLE_TENANT_LINK);
      await submit(tp, '#login');
      assert.equal(new URL(tp.url()).pathname, '/t/other');
      await shot(tp, 'tenant-admin');
      // another tenant's pages, by URL
      for (const path of ['/t/acme', '/t/acme/c/twilio', '/t/acme/escalations', '/t/acme/agents', '/tenants']) {
        const resp = await tp.goto(base + path);
        assert.equal(resp.status(), 403, path);
      }
      // a form of their own tenant edited to aim at another
      await tp.goto(`${base}/t/other/agents`);
      await tp.type('#agent-add input[name=name]', 'intruder');
      await tp.$eval('#agent-add', (f) => {
        const i = document.createElement('input');
        i.type = 'hidden'; i.name = 'tenant'; i.value = 'acme';
        f.appendChild(i);
      });
      await submit(tp, '#agent-add button[type=submit]');
      assert.match(await text(tp, '#flash'), /Agent intruder added/);
      assert.equal(new URL(tp.url()).pathname, '/t/other/agents');
      await tp.goto(`${base}/t/other/agents`);
      await tp.$eval('#agent-add', (f) => { f.action = '/t/acme/agents/add'; });
      await tp.type('#agent-add input[name=name]', 'intruder2');
      await submit(tp, '#agent-add button[type=submit]');
      assert.match(await text(tp, '#message'), /another tenant/);
      await ctx.close();
    });

    assert.deepEqual(cspErrors, []);
  } finally {
    await browser.close();
  }
});
