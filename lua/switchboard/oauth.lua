-- OAuth 2.1 resource server for remote MCP clients (the MCP authorization
-- spec): the protected-resource metadata (RFC 9728), the WWW-Authenticate
-- challenge (RFC 6750), and the validation of JWT access tokens (RFC 9068)
-- issued by one configured authorization server: the signature against
-- the issuer's JWKS (core.jose, cjose), iss, aud = this resource (RFC
-- 8707), exp/nbf/iat with a leeway, the required scopes. The claims then
-- name an existing, unrevoked agent of a tenant (config `oauth`).
--
-- The JWKS is fetched through core.http (the calling coroutine yields),
-- from `jwks_uri` or the issuer's metadata (RFC 8414, then OpenID
-- discovery), kept `cache_seconds`, fetched again on an unknown kid at most
-- once per `refetch_seconds`; concurrent callers share one fetch. When a
-- refresh fails the keys already fetched stay in use; with no keys at all
-- the answer is 503.
local http = require("core.http")
local jose = require("core.jose")
local loop = require("core.loop")
local json = require("switchboard.json")
local log = require("switchboard.log")

local M = {}

local Auth = {}
Auth.__index = Auth

M.ALGORITHMS = { "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512" }
M.DEFAULT_ALGORITHMS = { "RS256", "ES256" }
M.WELL_KNOWN = "/.well-known/oauth-protected-resource"
local MAX_TOKEN = 16384
local MAX_JWKS = 1048576
-- the members of a public JWK this module passes on to cjose (no private
-- members even when an issuer publishes them by mistake)
local JWK_MEMBERS = { "kty", "kid", "use", "alg", "n", "e", "crv", "x", "y" }

local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end
local KNOWN_ALGS = set_of(M.ALGORITHMS)

-- An absolute http(s) URL without fragment or user info, https unless the
-- host is a loopback address; returns libcurl's parse or nil, err.
local function check_url(s, field, allow_query)
  local u, err = http.parse(s)
  if not u then return nil, ("config: 'oauth.%s' is not a URL (%s)"):format(field, err) end
  if u.scheme ~= "https" and not (u.scheme == "http" and (u.ip == "loopback" or u.host == "localhost")) then
    return nil, ("config: 'oauth.%s' must be an https URL (http only on a loopback address)"):format(field)
  end
  if u.userinfo or u.fragment or (u.query and not allow_query) then
    return nil, ("config: 'oauth.%s' must have no user name, query or fragment"):format(field)
  end
  return u
end

local function origin(u)
  local default = (u.scheme == "https" and 443) or 80
  return u.scheme .. "://" .. u.host .. (u.port ~= default and (":" .. u.port) or "")
end

-- The path of a URL without its trailing "/" ("" for the root).
local function path_of(u)
  return ((u.path or "/"):gsub("/$", ""))
end

-- RFC 6749 scope-token: printable ASCII except space, '"' and '\'.
local function valid_scope(s)
  return s ~= "" and not s:find('[%c%s"\\\128-\255]')
end

-- Build the resource server from the `oauth` config table (as
-- config.build fills it) and deps = { db = the store (required), now =
-- wall-clock seconds function (default os.time) }. Returns the object or
-- nil, "config: …" naming the field at fault.
function M.new(cfg, deps)
  assert(type(cfg) == "table", "oauth.new: cfg must be a table")
  assert(type(deps) == "table" and deps.db, "oauth.new: deps.db is required")
  if type(cfg.issuer) ~= "string" then return nil, "config: 'oauth.issuer' is not set" end
  if type(cfg.resource) ~= "string" then
    return nil, "config: 'oauth.resource' must be set with 'oauth.issuer' (this server's /mcp URL)"
  end
  local _, err = check_url(cfg.issuer, "issuer")
  if err then return nil, err end
  local resource
  resource, err = check_url(cfg.resource, "resource")
  if not resource then return nil, err end
  if cfg.jwks_uri then
    _, err = check_url(cfg.jwks_uri, "jwks_uri", true)
    if err then return nil, err end
  end
  local algs = (cfg.algorithms and #cfg.algorithms > 0) and cfg.algorithms or M.DEFAULT_ALGORITHMS
  for i, a in ipairs(algs) do
    if not KNOWN_ALGS[a] then
      return nil, ("config: 'oauth.algorithms[%d]' must be one of %s"):format(i, table.concat(M.ALGORITHMS, ", "))
    end
  end
  for _, field in ipairs({ "scopes", "scopes_supported" }) do
    for i, s in ipairs(cfg[field] or {}) do
      if type(s) ~= "string" or not valid_scope(s) then
        return nil, ("config: 'oauth.%s[%d]' is not a valid scope (printable, no space, '\"' or '\\')")
          :format(field, i)
      end
    end
  end
  for _, field in ipairs({ "tenant_claim", "agent_claim" }) do
    if type(cfg[field]) ~= "string" or cfg[field] == "" then
      return nil, ("config: 'oauth.%s' must be a claim name"):format(field)
    end
  end
  if cfg.tenant ~= nil and (type(cfg.tenant) ~= "string" or cfg.tenant == "") then
    return nil, "config: 'oauth.tenant' must be a tenant name"
  end
  local self = setmetatable({
    cfg = cfg, db = deps.db, now = deps.now or os.time,
    algorithms = algs, required = cfg.scopes or {},
    agents = (cfg.agents and next(cfg.agents)) and cfg.agents or nil,
    resource_path = path_of(resource),
  }, Auth)
  self.metadata_url = origin(resource) .. M.WELL_KNOWN .. self.resource_path
  return self
end

-- The RFC 9728 protected-resource metadata (a table; json.encode it).
function Auth:metadata()
  local cfg = self.cfg
  local supported = (cfg.scopes_supported and #cfg.scopes_supported > 0) and cfg.scopes_supported or self.required
  local doc = {
    resource = cfg.resource,
    authorization_servers = { cfg.issuer },
    bearer_methods_supported = { "header" },
  }
  if #supported > 0 then doc.scopes_supported = supported end
  return doc
end

-- The paths the HTTP listener answers with metadata(): the RFC 9728 one
-- (the well-known prefix before the resource's path) and, when that
-- differs, the bare well-known path that clients also try.
function Auth:metadata_paths()
  local paths = { M.WELL_KNOWN .. self.resource_path }
  if self.resource_path ~= "" then paths[2] = M.WELL_KNOWN end
  return paths
end

-- error_description and scope values: quoted-string safe, short.
local function quotable(s)
  return (tostring(s):gsub('[%c"\\\128-\255]', "?"):sub(1, 200))
end

-- The WWW-Authenticate value for a 401 or 403: err = nil when the request
-- had no token (no error code then, RFC 6750 3.1), else the message
-- authenticate returned, with its code (default "invalid_token").
function Auth:challenge(err, code)
  local parts = { ('Bearer resource_metadata="%s"'):format(self.metadata_url) }
  if #self.required > 0 then
    parts[#parts + 1] = ('scope="%s"'):format(quotable(table.concat(self.required, " ")))
  end
  if err ~= nil then
    parts[#parts + 1] = ('error="%s"'):format(code or "invalid_token")
    parts[#parts + 1] = ('error_description="%s"'):format(quotable(err))
  end
  return table.concat(parts, ", ")
end

---------------------------------------------------------------------------
-- The issuer's keys

local function fetch_json(self, url, what)
  local res, err = http.request{ url = url, timeout = self.cfg.fetch_timeout or 10,
    connect_timeout = math.min(self.cfg.fetch_timeout or 10, 10), max_bytes = MAX_JWKS,
    ca_file = self.cfg.ca_file, headers = { Accept = "application/json" } }
  if not res then return nil, ("%s %s: %s"):format(what, url, err) end
  if res.status ~= 200 then return nil, ("%s %s answered HTTP %d"):format(what, url, res.status) end
  local doc = json.decode(res.body)
  if type(doc) ~= "table" then return nil, ("%s %s: not a JSON object"):format(what, url) end
  return doc
end

-- The jwks_uri from the issuer's metadata: RFC 8414 (well-known before the
-- issuer's path), then OpenID discovery (after it, then before it).
local function discover(self)
  local iss = assert(http.parse(self.cfg.issuer))
  local base, path = origin(iss), path_of(iss)
  local urls = {
    base .. "/.well-known/oauth-authorization-server" .. path,
    base .. path .. "/.well-known/openid-configuration",
  }
  if path ~= "" then urls[3] = base .. "/.well-known/openid-configuration" .. path end
  local last
  for _, url in ipairs(urls) do
    local doc, err = fetch_json(self, url, "authorization server metadata")
    if doc then
      if doc.issuer ~= self.cfg.issuer then
        return nil, ("the metadata at %s names another issuer"):format(url)
      end
      if type(doc.jwks_uri) ~= "string" then return nil, ("the metadata at %s has no jwks_uri"):format(url) end
      local _, uerr = check_url(doc.jwks_uri, "jwks_uri", true)
      if uerr then return nil, ("the metadata at %s: %s"):format(url, uerr:gsub("^config: ", "")) end
      return doc.jwks_uri
    end
    last = err
  end
  return nil, last
end

local function fetch_keys(self)
  local uri = self.cfg.jwks_uri or self.discovered
  if not uri then
    local err
    uri, err = discover(self)
    if not uri then return nil, err end
    self.discovered = uri
  end
  local doc, err = fetch_json(self, uri, "JWKS")
  if not doc then
    self.discovered = nil -- discover again next time
    return nil, err
  end
  if type(doc.keys) ~= "table" then return nil, ("JWKS %s has no keys array"):format(uri) end
  local allowed, list = set_of(self.algorithms), {}
  for _, k in ipairs(doc.keys) do
    if type(k) == "table" and (k.kty == "RSA" or k.kty == "EC") and (k.use == nil or k.use == "sig")
        and (k.alg == nil or allowed[k.alg]) and #list < 64 then
      local pub = {}
      for _, m in ipairs(JWK_MEMBERS) do
        if type(k[m]) == "string" then pub[m] = k[m] end
      end
      list[#list + 1] = json.encode(pub)
    end
  end
  if #list == 0 then return nil, ("JWKS %s has no usable signing key"):format(uri) end
  local ks, kerr = jose.keyset(list)
  if not ks then return nil, ("JWKS %s: %s"):format(uri, kerr) end
  return ks
end

-- Refresh the keys (one fetch at a time; others wait for its outcome).
local function refresh(self)
  if self.waiters then
    local waiters = self.waiters
    waiters[#waiters + 1] = coroutine.running()
    loop.wait()
    return
  end
  self.waiters = {}
  local ok, ks, err = pcall(fetch_keys, self)
  if not ok then ks, err = nil, "JWKS fetch failed: " .. tostring(ks) end
  self.attempted_at = loop.time()
  if ks then
    if self.keyset then self.keyset:close() end
    self.keyset, self.fetched_at, self.fetch_error = ks, self.attempted_at, nil
    log.info("oauth: %d signing keys from the issuer", ks:count())
  else
    self.fetch_error = err
    log.warn("oauth: %s", err)
  end
  local waiters = self.waiters
  self.waiters = nil
  for _, co in ipairs(waiters) do loop.wake(co) end
end

-- The key set, fetched when there is none or it is older than
-- cache_seconds; force (an unknown kid) fetches again unless the last
-- attempt was within refetch_seconds. nil, err when there are no keys.
function Auth:keys(force)
  local now, cfg = loop.time(), self.cfg
  local recent = self.attempted_at and now - self.attempted_at < (cfg.refetch_seconds or 30)
  local fresh = self.keyset and now - self.fetched_at < (cfg.cache_seconds or 300)
  if (force and not recent) or (not force and not fresh and not recent) then
    refresh(self)
  end
  if self.keyset then return self.keyset end
  return nil, self.fetch_error or "the authorization server's keys are not available"
end

---------------------------------------------------------------------------
-- Tokens

local function fail(msg, status, code)
  return nil, msg, status or 401, code == nil and "invalid_token" or code
end

local function has(list, want)
  for _, v in ipairs(list) do
    if v == want then return true end
  end
  return false
end

local function scopes_of(claims)
  local out = {}
  if type(claims.scope) == "string" then
    for s in claims.scope:gmatch("%S+") do out[#out + 1] = s end
  elseif type(claims.scp) == "table" then
    for _, s in ipairs(claims.scp) do
      if type(s) == "string" then out[#out + 1] = s end
    end
  elseif type(claims.scp) == "string" then
    for s in claims.scp:gmatch("%S+") do out[#out + 1] = s end
  end
  return out
end

local function check_claims(self, claims)
  local cfg, now, leeway = self.cfg, self.now(), self.cfg.leeway or 30
  if claims.iss ~= cfg.issuer then return fail("the token is not from the configured issuer") end
  local aud = claims.aud
  if not ((type(aud) == "string" and aud == cfg.resource) or (type(aud) == "table" and has(aud, cfg.resource))) then
    return fail("the token's audience is not this resource")
  end
  if math.type(claims.exp) == nil then return fail("the token has no exp") end
  if now > claims.exp + leeway then return fail("the token has expired") end
  if claims.nbf ~= nil then
    if math.type(claims.nbf) == nil then return fail("the token's nbf is not a number") end
    if now + leeway < claims.nbf then return fail("the token is not valid yet") end
  end
  if claims.iat ~= nil then
    if math.type(claims.iat) == nil then return fail("the token's iat is not a number") end
    if claims.iat > now + leeway then return fail("the token was issued in the future") end
  end
  local scopes = scopes_of(claims)
  for _, s in ipairs(self.required) do
    if not has(scopes, s) then
      return fail(("the token lacks the scope '%s'"):format(s), 403, "insufficient_scope")
    end
  end
  return scopes
end

-- The agent the claims name: the same row shape as directory.authenticate
-- (the agents row with tenant_name, tenant_features, tenant_data_key),
-- plus `oauth` = { sub, client_id, scopes, exp, jti }.
local function identity(self, claims, scopes)
  local cfg = self.cfg
  local tenant_name = cfg.tenant or claims[cfg.tenant_claim]
  if type(tenant_name) ~= "string" then
    return fail(("the token has no '%s' claim"):format(cfg.tenant_claim))
  end
  local value = claims[cfg.agent_claim]
  if type(value) ~= "string" then return fail(("the token has no '%s' claim"):format(cfg.agent_claim)) end
  local agent_name = value
  if self.agents then agent_name = self.agents[value] end
  local directory = require("switchboard.directory")
  local t = agent_name and directory.tenant(self.db, tenant_name)
  local a = t and directory.agent(self.db, t.id, agent_name)
  if not a or a.revoked_at then
    log.warn("oauth: a valid token for %s agent '%s' of tenant '%s' was refused",
      not agent_name and "unmapped" or (not t and "unknown tenant's") or (not a and "unknown") or "revoked",
      tostring(agent_name or value), tenant_name)
    return fail("the token's agent is unknown or revoked")
  end
  a.tenant_name, a.tenant_features, a.tenant_data_key = t.name, t.features, t.data_key
  a.oauth = { sub = claims.sub, client_id = claims.client_id or claims.azp, scopes = scopes,
              exp = claims.exp, jti = claims.jti }
  return a, nil, 200
end

-- Validate an access token (the Authorization header's credentials, with
-- or without the "Bearer " prefix). Returns the agent identity, or nil,
-- err, http_status, error_code: 401 "invalid_token" (error_code nil when
-- there was no token), 403 "insufficient_scope", 503 when the issuer's
-- keys cannot be had. Must run in a runtime coroutine: fetching the keys
-- yields.
function Auth:authenticate(bearer)
  if type(bearer) ~= "string" then return nil, "no access token", 401, nil end
  local token = bearer:match("^[Bb][Ee][Aa][Rr][Ee][Rr] +(.*)$") or bearer
  if token == "" then return nil, "no access token", 401, nil end
  if #token > MAX_TOKEN or not token:match("^[%w%-_%.~%+/]+=*$") then
    return fail("the access token is malformed")
  end
  local ks, kerr = self:keys(false)
  if not ks then return fail(kerr, 503, "temporarily_unavailable") end
  local payload, err, code = ks:verify(token, self.algorithms)
  if not payload and code == "kid" then
    ks, kerr = self:keys(true)
    if not ks then return fail(kerr, 503, "temporarily_unavailable") end
    payload, err = ks:verify(token, self.algorithms)
  end
  if not payload then return fail(err) end
  local claims = json.decode(payload)
  if type(claims) ~= "table" or claims[1] ~= nil then return fail("the token's claims are not a JSON object") end
  local scopes, status, ecode
  scopes, err, status, ecode = check_claims(self, claims)
  if not scopes then return nil, err, status, ecode end
  return identity(self, claims, scopes)
end

-- Whether s looks like a JWT (three base64url parts), as opposed to an
-- "sbt_…" agent token.
function M.looks_like_jwt(s)
  return type(s) == "string" and s:match("^[%w%-_]+%.[%w%-_]+%.[%w%-_]*$") ~= nil
end

function Auth:close()
  if self.keyset then self.keyset:close() end
  self.keyset = nil
end

return M
