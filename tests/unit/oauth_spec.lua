-- switchboard.oauth and core.jose against a local authorization server:
-- keys made here (cjose, and one with the openssl CLI), the JWKS and the
-- issuer's metadata served over real HTTP by core.httpd and fetched
-- through core.http, tokens signed here. Every refused token gets its
-- status and a challenge that names the metadata; a valid token maps to
-- its agent; a new key is picked up; a JWKS outage is a 503.
local H = require("helpers")
local loop = require("core.loop")
local httpd = require("core.httpd")
local jose = require("core.jose")
local vault = require("core.vault")
local json = require("switchboard.json")
local config = require("switchboard.config")
local db_mod = require("switchboard.db")
local directory = require("switchboard.directory")
local oauth = require("switchboard.oauth")

local RESOURCE = "https://mcp.example.test/mcp"

local function b64(s) return vault.base64url(s) end

describe("switchboard.oauth", function()
  local dir, db, issuer, ISS
  local rsa1, ec1, rsa2, other
  local state = { jwks = {}, status = 200, fetches = 0, meta_fetches = 0, meta_issuer = nil }

  local function serve_jwks(keys)
    local pub = {}
    for i, k in ipairs(keys) do pub[i] = json.decode(assert(jose.public_key(k))) end
    state.jwks = pub
  end

  local function handler(req)
    if req.path == "/jwks" then
      state.fetches = state.fetches + 1
      if state.status ~= 200 then return state.status, {}, "unavailable" end
      return 200, { ["Content-Type"] = "application/json" }, json.encode({ keys = state.jwks })
    elseif req.path == "/.well-known/oauth-authorization-server" then
      state.meta_fetches = state.meta_fetches + 1
      return 200, { ["Content-Type"] = "application/json" },
        json.encode({ issuer = state.meta_issuer or ISS, jwks_uri = ISS .. "/jwks" })
    end
    return 404, {}, "not found"
  end

  -- The auth object from a config given as in the config file.
  local function auth_with(over)
    local given = { issuer = ISS, jwks_uri = ISS .. "/jwks", resource = RESOURCE, scopes = { "mcp:tools" },
                    leeway = 5, refetch_seconds = 0 }
    for k, v in pairs(over or {}) do given[k] = v or nil end
    local cfg = assert(config.build({ oauth = given }, H.ROOT))
    return assert(oauth.new(cfg.oauth, { db = db }))
  end

  local function claims_with(over)
    local now = os.time()
    local c = { iss = ISS, aud = RESOURCE, sub = "alice", sb_tenant = "acme", exp = now + 300, iat = now,
                scope = "openid mcp:tools", client_id = "client-1", jti = "j1" }
    for k, v in pairs(over or {}) do
      if v == false then c[k] = nil else c[k] = v end
    end
    return c
  end

  local function token(over, header, key)
    return assert(jose.sign(key or rsa1, header or { alg = "RS256", kid = "k1", typ = "at+jwt" },
      json.encode(claims_with(over))))
  end

  -- Refused with status (default 401) and code (default invalid_token), and
  -- a challenge naming the metadata and the error.
  local function refused(auth, tok, status, code, msg)
    local who, err, st, c = auth:authenticate(tok)
    assert.is_nil(who)
    assert.equals(status or 401, st)
    assert.equals(code or "invalid_token", c)
    if msg then assert.matches(msg, err) end
    local ch = auth:challenge(err, c)
    assert.matches('^Bearer resource_metadata="https://mcp.example.test/.well%-known/oauth%-protected%-resource/mcp"', ch)
    assert.matches(('error="%s"'):format(c), ch, 1, true)
    assert.matches('error_description="[^"]+"', ch)
    return err
  end

  setup(function()
    dir = H.tmpdir("oauth")
    db = assert(db_mod.open(dir .. "/sb.db"))
    assert(vault.create_master(dir .. "/master.key"))
    local master = assert(vault.load_master(dir .. "/master.key"))
    local acme = assert(directory.add_tenant(db, master, "acme"))
    assert(directory.add_tenant(db, master, "other"))
    master:close()
    assert(directory.add_agent(db, acme, { name = "alice", type = "caioo" }))
    assert(directory.add_agent(db, acme, { name = "bob", type = "personal_assistant" }))
    assert(directory.revoke_agent(db, acme, "bob"))
    issuer = assert(httpd.listen{ port = 0, handler = handler })
    ISS = "http://127.0.0.1:" .. issuer:port()
    rsa1 = assert(jose.generate("RSA", "k1"))
    ec1 = assert(jose.generate("EC", "e1"))
    rsa2 = assert(jose.generate("RSA", "k2"))
    other = assert(jose.generate("RSA", "k1")) -- same kid, another key
    serve_jwks({ rsa1, ec1 })
  end)

  teardown(function()
    issuer:close()
    db:close()
    os.execute("rm -rf " .. H.q(dir))
  end)

  before_each(function()
    state.status, state.fetches, state.meta_fetches, state.meta_issuer = 200, 0, 0, nil
    serve_jwks({ rsa1, ec1 })
  end)

  describe("configuration", function()
    it("is off by default and refuses a missing or unsafe field by name", function()
      local cfg = assert(config.build({}, H.ROOT))
      assert.is_nil(cfg.oauth.issuer)
      local a, err = oauth.new(cfg.oauth, { db = db })
      assert.is_nil(a)
      assert.matches("'oauth.issuer' is not set", err)
      local function bad(over, pattern)
        local c = assert(config.build({ oauth = over }, H.ROOT))
        local x, e = oauth.new(c.oauth, { db = db })
        assert.is_nil(x)
        assert.matches(pattern, e)
      end
      bad({ issuer = "https://as.example.test" }, "'oauth.resource' must be set")
      bad({ issuer = "http://as.example.test", resource = RESOURCE }, "'oauth.issuer' must be an https URL")
      bad({ issuer = "https://as.example.test", resource = "not a url" }, "'oauth.resource' is not a URL")
      bad({ issuer = "https://as.example.test", resource = RESOURCE .. "#x" }, "'oauth.resource' must have no")
      bad({ issuer = "https://as.example.test", resource = RESOURCE, algorithms = { "HS256" } },
        "'oauth.algorithms%[1%]' must be one of")
      bad({ issuer = "https://as.example.test", resource = RESOURCE, scopes = { "a b" } },
        "'oauth.scopes%[1%]' is not a valid scope")
      local c, e = config.build({ oauth = { issuer = "https://x", secret = "y" } }, H.ROOT)
      assert.is_nil(c)
      assert.matches("unknown key 'oauth.secret'", e)
      c, e = config.build({ oauth = { leeway = -1 } }, H.ROOT)
      assert.is_nil(c)
      assert.matches("'oauth.leeway' must be at least 0", e)
    end)
  end)

  describe("metadata and challenge", function()
    it("describes the resource (RFC 9728) and names it in every challenge", function()
      local auth = auth_with()
      local m = auth:metadata()
      assert.equals(RESOURCE, m.resource)
      assert.same({ ISS }, m.authorization_servers)
      assert.same({ "mcp:tools" }, m.scopes_supported)
      assert.same({ "header" }, m.bearer_methods_supported)
      assert.truthy(json.encode(m))
      assert.same({ "/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource" },
        auth:metadata_paths())
      assert.equals('Bearer resource_metadata="https://mcp.example.test/.well-known/oauth-protected-resource/mcp",'
        .. ' scope="mcp:tools"', auth:challenge())
      assert.equals('Bearer resource_metadata="https://mcp.example.test/.well-known/oauth-protected-resource/mcp",'
        .. ' scope="mcp:tools", error="invalid_token", error_description="bad ?quote? and ?"',
        auth:challenge('bad "quote" and \\'))
      local root = auth_with({ resource = "https://mcp.example.test", scopes = {} })
      assert.same({ "/.well-known/oauth-protected-resource" }, root:metadata_paths())
      assert.equals('Bearer resource_metadata="https://mcp.example.test/.well-known/oauth-protected-resource"',
        root:challenge())
      assert.is_nil(root:metadata().scopes_supported)
    end)

    it("answers a request without a token with 401 and no error code", function()
      H.async(function()
        local auth = auth_with()
        for _, t in ipairs({ "", "Bearer ", false }) do
          local who, err, st, code = auth:authenticate(t or nil)
          assert.is_nil(who)
          assert.equals("no access token", err)
          assert.equals(401, st)
          assert.is_nil(code)
        end
        assert.equals(0, state.fetches)
      end)
    end)
  end)

  describe("a valid token", function()
    it("maps to its agent of its tenant (RS256 and ES256, with or without 'Bearer ')", function()
      H.async(function()
        local auth = auth_with()
        local who, err, st = auth:authenticate(token())
        assert.is_nil(err)
        assert.equals(200, st)
        assert.equals("alice", who.name)
        assert.equals("acme", who.tenant_name)
        assert.equals(directory.tenant(db, "acme").id, who.tenant_id)
        assert.same({}, who.tenant_features)
        assert.equals("caioo", who.type)
        assert.same({ sub = "alice", client_id = "client-1", scopes = { "openid", "mcp:tools" },
                      exp = claims_with().exp, jti = "j1" }, who.oauth)
        who = assert(auth:authenticate("Bearer " .. token(nil, { alg = "ES256", kid = "e1" }, ec1)))
        assert.equals("alice", who.name)
        -- aud as an array with this resource in it; scp instead of scope
        who = assert(auth:authenticate(token({ aud = { "https://other.test", RESOURCE }, scope = false,
                                               scp = { "mcp:tools" } })))
        assert.equals("alice", who.name)
        assert.equals(1, state.fetches) -- one JWKS fetch, then the cache
      end)
    end)

    it("maps through a static tenant and agents map when configured", function()
      H.async(function()
        local auth = auth_with({ tenant = "acme", agents = { ["client-7"] = "alice" } })
        local who = assert(auth:authenticate(token({ sub = "client-7", sb_tenant = false })))
        assert.equals("alice", who.name)
        assert.equals("acme", who.tenant_name)
        refused(auth, token({ sub = "alice" }), 401, "invalid_token", "unknown or revoked")
      end)
    end)

    it("made and signed by the openssl CLI verifies too", function()
      H.async(function()
        local key = dir .. "/ossl.pem"
        assert(os.execute("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "
          .. H.q(key) .. " 2>/dev/null"))
        local hexmod = H.sh("openssl rsa -in " .. H.q(key) .. " -noout -modulus"):match("Modulus=(%x+)")
        local n = hexmod:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
        state.jwks = { { kty = "RSA", kid = "ossl", use = "sig", alg = "RS256", e = "AQAB", n = b64(n) } }
        local input = b64(json.encode({ alg = "RS256", kid = "ossl", typ = "at+jwt" })) .. "."
          .. b64(json.encode(claims_with()))
        H.write(dir .. "/input", input)
        local sig = H.sh("openssl dgst -sha256 -sign " .. H.q(key) .. " " .. H.q(dir .. "/input"))
        assert.equals(256, #sig)
        local who = assert(auth_with():authenticate(input .. "." .. b64(sig)))
        assert.equals("alice", who.name)
      end)
    end)
  end)

  describe("a refused token", function()
    it("is refused with 401 and a challenge for each defect", function()
      H.async(function()
        local auth = auth_with()
        local now = os.time()
        refused(auth, token({ exp = now - 60 }), 401, nil, "expired")
        refused(auth, token({ exp = false }), 401, nil, "no exp")
        refused(auth, token({ nbf = now + 120 }), 401, nil, "not valid yet")
        refused(auth, token({ iat = now + 120 }), 401, nil, "issued in the future")
        refused(auth, token({ aud = "https://other.example.test/mcp" }), 401, nil, "audience")
        refused(auth, token({ aud = { "https://other.example.test/mcp" } }), 401, nil, "audience")
        refused(auth, token({ aud = false }), 401, nil, "audience")
        refused(auth, token({ iss = "https://evil.example.test" }), 401, nil, "issuer")
        refused(auth, token({ iss = ISS .. "/" }), 401, nil, "issuer")
        refused(auth, token({ sub = "bob" }), 401, nil, "unknown or revoked") -- revoked agent
        refused(auth, token({ sub = "nobody" }), 401, nil, "unknown or revoked")
        refused(auth, token({ sb_tenant = "other" }), 401, nil, "unknown or revoked")
        refused(auth, token({ sb_tenant = false }), 401, nil, "no 'sb_tenant' claim")
        refused(auth, token({ scope = "openid" }), 403, "insufficient_scope", "lacks the scope 'mcp:tools'")
        -- within the leeway it is still accepted
        assert(auth:authenticate(token({ exp = now - 2 })))
      end)
    end)

    it("refuses tampered, unsigned, wrongly keyed and HS256 tokens", function()
      H.async(function()
        local auth = auth_with()
        local good = token()
        local h, p, s = good:match("^([^.]+)%.([^.]+)%.([^.]+)$")
        -- payload changed, signature kept
        local forged = h .. "." .. b64(json.encode(claims_with({ sub = "alice", sb_tenant = "other" }))) .. "." .. s
        refused(auth, forged, 401, nil, "signature does not verify")
        -- signature changed
        local c = s:sub(10, 10) == "A" and "B" or "A"
        refused(auth, h .. "." .. p .. "." .. s:sub(1, 9) .. c .. s:sub(11), 401, nil, "signature does not verify")
        refused(auth, h .. "." .. p .. ".", 401)
        -- unsigned
        local none = b64(json.encode({ alg = "none", kid = "k1" })) .. "." .. p .. "."
        refused(auth, none, 401, nil, "algorithm is not accepted")
        refused(auth, b64('{"alg":"none"}') .. "." .. p .. "." .. s, 401)
        -- another key under the kid k1
        refused(auth, token(nil, nil, other), 401, nil, "signature does not verify")
        -- an RSA key's kid on an ES256 token
        refused(auth, token(nil, { alg = "ES256", kid = "k1" }, ec1), 401, nil, "does not fit")
        -- HS256 with the issuer's public key as the HMAC secret
        local pub = assert(jose.public_key(rsa1))
        local oct = json.encode({ kty = "oct", k = b64(pub) })
        refused(auth, token(nil, { alg = "HS256", kid = "k1" }, oct), 401, nil, "algorithm is not accepted")
        local n = json.decode(pub).n
        refused(auth, token(nil, { alg = "HS256", kid = "k1" }, json.encode({ kty = "oct", k = n })), 401)
        -- an algorithm the config does not allow
        refused(auth, token(nil, { alg = "RS384", kid = "k1" }), 401, nil, "algorithm is not accepted")
        -- crit and not a JWT at all
        refused(auth, token(nil, { alg = "RS256", kid = "k1", crit = "exp" }), 401, nil, "critical")
        refused(auth, "not-a-jwt", 401, nil, "not a signed JWS")
        refused(auth, "a b", 401, nil, "malformed")
        refused(auth, ("a"):rep(20000), 401, nil, "malformed")
        -- a JSON array as the claims
        refused(auth, assert(jose.sign(rsa1, { alg = "RS256", kid = "k1" }, "[1]")), 401, nil, "not a JSON object")
      end)
    end)

    it("with an unknown kid is refused after one fetch of the keys", function()
      H.async(function()
        local auth = auth_with({ refetch_seconds = 3600 })
        assert(auth:authenticate(token()))
        assert.equals(1, state.fetches)
        refused(auth, token(nil, { alg = "RS256", kid = "k2" }, rsa2), 401, nil, "no key with the token's kid")
        refused(auth, token(nil, { alg = "RS256", kid = "k3" }, rsa2), 401, nil, "no key with the token's kid")
        -- fetched just now: no second fetch within refetch_seconds
        assert.equals(1, state.fetches)
      end)
    end)
  end)

  describe("the issuer's keys", function()
    it("picks up a rotated key (a new kid) with one more fetch", function()
      H.async(function()
        local auth = auth_with()
        assert(auth:authenticate(token()))
        assert.equals(1, state.fetches)
        serve_jwks({ rsa2 })
        local who = assert(auth:authenticate(token(nil, { alg = "RS256", kid = "k2" }, rsa2)))
        assert.equals("alice", who.name)
        assert.equals(2, state.fetches)
        -- the old key is gone from the new set: its tokens no longer verify
        refused(auth, token(), 401, nil, "no key with the token's kid")
        assert.equals(3, state.fetches)
      end)
    end)

    it("are fetched once for concurrent first requests", function()
      H.async(function()
        local auth = auth_with()
        local done, results = 0, {}
        local me = coroutine.running()
        for i = 1, 4 do
          loop.spawn(function()
            results[i] = auth:authenticate(token()) and true or false
            done = done + 1
            if done == 4 then loop.wake(me) end
          end)
        end
        if done < 4 then loop.wait() end
        assert.same({ true, true, true, true }, results)
        assert.equals(1, state.fetches)
      end)
    end)

    it("answer 503 when the JWKS cannot be fetched, and recover", function()
      H.async(function()
        state.status = 500
        local auth = auth_with()
        local err = refused(auth, token(), 503, "temporarily_unavailable", "answered HTTP 500")
        assert.not_matches("eyJ", err)
        state.status = 200
        assert(auth:authenticate(token()))
        -- nothing listens on this port
        local dead = assert(httpd.listen{ port = 0, handler = handler })
        local port = dead:port()
        dead:close()
        local gone = auth_with({ jwks_uri = "http://127.0.0.1:" .. port .. "/jwks" })
        refused(gone, token(), 503, "temporarily_unavailable", "JWKS")
        -- a JWKS that is not JSON, or has no usable key
        state.jwks = { { kty = "oct", k = "AAAA" } }
        refused(auth_with(), token(), 503, "temporarily_unavailable", "no usable signing key")
      end)
    end)

    it("keep the keys it has when a refresh fails", function()
      H.async(function()
        local auth = auth_with({ cache_seconds = 0 })
        assert(auth:authenticate(token()))
        state.status = 503
        assert(auth:authenticate(token()))
        assert.equals(2, state.fetches)
      end)
    end)

    it("are found through the issuer's metadata (RFC 8414) when jwks_uri is not set", function()
      H.async(function()
        local auth = auth_with({ jwks_uri = false })
        assert(auth:authenticate(token()))
        assert.equals(1, state.meta_fetches)
        assert.equals(1, state.fetches)
        state.meta_issuer = "https://evil.example.test"
        local wrong = auth_with({ jwks_uri = false })
        refused(wrong, token(), 503, "temporarily_unavailable", "names another issuer")
      end)
    end)
  end)

  describe("core.jose", function()
    it("refuses symmetric keys in a key set and misuse", function()
      local ks, err = jose.keyset({ json.encode({ kty = "oct", k = "AAAA" }) })
      assert.is_nil(ks)
      assert.matches("key 1: only RSA and EC keys", err)
      ks, err = jose.keyset({ "{" })
      assert.is_nil(ks)
      assert.matches("key 1: not a valid JWK", err)
      assert.has_error(function() jose.keyset({ 1 }) end)
      ks = assert(jose.keyset({ assert(jose.public_key(rsa1)) }))
      assert.same({ "k1" }, ks:kids())
      ks:close()
      ks:close()
      assert.has_error(function() ks:count() end, "attempt to use a closed key set")
      assert.has_error(function() jose.generate("DSA") end)
    end)
  end)
end)
