-- The simulator's control API under /__sim/ (not Twilio's): no auth,
-- loopback clients only. JSON in, JSON out. See docs/simulator.md.
local json = require("switchboard.json")
local U = require("integrations.twilio.sim.util")
local S = require("integrations.twilio.sim.state")
local api = require("integrations.twilio.sim.api")

local M = {}

local function reply(status, value)
  return status, { ["Content-Type"] = "application/json; charset=utf-8" }, json.encode(value)
end

local function fail(status, msg)
  return reply(status, { error = msg })
end

local function loopback(addr)
  return addr == "127.0.0.1" or addr == "::1" or (addr or ""):match("^127%.") ~= nil
    or (addr or ""):match("^::ffff:127%.") ~= nil
end

-- Check and normalise a fault script: a JSON array, or { faults = [...] }.
local function parse_faults(body)
  local v, err = json.decode(body ~= "" and body or "null")
  if v == nil then return nil, "invalid JSON: " .. tostring(err) end
  if type(v) == "table" and v.faults then v = v.faults end
  if type(v) ~= "table" then return nil, "expected a list of faults" end
  if v.action then v = { v } end
  local out = {}
  for i, f in ipairs(v) do
    if type(f) ~= "table" then return nil, ("fault %d: expected an object"):format(i) end
    local action = tostring(f.action or "")
    if not (action == "delay" or action == "drop" or action == "timeout" or action == "next_page"
            or action:match("^[45]%d%d$")) then
      return nil, ("fault %d: action must be \"429\", \"500\" (any 4xx/5xx), \"delay\", \"drop\", \"timeout\""
        .. " or \"next_page\""):format(i)
    end
    if action == "next_page" and type(f.next_page_uri) ~= "string" then
      return nil, ("fault %d: next_page needs next_page_uri, a string"):format(i)
    end
    local match = type(f.match) == "table" and f.match or {}
    if match.path_pattern ~= nil then
      if type(match.path_pattern) ~= "string" or not pcall(string.find, "", match.path_pattern) then
        return nil, ("fault %d: path_pattern is not a Lua pattern"):format(i)
      end
    end
    local count = math.tointeger(f.count or 1)
    if not count or count < 1 then return nil, ("fault %d: count must be a positive integer"):format(i) end
    out[#out + 1] = {
      method = type(match.method) == "string" and match.method:upper() or nil,
      path_pattern = match.path_pattern,
      action = action,
      code = math.tointeger(f.code),
      message = type(f.message) == "string" and f.message or nil,
      retry_after = f.retry_after,
      delay_ms = tonumber(f.delay_ms),
      count = count,
      process = f.process == true,
      next_page_uri = action == "next_page" and f.next_page_uri or nil,
    }
  end
  return out
end

local function fault_json(f)
  return { match = { method = f.method, path_pattern = f.path_pattern }, action = f.action, code = f.code,
           retry_after = f.retry_after, delay_ms = f.delay_ms, count = f.count, process = f.process }
end

function M.handle(sim, req)
  if not loopback(req.remote) then return fail(403, "the control API answers loopback clients only") end
  local st = sim.state
  local path, method = req.path, req.method
  local params = U.parse_form(req.query)

  if path == "/__sim/requests" and method == "GET" then
    local since = tonumber(U.one(params.since)) or 0
    local out = {}
    for _, e in ipairs(sim.log) do
      if e.n > since then out[#out + 1] = e end
    end
    return reply(200, { requests = json.array(out), last = sim.log_n })
  end

  if path == "/__sim/reset" and method == "POST" then
    local ok, err = sim:reset()
    if not ok then return fail(500, err) end
    return reply(200, { reset = true })
  end

  if path == "/__sim/faults" then
    if method == "POST" then
      local list, err = parse_faults(req.body)
      if not list then return fail(400, err) end
      for _, f in ipairs(list) do sim.faults[#sim.faults + 1] = f end
      return reply(200, { queued = #sim.faults })
    elseif method == "GET" then
      local out = {}
      for _, f in ipairs(sim.faults) do out[#out + 1] = fault_json(f) end
      return reply(200, { faults = json.array(out) })
    elseif method == "DELETE" then
      sim.faults = {}
      return reply(200, { queued = 0 })
    end
  end

  local sk = path:match("^/__sim/keys/([^/]+)/revoke$")
  if sk and method == "POST" then
    local key = st.keys[sk]
    if not key then return fail(404, "no such key: " .. sk) end
    key.revoked = true
    return reply(200, { sid = sk, revoked = true })
  end

  if path == "/__sim/verify/codes" and method == "GET" then
    local codes = {}
    for to, rec in pairs(st.codes) do codes[to] = rec.code end
    return reply(200, { codes = codes, sent = json.array(st.code_log) })
  end

  if path == "/__sim/messages" and method == "GET" then
    local out = {}
    for _, c in ipairs(st.created) do out[#out + 1] = api.message_json(st, c.account, c.msg) end
    return reply(200, { messages = json.array(out) })
  end

  if path == "/__sim/callbacks" and method == "GET" then
    return reply(200, { callbacks = json.array(st.callbacks or {}) })
  end

  if path == "/__sim/settings" and (method == "POST" or method == "GET") then
    if method == "POST" then
      local v = json.decode(req.body ~= "" and req.body or "null")
      if type(v) ~= "table" then return fail(400, "expected an object of settings") end
      for k, x in pairs(v) do
        if st.settings[k] == nil then return fail(400, "unknown setting: " .. tostring(k)) end
        if type(x) ~= type(st.settings[k]) then return fail(400, ("setting %s must be a %s"):format(k, type(st.settings[k]))) end
      end
      for k, x in pairs(v) do st.settings[k] = x end
    end
    return reply(200, { settings = st.settings })
  end

  if path == "/__sim/clock" and (method == "POST" or method == "GET") then
    if method == "POST" then
      local v = json.decode(req.body ~= "" and req.body or "{}")
      local adv = type(v) == "table" and tonumber(v.advance)
      if not adv or adv < 0 then return fail(400, "expected {\"advance\": seconds}") end
      st.offset = st.offset + math.floor(adv)
    end
    local now = S.now(st)
    return reply(200, { now = U.iso(now), epoch = now, offset = st.offset })
  end

  if path == "/__sim/inbound" and method == "POST" then
    -- a message from a user to one of the account's numbers; a WhatsApp
    -- one opens the 24 h window for its sender
    local v = json.decode(req.body ~= "" and req.body or "null")
    if type(v) ~= "table" or type(v.from) ~= "string" or type(v.to) ~= "string" then
      return fail(400, "expected {\"account\", \"from\", \"to\", \"body\"}")
    end
    local acct = st.accounts[v.account or ""] or nil
    if not acct then
      for _, a in pairs(st.accounts) do
        for _, n in ipairs(a.numbers) do
          if n.phone_number == v.to:gsub("^whatsapp:", "") then acct = a end
        end
        if a.whatsapp_senders[v.to] then acct = a end
      end
    end
    if not acct then return fail(404, "no account owns " .. v.to) end
    local now = S.now(st)
    local msg = { seq = S.next_seq(st), sid = U.sid("SM"), account_sid = acct.sid, direction = "inbound",
      from = v.from, to = v.to, body = tostring(v.body or ""), status = "received", date_created = now,
      date_sent = now, date_updated = now, price = "-0.00790", price_unit = "USD", num_segments = 1, media = {} }
    acct.messages[#acct.messages + 1] = msg
    acct.msg_by_sid[msg.sid] = msg
    if v.from:match("^whatsapp:") then st.whatsapp_window[(v.from:gsub("^whatsapp:", ""))] = true end
    return reply(201, api.message_json(st, acct, msg))
  end

  return fail(404, "unknown control endpoint: " .. method .. " " .. path)
end

return M
