-- A POST is never sent twice when the upstream closes a kept-alive
-- connection as the POST arrives. libcurl resends a request whose reused
-- connection dies before any byte of an answer ("Connection died,
-- retrying a fresh connect"), POSTs included: the server may already have
-- acted on the first copy. So core.http gives every POST a connection of
-- its own (CURLOPT_FRESH_CONNECT). The upstream here answers GETs with
-- keep-alive, and on each POST reads it whole, counts it and closes the
-- connection without an answer: the idle-close race at its worst.
local H = require("helpers")
local http = require("core.http")

local SERVER = [=[
import socket, sys, threading, os
posts = 0
lock = threading.Lock()
def reply(c, body):
    c.sendall(("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
               % (len(body), body)).encode())
def serve(c):
    global posts
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d: return
                buf += d
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            length = 0
            for l in lines[1:]:
                k, _, v = l.partition(":")
                if k.strip().lower() == "content-length": length = int(v)
            while len(buf) < length:
                d = c.recv(65536)
                if not d: return
                buf += d
            buf = buf[length:]
            if method == "POST":
                with lock: posts += 1
                return              # closed without an answer
            reply(c, str(posts) if path == "/count" else "hello")
    finally:
        c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(64)
with open(sys.argv[1] + ".tmp", "w") as f: f.write(str(s.getsockname()[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
]=]

describe("a POST on an upstream that closes kept-alive connections as it arrives", function()
  local dir, pid, url

  setup(function()
    dir = H.tmpdir("postrace")
    H.write(dir .. "/up.py", SERVER)
    pid = H.sh(("python3 %s %s >%s 2>&1 & echo $!"):format(H.q(dir .. "/up.py"), H.q(dir .. "/port"),
      H.q(dir .. "/up.log"))):gsub("%s+", "")
    H.wait_for(function() return H.exists(dir .. "/port") end, 10, "the upstream")
    url = "http://127.0.0.1:" .. H.read(dir .. "/port")
  end)
  teardown(function() os.execute("kill " .. pid .. " 2>/dev/null") end)

  it("is received once each time, and its outcome is unknown (it was sent)", function()
    local ROUNDS = 10
    H.async(function()
      for i = 1, ROUNDS do
        -- a kept-alive connection in libcurl's cache, idle when the POST comes
        local g = assert(http.request({ url = url .. "/hello" }))
        assert.equal("hello", g.body)
        local res, err, info = http.request({ method = "POST", url = url .. "/send", form = { Body = "m" .. i } })
        assert.is_nil(res)
        assert.truthy(info and info.sent, "the POST must count as sent: " .. tostring(err))
        local c = assert(http.request({ url = url .. "/count" }))
        assert.equal(tostring(i), c.body, "POSTs received after " .. i .. " sends")
      end
    end, 60)
  end)
end)
