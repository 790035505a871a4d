-- A tenant's Twilio connection: the sealed API key, the account's
-- numbers and settings, and its lifecycle (connect, show, test, update,
-- autonomous sends, disconnect, data preview) as admin methods.
local json = require("switchboard.json")
local schema = require("switchboard.schema")
local db_mod = require("switchboard.db")
local directory = require("switchboard.directory")
local connections = require("switchboard.connections")
local credentials = require("switchboard.credentials")
local repo = require("switchboard.store.connections")
local http = require("core.http")
local client_mod = require("integrations.twilio.client")

local M = {}

local manifest = require("integrations.twilio")
M.GROUP = manifest.group
M.FEATURE = manifest.feature
M.FIELD = "twilio.api_key_secret"
M.PRODUCTS = { "api", "lookups", "verify", "content" }

local hex32, e164 = schema.hex32, schema.is_e164

-- What the operator console renders for this connection (integrations.list).
M.CONSOLE = {
  fields = {
    { name = "account_sid", label = "Account SID", kind = "text", required = true, updatable = false,
      hint = "AC followed by 32 hexadecimal characters (Twilio Console dashboard)" },
    { name = "api_key_sid", label = "API Key SID", kind = "text", required = true, updatable = true,
      hint = "SK…: an API Key (Account > API keys & tokens), not the Auth Token" },
    { name = "api_key_secret", label = "API Key Secret", kind = "secret", required = true, updatable = true,
      hint = "shown once by Twilio when the key was created; never shown here again" },
    { name = "default_number", label = "Default number", kind = "phone", required = false, updatable = true,
      hint = "E.164; empty: the first SMS-capable number" },
    { name = "whatsapp_number", label = "WhatsApp number", kind = "phone", required = false, updatable = true,
      hint = "E.164 WhatsApp sender" },
    { name = "verify_service_sid", label = "Verify Service SID", kind = "text", required = false, updatable = true,
      hint = "VA followed by 32 hexadecimal characters" },
  },
  tabs = {
    { name = "numbers", title = "Phone numbers", method = "twilio.numbers", list = "numbers", paged = false,
      columns = { { key = "phone_number", label = "Number" }, { key = "friendly_name", label = "Name" },
                  { key = "voice", label = "Voice" }, { key = "sms", label = "SMS" }, { key = "mms", label = "MMS" } } },
    { name = "messages", title = "Recent messages", method = "twilio.messages", list = "messages", paged = true,
      columns = { { key = "to", label = "Recipient" }, { key = "from", label = "Sender" },
                  { key = "body", label = "Body" }, { key = "status", label = "Status" },
                  { key = "date", label = "Time" } } },
  },
  usage = "twilio.usage",
}

local function trim(s)
  if type(s) ~= "string" then return s end
  return (s:match("^%s*(.-)%s*$"))
end

-- The stored connection (switchboard.store.connections) as this package
-- reads it: its settings as fields, the key id as api_key_sid.
local SETTINGS = { "account_sid", "default_number", "whatsapp_number", "verify_service_sid", "account_status",
                   "account_type", "numbers", "hosts" }
function M.decode(r)
  local s = r.settings or {}
  for _, k in ipairs(SETTINGS) do
    local v = s[k]
    if v == json.null then v = nil end
    r[k] = v
  end
  if type(r.numbers) ~= "table" then r.numbers = {} end
  r.api_key_sid = r.key_id
  return r
end

-- The tenant's Twilio connection, decoded, or nil.
function M.get(db, tenant_id)
  return connections.get(db, "twilio", tenant_id)
end

function M.hosts(cfg, hosts)
  local out = {}
  for _, p in ipairs(M.PRODUCTS) do out[p] = (hosts and hosts[p]) or cfg.twilio.hosts[p] end
  return out
end

-- A client for the connection with an opened credential (the API key
-- SID and secret as HTTP Basic, applied by core.http).
function M.client(rt, conn, cred)
  local cfg = rt.cfg.twilio
  return client_mod.new({ account_sid = conn.account_sid, credential = cred,
    hosts = M.hosts(rt.cfg, conn.hosts), timeout = cfg.timeout, ca_file = cfg.ca_file })
end

-- A client for the tenant with an opened credential (switchboard.connections);
-- blob/key_sid: a key being validated, opened for this use only. The
-- caller closes the returned handle. Returns client, handle or nil, err.
function M.open_client(rt, tenant, conn, blob, key_sid)
  local c, h = connections.open_client(rt, "twilio", tenant, conn, { blob = blob, key_id = key_sid })
  if not c then return nil, "the stored API key could not be opened" end
  return c, h
end

function M.with_client(rt, tenant, conn, fn, blob, key_sid)
  return connections.with_client(rt, "twilio", tenant, conn, fn, { blob = blob, key_id = key_sid })
end

-- Wipe the tenant's cached credential.
function M.forget(tenant_id) credentials.forget("twilio", tenant_id) end

local function number_view(n)
  local caps = type(n.capabilities) == "table" and n.capabilities or {}
  return { phone_number = n.phone_number, friendly_name = n.friendly_name, sid = n.sid,
           voice = caps.voice == true or caps.Voice == true, sms = caps.sms == true or caps.SMS == true,
           mms = caps.mms == true or caps.MMS == true }
end
M.number_view = number_view

-- Check credentials against Twilio: the account (or, for a Standard key
-- refused on /Accounts, the numbers list) and the numbers.
-- Returns info or nil, err (a sentence for the operator).
function M.validate(c)
  local info = {}
  local acct, err = c:get("api", ("/%s/Accounts/%s.json"):format(client_mod.API_VERSION, c.account_sid))
  if acct then
    info.account_name = acct.friendly_name
    info.account_status = acct.status
    info.account_type = acct.type
  elseif err.status == 401 or err.code == 20003 then
    info.standard_key = true
  else
    return nil, M.describe(err), err
  end
  local numbers, nerr = c:list("api", c:acct("IncomingPhoneNumbers.json"), { PageSize = 100 },
    "incoming_phone_numbers", 1000)
  if not numbers then
    if nerr.status == 401 or nerr.code == 20003 then
      return nil, "Twilio refused these credentials (error 20003): the API key may be revoked or rotated,"
        .. " belong to another account or region, or the secret may be wrong", nerr
    end
    return nil, M.describe(nerr), nerr
  end
  info.numbers = {}
  for i, n in ipairs(numbers) do info.numbers[i] = number_view(n) end
  if info.standard_key then info.account_status = "active (inferred: the numbers list answered)" end
  return info
end

function M.describe(err)
  if err.code then
    return ("Twilio error %d: %s%s"):format(err.code, err.message or "",
      err.more_info and (" (" .. err.more_info .. ")") or "")
  end
  return err.message or "Twilio request failed"
end

local function first_sms(numbers)
  for _, n in ipairs(numbers) do
    if n.sms then return n.phone_number end
  end
  return nil
end

-- Parse --hosts: "URL" (every product) or "api=URL,lookups=URL,…".
function M.parse_hosts(s)
  if s == nil or s == "" then return nil end
  local out = {}
  if not s:find("=", 1, true) then
    for _, p in ipairs(M.PRODUCTS) do out[p] = s end
  else
    for part in s:gmatch("[^,]+") do
      local k, v = part:match("^%s*(%w+)%s*=%s*(%S+)%s*$")
      if not k then return nil, ("hosts: '%s' is not product=URL"):format(part) end
      local known = false
      for _, p in ipairs(M.PRODUCTS) do known = known or p == k end
      if not known then return nil, ("hosts: unknown product '%s' (api, lookups, verify, content)"):format(k) end
      out[k] = v
    end
  end
  for k, v in pairs(out) do
    if not v:match("^https?://[%w%.%-%[%]:]+/?$") then
      return nil, ("hosts.%s: '%s' must be an http(s) origin such as https://api.twilio.com"):format(k, v)
    end
  end
  return out
end

-- The checks an operator's input gets before anything reaches Twilio.
-- Returns cleaned values or refuses through admin.refuse.
local function check_credentials(refuse, p, need)
  local out = {}
  out.account_sid = trim(p.account_sid)
  out.api_key_sid = trim(p.api_key_sid)
  out.secret = trim(p.api_key_secret)
  if need or out.account_sid then
    if not hex32(out.account_sid, "AC") then
      refuse("account SID: must be AC followed by 32 hexadecimal characters (find it on the Twilio Console dashboard)", -32602)
    end
  end
  if need or out.api_key_sid or out.secret then
    if type(out.api_key_sid) == "string" and out.api_key_sid:sub(1, 2) == "AC" then
      refuse("API key SID: that is an Account SID. Create an API Key in the Twilio Console"
        .. " (Account > API keys & tokens) and give its SK… SID and secret; the Auth Token is not accepted", -32602)
    end
    if not hex32(out.api_key_sid, "SK") then
      refuse("API key SID: must be SK followed by 32 hexadecimal characters", -32602)
    end
    if type(out.secret) ~= "string" or out.secret == "" then
      refuse("API key secret: required (give it on standard input)", -32602)
    end
    if out.secret:match("^%x+$") and #out.secret == 32 and out.secret == out.secret:lower() then
      refuse("API key secret: this looks like an Auth Token. Create an API Key in the Twilio Console"
        .. " (Account > API keys & tokens) and give its secret instead; Switchboard does not store Auth Tokens", -32602)
    end
    if not out.secret:match("^[%w%-_]+$") or #out.secret < 16 or #out.secret > 128 then
      refuse("API key secret: must be the key's secret as Twilio showed it (letters and digits, no spaces or quotes)",
        -32602)
    end
  end
  return out
end

local function check_settings(refuse, p, numbers)
  local out = {}
  if p.default_number ~= nil then
    local n = trim(p.default_number)
    if not e164(n) then refuse("default number: must be E.164, like +14155550123", -32602) end
    local found
    for _, x in ipairs(numbers or {}) do if x.phone_number == n then found = x end end
    if numbers and not found then
      refuse(("default number: %s is not one of this account's phone numbers"):format(n), -32602)
    end
    if found and not found.sms then
      refuse(("default number: %s cannot send SMS"):format(n), -32602)
    end
    out.default_number = n
  end
  if p.whatsapp_number ~= nil then
    local n = trim(p.whatsapp_number):gsub("^whatsapp:", "")
    if not e164(n) then refuse("WhatsApp number: must be E.164, like +14155238886", -32602) end
    out.whatsapp_number = n
  end
  if p.verify_service_sid ~= nil then
    local v = trim(p.verify_service_sid)
    if not hex32(v, "VA") then
      refuse("Verify service SID: must be VA followed by 32 hexadecimal characters", -32602)
    end
    out.verify_service_sid = v
  end
  return out
end

-- Public view: never the secret.
local function view(tenant, conn)
  return {
    tenant = tenant.name, status = conn.status, status_reason = conn.status_reason,
    account_sid = conn.account_sid, api_key_sid = conn.api_key_sid,
    account_name = conn.account_name or "(not visible to this API key type)",
    account_status = conn.account_status, account_type = conn.account_type,
    default_number = conn.default_number, whatsapp_number = conn.whatsapp_number,
    verify_service_sid = conn.verify_service_sid, autonomous_sends = conn.autonomous_sends,
    number_count = #conn.numbers, last_tested_at = conn.last_tested_at, hosts = conn.hosts,
    created_at = conn.created_at, updated_at = conn.updated_at,
  }
end
M.view = view

function M.invalidate(db, tenant_id) connections.invalidate(db, tenant_id, "twilio") end

-- The regions of a connection's own numbers ("US", "GB"), each once.
local function countries(numbers)
  local phone = require("core.phone")
  local out, seen = {}, {}
  for _, n in ipairs(numbers) do
    local p = type(n.phone_number) == "string" and phone.parse(n.phone_number)
    local region = p and p.valid and p.region
    if region and not seen[region] then
      seen[region] = true
      out[#out + 1] = region
    end
  end
  table.sort(out)
  return out
end
M.countries = countries

-- What policies may read about the connection (policies get it read-only;
-- computed once per cached row). countries: the regions of its numbers.
function M.policy_view(conn)
  local numbers = {}
  for i, n in ipairs(conn.numbers) do numbers[i] = n.phone_number end
  return { provider = "twilio", default_number = conn.default_number, whatsapp_number = conn.whatsapp_number,
           numbers = numbers, countries = countries(conn.numbers) }
end

-- }======================================================

-- What the settings audit keeps of a connection that was removed.
function M.disconnected(conn)
  return { account_sid = conn.account_sid, api_key_sid = conn.api_key_sid }
end

-- Register the admin methods on the admin module's table (autonomous-sends
-- and disconnect are every integration's: switchboard.connections).
function M.install(admin)
  local refuse = admin.refuse
  local methods = admin.methods

  local function connected(self, p, what)
    local t = self:tenant(p, what)
    local conn = M.get(self.db, t.id)
    if not conn then refuse(("tenant '%s' has no Twilio connection; run `twilio connect` first"):format(t.name)) end
    return t, conn
  end

  local function with_client(self, t, conn, fn, blob, key_sid)
    local res = table.pack(M.with_client(self.server, t, conn, fn, blob, key_sid))
    if not res[1] then refuse(res[2]) end
    return table.unpack(res, 2, res.n)
  end

  local function seal(self, t, secret)
    return directory.seal(self.server.master, t, M.FIELD, secret)
  end

  methods["twilio.connect"] = function(self, p)
    local t = self:tenant(p, "twilio connect")
    local has = false
    for _, f in ipairs(t.features) do has = has or f == M.FEATURE end
    if not has then
      refuse(("tenant '%s' does not have the feature %s: run `switchboard admin tenant features %s +%s` first")
        :format(t.name, M.FEATURE, t.name, M.FEATURE))
    end
    if M.get(self.db, t.id) then
      refuse(("tenant '%s' already has a Twilio connection: use `twilio update` or `twilio disconnect`"):format(t.name))
    end
    local cr = check_credentials(refuse, p, true)
    local hosts, herr = M.parse_hosts(p.hosts)
    if p.hosts and not hosts then refuse(herr, -32602) end
    local pre = check_settings(refuse, p, nil)
    local blob = seal(self, t, cr.secret)
    cr.secret = nil
    local probe = { account_sid = cr.account_sid, api_key_sid = cr.api_key_sid, hosts = hosts }
    local info, verr = with_client(self, t, probe, M.validate, blob, cr.api_key_sid)
    if not info then refuse("validation failed: " .. verr) end
    local settings = check_settings(refuse, p, info.numbers)
    local default = settings.default_number or first_sms(info.numbers)
    local ok, err = repo.insert(self.db, {
      tenant_id = t.id, integration = "twilio", key_id = cr.api_key_sid, secret = blob, status = "active",
      account_name = info.account_name, group = M.GROUP,
      settings = { account_sid = cr.account_sid, default_number = default, whatsapp_number = pre.whatsapp_number,
                   verify_service_sid = pre.verify_service_sid, account_status = info.account_status,
                   account_type = info.account_type, numbers = json.array(info.numbers), hosts = hosts },
    })
    if not ok then refuse("could not store the connection: " .. tostring(err)) end
    M.invalidate(self.db, t.id)
    directory.settings_audit(self.db, t.id, p.actor, "twilio.connect", nil,
      { account_sid = cr.account_sid, api_key_sid = cr.api_key_sid, default_number = default,
        whatsapp_number = pre.whatsapp_number, verify_service_sid = pre.verify_service_sid,
        autonomous_sends = false })
    self.server:refresh_agents(t.id)
    local v = view(t, M.get(self.db, t.id))
    v.warnings = {}
    if info.standard_key then
      v.warnings[#v.warnings + 1] = "this API key cannot read the account itself (a Standard key):"
        .. " the account name is not visible"
    end
    if not default then
      v.warnings[#v.warnings + 1] = "no SMS-capable number: sends fail with 'No phone number configured'"
        .. " until one is added and set with `twilio update --default-number`"
    end
    v.warnings = json.array(v.warnings)
    return v
  end

  methods["twilio.show"] = function(self, p)
    local t, conn = connected(self, p, "twilio show")
    return view(t, conn)
  end

  local function set_status(self, t, status, reason)
    local ok, err = repo.update(self.db, t.id, "twilio", { status = status, status_reason = reason or json.null,
      last_tested_at = db_mod.now() })
    M.invalidate(self.db, t.id)
    if not ok then refuse("could not store the connection's status: " .. tostring(err)) end
  end

  methods["twilio.test"] = function(self, p)
    local t, conn = connected(self, p, "twilio test")
    local opened, info, err, eobj = M.with_client(self.server, t, conn, M.validate)
    if not opened then
      info, err = nil, info .. "; update the API key with `twilio update`"
    end
    -- only a refused key puts the connection in error: a network blip or a
    -- Twilio 5xx is reported and leaves the status as it was
    if not info and eobj and eobj.status ~= 401 and eobj.code ~= 20003 then
      local v = view(t, conn)
      v.ok, v.problem = false, err
      return v
    end
    if not info then
      M.forget(t.id)
      set_status(self, t, "error", err)
      if conn.status ~= "error" then
        directory.settings_audit(self.db, t.id, p.actor, "twilio.status", { status = conn.status },
          { status = "error", reason = err })
      end
      local v = view(t, M.get(self.db, t.id))
      v.ok = false
      return v
    end
    local stored, serr = repo.update(self.db, t.id, "twilio", { status = "active", status_reason = json.null,
      account_name = info.account_name or json.null, last_tested_at = db_mod.now(),
      settings = { numbers = json.array(info.numbers), account_status = info.account_status or json.null,
                   account_type = info.account_type or json.null } })
    if not stored then refuse("the key works, but the result could not be stored: " .. tostring(serr)) end
    M.invalidate(self.db, t.id)
    if conn.status ~= "active" then
      directory.settings_audit(self.db, t.id, p.actor, "twilio.status", { status = conn.status }, { status = "active" })
    end
    local v = view(t, M.get(self.db, t.id))
    v.ok = true
    return v
  end

  methods["twilio.update"] = function(self, p)
    local t, conn = connected(self, p, "twilio update")
    local changes, old = {}, {}
    local cr = check_credentials(refuse, { api_key_sid = p.api_key_sid, api_key_secret = p.api_key_secret }, false)
    local hosts, herr = M.parse_hosts(p.hosts)
    if p.hosts and not hosts then refuse(herr, -32602) end
    local effective = { account_sid = conn.account_sid, api_key_sid = cr.api_key_sid or conn.api_key_sid,
                        hosts = hosts or conn.hosts }
    local blob = conn.secret
    if cr.secret then blob = seal(self, t, cr.secret) end
    cr.secret = nil
    local info, verr = with_client(self, t, effective, M.validate, blob, effective.api_key_sid)
    if not info then
      refuse("validation failed; the previous settings stay in force: " .. verr)
    end
    local settings = check_settings(refuse, p, info.numbers)
    local cols, sets = {}, {}
    local function set(col, v, shown)
      if shown ~= false then changes[col] = v; old[col] = conn[col] end
      if col == "api_key_sid" then cols.key_id = v
      elseif col == "secret" or col == "account_name" then cols[col] = v
      else sets[col] = v end
    end
    if cr.api_key_sid then set("api_key_sid", cr.api_key_sid); set("secret", blob, false) end
    if hosts then sets.hosts = hosts; changes.hosts = hosts; old.hosts = conn.hosts end
    for _, k in ipairs({ "default_number", "whatsapp_number", "verify_service_sid" }) do
      if settings[k] then set(k, settings[k]) end
    end
    if not settings.default_number and not conn.default_number then
      local d = first_sms(info.numbers)
      if d then set("default_number", d) end
    end
    sets.numbers = json.array(info.numbers)
    cols.account_name = info.account_name or json.null
    sets.account_status = info.account_status or json.null
    sets.account_type = info.account_type or json.null
    cols.status, cols.status_reason, cols.last_tested_at = "active", json.null, db_mod.now()
    cols.settings = sets
    local stored, serr = repo.update(self.db, t.id, "twilio", cols)
    M.invalidate(self.db, t.id)
    if not stored then
      refuse("could not store the update; the previous settings stay in force: " .. tostring(serr))
    end
    M.forget(t.id)
    if conn.status ~= "active" then changes.status = "active"; old.status = conn.status end
    directory.settings_audit(self.db, t.id, p.actor, "twilio.update", old, changes)
    local v = view(t, M.get(self.db, t.id))
    v.changed = changes.status and { "status" } or {}
    return v
  end

  methods["twilio.numbers"] = function(self, p)
    local t, conn = connected(self, p, "twilio numbers")
    local numbers, err = with_client(self, t, conn, function(c)
      return c:list("api", c:acct("IncomingPhoneNumbers.json"), { PageSize = 100 }, "incoming_phone_numbers", 1000)
    end)
    if not numbers then refuse(M.describe(err)) end
    local out = {}
    for i, n in ipairs(numbers) do out[i] = number_view(n) end
    return { tenant = t.name, numbers = json.array(out) }
  end

  -- One page of the account's messages, newest first. The cursor is
  -- Twilio's next-page link, followed only to this account's Messages
  -- list on the api host (p.page: the old page number, walked from 1).
  methods["twilio.messages"] = function(self, p)
    local t, conn = connected(self, p, "twilio messages")
    local page = math.tointeger(tonumber(p.page or 1))
    local size = p.limit ~= nil and self.page_limit(p, "twilio messages", 20, 100)
      or math.tointeger(tonumber(p.page_size or 20))
    if not page or page < 1 then refuse("page: must be a whole number from 1", -32602) end
    if not size or size < 1 or size > 100 then refuse("page size: must be from 1 to 100", -32602) end
    local after = p.after
    if after ~= nil and (type(after) ~= "string" or after == "" or #after > 2048) then
      refuse("twilio messages: --after must be the cursor a previous page answered as 'next'", -32602)
    end
    local body, err = with_client(self, t, conn, function(c)
      if after then
        local url = c:page_link("api", after)
        local u = url and http.parse(url)
        if not u or u.path ~= c:acct("Messages.json") then
          return nil, { message = "twilio messages: --after must be the cursor a previous page answered as 'next'" }
        end
        return c:request({ method = "GET", product = "api", url = after })
      end
      local b, e = c:get("api", c:acct("Messages.json"), { PageSize = size })
      local n = 1
      while b and n < page do
        local nxt = b.next_page_uri
        if type(nxt) ~= "string" then return { messages = {}, next_page_uri = json.null } end
        b, e = c:request({ method = "GET", product = "api", url = nxt })
        n = n + 1
      end
      return b, e
    end)
    if not body then refuse(M.describe(err)) end
    local out = {}
    for i, m in ipairs(body.messages or {}) do
      out[i] = { to = m.to, from = m.from, body = m.body, status = m.status,
                 date = m.date_sent ~= json.null and m.date_sent or m.date_created, sid = m.sid }
    end
    local nxt = type(body.next_page_uri) == "string" and body.next_page_uri or nil
    return { tenant = t.name, page = not after and page or nil, page_size = size, messages = json.array(out),
             more = nxt ~= nil, next = nxt or json.null }
  end

  -- The account's usage by category over a period (Twilio's usage records;
  -- start and end: YYYY-MM-DD, default this month up to today).
  methods["twilio.usage"] = function(self, p)
    local t, conn = connected(self, p, "twilio usage")
    local today = os.date("!%Y-%m-%d")
    local start, stop = p.start or (today:sub(1, 8) .. "01"), p["end"] or today
    for k, v in pairs({ start = start, ["end"] = stop }) do
      local y, m, d = (type(v) == "string" and v or ""):match("^(%d%d%d%d)%-(%d%d)%-(%d%d)$")
      if not y or os.date("%Y-%m-%d", os.time({ year = tonumber(y), month = tonumber(m), day = tonumber(d),
          hour = 12 })) ~= v then
        refuse(("twilio usage: '%s' must be a date as YYYY-MM-DD"):format(k), -32602)
      end
    end
    if start > stop then refuse("twilio usage: 'start' must not be after 'end'", -32602) end
    local rows, err = with_client(self, t, conn, function(c)
      return c:list("api", c:acct("Usage/Records.json"), { StartDate = start, EndDate = stop, PageSize = 100 },
        "usage_records", 1000)
    end)
    if not rows then refuse(M.describe(err)) end
    local out = {}
    for _, r in ipairs(rows) do
      out[#out + 1] = { category = r.category, description = r.description, count = tonumber(r.count),
                        usage = tonumber(r.usage), usage_unit = r.usage_unit, price = tonumber(r.price) or 0,
                        price_unit = r.price_unit }
    end
    return { tenant = t.name, start = start, ["end"] = stop, records = json.array(out) }
  end
end

return M
