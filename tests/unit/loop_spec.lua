-- core.loop: scheduling, timers, streams over real Unix sockets.
local loop = require("core.loop")

-- Run fn in a runtime coroutine; fail when it does not finish in `limit` s.
local function async(fn, limit)
  return function()
    local done, failure = false, nil
    local guard = loop.timer(limit or 5, 0, function()
      failure = "test timed out"
      loop.stop()
    end)
    loop.spawn(function()
      local ok, err = xpcall(fn, debug.traceback)
      if not ok then failure = err end
      done = true
      loop.stop()
    end)
    if not done then loop.run() end
    guard:close()
    loop.set_error_handler(nil)
    assert(done and not failure, failure)
  end
end

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -m 700 " .. p))
  return p
end

local function rmdir(p) os.execute("rm -rf " .. p) end

-- A connected pair (client, server side) over a listener at path.
local function pair(path)
  local me = coroutine.running()
  local l = assert(loop.listen(path, tonumber("600", 8), function(s)
    loop.wake(me, s)
  end))
  local c = assert(loop.connect(path))
  local peer = loop.wait()
  return c, peer, l
end

-- A listener whose handler echoes lines back with a prefix.
local function echo_server(path, max)
  return assert(loop.listen(path, tonumber("600", 8), function(s)
    while true do
      local line, err = s:read_line(max or 1024, 5)
      if not line then
        s:write("ERR " .. err .. "\n")
        if err ~= "line too long" then s:close(); return end
      else
        s:write("> " .. line .. "\n")
      end
    end
  end))
end

describe("core.loop", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() rmdir(dir) end)

  it("has now and time", function()
    assert.is_number(loop.now())
    local t1 = loop.time()
    assert.is_true(loop.time() >= t1)
  end)

  it("orders sleeps by deadline", async(function()
    local order = {}
    local n = 0
    local me = coroutine.running()
    for _, d in ipairs({ 0.03, 0.01, 0.02 }) do
      loop.spawn(function()
        assert.is_true(loop.sleep(d))
        order[#order + 1] = d
        n = n + 1
        if n == 3 then loop.wake(me) end
      end)
    end
    loop.wait()
    assert.same({ 0.01, 0.02, 0.03 }, order)
  end))

  it("sleep from the main thread raises", function()
    assert.has_error(function() loop.sleep(0.01) end,
      "loop.sleep must be called from a runtime coroutine (loop.spawn)")
    assert.has_error(function() loop.wait() end)
  end)

  it("wait/wake passes values and never resumes reentrantly", async(function()
    local me = coroutine.running()
    local log = {}
    loop.spawn(function()
      loop.sleep(0) -- let the test body park first
      log[#log + 1] = "waker"
      assert.is_true(loop.wake(me, 1, nil, "x"))
      assert.is_false(loop.wake(me, 2)) -- already woken
      log[#log + 1] = "after wake"
    end)
    assert.is_false(loop.wake(coroutine.create(function() end)))
    local a, b, c = loop.wait()
    log[#log + 1] = "woken"
    assert.same({ "waker", "after wake", "woken" }, log)
    assert.equal(1, a); assert.is_nil(b); assert.equal("x", c)
  end))

  it("wake of a coroutine parked elsewhere returns false", async(function()
    local co
    loop.spawn(function() co = coroutine.running(); loop.sleep(0.01) end)
    assert.is_false(loop.wake(co))
    loop.sleep(0.02)
  end))

  it("runs one-shot and repeating timers", async(function()
    local one, rep = 0, 0
    loop.timer(0.01, 0, function() one = one + 1 end)
    local t
    t = loop.timer(0.005, 0.005, function()
      rep = rep + 1
      if rep == 3 then t:stop() end
    end)
    loop.sleep(0.1)
    assert.equal(1, one)
    assert.equal(3, rep)
    t:close() -- idempotent
  end))

  it("routes errors in spawned coroutines to the handler and goes on", async(function()
    local got
    loop.set_error_handler(function(msg) got = msg end)
    loop.spawn(function() loop.sleep(0.001); error("boom") end)
    loop.timer(0, 0, function() error("from timer") end)
    loop.sleep(0.02)
    assert.matches("boom", got == nil and "" or got)
    assert.matches("stack traceback", got)
    local seen = {}
    loop.set_error_handler(function(msg) seen[#seen + 1] = msg end)
    loop.timer(0, 0, function() error("from timer") end)
    loop.sleep(0.02)
    assert.equal(1, #seen)
    assert.matches("from timer", seen[1])
  end))

  it("signal watchers do not keep run alive and deliver", function()
    local got
    local sig = loop.signal("USR1", function(name) got = name end)
    loop.run() -- returns at once: only an unref'd signal watcher
    loop.spawn(function()
      os.execute("kill -USR1 $PPID 2>/dev/null || true")
      loop.sleep(0.05)
      loop.stop()
    end)
    loop.run()
    sig:close()
    sig:close()
    assert.has_error(function() loop.signal("KILL", function() end) end)
    -- the shell's $PPID is us when os.execute runs sh -c
    assert.equal("USR1", got)
  end)

  it("round-trips lines over a Unix socket, mode applied", async(function()
    local path = dir .. "/echo.sock"
    local l = echo_server(path)
    local p = io.popen("stat -c %a " .. path)
    assert.equal("600", p:read("l")); p:close()
    local c = assert(loop.connect(path))
    assert.is_true(c:write("hello\r\nworld\n"))
    assert.equal("> hello\r", c:read_line(100, 2))
    assert.equal("> world", c:read_line(100, 2))
    local pid, uid = c:peercred()
    assert.is_number(pid); assert.is_number(uid)
    assert.is_number(c:fd())
    assert.is_true(c:flush())
    c:close()
    assert.is_true(c:closed())
    l:close()
    assert.is_nil(io.open(path)) -- listener close unlinks
  end))

  it("line too long, then the next line is readable", async(function()
    local path = dir .. "/long.sock"
    local l = echo_server(path, 10)
    local c = assert(loop.connect(path))
    c:write(string.rep("x", 50) .. "\nshort\n")
    assert.equal("ERR line too long", c:read_line(100, 2))
    assert.equal("> short", c:read_line(100, 2))
    -- too long split across writes, discarded up to the next newline
    c:write(string.rep("y", 30))
    loop.sleep(0.02)
    c:write(string.rep("y", 30) .. "\nok\n")
    assert.equal("ERR line too long", c:read_line(100, 2))
    assert.equal("> ok", c:read_line(100, 2))
    -- exactly max is fine
    c:write(string.rep("z", 10) .. "\n")
    assert.equal("> " .. string.rep("z", 10), c:read_line(100, 2))
    c:close(); l:close()
  end))

  it("times out, returns a partial last line at EOF, then closed", async(function()
    local path = dir .. "/eof.sock"
    local c, server_stream, l = pair(path)
    local t0 = loop.time()
    local line, err = c:read_line(100, 0.05)
    assert.is_nil(line); assert.equal("timeout", err)
    assert.is_true(loop.time() - t0 >= 0.04)
    server_stream:write("one\ntwo\npartial")
    server_stream:flush()
    server_stream:close()
    assert.equal("one", c:read_line(100, 1))
    assert.equal("two", c:read_line(100, 1))
    assert.equal("partial", c:read_line(100, 1))
    assert.same({ nil, "closed" }, { c:read_line(100, 1) })
    assert.same({ nil, "closed" }, { c:read_some(100, 1) })
    c:close(); l:close()
  end))

  it("read_some returns what is there", async(function()
    local path = dir .. "/some.sock"
    local c, peer, l = pair(path)
    peer:write("abcdef")
    assert.equal("abcd", c:read_some(4, 1))
    assert.equal("ef", c:read_some(4, 1))
    assert.same({ nil, "timeout" }, { c:read_some(4, 0.01) })
    peer:close(); c:close(); l:close()
  end))

  it("close wakes a waiting reader with closed", async(function()
    local path = dir .. "/wake.sock"
    local l = assert(loop.listen(path, tonumber("600", 8), function() end))
    local c = assert(loop.connect(path))
    local me = coroutine.running()
    loop.spawn(function()
      local line, err = c:read_line(100)
      loop.wake(me, line, err)
    end)
    assert.has_error(function() c:read_line(100) end) -- a second reader
    c:close()
    c:close()
    local line, err = loop.wait()
    assert.is_nil(line); assert.equal("closed", err)
    l:close()
  end))

  it("raises on use after close", async(function()
    local path = dir .. "/uac.sock"
    local l = assert(loop.listen(path, tonumber("600", 8), function() end))
    local c = assert(loop.connect(path))
    c:close()
    assert.has_error(function() c:write("x") end, "attempt to use a closed stream")
    assert.has_error(function() c:read_line(10) end, "attempt to use a closed stream")
    assert.has_error(function() c:fd() end, "attempt to use a closed stream")
    l:close()
    assert.has_error(function() l:fd() end, "attempt to use a closed listener")
    assert.is_true(l:closed())
    do local s <close> = assert(loop.stream(1)); assert.is_false(s:closed()) end -- __close; fd 1 stays open
    assert.is_true(io.stdout:write("") ~= nil)
  end))

  it("replaces a stale socket file, refuses a live one or a non-socket", async(function()
    local path = dir .. "/stale.sock"
    local l1 = assert(loop.listen(path, tonumber("600", 8), function() end))
    local l2, err = loop.listen(path, tonumber("600", 8), function() end)
    assert.is_nil(l2); assert.is_string(err)
    l1:close()
    -- a stale socket file: bound by a process that is gone
    assert(os.execute("python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.bind('"
      .. path .. "')\""))
    local l3 = assert(loop.listen(path, tonumber("660", 8), function(s) s:write("hi\n") end))
    local p = io.popen("stat -c %a " .. path)
    assert.equal("660", p:read("l")); p:close()
    local c = assert(loop.connect(path))
    assert.equal("hi", c:read_line(10, 1))
    c:close(); l3:close()
    local f = io.open(dir .. "/plain", "w"); f:write("x"); f:close()
    local l4, err4 = loop.listen(dir .. "/plain", tonumber("600", 8), function() end)
    assert.is_nil(l4); assert.matches("not a socket", err4)
    local c2, cerr = loop.connect(dir .. "/nothing.sock")
    assert.is_nil(c2); assert.equal("connect: no such file or directory", cerr)
  end))

  it("write cap closes the stream", async(function()
    local path = dir .. "/cap.sock"
    local l = assert(loop.listen(path, tonumber("600", 8), function() end))
    local c = assert(loop.connect(path))
    c:set_write_cap(1024 * 1024)
    local big = string.rep("x", 256 * 1024)
    local ok, err
    for _ = 1, 64 do
      ok, err = c:write(big)
      if not ok then break end
    end
    assert.is_nil(ok); assert.equal("write buffer full", err)
    assert.is_true(c:closed())
    l:close()
  end))

  it("flush waits for a slow reader; large payloads survive", async(function()
    local path = dir .. "/flush.sock"
    local got = {}
    local me = coroutine.running()
    local l = assert(loop.listen(path, tonumber("600", 8), function(s)
      while true do
        local data = s:read_some(65536, 5)
        if not data then break end
        got[#got + 1] = data
      end
      s:close()
      loop.wake(me)
    end))
    local c = assert(loop.connect(path))
    local payload = string.rep("0123456789abcdef", 256 * 1024) -- 4 MiB
    assert.is_true(c:write(payload))
    assert.is_true(c:flush(5))
    c:close()
    loop.wait()
    assert.equal(#payload, #table.concat(got))
    assert.is_true(table.concat(got) == payload)
    l:close()
  end))

  it("echoes over 200 concurrent connections", async(function()
    local path = dir .. "/many.sock"
    local l = echo_server(path)
    local me = coroutine.running()
    local n, ok = 200, 0
    local finished = 0
    for i = 1, n do
      loop.spawn(function()
        local c = assert(loop.connect(path))
        local good = true
        for j = 1, 20 do
          c:write(("c%d l%d\n"):format(i, j))
          if c:read_line(100, 5) ~= ("> c%d l%d"):format(i, j) then good = false end
        end
        c:close()
        if good then ok = ok + 1 end
        finished = finished + 1
        if finished == n then loop.wake(me) end
      end)
    end
    loop.wait()
    assert.equal(n, ok)
    l:close()
  end, 20))

  it("retries connects while the backlog is full", async(function()
    local path = dir .. "/backlog.sock"
    local l = assert(loop.listen(path, tonumber("600", 8), function(s)
      local line = s:read_line(100, 5)
      s:write("> " .. tostring(line) .. "\n")
      s:flush(5)
      s:close()
    end, 1))
    local me = coroutine.running()
    local n, ok, finished = 50, 0, 0
    for i = 1, n do
      loop.spawn(function()
        local c, err = loop.connect(path)
        assert(c, err)
        c:write(i .. "\n")
        if c:read_line(100, 5) == "> " .. i then ok = ok + 1 end
        c:close()
        finished = finished + 1
        if finished == n then loop.wake(me) end
      end)
    end
    loop.wait()
    assert.equal(n, ok)
    l:close()
  end, 20))

  it("a dropped stream is closed by the collector", async(function()
    local path = dir .. "/gc.sock"
    local me = coroutine.running()
    local l = assert(loop.listen(path, tonumber("600", 8), function(s)
      loop.wake(me, s:read_line(100, 5))
    end))
    do assert(loop.connect(path)) end
    collectgarbage(); collectgarbage()
    local line, err = loop.wait()
    assert.is_nil(line); assert.equal("closed", err)
    l:close()
  end))

  it("reads many buffered lines without waiting", async(function()
    local path = dir .. "/burst.sock"
    local c, peer, l = pair(path)
    local parts = {}
    for i = 1, 10000 do parts[i] = "line " .. i end
    peer:write(table.concat(parts, "\n") .. "\n")
    peer:close()
    for i = 1, 10000 do
      assert(c:read_line(100, 2) == "line " .. i)
    end
    assert.same({ nil, "closed" }, { c:read_line(100, 1) })
    c:close(); l:close()
  end))

  -- An allocation that fails inside a libev callback (core.mem's ceiling
  -- here; a real out-of-memory alike) is reported, never raised through
  -- ev_run: loop.run returns, the loop works on, what follows runs. Each
  -- case runs in its own process: raised through ev_run, the error would
  -- take the whole process (and here the test run) with it.
  describe("an allocation failure in a callback", function()
    local function q(p) return "'" .. p:gsub("'", "'\\''") .. "'" end
    local function run_script(body)
      local script = dir .. "/oom.lua"
      local f = assert(io.open(script, "w"))
      f:write(body)
      f:close()
      local bin = os.getenv("SB_BIN") or "./switchboard"
      local p = assert(io.popen(q(bin) .. " exec " .. q(script) .. " 2>&1; echo \"rc=$?\""))
      local out = p:read("a")
      p:close()
      return out
    end

    it("in a timer's: reported, the loop runs on", function()
      local out = run_script([[
        local loop = require("core.loop")
        local mem = require("core.mem")
        local ran = false
        loop.timer(0, 0, function() ran = true end)
        collectgarbage(); collectgarbage()
        mem.limit(0)              -- not one byte more: the timer cannot start
        loop.run()
        mem.limit(nil)
        print("after run", ran)
        loop.timer(0, 0, function() ran = true end)
        loop.run()
        print("again", ran)
      ]])
      -- no memory for the error handler either: the report goes to stderr
      assert.matches("switchboard: core.loop: timer: not enough memory", out, 1, true)
      assert.matches("after run\tfalse\nagain\ttrue\nrc=0", out, 1, true)
    end)

    it("in an accept: reported, the listener pauses and then serves", function()
      local out = run_script(([[
        local loop = require("core.loop")
        local mem = require("core.mem")
        local path = %q
        local reported
        loop.set_error_handler(function(msg)
          mem.limit(nil)
          reported = msg
          loop.stop()
        end)
        local l = assert(loop.listen(path, tonumber("600", 8), function(s)
          s:write("hi\n")
          s:flush(5)
          s:close()
        end))
        local got
        loop.spawn(function()
          local c = assert(loop.connect(path))
          got = c:read_line(100, 5)
          loop.stop()
        end)
        -- room for half a coroutine: the accept cannot start the
        -- listener's, the report fits
        collectgarbage(); collectgarbage("stop")
        local before = mem.used()
        coroutine.create(print)
        local room = (mem.used() - before) // 2
        collectgarbage("restart"); collectgarbage(); collectgarbage()
        mem.limit(room)
        loop.run()
        print("reported", reported)
        loop.run()                -- accepting again after the pause
        l:close()
        print("got", got)
      ]]):format(dir .. "/accept.sock"))
      assert.matches("reported\tcore.loop: listener: accept (pausing 0.5 s): not enough memory\n", out, 1, true)
      assert.matches("got\thi\nrc=0", out, 1, true)
    end)

    it("in a stream read's wakeup: the error handler has it", function()
      local out = run_script(([[
        local loop = require("core.loop")
        local mem = require("core.mem")
        local path = %q
        local line = string.rep("x", 4 * 1024 * 1024)    -- kept: not garbage
        local reported
        loop.set_error_handler(function(msg)
          reported = msg
          loop.stop()
        end)
        local l = assert(loop.listen(path, tonumber("600", 8), function(s)
          s:write(line)
          s:write("\n")
          s:flush(5)
        end))
        local got = "not resumed"
        loop.spawn(function()
          local c = assert(loop.connect(path))
          mem.limit(1024 * 1024)  -- the 4 MB line does not fit
          got = c:read_line(8 * 1024 * 1024, 5)
        end)
        loop.run()
        mem.limit(nil)
        l:close()
        print("reported", reported)
        print("got", got)
      ]]):format(dir .. "/oom.sock"))
      assert.matches("reported\tcoroutine not resumed: not enough memory\n", out, 1, true)
      assert.matches("got\tnot resumed\nrc=0", out, 1, true)
    end)
  end)
end)
