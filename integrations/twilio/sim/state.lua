-- The simulator's state: built from a fixture table (see
-- tests/fixtures/sim.lua and docs/simulator.md), kept in Lua tables, reset
-- on demand. Every time is integer seconds since the epoch on the
-- simulator's clock, which the control API can move forward.
local U = require("integrations.twilio.sim.util")

local M = {}

local DEFAULTS = {
  delivery_seconds = 1,
  verify_ttl = 600,
  verify_max_sends = 5,
  verify_send_window = 600,
  verify_max_checks = 5,
  callback_retries = 0,
  callback_order = "in_order",
  callback_delay_ms = 0,
}

-- Load a fixture: a path to a Lua file returning a table, or the table.
function M.load_fixture(src)
  if type(src) == "table" then return src end
  local env = { math = math, string = string, table = table, utf8 = utf8, pairs = pairs, ipairs = ipairs,
                tostring = tostring, tonumber = tonumber, select = select, type = type }
  local chunk, err = loadfile(src, "t", env)
  if not chunk then return nil, err end
  local ok, fx = pcall(chunk)
  if not ok then return nil, ("%s: %s"):format(src, fx) end
  if type(fx) ~= "table" then return nil, src .. ": the fixture must return a table" end
  return fx
end

local function set_of(list, strip)
  local s = {}
  for _, v in ipairs(list or {}) do
    if strip then v = v:gsub("^whatsapp:", "") end
    s[v] = true
  end
  return s
end

local function need(cond, what)
  if not cond then error("fixture: " .. what, 0) end
end

local function sidcheck(sid, prefix, where)
  need(type(sid) == "string" and sid:match("^" .. prefix .. "%x+$") and #sid == 34,
    ("%s: sid %q is not %s + 32 hex digits"):format(where, tostring(sid), prefix))
end

-- Build a fresh state from fixture fx. Raises "fixture: …" on a bad one.
function M.new(fx, now)
  fx = U.copy(fx)
  local st = {
    fx = fx,
    start = now,
    offset = 0,
    seq = 0,
    settings = {},
    accounts = {},
    keys = {},
    opted_out = set_of(fx.opted_out),
    whatsapp_window = set_of(fx.whatsapp_window, true),
    lookups = {},
    services = {},
    verifications = {},       -- VE sid -> verification
    pending = {},             -- service sid .. " " .. to -> VE sid
    sends = {},               -- service sid .. " " .. to -> { times }
    codes = {},               -- to -> last code record
    code_log = {},            -- every code sent, oldest first
    contents = {},
    content_order = {},
    created = {},             -- messages created through the API, oldest first
    callbacks = {},           -- status callbacks posted (GET /__sim/callbacks)
  }
  for k, v in pairs(DEFAULTS) do st.settings[k] = v end
  for k, v in pairs(fx.settings or {}) do st.settings[k] = v end

  -- a fixture time: ISO string, or seconds relative to now
  local function T(v, where)
    if v == nil then return nil end
    if type(v) == "number" then return now + math.floor(v) end
    local t = U.parse_time(v)
    need(t, ("%s: bad time %q"):format(where, tostring(v)))
    return t
  end
  st.T = T

  for i, a in ipairs(fx.accounts or {}) do
    local where = ("accounts[%d]"):format(i)
    sidcheck(a.sid, "AC", where)
    local acct = {
      sid = a.sid,
      auth_token = a.auth_token or U.sid(""):sub(1, 32),
      friendly_name = a.friendly_name or a.sid,
      status = a.status or "active",
      type = a.type or "Full",
      date_created = T(a.date_created, where) or now,
      owner_account_sid = a.owner_account_sid or a.sid,
      balance = a.balance or "0.00",
      currency = a.currency or "USD",
      whatsapp_senders = set_of(a.whatsapp_senders),
      messaging_services = {},
      numbers = {},
      messages = {},
      msg_by_sid = {},
      calls = {},
      call_by_sid = {},
      recordings = {},
      rec_by_sid = {},
      usage = {},
    }
    for _, ms in ipairs(a.messaging_services or {}) do
      sidcheck(ms.sid, "MG", where .. ".messaging_services")
      acct.messaging_services[ms.sid] = ms
    end
    for j, n in ipairs(a.numbers or {}) do
      local w = ("%s.numbers[%d]"):format(where, j)
      sidcheck(n.sid, "PN", w)
      need(U.is_e164(n.phone_number), w .. ": phone_number must be E.164")
      local caps = n.capabilities or {}
      acct.numbers[#acct.numbers + 1] = {
        sid = n.sid, phone_number = n.phone_number, friendly_name = n.friendly_name or n.phone_number,
        capabilities = { voice = caps.voice == true, sms = caps.sms == true, mms = caps.mms == true,
                         fax = caps.fax == true },
        date_created = T(n.date_created, w) or now, origin = n.origin or "twilio",
        status = n.status or "in-use", type = n.type or "local",
      }
    end
    for j, m in ipairs(a.messages or {}) do
      local w = ("%s.messages[%d]"):format(where, j)
      need(type(m.sid) == "string" and (m.sid:match("^SM") or m.sid:match("^MM")), w .. ": sid must be SM… or MM…")
      st.seq = st.seq + 1
      local msg = {
        seq = st.seq, sid = m.sid, account_sid = acct.sid, direction = m.direction or "outbound-api",
        from = m.from, to = m.to, body = m.body or "", status = m.status or "delivered",
        error_code = m.error_code, error_message = m.error_message,
        date_created = T(m.date_created, w) or now,
        price = m.price, price_unit = m.price_unit or "USD",
        messaging_service_sid = m.messaging_service_sid,
        media = {},
      }
      msg.date_sent = T(m.date_sent, w) or msg.date_created
      msg.date_updated = T(m.date_updated, w) or msg.date_sent
      msg.num_segments = m.num_segments or (U.segments(msg.body))
      for k, md in ipairs(m.media or {}) do
        sidcheck(md.sid, "ME", ("%s.media[%d]"):format(w, k))
        msg.media[#msg.media + 1] = { sid = md.sid, content_type = md.content_type or "image/jpeg",
          data = md.data or "", date_created = msg.date_created }
      end
      acct.messages[#acct.messages + 1] = msg
      acct.msg_by_sid[msg.sid] = msg
    end
    for j, c in ipairs(a.calls or {}) do
      local w = ("%s.calls[%d]"):format(where, j)
      sidcheck(c.sid, "CA", w)
      st.seq = st.seq + 1
      local call = {
        seq = st.seq, sid = c.sid, account_sid = acct.sid, from = c.from, to = c.to,
        direction = c.direction or "outbound-api", status = c.status or "completed",
        start_time = T(c.start_time, w), end_time = T(c.end_time, w),
        duration = c.duration, price = c.price, price_unit = c.price_unit or "USD",
        answered_by = c.answered_by, parent_call_sid = c.parent_call_sid,
        caller_name = c.caller_name, forwarded_from = c.forwarded_from,
      }
      call.date_created = T(c.date_created, w) or call.start_time or now
      call.date_updated = call.end_time or call.date_created
      acct.calls[#acct.calls + 1] = call
      acct.call_by_sid[call.sid] = call
      for k, r in ipairs(c.recordings or {}) do
        local wr = ("%s.recordings[%d]"):format(w, k)
        sidcheck(r.sid, "RE", wr)
        st.seq = st.seq + 1
        local rec = {
          seq = st.seq, sid = r.sid, account_sid = acct.sid, call_sid = call.sid,
          duration = r.duration, status = r.status or "completed", channels = r.channels or 1,
          source = r.source or "RecordVerb", start_time = T(r.start_time, wr) or call.start_time,
          price = r.price, price_unit = r.price_unit or "USD", error_code = r.error_code,
          track = r.track or "both", data = r.data,
        }
        rec.date_created = T(r.date_created, wr) or rec.start_time
        acct.recordings[#acct.recordings + 1] = rec
        acct.rec_by_sid[rec.sid] = rec
      end
    end
    for j, u in ipairs(a.usage or {}) do
      local w = ("%s.usage[%d]"):format(where, j)
      need(type(u.category) == "string", w .. ": category is required")
      acct.usage[#acct.usage + 1] = {
        category = u.category, description = u.description or u.category,
        day = U.day_start(T(u.date, w) or now), count = u.count or 0, count_unit = u.count_unit or u.usage_unit
          or "messages",
        usage = u.usage or u.count or 0, usage_unit = u.usage_unit or "messages",
        price = tonumber(u.price) or 0, price_unit = u.price_unit or "usd",
      }
    end
    need(not st.accounts[acct.sid], where .. ": duplicate sid")
    st.accounts[acct.sid] = acct
  end

  for i, k in ipairs(fx.keys or {}) do
    local where = ("keys[%d]"):format(i)
    sidcheck(k.sid, "SK", where)
    need(type(k.secret) == "string", where .. ": secret is required")
    need(st.accounts[k.account], where .. ": account is not a fixture account")
    st.keys[k.sid] = { sid = k.sid, secret = k.secret, account = k.account, kind = k.kind or "standard",
                       revoked = k.revoked == true, friendly_name = k.friendly_name or k.sid }
  end

  for number, l in pairs(fx.lookups or {}) do
    st.lookups[number] = l
  end

  for i, s in ipairs(fx.verify_services or {}) do
    local where = ("verify_services[%d]"):format(i)
    sidcheck(s.sid, "VA", where)
    need(st.accounts[s.account], where .. ": account is not a fixture account")
    st.services[s.sid] = { sid = s.sid, account = s.account, friendly_name = s.friendly_name or s.sid,
                           code_length = s.code_length or 6, date_created = T(s.date_created, where) or now }
  end

  for i, c in ipairs(fx.contents or {}) do
    local where = ("contents[%d]"):format(i)
    sidcheck(c.sid, "HX", where)
    need(st.accounts[c.account], where .. ": account is not a fixture account")
    local rec = U.copy(c)
    rec.date_created = T(c.date_created, where) or now
    rec.date_updated = T(c.date_updated, where) or rec.date_created
    st.contents[c.sid] = rec
    st.content_order[#st.content_order + 1] = rec
  end
  return st
end

-- The simulator's clock (the real one plus what the control API added).
function M.now(st)
  return os.time() + st.offset
end

function M.next_seq(st)
  st.seq = st.seq + 1
  return st.seq
end

return M
