-- OAuth on the HTTP listener, end to end: a real server process with
-- oauth configured, a local authorization server (core.httpd in this
-- process) serving its JWKS, access tokens signed here with core.jose.
-- The listener publishes its RFC 9728 metadata, challenges a request
-- without a token, refuses a token for another audience and maps a valid
-- one to its agent; agent tokens keep working beside it.
local H = require("helpers")
local http = require("core.http")
local httpd = require("core.httpd")
local jose = require("core.jose")
local json = require("switchboard.json")

local function free_port()
  local s = assert(httpd.listen{ port = 0, handler = function() return 200, {}, "" end })
  local p = s:port()
  s:close()
  return p
end

describe("OAuth on the HTTP listener", function()
  local srv, issuer, base, iss, resource, key, agent_token

  setup(function()
    key = assert(jose.generate("RSA", "k1"))
    local jwks = json.encode({ keys = { json.decode(assert(jose.public_key(key))) } })
    issuer = assert(httpd.listen{ port = 0, handler = function(req)
      if req.path == "/jwks" then return 200, { ["Content-Type"] = "application/json" }, jwks end
      return 404, {}, "not found"
    end })
    iss = "http://127.0.0.1:" .. issuer:port()
    local port = free_port()
    base = "http://127.0.0.1:" .. port
    resource = base .. "/mcp"
    srv = H.server({ config = {
      http = { listen = "127.0.0.1:" .. port },
      oauth = { issuer = iss, jwks_uri = iss .. "/jwks", resource = resource, scopes = { "mcp:tools" } } } })
    H.wait_for(function() return (H.read(srv.log) or ""):find("http: MCP on", 1, true) ~= nil end, 10, "http listener")
    agent_token = srv.agent("acme", "alice", "caioo", "Examples")
  end)

  teardown(function()
    srv.stop()
    issuer:close()
  end)

  local function token(over)
    local now = os.time()
    local c = { iss = iss, aud = resource, sub = "alice", sb_tenant = "acme", exp = now + 300, iat = now,
                scope = "mcp:tools" }
    for k, v in pairs(over or {}) do c[k] = v end
    return assert(jose.sign(key, { alg = "RS256", kid = "k1", typ = "at+jwt" }, json.encode(c)))
  end

  local function initialize(bearer)
    local h = { ["Content-Type"] = "application/json", Accept = "application/json, text/event-stream" }
    if bearer then h.Authorization = "Bearer " .. bearer end
    local res = assert(http.request{ method = "POST", url = resource, headers = h,
      body = json.encode({ jsonrpc = "2.0", id = 1, method = "initialize", params = {
        protocolVersion = "2025-11-25", capabilities = {}, clientInfo = { name = "spec", version = "1" } } }) })
    return res
  end

  it("publishes its protected-resource metadata without a token", function()
    H.async(function()
      local res = assert(http.request{ url = base .. "/.well-known/oauth-protected-resource/mcp" })
      assert.equal(200, res.status)
      local m = json.decode(res.body)
      assert.equal(resource, m.resource)
      assert.same({ iss }, m.authorization_servers)
    end)
  end)

  it("challenges a request without a token, naming the metadata", function()
    H.async(function()
      local res = initialize(nil)
      assert.equal(401, res.status)
      assert.matches('resource_metadata="' .. base:gsub("%p", "%%%0") .. "/.well%-known/oauth%-protected%-resource/mcp\"",
        res.headers["www-authenticate"])
    end)
  end)

  it("refuses a token for another audience, an expired one and one of another issuer", function()
    H.async(function()
      for _, over in ipairs({ { aud = "https://other.example.test/mcp" }, { exp = os.time() - 600 },
                              { iss = "https://issuer.example.test" } }) do
        local res = initialize(token(over))
        assert.equal(401, res.status, res.body)
        assert.matches('error="invalid_token"', res.headers["www-authenticate"], 1, true)
      end
    end)
  end)

  it("maps a valid token to its agent, and agent tokens still work", function()
    H.async(function()
      for _, bearer in ipairs({ token(), agent_token }) do
        local res = initialize(bearer)
        assert.equal(200, res.status, res.body)
        local body = res.body:match("data: ([^\n]*)") or res.body
        assert.equal("switchboard", json.decode(body).result.serverInfo.name)
      end
    end)
  end)
end)
