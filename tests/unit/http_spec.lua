-- core.http: libcurl multi requests on the libev loop, against a local
-- Python upstream (HTTP and HTTPS, self-signed); nothing leaves 127.0.0.1.
-- Run: ./switchboard exec /usr/bin/busted -o utfTerminal tests/unit/http_spec.lua
local loop = require "core.loop"
local http = require "core.http"

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function tmpdir()
  return (sh("mktemp -d /tmp/http_spec.XXXXXX"):gsub("%s+$", ""))
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- The upstream: echoes the request as JSON, and can delay, hang, drop the
-- connection, send big or chunked bodies and repeated headers. Each
-- connection gets a number (conn), so keep-alive reuse is visible.
local SERVER = [=[
import json, ssl, sys, threading, time, base64
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from urllib.parse import urlsplit, parse_qs

lock = threading.Lock()
conns = [0]

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def setup(self):
        with lock:
            conns[0] += 1
            self.conn = conns[0]
        super().setup()
    def log_message(self, *a):
        pass
    def reply(self, code, body, ctype="application/json", extra=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    def any(self):
        u = urlsplit(self.path)
        qs = parse_qs(u.query)
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        p = u.path
        if p == "/hang":
            time.sleep(float(qs.get("s", ["5"])[0]))
            self.close_connection = True
            return
        if p == "/drop":
            self.close_connection = True
            return
        if p == "/slow":
            time.sleep(float(qs.get("ms", ["2000"])[0]) / 1000)
        if p == "/big":
            return self.reply(200, b"x" * int(qs["n"][0]), "text/plain")
        if p == "/chunked":
            n = int(qs["n"][0])
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"y" * 4096
            while n > 0:
                c = chunk[:n]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(c), c))
                n -= len(c)
            self.wfile.write(b"0\r\n\r\n")
            return
        if p == "/headers":
            return self.reply(200, "{}", extra=[("X-Multi", "a"), ("X-Multi", "b"),
                                              ("Mixed-Case-Header", "Value  ")])
        if p == "/status":
            return self.reply(int(qs["code"][0]), "{}")
        user = pw = None
        a = self.headers.get("Authorization")
        if a and a.startswith("Basic "):
            user, _, pw = base64.b64decode(a[6:]).decode().partition(":")
        self.reply(200, json.dumps({
            "method": self.command, "path": u.path, "query": u.query,
            "body": body.decode("latin-1"), "conn": self.conn,
            "authorization": a, "user": user, "password": pw,
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }))
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = any

ThreadingHTTPServer.request_queue_size = 128
srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
srv.daemon_threads = True
if len(sys.argv) > 3:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
import os
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
srv.serve_forever()
]=]

local function start_server(dir, name, cert, key)
  local script = dir .. "/upstream.py"
  write(script, SERVER)
  local pf = dir .. "/" .. name .. ".port"
  local pid = sh(("python3 %s %s %s %s >%s/%s.log 2>&1 & echo $!")
    :format(q(script), q(pf), cert and q(cert) or "", key and q(key) or "", q(dir), name))
    :gsub("%s+", "")
  for _ = 1, 500 do
    if read(pf) then break end
    os.execute("sleep 0.02")
  end
  local port = assert(tonumber(read(pf)), "upstream did not start")
  return { port = port, pid = pid,
           url = (cert and "https" or "http") .. "://127.0.0.1:" .. port }
end

-- A tiny JSON decoder for the echo replies (objects, strings, numbers,
-- null, booleans): enough for what the upstream sends.
local function decode(s)
  local pos = 1
  local function ws() pos = s:find("[^ \t\r\n]", pos) or #s + 1 end
  local value
  local function str()
    local out = {}
    pos = pos + 1
    while true do
      local c = s:sub(pos, pos)
      if c == '"' then pos = pos + 1 break end
      if c == "\\" then
        local e = s:sub(pos + 1, pos + 1)
        if e == "u" then
          out[#out + 1] = utf8.char(tonumber(s:sub(pos + 2, pos + 5), 16))
          pos = pos + 6
        else
          out[#out + 1] = ({ n = "\n", r = "\r", t = "\t", b = "\b", f = "\f" })[e] or e
          pos = pos + 2
        end
      else
        out[#out + 1] = c
        pos = pos + 1
      end
    end
    return table.concat(out)
  end
  function value()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" then
      local t = {}
      pos = pos + 1
      ws()
      if s:sub(pos, pos) == "}" then pos = pos + 1 return t end
      while true do
        ws()
        local k = str()
        ws()
        pos = pos + 1 -- :
        t[k] = value()
        ws()
        local d = s:sub(pos, pos)
        pos = pos + 1
        if d == "}" then return t end
      end
    elseif c == '"' then
      return str()
    elseif s:sub(pos, pos + 3) == "null" then
      pos = pos + 4
      return nil
    elseif s:sub(pos, pos + 3) == "true" then
      pos = pos + 4
      return true
    elseif s:sub(pos, pos + 4) == "false" then
      pos = pos + 5
      return false
    else
      local num = s:match("^-?[%d.eE+-]+", pos)
      pos = pos + #num
      return tonumber(num)
    end
  end
  return value()
end

-- Run each function in its own runtime coroutine; returns when all have
-- finished (re-raising the first error).
local function run_all(fns)
  local left, failure = #fns, nil
  for _, fn in ipairs(fns) do
    loop.spawn(function()
      local ok, err = xpcall(fn, debug.traceback)
      if not ok and not failure then failure = err end
      left = left - 1
      if left == 0 then loop.stop() end
    end)
  end
  if left > 0 then loop.run() end
  if failure then error(failure, 0) end
  assert(left == 0, "coroutines did not finish")
end

local function async(fn) run_all({ fn }) end

local function get_json(opts)
  local res, err, info = http.request(opts)
  assert(res, tostring(err) .. " " .. tostring(info and info.code))
  assert.are.equal(200, res.status)
  return decode(res.body), res
end

describe("core.http", function()
  local dir, up, tls, cert

  setup(function()
    dir = tmpdir()
    up = start_server(dir, "plain")
    cert = dir .. "/cert.pem"
    assert(os.execute(("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s -out %s -days 2 "
      .. "-subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost >/dev/null 2>&1")
      :format(q(dir .. "/key.pem"), q(cert))))
    tls = start_server(dir, "tls", cert, dir .. "/key.pem")
  end)

  teardown(function()
    if up then os.execute("kill " .. up.pid .. " 2>/dev/null") end
    if tls then os.execute("kill " .. tls.pid .. " 2>/dev/null") end
    if dir then os.execute("rm -rf " .. q(dir)) end
  end)

  describe("misuse", function()
    it("raises outside a runtime coroutine", function()
      assert.has_error(function() http.request({ url = up.url .. "/echo" }) end,
        "http.request must be called from a runtime coroutine (loop.spawn)")
    end)

    it("raises on bad options", function()
      async(function()
        assert.has_error(function() http.request() end)
        assert.has_error(function() http.request({}) end, "opts.url: expected a string")
        assert.has_error(function() http.request({ url = up.url, method = "GE T" }) end)
        assert.has_error(function() http.request({ url = up.url, method = "GET\r\nX: y" }) end)
        assert.has_error(function() http.request({ url = up.url, headers = { ["X-A"] = "b\r\nX-Evil: 1" } }) end)
        assert.has_error(function() http.request({ url = up.url, headers = { ["Bad Name"] = "v" } }) end)
        assert.has_error(function() http.request({ url = up.url, query = { a = {} , b = function() end } }) end)
        assert.has_error(function() http.request({ url = up.url, form = { [1] = "x" } }) end)
        assert.has_error(function() http.request({ url = up.url, body = "x", form = { a = 1 } }) end)
        assert.has_error(function() http.request({ url = up.url, timeout = "soon" }) end)
        assert.has_error(function() http.request({ url = up.url, timeout = -1 }) end)
        assert.has_error(function() http.request({ url = up.url, max_bytes = 1.5 }) end)
        assert.has_error(function() http.request({ url = up.url, auth = "user:pass" }) end)
        assert.are.equal(0, http.stats().active)
      end)
    end)

    it("returns nil, err for a bad or non-HTTP url without waiting", function()
      async(function()
        local res, err, info = http.request({ url = "not a url" })
        assert.is_nil(res)
        assert.are.equal("invalid url", err)
        assert.is_false(info.sent)
        res, err = http.request({ url = "ftp://127.0.0.1/x" })
        assert.is_nil(res)
        assert.are.equal("unsupported url scheme", err)
        res, err = http.request({ url = "file:///etc/passwd" })
        assert.is_nil(res)
        assert.are.equal("unsupported url scheme", err)
      end)
    end)
  end)

  describe("requests", function()
    it("GET returns status, lowercase headers, body and time", function()
      async(function()
        local body, res = get_json({ url = up.url .. "/echo/path" })
        assert.are.equal("GET", body.method)
        assert.are.equal("/echo/path", body.path)
        assert.are.equal("switchboard/0.1", body.headers["user-agent"])
        assert.is_nil(body.headers["accept-encoding"])
        assert.are.equal("application/json", res.headers["content-type"])
        assert.is_number(res.time)
        assert.is_true(res.time >= 0 and res.time < 5)
      end)
    end)

    it("returns non-2xx statuses as responses", function()
      async(function()
        local res = assert(http.request({ url = up.url .. "/status?code=503" }))
        assert.are.equal(503, res.status)
        res = assert(http.request({ url = up.url .. "/status?code=404" }))
        assert.are.equal(404, res.status)
      end)
    end)

    it("sends a POST body with the caller's content type", function()
      async(function()
        local body = get_json({ method = "POST", url = up.url .. "/echo", body = '{"a":1}',
                                headers = { ["Content-Type"] = "application/json", ["X-Custom"] = "v 1" } })
        assert.are.equal("POST", body.method)
        assert.are.equal('{"a":1}', body.body)
        assert.are.equal("application/json", body.headers["content-type"])
        assert.are.equal("v 1", body.headers["x-custom"])
        assert.is_nil(body.headers["expect"])
      end)
    end)

    it("sends other methods, with and without a body", function()
      async(function()
        local body = get_json({ method = "DELETE", url = up.url .. "/echo" })
        assert.are.equal("DELETE", body.method)
        body = get_json({ method = "PUT", url = up.url .. "/echo", body = "data" })
        assert.are.equal("PUT", body.method)
        assert.are.equal("data", body.body)
        body = get_json({ method = "POST", url = up.url .. "/echo" })
        assert.are.equal("POST", body.method)
        assert.are.equal("", body.body)
        local res = assert(http.request({ method = "HEAD", url = up.url .. "/echo" }))
        assert.are.equal(200, res.status)
        assert.are.equal("", res.body)
      end)
    end)

    it("sends a large body without a 100-continue round trip", function()
      async(function()
        local big = string.rep("z", 3 * 1024 * 1024)
        local body = get_json({ method = "POST", url = up.url .. "/echo", body = big,
                                headers = { ["Content-Type"] = "text/plain" } })
        assert.are.equal(#big, #body.body)
        assert.is_nil(body.headers["expect"])
      end)
    end)

    it("form-encodes with curl_easy_escape: + and operator keys, repeated keys", function()
      async(function()
        local body = get_json({ method = "POST", url = up.url .. "/echo", form = {
          To = "+15551234567", ["DateSent>"] = "2024-01-01", ["DateSent<"] = "2024-02-01",
          Body = "héllo & bye=1", tag = { "a b", "c", 3 }, n = 42, yes = true,
        } })
        assert.are.equal("application/x-www-form-urlencoded", body.headers["content-type"])
        assert.are.equal("Body=h%C3%A9llo%20%26%20bye%3D1&DateSent%3C=2024-02-01"
          .. "&DateSent%3E=2024-01-01&To=%2B15551234567&n=42&tag=a%20b&tag=c&tag=3&yes=true",
          body.body)
      end)
    end)

    it("keeps a caller's content type for a form", function()
      async(function()
        local body = get_json({ method = "POST", url = up.url .. "/echo", form = { a = "1" },
                                headers = { ["content-type"] = "application/x-www-form-urlencoded; charset=utf-8" } })
        assert.are.equal("application/x-www-form-urlencoded; charset=utf-8", body.headers["content-type"])
        assert.are.equal("a=1", body.body)
      end)
    end)

    it("appends an encoded query to the url's own query", function()
      async(function()
        local body = get_json({ url = up.url .. "/echo?x=1", query = {
          q = "a b+c/d?", n = 5, flag = false, multi = { "1", "2" }, ["k>"] = "v",
        } })
        assert.are.equal("x=1&flag=false&k%3E=v&multi=1&multi=2&n=5&q=a%20b%2Bc%2Fd%3F", body.query)
        -- a fragment is dropped, an empty query gets no extra separator
        body = get_json({ url = up.url .. "/echo?#frag", query = { a = "1" } })
        assert.are.equal("a=1", body.query)
        body = get_json({ url = up.url .. "/echo#frag", query = { a = "1" } })
        assert.are.equal("a=1", body.query)
        body = get_json({ url = up.url .. "/echo", query = { only = "1" } })
        assert.are.equal("only=1", body.query)
        body = get_json({ url = up.url .. "/echo", query = {} })
        assert.are.equal("", body.query)
      end)
    end)

    it("returns the last value of a repeated response header, trimmed", function()
      async(function()
        local res = assert(http.request({ url = up.url .. "/headers" }))
        assert.are.equal("b", res.headers["x-multi"])
        assert.are.equal("Value", res.headers["mixed-case-header"])
        assert.is_nil(res.headers["Mixed-Case-Header"])
      end)
    end)

    it("sends HTTP Basic from a core.vault.Credential", function()
      local vault = require "core.vault"
      local cred, cleanup
      if vault._test_credential then -- test build with a stub vault
        cred = vault._test_credential("AC123", "s3cr:et")
        cleanup = function() vault._test_close(cred) end
      elseif vault.create_master then
        local mk = dir .. "/master.key"
        assert(vault.create_master(mk))
        local m = assert(vault.load_master(mk))
        local wk = m:new_data_key("t1")
        local blob = m:seal(wk, "t1", "auth", "s3cr:et")
        cred = assert(m:credential(wk, "t1", "auth", blob, "AC123"))
        cleanup = function() cred:close() m:close() end
      else
        pending("core.vault has not landed")
        return
      end
      async(function()
        local body = get_json({ url = up.url .. "/echo", auth = cred })
        assert.are.equal("AC123", body.user)
        assert.are.equal("s3cr:et", body.password)
        -- the next request on the same handle carries no credential
        body = get_json({ url = up.url .. "/echo" })
        assert.is_nil(body.authorization)
        cleanup()
        assert.has_error(function() http.request({ url = up.url .. "/echo", auth = cred }) end)
      end)
    end)

    it("sends a Bearer or a named header credential, each as its one header", function()
      local vault = require "core.vault"
      local mk = dir .. "/kinds.key"
      assert(vault.create_master(mk))
      local m = assert(vault.load_master(mk))
      local wk = m:new_data_key("t1")
      local blob = m:seal(wk, "t1", "auth", "SG.tok-en_0123456789")
      local bearer = assert(m:credential(wk, "t1", "auth", blob, { kind = "bearer" }))
      local header = assert(m:credential(wk, "t1", "auth", blob, { kind = "header", header = "X-Api-Key" }))
      local basic = assert(m:credential(wk, "t1", "auth", blob, { kind = "basic", username = "key-id" }))
      async(function()
        local body = get_json({ url = up.url .. "/echo", auth = bearer })
        assert.are.equal("Bearer SG.tok-en_0123456789", body.authorization)
        assert.is_nil(body.headers["x-api-key"])
        body = get_json({ url = up.url .. "/echo", auth = header, headers = { Authorization = "Other x" },
                          method = "POST", form = { a = "1" } })
        assert.are.equal("SG.tok-en_0123456789", body.headers["x-api-key"])
        assert.are.equal("Other x", body.authorization)
        assert.are.equal("application/x-www-form-urlencoded", body.headers["content-type"])
        body = get_json({ url = up.url .. "/echo", auth = basic })
        assert.are.equal("key-id", body.user)
        assert.are.equal("SG.tok-en_0123456789", body.password)
        -- nothing of a credential carries over to the next request on the handle
        body = get_json({ url = up.url .. "/echo" })
        assert.is_nil(body.authorization)
        assert.is_nil(body.headers["x-api-key"])
        -- the header a credential sets cannot also come from opts.headers
        assert.has_error(function()
          http.request({ url = up.url .. "/echo", auth = header, headers = { ["x-api-key"] = "other" } })
        end, "opts.headers: X-Api-Key cannot be combined with opts.auth")
        assert.has_error(function()
          http.request({ url = up.url .. "/echo", auth = bearer, headers = { authorization = "Bearer x" } })
        end, "opts.headers: Authorization cannot be combined with opts.auth")
        -- a closed credential of any kind is refused, and the error shows no secret
        for _, cred in ipairs({ bearer, header, basic }) do
          cred:close()
          local ok, err = pcall(http.request, { url = up.url .. "/echo", auth = cred })
          assert.is_false(ok)
          assert.matches("opts.auth: expected an open core.vault.Credential", err, 1, true)
          assert.is_nil(tostring(err):find("SG.tok", 1, true))
        end
      end)
      m:close()
    end)
  end)

  describe("failures", function()
    it("caps the response size (content-length and chunked)", function()
      async(function()
        local res, err, info = http.request({ url = up.url .. "/big?n=2000", max_bytes = 1000 })
        assert.is_nil(res)
        assert.are.equal("response too large", err)
        assert.is_true(info.sent)
        res, err = http.request({ url = up.url .. "/chunked?n=200000", max_bytes = 10000 })
        assert.is_nil(res)
        assert.are.equal("response too large", err)
        res = assert(http.request({ url = up.url .. "/big?n=1000", max_bytes = 1000 }))
        assert.are.equal(1000, #res.body)
        res = assert(http.request({ url = up.url .. "/chunked?n=100000" }))
        assert.are.equal(100000, #res.body)
      end)
    end)

    it("times out after the request was sent (sent = true)", function()
      async(function()
        local t0 = loop.time()
        local res, err, info = http.request({ method = "POST", url = up.url .. "/hang?s=3",
                                              body = "x", timeout = 0.5 })
        local dt = loop.time() - t0
        assert.is_nil(res)
        assert.are.equal("timeout", err)
        assert.is_true(info.sent)
        assert.are.equal(28, info.code)
        assert.is_true(dt >= 0.45 and dt < 2, "took " .. dt)
        res, err, info = http.request({ url = up.url .. "/hang?s=3", timeout = 0.3 })
        assert.is_nil(res)
        assert.are.equal("timeout", err)
        assert.is_true(info.sent)
      end)
    end)

    it("reports a refused connection as not sent", function()
      async(function()
        local res, err, info = http.request({ method = "POST", url = "http://127.0.0.1:1/x", body = "x" })
        assert.is_nil(res)
        assert.are.equal("could not connect", err)
        assert.is_false(info.sent)
        assert.are.equal(7, info.code)
      end)
    end)

    it("reports an empty reply as sent", function()
      async(function()
        local res, err, info = http.request({ method = "POST", url = up.url .. "/drop", body = "x" })
        assert.is_nil(res)
        assert.are.equal("empty reply from server", err)
        assert.is_true(info.sent)
        assert.are.equal(52, info.code)
      end)
    end)
  end)

  describe("connections", function()
    it("reuses one keep-alive connection for sequential requests", function()
      async(function()
        local first = get_json({ url = up.url .. "/echo" }).conn
        for _ = 1, 5 do
          assert.are.equal(first, get_json({ url = up.url .. "/echo" }).conn)
        end
        -- a POST gets a connection of its own: libcurl must never resend it
        -- on a reused connection that turns out to be closed
        assert.are_not.equal(first, get_json({ method = "POST", url = up.url .. "/echo", body = "b" }).conn)
      end)
    end)

    it("keeps the connections of a burst for the next burst", function()
      -- libcurl's default cache shrinks to 4 per transfer still running as
      -- a burst ends; the connections must survive until the next one
      local seen, bursts = {}, 6
      for _ = 1, bursts do
        local fns = {}
        for i = 1, 16 do
          fns[i] = function() seen[get_json({ url = up.url .. "/echo" }).conn] = true end
        end
        run_all(fns)
      end
      local opened = 0
      for _ in pairs(seen) do opened = opened + 1 end
      assert.is_true(opened <= 16 + 2, ("%d bursts of 16 opened %d connections"):format(bursts, opened))
    end)

    it("does not let a slow request delay 20 fast ones", function()
      local t0 = loop.time()
      local fast_done, slow_done, slow_status = {}, nil, nil
      local fns = { function()
        local res = assert(http.request({ url = up.url .. "/slow?ms=2000" }))
        slow_status = res.status
        slow_done = loop.time() - t0
      end }
      for i = 1, 20 do
        fns[#fns + 1] = function()
          local body = get_json({ url = up.url .. "/echo", query = { i = i } })
          assert.are.equal("i=" .. i, body.query)
          fast_done[#fast_done + 1] = loop.time() - t0
        end
      end
      local seen_active
      fns[#fns + 1] = function() seen_active = http.stats().active end
      local total0 = http.stats().total
      run_all(fns)
      assert.are.equal(21, seen_active)
      assert.are.equal(21, http.stats().total - total0)
      assert.are.equal(0, http.stats().active)
      assert.are.equal(20, #fast_done)
      for _, t in ipairs(fast_done) do assert.is_true(t < 1.0, "fast request took " .. t) end
      assert.are.equal(200, slow_status)
      assert.is_true(slow_done >= 1.9, "slow request took " .. slow_done)
    end)

    it("cancels the transfer when the waiting coroutine is closed", function()
      local co, resumed
      loop.spawn(function()
        co = coroutine.running()
        http.request({ url = up.url .. "/slow?ms=300" })
        resumed = true
      end)
      assert.are.equal(1, http.stats().active)
      assert.is_true(coroutine.close(co))
      assert.are.equal(0, http.stats().active)
      -- the multi handle goes on working
      async(function() assert(http.request({ url = up.url .. "/echo" })) end)
      assert.is_nil(resumed)
    end)
  end)

  describe("https", function()
    it("verifies the peer: fails without the CA, succeeds with it", function()
      async(function()
        local res, err, info = http.request({ url = tls.url .. "/echo" })
        assert.is_nil(res)
        assert.are.equal("tls certificate verification failed", err)
        assert.is_false(info.sent)
        local body = get_json({ url = tls.url .. "/echo", ca_file = cert })
        assert.are.equal("GET", body.method)
        -- keep-alive over TLS too
        assert.are.equal(body.conn, get_json({ url = tls.url .. "/echo", ca_file = cert }).conn)
        -- the host name is checked as well (localhost is in the SAN, 127.0.0.2 is not)
        res, err = http.request({ url = tls.url:gsub("127.0.0.1", "127.0.0.2") .. "/echo", ca_file = cert })
        assert.is_nil(res)
        assert.is_string(err)
      end)
    end)

    it("reports an unreadable CA file", function()
      async(function()
        local res, err, info = http.request({ url = tls.url .. "/echo", ca_file = dir .. "/missing.pem" })
        assert.is_nil(res)
        assert.are.equal("cannot read the ca file", err)
        assert.is_false(info.sent)
      end)
    end)
  end)

  describe("numbers", function()
    it("writes an integral float in a query or form as an integer, never 5.0", function()
      async(function()
        local body = get_json({ url = up.url .. "/echo", query = { PageSize = 5.0, a = 2.5, b = -3.0, c = 7 } })
        assert.are.equal("PageSize=5&a=2.5&b=-3&c=7", body.query)
        body = get_json({ method = "POST", url = up.url .. "/echo", form = { n = 101.0, list = { 1.0, 2 } } })
        assert.are.equal("list=1&list=2&n=101", body.body)
        assert.has_error(function() http.request({ url = up.url, query = { x = 1 / 0 } }) end,
          "opts.query.x: not a finite number")
        assert.has_error(function() http.request({ url = up.url, form = { x = 0 / 0 } }) end,
          "opts.form.x: not a finite number")
      end)
    end)
  end)

  describe("urls", function()
    it("parses with libcurl: numeric hosts normalised, IP literals classified", function()
      local cases = {
        { "http://2130706433/", "127.0.0.1", "loopback" },
        { "http://0x7f.1/", "127.0.0.1", "loopback" },
        { "http://0177.0.0.1/", "127.0.0.1", "loopback" },
        { "http://[::ffff:127.0.0.1]/", "[::ffff:127.0.0.1]", "loopback" },
        { "http://[2002:7f00:1::]/", "[2002:7f00:1::]", "loopback" },
        { "http://169.254.169.254/", "169.254.169.254", "link-local" },
        { "http://[fe80::1%25eth0]/", "[fe80::1]", "link-local" },
        { "http://10.2.3.4/", "10.2.3.4", "private" },
        { "http://172.31.0.1/", "172.31.0.1", "private" },
        { "http://100.64.0.1/", "100.64.0.1", "private" },
        { "http://[fd00::1]/", "[fd00::1]", "private" },
        { "http://[::]/", "[::]", "unspecified" },
        { "http://0/", "0.0.0.0", "unspecified" },
        { "http://224.0.0.1/", "224.0.0.1", "multicast" },
        { "http://192.0.2.1/", "192.0.2.1", "reserved" },
        { "http://172.32.0.1/", "172.32.0.1", "public" },
        { "http://8.8.8.8/", "8.8.8.8", "public" },
        { "http://[2606:4700::1111]/", "[2606:4700::1111]", "public" },
        { "http://Example.COM/", "example.com", nil },
      }
      for _, c in ipairs(cases) do
        local u = assert(http.parse(c[1]))
        assert.are.equal(c[2], u.host, c[1])
        assert.are.equal(c[3], u.ip, c[1])
      end
      local u = assert(http.parse("HTTPS://a:b@Example.com:8443/p/../q?x=1#f"))
      assert.are.same({ "https", "example.com", 8443, "/q", "x=1", "f", true },
        { u.scheme, u.host, u.port, u.path, u.query, u.fragment, u.userinfo })
      assert.are.equal(80, http.parse("http://h.example/").port)
      local _, err = http.parse("http://exa mple.com/")
      assert.are.equal("invalid host", err)
      _, err = http.parse("http://example.com:99999/")
      assert.are.equal("invalid port", err)
      assert.has_error(function() http.parse("http://a\0b/") end, "url: contains a zero byte")
    end)

    it("resolves a reference against a base (RFC 3986), so a link's host is the parser's", function()
      local base = "http://127.0.0.1:5000/"
      local r = assert(http.resolve(base, "/2010-04-01/Calls.json?Page=1"))
      assert.are.same({ "127.0.0.1", 5000, "/2010-04-01/Calls.json", "Page=1" }, { r.host, r.port, r.path, r.query })
      -- appended as text this made 127.0.0.1:5000 a user name: resolved, it is a path
      r = assert(http.resolve(base, "@127.0.0.1:6000/x"))
      assert.are.same({ "127.0.0.1", 5000, "/@127.0.0.1:6000/x" }, { r.host, r.port, r.path })
      r = assert(http.resolve(base, "//evil.example/x"))
      assert.are.same({ "http", "evil.example", 80 }, { r.scheme, r.host, r.port })
      r = assert(http.resolve(base, "http://127.0.0.1:5000@127.0.0.1:6000/x"))
      assert.are.same({ "127.0.0.1", 6000, true }, { r.host, r.port, r.userinfo })
    end)
  end)

  describe("memory", function()
    local function rss_kb()
      return tonumber(read("/proc/self/status"):match("VmRSS:%s*(%d+)"))
    end

    it("frees libcurl's escaped copy when the Lua string cannot be made", function()
      local mem = require "core.mem"
      async(function()
        local value = ("\0"):rep(100000)        -- 300 kB once escaped
        collectgarbage()
        collectgarbage()
        local before = rss_kb()
        for _ = 1, 200 do
          mem.limit(150000)
          local ok, err = pcall(http.request, { url = up.url .. "/echo", query = { v = value } })
          mem.limit()
          assert.is_false(ok)
          assert.matches("not enough memory", tostring(err))
        end
        collectgarbage()
        collectgarbage()
        local grown = rss_kb() - before
        assert.is_true(grown < 20000, ("RSS grew by %d kB over 200 refused requests"):format(grown))
        assert.are.equal(0, http.stats().active)
      end)
    end)

    -- The secret, "user:secret" and its Base64 (the Basic header) must be
    -- nowhere in the process's writable memory once the transfer is over
    -- and the credential closed. The test holds them only in pieces (a
    -- whole one would be found in the Lua heap): SECRET = A .. B, and the
    -- header's Base64 = b64(USER .. ":") .. B64A .. B64B (3-byte aligned).
    local USER = "SKscanuser0"
    local A, B = "Qz8rT1mWx4Kp", "Lc7vN2bHs9Yd3FgJ6e"
    local B64A, B64B = "UXo4clQxbVd4NEtw", "TGM3dk4yYkhzOVlkM0ZnSjZl"

    -- How many times first .. second occurs in writable memory.
    local function scan(first, second)
      local maps = read("/proc/self/maps")
      local f = assert(io.open("/proc/self/mem", "rb"))
      f:setvbuf("no")
      local found, CHUNK = 0, 1 << 20
      for lo, hi, perms in maps:gmatch("(%x+)%-(%x+) (%S+)[^\n]*") do
        lo, hi = tonumber(lo, 16), tonumber(hi, 16)
        -- skip huge reservations (sanitizer shadow memory)
        if perms:sub(1, 2) == "rw" and hi - lo <= (1 << 30) then
          local at = lo
          while at < hi do
            local n = math.min(CHUNK + 64, hi - at)
            local data = f:seek("set", at) and f:read(n)
            if not data then break end
            local i = 1
            while true do
              local j = data:find(first, i, true)
              if not j then break end
              if data:sub(j + #first, j + #first + #second - 1) == second then found = found + 1 end
              i = j + 1
            end
            at = at + CHUNK
          end
        end
      end
      f:close()
      return found
    end

    it("keeps no copy of the secret or the Basic header after a transfer, for every kind", function()
      local vault = require "core.vault"
      if not vault.load_master then pending("core.vault has not landed") return end
      -- sealed in another process: this one never holds the whole secret
      local kdir = tmpdir()
      write(kdir .. "/seal.lua", ([[
        local vault = require("core.vault")
        local dir = %q
        assert(vault.create_master(dir .. "/master.key"))
        local m = assert(vault.load_master(dir .. "/master.key"))
        local wk = m:new_data_key("t1")
        local function put(name, s) local f = assert(io.open(dir .. "/" .. name, "wb")) f:write(s) f:close() end
        put("wk", wk)
        put("blob", m:seal(wk, "t1", "auth", %q .. %q))
      ]]):format(kdir, A, B))
      local bin = os.getenv("SB_BIN") or "./switchboard"
      assert(os.execute(q(bin) .. " exec " .. q(kdir .. "/seal.lua")))
      local m = assert(vault.load_master(kdir .. "/master.key"))
      local creds = {}
      for i, desc in ipairs({ USER, { kind = "bearer" }, { kind = "header", header = "X-Api-Key" } }) do
        creds[i] = assert(m:credential(read(kdir .. "/wk"), "t1", "auth", read(kdir .. "/blob"), desc))
      end
      async(function()
        for _, cred in ipairs(creds) do
          for _ = 1, 3 do
            local res = assert(http.request({ url = up.url .. "/status?code=200", auth = cred }))
            assert.are.equal(200, res.status)
            res = assert(http.request({ method = "POST", url = up.url .. "/status?code=201", auth = cred,
                                        form = { Body = "hello" } }))
            assert.are.equal(201, res.status)
            res = assert(http.request({ url = tls.url .. "/status?code=200", auth = cred, ca_file = cert }))
            assert.are.equal(200, res.status)
          end
        end
      end)
      for _, cred in ipairs(creds) do cred:close() end
      collectgarbage()
      collectgarbage()
      assert.are.equal(0, scan(A, B), "copies of the secret (Basic, Bearer and header kinds)")
      assert.are.equal(0, scan(B64A, B64B), "copies of the Basic header")
      -- the scan finds a secret where one is: an open credential's page
      -- (last, as the scan's own reads copy what they find)
      local cred = assert(m:credential(read(kdir .. "/wk"), "t1", "auth", read(kdir .. "/blob"), USER))
      assert.are.equal(1, scan(A, B))
      cred:close()
      m:close()
      os.execute("rm -rf " .. q(kdir))
    end)
  end)

  describe("lifetime", function()
    it("frees pending requests at exit (lua_close)", function()
      -- $SB_BIN, else this very binary (the shell's parent)
      local bin = os.getenv("SB_BIN") or sh("readlink /proc/$PPID/exe"):gsub("%s+$", "")
      local script = dir .. "/pending.lua"
      write(script, ([[
        local loop = require "core.loop"
        local http = require "core.http"
        loop.spawn(function() http.request({ url = %q }) end)
        loop.spawn(function() http.request({ url = %q, ca_file = %q }) end)
        io.write(http.stats().active)
      ]]):format(up.url .. "/hang?s=2", tls.url .. "/hang?s=2", cert))
      local out = sh(("%s exec %s 2>&1; echo \" rc=$?\""):format(q(bin), q(script)))
      assert.are.equal("2 rc=0", out:gsub("%s+$", ""))
    end)
  end)
end)
