-- A tenant's email connection: the sealed SendGrid API key (applied as a
-- Bearer credential by core.http; it is a Lua string only between
-- standard input and sealing), the sender address, and the admin methods
-- email.connect, email.show, email.test and email.update. The core adds
-- email.autonomous_sends and email.disconnect (switchboard.connections).
local json = require("switchboard.json")
local schema = require("switchboard.schema")
local db_mod = require("switchboard.db")
local directory = require("switchboard.directory")
local connections = require("switchboard.connections")
local repo = require("switchboard.store.connections")
local client_mod = require("integrations.email.client")
local manifest = require("integrations.email")

local M = {}

M.FIELD = "email.api_key"
M.credential = { kind = "bearer" }
M.REQUIRED_SCOPE = "mail.send"

local function trim(s)
  if type(s) ~= "string" then return s end
  return (s:match("^%s*(.-)%s*$"))
end

-- The stored row with its settings as fields.
function M.decode(r)
  local s = r.settings or {}
  r.from_address, r.from_name, r.hosts = s.from_address, s.from_name, s.hosts
  r.scopes = type(s.scopes) == "table" and s.scopes or {}
  return r
end

function M.client(rt, conn, cred)
  local cfg = rt.cfg.email
  return client_mod.new({ credential = cred, api = conn.hosts and conn.hosts.api or cfg.hosts.api,
                          timeout = cfg.timeout, ca_file = cfg.ca_file })
end

function M.policy_view(conn)
  return { provider = "sendgrid", from_address = conn.from_address }
end

function M.view(tenant, conn)
  return { tenant = tenant.name, status = conn.status, status_reason = conn.status_reason,
           key_id = conn.key_id, from_address = conn.from_address, from_name = conn.from_name,
           scopes = json.array(conn.scopes), autonomous_sends = conn.autonomous_sends, hosts = conn.hosts,
           last_tested_at = conn.last_tested_at, created_at = conn.created_at, updated_at = conn.updated_at }
end

function M.disconnected(conn)
  return { key_id = conn.key_id, from_address = conn.from_address }
end

-- {======================================================
-- What an operator gives, checked before anything reaches SendGrid.
-- =======================================================

-- A SendGrid API key is "SG." + a 22-character key id + "." + a 43-character
-- secret, both base64url. Returns the key id or nil, message.
function M.check_key(key)
  if type(key) ~= "string" or key == "" then return nil, "API key: required (give it on standard input)" end
  local id, secret = key:match("^SG%.([%w_%-]+)%.([%w_%-]+)$")
  if not id or #id ~= 22 or #secret ~= 43 then
    return nil, "API key: this does not look like a SendGrid API key (SG. followed by 22 characters, a dot and"
      .. " 43 characters). Create one in SendGrid under Settings > API Keys with the Mail Send permission and"
      .. " give the whole key as SendGrid showed it, once, when it was made (not its ID, not the account password)"
  end
  return id
end

function M.check_address(s)
  s = trim(s)
  if type(s) ~= "string" or s == "" then return nil, "from address: required (--from-address)" end
  if not schema.formats.email.check(s) then
    return nil, ("from address: '%s' is not an email address like clinic@example.com"):format(s)
  end
  return s
end

-- --hosts: an http(s) origin (a stand-in for api.sendgrid.com, for tests),
-- or api=URL.
function M.parse_hosts(s)
  if s == nil or s == "" then return nil end
  local url = s:match("^api=(.+)$") or s
  if not url:match("^https?://[%w%.%-%[%]:]+/?$") then
    return nil, ("hosts: '%s' must be an http(s) origin such as https://api.sendgrid.com"):format(s)
  end
  return { api = url }
end

-- Check the key against SendGrid: GET /v3/scopes must list mail.send.
-- Returns { scopes } or nil, sentence, err.
function M.validate(c)
  local body, err = c:get("/v3/scopes")
  if not body then
    if err.status == 401 or err.status == 403 then
      return nil, ("SendGrid refused this API key (HTTP %d: %s): it may be revoked, mistyped or from another"
        .. " account"):format(err.status, err.message), err
    end
    return nil, "SendGrid could not check the key: " .. err.message, err
  end
  local scopes = type(body.scopes) == "table" and body.scopes or {}
  for _, s in ipairs(scopes) do
    if s == M.REQUIRED_SCOPE then return { scopes = scopes } end
  end
  return nil, "this API key lacks the mail.send scope: give it the Mail Send permission in SendGrid"
    .. " (Settings > API Keys) or create a key that has it", { status = 403, refused = true }
end

-- }======================================================

function M.install(admin)
  local refuse, methods = admin.refuse, admin.methods
  local pkg = { name = manifest.name, feature = manifest.feature }

  local function connected(self, p, what)
    return connections.connected(admin, self, p, "email", what)
  end

  -- validate with the key being given (blob) or the stored one
  local function validate(self, t, conn, blob, key_id)
    local opened, info, why, err = connections.with_client(self.server, "email", t, conn, M.validate,
      blob and { blob = blob, key_id = key_id } or nil)
    if not opened then return nil, info .. "; update the key with `email update`" end
    return info, why, err
  end

  local function warnings(scopes)
    local out = {}
    local read = false
    for _, s in ipairs(scopes) do read = read or s == "messages.read" end
    if not read then
      out[1] = "this API key lacks the messages.read scope: email_search will be refused by SendGrid"
    end
    return json.array(out)
  end

  methods["email.connect"] = function(self, p)
    local t = self:tenant(p, "email connect")
    connections.require_feature(admin, t, pkg)
    if connections.get(self.db, "email", t.id) then
      refuse(("tenant '%s' already has an Email connection: use `email update` or `email disconnect`"):format(t.name))
    end
    local key = trim(p.api_key)
    local key_id, kerr = M.check_key(key)
    if not key_id then refuse(kerr, -32602) end
    local from, ferr = M.check_address(p.from_address)
    if not from then refuse(ferr, -32602) end
    local hosts, herr = M.parse_hosts(p.hosts)
    if p.hosts and not hosts then refuse(herr, -32602) end
    local blob = directory.seal(self.server.master, t, M.FIELD, key)
    key = nil -- luacheck: ignore 311
    local info, why = validate(self, t, { hosts = hosts }, blob, key_id)
    if not info then refuse("validation failed: " .. why) end
    local ok, err = repo.insert(self.db, {
      tenant_id = t.id, integration = "email", key_id = key_id, secret = blob, status = "active",
      group = manifest.group,
      settings = { from_address = from, from_name = trim(p.from_name), hosts = hosts,
                   scopes = json.array(info.scopes) } })
    if not ok then refuse("could not store the connection: " .. tostring(err)) end
    connections.changed(self.db, "email", t.id, true)
    directory.settings_audit(self.db, t.id, p.actor, "email.connect", nil,
      { key_id = key_id, from_address = from, autonomous_sends = false })
    self.server:refresh_agents(t.id)
    local v = M.view(t, connections.get(self.db, "email", t.id))
    v.warnings = warnings(info.scopes)
    return v
  end

  methods["email.show"] = function(self, p)
    return M.view(connected(self, p, "email show"))
  end

  methods["email.test"] = function(self, p)
    local t, conn = connected(self, p, "email test")
    local info, why, err = validate(self, t, conn)
    -- only a refused key puts the connection in error; a network blip or a
    -- 5xx is reported and leaves the status as it was
    if not info and err and not (err.status == 401 or err.status == 403) then
      local v = M.view(t, conn)
      v.ok, v.problem = false, why
      return v
    end
    local status = info and "active" or "error"
    local changes = { status = status, status_reason = info and json.null or why, last_tested_at = db_mod.now() }
    if info then changes.settings = { scopes = json.array(info.scopes) } end
    local stored, serr = repo.update(self.db, t.id, "email", changes)
    connections.changed(self.db, "email", t.id, not info)
    if not stored then refuse("could not store the connection's status: " .. tostring(serr)) end
    if conn.status ~= status then
      directory.settings_audit(self.db, t.id, p.actor, "email.status", { status = conn.status },
        { status = status, reason = not info and why or nil })
    end
    local v = M.view(t, connections.get(self.db, "email", t.id))
    v.ok = info ~= nil
    return v
  end

  methods["email.update"] = function(self, p)
    local t, conn = connected(self, p, "email update")
    local cols, sets, old, new = {}, {}, {}, {}
    local key_id, blob
    if p.api_key ~= nil then
      local key = trim(p.api_key)
      local kerr
      key_id, kerr = M.check_key(key)
      if not key_id then refuse(kerr, -32602) end
      blob = directory.seal(self.server.master, t, M.FIELD, key)
      key = nil -- luacheck: ignore 311
      cols.key_id, cols.secret, old.key_id, new.key_id = key_id, blob, conn.key_id, key_id
    end
    if p.from_address ~= nil then
      local from, ferr = M.check_address(p.from_address)
      if not from then refuse(ferr, -32602) end
      sets.from_address, old.from_address, new.from_address = from, conn.from_address, from
    end
    if p.from_name ~= nil then
      sets.from_name, old.from_name, new.from_name = trim(p.from_name), conn.from_name, trim(p.from_name)
    end
    if p.hosts ~= nil then
      local hosts, herr = M.parse_hosts(p.hosts)
      if not hosts then refuse(herr, -32602) end
      sets.hosts, old.hosts, new.hosts = hosts, conn.hosts, hosts
    end
    if next(new) == nil then refuse("email update: nothing to change (give --from-address, --from-name, --hosts"
      .. " or --api-key)", -32602) end
    local probe = { key_id = key_id or conn.key_id, secret = blob or conn.secret, hosts = sets.hosts or conn.hosts }
    local info, why = validate(self, t, probe, blob or conn.secret, probe.key_id)
    if not info then refuse("validation failed; the previous settings stay in force: " .. why) end
    sets.scopes = json.array(info.scopes)
    cols.settings, cols.status, cols.status_reason, cols.last_tested_at = sets, "active", json.null, db_mod.now()
    local stored, serr = repo.update(self.db, t.id, "email", cols)
    connections.changed(self.db, "email", t.id, true)
    if not stored then refuse("could not store the update; the previous settings stay in force: " .. tostring(serr)) end
    if conn.status ~= "active" then old.status, new.status = conn.status, "active" end
    directory.settings_audit(self.db, t.id, p.actor, "email.update", old, new)
    local v = M.view(t, connections.get(self.db, "email", t.id))
    v.warnings = warnings(info.scopes)
    return v
  end
end

return M
