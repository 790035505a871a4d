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

-- The default fixture's Acme Clinic account (tests/fixtures/sim.lua).
TW.SIM = {
  ACCOUNT = "AC00000000000000000000000000000001",
  MAIN = { "SK00000000000000000000000000000001", "acme-main-secret-000000000000001" },
  STANDARD = { "SK00000000000000000000000000000002", "acme-standard-secret-00000000002" },
  VOICE_ACCOUNT = "AC00000000000000000000000000000002",
  VOICE = { "SK00000000000000000000000000000010", "voice-standard-secret-0000000010" },
  VERIFY = "VA00000000000000000000000000000001",
  WHATSAPP = "+14155238886",
  DEFAULT = "+14155550100",
  ANA = "+14155550123",          -- mobile, WhatsApp window open
  LANDLINE = "+14155550124",     -- landline, WhatsApp window closed
  OTHER = "+14155550125",
  OPTED_OUT = "+14155550199",
  TEMPLATE = "HX00000000000000000000000000000001",   -- approved
  REJECTED = "HX00000000000000000000000000000002",
}

local function alive(pid)
  local out, code = H.sh("kill -0 " .. pid .. " 2>/dev/null && ps -o stat= -p " .. pid)
  return code == 0 and not out:match("^%s*Z")
end

-- Start the Twilio simulator as a process (`switchboard sim`, or its
-- entry through `switchboard exec` while the runtime does not dispatch
-- it). Returns { pid, port, url, stop, control(method, path, body) }.
function TW.sim(fixture)
  local dir = H.tmpdir("sim")
  local pf = dir .. "/port"
  local args = ("--port 0 --port-file %s --fixture %s"):format(H.q(pf),
    H.q(fixture or (H.ROOT .. "/tests/fixtures/sim.lua")))
  local function launch(cmd)
    return (H.sh(("exec %s %s >%s/stdout 2>%s/stderr & echo $!"):format(cmd, args, H.q(dir), H.q(dir)))
      :gsub("%s+", ""))
  end
  local pid = launch(H.q(H.BIN) .. " sim")
  H.wait_for(function()
    if H.exists(pf) then return true end
    if not alive(pid) then
      H.write(dir .. "/launch.lua", "return require('integrations.twilio.sim.cli').commands.sim(arg)\n")
      pid = launch(("%s exec %s"):format(H.q(H.BIN), H.q(dir .. "/launch.lua")))
      H.wait_for(function()
        if H.exists(pf) then return true end
        if not alive(pid) then error("the simulator exited: " .. (H.read(dir .. "/stderr") or ""), 0) end
      end, 10, "the simulator's port file")
      return true
    end
  end, 10, "the simulator's port file")
  local port = tonumber(H.read(pf))
  local sim = { pid = pid, port = port, url = "http://127.0.0.1:" .. port, dir = dir }
  function sim.stop()
    if alive(sim.pid) then
      os.execute("kill -TERM " .. sim.pid)
      H.wait_for(function() return not alive(sim.pid) end, 10, "the simulator to stop")
    end
  end
  -- The control API (inside H.async): returns status, decoded body.
  function sim.control(method, path, body)
    local http = require("core.http")
    local res = assert(http.request({ method = method, url = sim.url .. "/__sim/" .. path,
      body = body and json.encode(body) or nil,
      headers = body and { ["Content-Type"] = "application/json" } or nil }))
    return res.status, json.decode(res.body)
  end
  -- Twilio requests the simulator received after request number `since`.
  function sim.requests(since)
    local _, body = sim.control("GET", "requests?since=" .. (since or 0))
    return body.requests, body.last
  end
  function sim.last()
    local _, body = sim.control("GET", "requests?since=999999999")
    return body.last
  end
  function sim.faults(list) return sim.control("POST", "faults", list) end
  return sim
end

-- Connect a tenant to the simulator's Acme Clinic account with the main
-- key, its WhatsApp sender and Verify service. extra: more flags.
function TW.connect_sim(srv, sim, name, extra, opts)
  opts = opts or {}
  opts.account = opts.account or TW.SIM.ACCOUNT
  local key = opts.sim_key or TW.SIM.MAIN
  opts.key, opts.secret = key[1], key[2]
  return TW.connect(srv, name, sim.url, extra or ("--default-number %s --whatsapp-number %s --verify-service-sid %s")
    :format(TW.SIM.DEFAULT, TW.SIM.WHATSAPP, TW.SIM.VERIFY), opts)
end

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
  -- each tool's outputSchema, to check every structured result against it
  -- (MCP clients such as the TypeScript SDK refuse results that do not match)
  c.schemas = {}
  local list = c:request("tools/list", {})
  for _, t in ipairs(list.result and list.result.tools or {}) do c.schemas[t.name] = t.outputSchema end
  return c
end

-- Run fn(c) inside H.async with an initialized session (closed after);
-- returns what fn returns.
function TW.with(srv, token, fn, timeout)
  return H.async(function()
    local c = TW.session(srv, token)
    local out = table.pack(fn(c))
    c:close()
    return table.unpack(out, 1, out.n)
  end, timeout or 30)
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
  local schema = c.schemas and c.schemas[name]
  if schema and r.result.structuredContent ~= nil then
    local ok, verr = require("switchboard.schema").validate(schema, r.result.structuredContent)
    assert(ok, ("%s: the result does not match its outputSchema: %s"):format(name, tostring(verr)))
  end
  return r.result
end

-- The audit records of tool calls (oldest first), read from the database.
function TW.audit(srv)
  local rows = H.sql_rows(srv,
    "SELECT id, tool, action, decision, outcome, detail, retries FROM audit_log WHERE kind = 'call' ORDER BY id")
  for _, r in ipairs(rows) do
    if type(r.detail) == "string" then r.detail = json.decode(r.detail) end
  end
  return rows
end

-- The latest audit record of a call of `tool`, waiting up to 5 s for it.
function TW.audit_last(srv, tool)
  local row
  H.wait_for(function()
    local rows = TW.audit(srv)
    for i = #rows, 1, -1 do
      if rows[i].tool == tool then row = rows[i] return true end
    end
    return false
  end, 5, "the audit record of " .. tool)
  return row
end

-- The write-ahead send records, oldest first.
function TW.sends(srv)
  return H.sql_rows(srv, "SELECT id, tool, action, recipient, status, sid, error_code FROM sends ORDER BY id")
end

-- Run SQL on the server's database (test setup only).
function TW.sql(srv, sql)
  local out, code = H.sql(srv, sql)
  assert(code == 0, "sql: " .. out)
  return out
end

return TW
