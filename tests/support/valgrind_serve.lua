-- serve under valgrind, one agent session with an HTTP call, SIGTERM:
-- valgrind must report no leak and no error. Prints one TAP line.
package.path = (os.getenv("SB_ROOT") or ".") .. "/tests/?.lua;" .. package.path
local H = require("helpers")

local up = H.upstream()
local dir = H.tmpdir("vg")
local srv = H.server({
  dir = dir,
  -- the release binary links jemalloc: valgrind replaces its malloc too
  wrapper = "valgrind --soname-synonyms=somalloc=libjemalloc* --leak-check=full --show-leak-kinds=definite,indirect"
    .. " --errors-for-leak-kinds=definite,indirect --error-exitcode=99 --log-file=" .. dir .. "/valgrind.log",
  start_seconds = 120, start = false,
  config = { tool_settings = { example_fetch = { base_url = up.url } } },
})
srv.start()
local token = srv.agent("vg", "a", "caioo", "Examples")
local ok = H.async(function()
  local c = assert(H.client(srv.agent_socket))
  assert(c:initialize(token).result)
  local r = c:call("example_fetch", { path = "/hello.json" })
  local r2 = c:call("example_clock", {})
  c:close()
  return r.result and r.result.structuredContent and r.result.structuredContent.status == 200
    and r2.result and not r2.result.isError
end, 120)
local stopped = srv.stop(120)
up.stop()
local logs = H.sh("cat " .. srv.dir .. "/valgrind.log* 2>/dev/null")
local clean = logs:find("ERROR SUMMARY: 0 errors", 1, true) ~= nil
  and not logs:find("definitely lost: [1-9]") and not logs:find("indirectly lost: [1-9]")
if ok and stopped and clean then
  print("ok - valgrind: serve, one session, SIGTERM: no leak, no error")
  return 0
end
print("not ok - valgrind: serve, one session, SIGTERM (calls ok: " .. tostring(ok) .. ", stopped: "
  .. tostring(stopped) .. ")")
io.stdout:write(logs:sub(-4000), "\n")
return 1
