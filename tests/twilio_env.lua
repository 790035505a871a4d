-- Shared setup of the Twilio tool specs: a server whose send policies
-- leave room for many test sends, a tenant connected to a stand-in for
-- Twilio (the simulator or Prism), an agent holding the group, and MCP
-- calls that return the CallToolResult.
local H = require("helpers")
local json = require("switchboard.json")

local TW = {}

TW.GROUP = "Twilio Communications"
TW.ACCOUNT = "AC" .. ("0123456789abcdef"):rep(2)
TW.KEY = "SK" .. ("fedcba9876543210"):rep(2)
TW.SECRET = "TestSecretKey0123456789Abcdefgh"
TW.VERIFY = "VA" .. ("00112233445566778899aabbccddeeff")
TW.WHATSAPP = "+14155238886"

-- n free TCP ports on 127.0.0.1.
function TW.free_ports(n)
  local out = H.sh(("python3 -c 'import socket\nss=[socket.socket() for _ in range(%d)]\n"
    .. "[s.bind((\"127.0.0.1\", 0)) for s in ss]\nprint(\" \".join(str(s.getsockname()[1]) for s in ss))'"):format(n))
  local ports = {}
  for p in out:gmatch("%d+") do ports[#ports + 1] = tonumber(p) end
  assert(#ports == n, "could not find free ports: " .. out)
  return ports
end

local function merge(into, from)
  for k, v in pairs(from or {}) do
    if type(v) == "table" and type(into[k]) == "table" and v[1] == nil then
      merge(into[k], v)
    else
      into[k] = v
    end
  end
  return into
end

-- A server for Twilio tests: the recipients policy allows many sends to
-- one number, the WhatsApp recheck is short. opts.config is merged in.
function TW.server(opts)
  opts = opts or {}
  local cfg = merge({
    policy_settings = { recipients = { per_recipient = 1000, daily_budget = 100000 } },
    tool_settings = { twilio_send_whatsapp = { recheck_seconds = 0.05 } },
  }, opts.config)
  return H.server({ config = cfg, start = opts.start })
end

-- Connect tenant `name` to a Twilio stand-in and give an owner-tier agent
-- the group. extra: more `twilio connect` flags. Returns the token and
-- the connect answer.
function TW.connect(srv, name, hosts, extra, opts)
  opts = opts or {}
  local t, code, err = srv.admin("tenant add " .. H.q(name))
  assert(code == 0, "tenant add: " .. tostring(err) .. tostring(t))
  local _, fcode, ferr = srv.admin(("tenant features %s +custom.twilio"):format(H.q(name)))
  assert(fcode == 0, "tenant features: " .. tostring(ferr))
  local conn, ccode, cerr = srv.admin(("twilio connect --tenant %s --account-sid %s --api-key-sid %s --hosts %s %s")
    :format(H.q(name), opts.account or TW.ACCOUNT, opts.key or TW.KEY, H.q(hosts), extra or ""),
    opts.secret or TW.SECRET)
  assert(ccode == 0, "twilio connect: " .. tostring(cerr))
  local a, acode, aerr = srv.admin(("agent add --tenant %s --name bot --type caioo --tier owner --groups %s")
    :format(H.q(name), H.q(TW.GROUP)))
  assert(acode == 0, "agent add: " .. tostring(aerr))
  if opts.sends ~= false then
    local _, scode, serr = srv.admin(("twilio autonomous-sends on --tenant %s --confirm"):format(H.q(name)))
    assert(scode == 0, "autonomous-sends: " .. tostring(serr))
  end
  return a.token, conn
end

-- Inside H.async: an initialized MCP session.
function TW.session(srv, token)
  local c = assert(H.client(srv.agent_socket))
  local r = c:initialize(token)
  assert(r and r.result, "initialize failed: " .. json.encode(r))
  c.init = r.result
  return c
end

-- A tools/call; returns the CallToolResult (raises on a JSON-RPC error).
function TW.call(c, name, args, timeout)
  c.id = c.id + 1
  local id = c.id
  c:send({ id = id, method = "tools/call", params = { name = name, arguments = args } })
  local r, err = c:wait(id, timeout or 30)
  assert(r, "no answer to " .. name .. ": " .. tostring(err))
  assert(r.result, name .. " answered a JSON-RPC error: " .. json.encode(r.error))
  r.result.text = r.result.content and r.result.content[1] and r.result.content[1].text or ""
  r.result.data = r.result.structuredContent
  return r.result
end

-- The audit records of tool calls (oldest first), read from the database.
function TW.audit(srv)
  local out = H.sh(("sqlite3 -json %s %s"):format(H.q(srv.dir .. "/data/switchboard.db"),
    H.q("SELECT id, tool, action, decision, outcome, detail, retries FROM audit_log WHERE kind = 'call' ORDER BY id")))
  local rows = json.decode(out) or {}
  for _, r in ipairs(rows) do
    if type(r.detail) == "string" then r.detail = json.decode(r.detail) end
  end
  return rows
end

-- The write-ahead send records, oldest first.
function TW.sends(srv)
  local out = H.sh(("sqlite3 -json %s %s"):format(H.q(srv.dir .. "/data/switchboard.db"),
    H.q("SELECT id, tool, action, recipient, status, sid, error_code FROM sends ORDER BY id")))
  return json.decode(out) or {}
end

-- Run SQL on the server's database (test setup only).
function TW.sql(srv, sql)
  local out, code = H.sh(("sqlite3 %s %s 2>&1"):format(H.q(srv.dir .. "/data/switchboard.db"), H.q(sql)))
  assert(code == 0, "sqlite3: " .. out)
  return out
end

return TW
