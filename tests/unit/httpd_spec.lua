-- core.httpd: the HTTP/1.1 server on the libev loop, driven by core.http
-- (libcurl) and, for raw bytes, a small Python socket client run in the
-- background (a blocking client in this process would stall the loop).
-- Run: ./switchboard exec /usr/bin/busted --lpath='tests/?.lua' -o utfTerminal tests/unit/httpd_spec.lua
local loop = require("core.loop")
local http = require("core.http")
local httpd = require("core.httpd")
local H = require("helpers")

-- Sends raw bytes on a TCP connection, prints everything received until
-- EOF (or "<timeout>"), then "<eof>" on its own line.
local RAW = [=[
import socket, sys
port = int(sys.argv[1])
data = open(sys.argv[2], "rb").read()
s = socket.create_connection(("127.0.0.1", port))
s.sendall(data)
s.settimeout(float(sys.argv[3]))
out = b""
try:
    while True:
        b = s.recv(65536)
        if not b:
            out += b"<eof>"
            break
        out += b
except socket.timeout:
    out += b"<timeout>"
except ConnectionResetError:
    out += b"<reset>"
sys.stdout.write(out.decode("latin1"))
]=]

local dir
local n_raw = 0

-- From a runtime coroutine: run the raw client in the background and wait
-- on the loop (so the server keeps serving) for its output.
local function raw(port, bytes, timeout)
  n_raw = n_raw + 1
  local base = ("%s/raw%d"):format(dir, n_raw)
  H.write(base .. ".in", bytes)
  os.execute(("(python3 %s/raw.py %d %s %s >%s.out 2>&1; touch %s.done) &")
    :format(H.q(dir), port, H.q(base .. ".in"), tostring(timeout or 3), H.q(base), H.q(base)))
  local deadline = loop.time() + 10
  while not H.exists(base .. ".done") do
    assert(loop.time() < deadline, "raw client timed out")
    loop.sleep(0.02)
  end
  return H.read(base .. ".out")
end

local function echo_handler(req)
  return 200, { ["Content-Type"] = "application/x-echo", ["X-Conn"] = req.conn },
    table.concat({ req.method, req.path, req.query, req.body, req.headers["x-test"] or "-" }, "|")
end

describe("core.httpd", function()
  setup(function()
    dir = H.tmpdir("httpd")
    H.write(dir .. "/raw.py", RAW)
  end)
  teardown(function()
    os.execute("rm -rf " .. H.q(dir))
    loop.set_error_handler(nil)
  end)

  describe("listen", function()
    it("binds an ephemeral port on 127.0.0.1 and reports it", function()
      local s = assert(httpd.listen{ port = 0, handler = echo_handler })
      assert.is_true(s:port() > 0)
      assert.matches("core.httpd.Server %(port %d+%)", tostring(s))
      s:close()
    end)

    it("returns nil, err when the port is taken", function()
      local s = assert(httpd.listen{ handler = echo_handler })
      local s2, err = httpd.listen{ port = s:port(), handler = echo_handler }
      assert.is_nil(s2)
      assert.matches("address already in use", err)
      s:close()
    end)

    it("returns nil, err for an unknown host", function()
      local s, err = httpd.listen{ host = "no such host.invalid", handler = echo_handler }
      assert.is_nil(s)
      assert.is_string(err)
    end)

    it("raises on misuse", function()
      assert.has_error(function() httpd.listen() end)
      assert.has_error(function() httpd.listen{} end, "httpd.listen: handler must be a function")
      assert.has_error(function() httpd.listen{ handler = echo_handler, port = 70000 } end)
      assert.has_error(function() httpd.listen{ handler = echo_handler, port = "x" } end)
      assert.has_error(function() httpd.listen{ handler = echo_handler, max_body = -1 } end)
    end)

    it("close is idempotent, is __close, and use after close raises", function()
      local s = assert(httpd.listen{ handler = echo_handler })
      s:close()
      s:close()
      assert.is_true(s:closed())
      assert.has_error(function() s:port() end, "attempt to use a closed server")
      assert.matches("closed", tostring(s))
      local port
      do
        local s2 <close> = assert(httpd.listen{ handler = echo_handler })
        port = s2:port()
      end
      -- the port is free again
      local s3 = assert(httpd.listen{ port = port, handler = echo_handler })
      s3:close()
    end)
  end)

  describe("requests", function()
    local srv, base
    before_each(function()
      srv = assert(httpd.listen{ handler = echo_handler })
      base = "http://127.0.0.1:" .. srv:port()
    end)
    after_each(function() srv:close() end)

    it("GET: method, path without query, raw query, headers, Content-Length", function()
      H.async(function()
        local res = assert(http.request{ url = base .. "/a/b%2Bc?x=1&y=%2B2", headers = { ["X-Test"] = "hi" } })
        assert.equal(200, res.status)
        assert.equal("GET|/a/b%2Bc|x=1&y=%2B2||hi", res.body)
        assert.equal("application/x-echo", res.headers["content-type"])
        assert.equal(tostring(#res.body), res.headers["content-length"])
        assert.is_string(res.headers["date"])
      end)
    end)

    it("POST: the form body reaches the handler", function()
      H.async(function()
        local res = assert(http.request{ method = "POST", url = base .. "/p", form = { To = "+15551234567", Body = "a b" } })
        assert.equal(200, res.status)
        local m, p, q, body = res.body:match("^(%w+)|([^|]*)|([^|]*)|([^|]*)|")
        assert.equal("POST", m)
        assert.equal("/p", p)
        assert.equal("", q)
        assert.matches("To=%%2B15551234567", body)
        assert.matches("Body=a%%20b", body)
      end)
    end)

    it("passes remote address, version and lowercase header names", function()
      local seen
      local s = assert(httpd.listen{ handler = function(req)
        seen = req
        return 204, {}, "ignored"
      end })
      H.async(function()
        local res = assert(http.request{ url = "http://127.0.0.1:" .. s:port() .. "/", headers = { ["X-Mixed-Case"] = "v " } })
        assert.equal(204, res.status)
        assert.equal("", res.body)
      end)
      s:close()
      assert.equal("127.0.0.1", seen.remote)
      assert.is_number(seen.remote_port)
      assert.equal("1.1", seen.version)
      assert.equal("v", seen.headers["x-mixed-case"])
      assert.is_nil(seen.headers["X-Mixed-Case"])
    end)

    it("reuses one connection for consecutive requests (keep-alive)", function()
      H.async(function()
        local a = assert(http.request{ url = base .. "/1" })
        local b = assert(http.request{ url = base .. "/2" })
        assert.equal(a.headers["x-conn"], b.headers["x-conn"])
      end)
      local st = srv:stats()
      assert.equal(1, st.accepted)
      assert.equal(2, st.requests)
    end)

    it("honours Connection: close", function()
      H.async(function()
        local a = assert(http.request{ url = base .. "/1", headers = { Connection = "close" } })
        assert.equal("close", a.headers["connection"])
        local b = assert(http.request{ url = base .. "/2" })
        assert.are_not.equal(a.headers["x-conn"], b.headers["x-conn"])
      end)
      assert.equal(2, srv:stats().accepted)
    end)

    it("answers HEAD with the length but no body", function()
      H.async(function()
        local out = raw(srv:port(), "HEAD /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert.matches("^HTTP/1.1 200 OK\r\n", out)
        assert.matches("Content%-Length: 11\r\n", out) -- #"HEAD|/h|||-"
        assert.matches("\r\n\r\n<eof>$", out)
      end)
    end)

    it("answers pipelined requests in order", function()
      H.async(function()
        local s = assert(httpd.listen{ handler = function(req)
          if req.path == "/slow" then loop.sleep(0.2) end
          return 200, {}, "<" .. req.path .. ">"
        end })
        local out = raw(s:port(), "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
          .. "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
          .. "POST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
        s:close()
        local order = {}
        for p in out:gmatch("<(/%w+)>") do order[#order + 1] = p end
        assert.same({ "/1", "/slow", "/3" }, order)
        assert.matches("<eof>$", out)
      end)
    end)

    it("reads a chunked request body", function()
      H.async(function()
        local out = raw(srv:port(), "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
          .. "Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        assert.matches("POST|/c||hello world|%-<eof>$", out)
      end)
    end)

    it("a slow handler does not block another request", function()
      local s = assert(httpd.listen{ handler = function(req)
        if req.path == "/slow" then loop.sleep(0.6) end
        return 200, {}, req.path
      end })
      local url = "http://127.0.0.1:" .. s:port()
      H.async(function()
        local t0 = loop.time()
        local slow_done, slow_body
        loop.spawn(function()
          local r = assert(http.request{ url = url .. "/slow" })
          slow_done, slow_body = loop.time() - t0, r.body
        end)
        local r = assert(http.request{ url = url .. "/fast" })
        local fast_done = loop.time() - t0
        assert.equal("/fast", r.body)
        assert.is_nil(slow_done)
        assert.is_true(fast_done < 0.4)
        while not slow_done do loop.sleep(0.01) end
        assert.equal("/slow", slow_body)
        assert.is_true(slow_done >= 0.55)
      end)
      s:close()
    end)

    it("drops the connection when the handler returns nothing", function()
      local s = assert(httpd.listen{ handler = function(req)
        if req.path == "/drop" then return end
        return 200, {}, "ok"
      end })
      H.async(function()
        local res, err, info = http.request{ url = "http://127.0.0.1:" .. s:port() .. "/drop" }
        assert.is_nil(res)
        assert.is_string(err)
        assert.is_true(info.sent)
        local out = raw(s:port(), "GET /drop HTTP/1.1\r\nHost: x\r\n\r\n")
        assert.equal("<eof>", out)
        -- the server keeps serving
        res = assert(http.request{ url = "http://127.0.0.1:" .. s:port() .. "/ok" })
        assert.equal("ok", res.body)
      end)
      s:close()
    end)

    it("answers 500 and reports when the handler raises or answers badly", function()
      local errors = {}
      loop.set_error_handler(function(msg) errors[#errors + 1] = msg end)
      local s = assert(httpd.listen{ handler = function(req)
        if req.path == "/raise" then error("boom") end
        if req.path == "/late" then loop.sleep(0.01); error("late boom") end
        if req.path == "/status" then return "OK", {}, "" end
        if req.path == "/header" then return 200, { ["X-A"] = "a\r\nX-Evil: 1" }, "" end
        return 200, {}, {}
      end })
      local url = "http://127.0.0.1:" .. s:port()
      H.async(function()
        for _, p in ipairs({ "/raise", "/late", "/status", "/header", "/body" }) do
          local res = assert(http.request{ url = url .. p })
          assert.equal(500, res.status, p)
          assert.equal("close", res.headers["connection"])
        end
      end)
      s:close()
      loop.set_error_handler(nil)
      assert.equal(5, #errors)
      assert.matches("boom", errors[1])
      assert.matches("stack traceback", errors[1])
      assert.matches("late boom", errors[2])
      assert.matches("status", errors[3])
      assert.matches("CR, LF", errors[4])
    end)
  end)

  describe("limits and bad input", function()
    it("refuses a body over max_body with 413 (Content-Length and chunked)", function()
      local called = 0
      local s = assert(httpd.listen{ max_body = 16, handler = function()
        called = called + 1
        return 200, {}, "ok"
      end })
      H.async(function()
        local res = assert(http.request{ method = "POST", url = "http://127.0.0.1:" .. s:port() .. "/",
          body = string.rep("x", 17), headers = { ["Content-Type"] = "text/plain" } })
        assert.equal(413, res.status)
        res = assert(http.request{ method = "POST", url = "http://127.0.0.1:" .. s:port() .. "/",
          body = string.rep("x", 16), headers = { ["Content-Type"] = "text/plain" } })
        assert.equal(200, res.status)
        local out = raw(s:port(), "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
          .. "10\r\n0123456789abcdef\r\n1\r\nX\r\n0\r\n\r\n")
        assert.matches("^HTTP/1.1 413 ", out)
        assert.matches("Connection: close", out)
        assert.matches("<eof>$", out)
      end)
      s:close()
      assert.equal(1, called)
    end)

    it("answers 100 Continue before reading an expected body", function()
      local s = assert(httpd.listen{ handler = echo_handler })
      H.async(function()
        local out = raw(s:port(), "POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
          .. "Content-Length: 2\r\nConnection: close\r\n\r\nhi")
        assert.matches("^HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", out)
        assert.matches("POST|/e||hi|%-<eof>$", out)
      end)
      s:close()
    end)

    it("answers a malformed request with 400 and closes", function()
      local called = false
      local s = assert(httpd.listen{ handler = function() called = true return 200, {}, "" end })
      H.async(function()
        -- libmicrohttpd closes on a request line it cannot read, and
        -- answers 400 (and closes) to a bad header
        local out = raw(s:port(), "GARBAGE\r\n\r\n")
        assert.equal("<eof>", out)
        out = raw(s:port(), "GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        assert.matches("^HTTP/1.1 400 ", out)
        assert.matches("Connection: close\r\n", out)
        assert.matches("<eof>$", out)
        out = raw(s:port(), "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n")
        assert.matches("^HTTP/1.1 400 ", out)
      end)
      s:close()
      assert.is_false(called)
    end)

    it("answers oversized headers with 431", function()
      local s = assert(httpd.listen{ handler = echo_handler })
      H.async(function()
        local out = raw(s:port(), "GET / HTTP/1.1\r\nX-Big: " .. string.rep("a", 100000) .. "\r\n\r\n")
        assert.matches("^HTTP/1.1 431 ", out)
      end)
      s:close()
    end)

    it("closes an idle keep-alive connection after idle_timeout (whole seconds, rounded up)", function()
      local s = assert(httpd.listen{ idle_timeout = 0.2, handler = echo_handler })
      H.async(function()
        local out = raw(s:port(), "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n", 5)
        assert.matches("^HTTP/1.1 200 OK", out)
        assert.matches("<eof>$", out)
      end)
      s:close()
    end)

    it("close() ends open connections and waiting handlers' answers are dropped", function()
      local s
      s = assert(httpd.listen{ handler = function(req)
        if req.path == "/close" then s:close() return 200, {}, "never sent" end
        loop.sleep(0.1)
        return 200, {}, "late"
      end })
      local port = s:port()
      H.async(function()
        local done, res1, err1 = false, nil, nil
        loop.spawn(function()
          res1, err1 = http.request{ url = "http://127.0.0.1:" .. port .. "/wait" }
          done = true
        end)
        loop.sleep(0.02)
        local res2 = http.request{ url = "http://127.0.0.1:" .. port .. "/close" }
        assert.is_nil(res2)
        while not done do loop.sleep(0.01) end
        assert.is_nil(res1)
        assert.is_string(err1)
        loop.sleep(0.15)    -- the sleeping handler returns into a closed connection
      end)
      assert.is_true(s:closed())
      assert.equal(0, s:stats().active)
    end)
  end)

  describe("streams and TLS", function()
    it("sends a stream's writes as they come, then ends it on close (chunked)", function()
      local s = assert(httpd.listen{ handler = function()
        local st = httpd.stream()
        loop.spawn(function()
          for i = 1, 3 do
            loop.sleep(0.05)
            assert(st:write(("data: %d\n\n"):format(i)))
          end
          st:close()
          assert.is_true(st:closed())
          local ok, err = st:write("late")
          assert.is_nil(ok)
          assert.equal("closed", err)
        end)
        return 200, { ["Content-Type"] = "text/event-stream" }, st
      end })
      H.async(function()
        local t0 = loop.time()
        local res = assert(http.request{ url = "http://127.0.0.1:" .. s:port() .. "/sse" })
        assert.equal(200, res.status)
        assert.equal("text/event-stream", res.headers["content-type"])
        assert.equal("chunked", res.headers["transfer-encoding"])
        assert.equal("data: 1\n\ndata: 2\n\ndata: 3\n\n", res.body)
        assert.is_true(loop.time() - t0 >= 0.14)
        -- the connection serves the next request
        local raw_out = raw(s:port(), "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert.matches("data: 3", raw_out)
      end)
      s:close()
    end)

    it("calls on_close when the client leaves an open stream, and a stream answers once", function()
      local closed, st = false, nil
      local errors = {}
      loop.set_error_handler(function(msg) errors[#errors + 1] = msg end)
      local s = assert(httpd.listen{ handler = function(req)
        if req.path == "/again" then return 200, {}, st end
        st = httpd.stream{ on_close = function() closed = true end }
        st:write("hello\n")
        return 200, {}, st
      end })
      H.async(function()
        local res = http.request{ url = "http://127.0.0.1:" .. s:port() .. "/s", timeout = 1 }
        assert.is_nil(res)   -- the stream never ends: the client gives up
        for _ = 1, 3 do
          if closed then break end
          st:write("ping\n") -- the server notices the client left at the next write
          loop.sleep(0.1)
        end
        assert.is_true(closed)
        assert.is_true(st:closed())
        res = assert(http.request{ url = "http://127.0.0.1:" .. s:port() .. "/again" })
        assert.equal(500, res.status)
      end)
      s:close()
      loop.set_error_handler(nil)
      assert.matches("one request only", errors[1])
      assert.has_error(function() httpd.stream{ on_close = 1 } end)
    end)

    it("speaks HTTPS with tls_cert and tls_key (PEM)", function()
      assert.is_true(httpd.tls)
      local key, crt = dir .. "/key.pem", dir .. "/crt.pem"
      assert(os.execute(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1"
        .. " -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout %s -out %s 2>/dev/null")
        :format(H.q(key), H.q(crt))))
      local s = assert(httpd.listen{ tls_cert = H.read(crt), tls_key = H.read(key), handler = function(req)
        return 200, {}, req.tls and "tls" or "plain"
      end })
      H.async(function()
        local res = assert(http.request{ url = "https://127.0.0.1:" .. s:port() .. "/", ca_file = crt })
        assert.equal("tls", res.body)
        local r2, err = http.request{ url = "http://127.0.0.1:" .. s:port() .. "/", timeout = 2 }
        assert.is_nil(r2)
        assert.is_string(err)
      end)
      s:close()
      assert.has_error(function() httpd.listen{ tls_cert = "x", handler = echo_handler } end,
        "httpd.listen: tls_cert and tls_key go together")
      local bad, err = httpd.listen{ tls_cert = "not a cert", tls_key = "not a key", handler = echo_handler }
      assert.is_nil(bad)
      assert.matches("tls_cert and tls_key", err)
    end)
  end)
end)
