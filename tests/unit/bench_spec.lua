-- `make bench`'s scripts (bench/): they parse, the upstream config is
-- generated, and the report turns results into targets and verdicts.
-- Nothing here is timed; the benchmark itself is not run.
local H = require("helpers")

local function run(cmd)
  local out, code = H.sh(cmd .. " 2>&1")
  return out, code
end

describe("bench scripts", function()
  it("bench/run.sh is valid bash", function()
    local out, code = run("bash -n " .. H.q(H.ROOT .. "/bench/run.sh"))
    assert.equal(0, code, out)
  end)

  it("every bench/*.lua compiles", function()
    local n = 0
    for name in require("lfs").dir(H.ROOT .. "/bench") do
      if name:match("%.lua$") then
        local chunk, err = loadfile(H.ROOT .. "/bench/" .. name)
        assert.is_truthy(chunk, err)
        n = n + 1
      end
    end
    assert.is_true(n >= 5)
  end)

  it("bench/upstream.lua writes an nginx config with the Twilio paths, the port and bodies nginx can quote", function()
    local dir = H.tmpdir("bench-up")
    local out, code = run(("%s exec %s %s 18999 AC%s +14155550100 0"):format(H.q(H.BIN),
      H.q(H.ROOT .. "/bench/upstream.lua"), H.q(dir), ("a"):rep(32)))
    assert.equal(0, code, out)
    local conf = assert(H.read(dir .. "/nginx.conf"))
    assert.truthy(conf:find("listen 127.0.0.1:18999;", 1, true))
    assert.truthy(conf:find("IncomingPhoneNumbers", 1, true))
    assert.truthy(conf:find("return 201 '{", 1, true))
    assert.truthy(conf:find('"phone_number":"+14155550100"', 1, true))
    assert.falsy(conf:find("user nobody", 1, true))
    H.sh("rm -rf " .. H.q(dir))
  end)

  it("bench/report.lua prints each target with its ratio and verdict, and says what was not measured", function()
    local dir = H.tmpdir("bench-rep")
    local function load(round, tool, via, c, rps, p50, serve, bridge)
      return ('{"kind":"load","round":%d,"rc":0,"r":{"tool":"%s","via":"%s","inflight":%d,"rps":%s,"p50_us":%s,'
        .. '"p99_us":900,"errors":0,"client_cpu_us_per_call":20,"cpu_us_per_call":{"serve":%s%s}}}'):format(
        round, tool, via, c, rps, p50, serve, bridge and (',"bridge":' .. bridge) or "")
    end
    local lines = {
      '{"kind":"floor","round":1,"n":100,"p50_us":100,"p99_us":200,"connects":1,"bad":0,"wall_us_per_request":110}',
      '{"kind":"floor","round":2,"n":100,"p50_us":120,"p99_us":200,"connects":1,"bad":0,"wall_us_per_request":110}',
      load(1, "read", "direct", 1, 2000, 240, 150), load(2, "read", "direct", 1, 2000, 300, 150),
      load(1, "read", "bridge", 16, 5000, 3000, 150, 18), load(2, "read", "bridge", 16, 5000, 3000, 150, 6),
      load(1, "read", "direct", 16, 5000, 3000, 150),
      '{"kind":"verify","label":"full","round":1,"rc":0,"ms":8000,"records":1000000,"rss_before_kib":14000,'
        .. '"hwm_kib":2400000,"hwm_reset":true,"out":"audit trail intact","err":"","probe":{"p99_ms":8000,"max_ms":8100}}',
      '{"kind":"verify_floor","round":1,"ms":1600,"records":1000000}',
      '{"kind":"verify","label":"after_1000","round":1,"rc":0,"ms":7900,"records":1000000,"hwm_kib":1,'
        .. '"out":"","err":"","probe":{"p99_ms":1,"max_ms":1}}',
      '{"kind":"executions","label":"at_audit_rows","records":10000000,"rc":124,"timeout_s":60,"ms":60000,"bytes":0,'
        .. '"hwm_kib":1,"err":"","probe":{"max_ms":60000}}',
      '{"kind":"idle","rss_start_kib":14336,"rss_setup_kib":15000}',
      '{"kind":"meta","date":"2026-12-01 00:00 UTC","commit":"abc1234","cpus":2,"load_begin":"0.10 0.10 0.10",'
        .. '"command":"make bench","knobs":"ROUNDS=2","seconds":1}',
    }
    H.write(dir .. "/results.jsonl", table.concat(lines, "\n") .. "\n")
    local out, code = run(("%s exec %s %s %s"):format(H.q(H.BIN), H.q(H.ROOT .. "/bench/report.lua"),
      H.q(dir .. "/results.jsonl"), H.q(dir .. "/BENCHMARKS.md")))
    assert.equal(0, code, out)
    local md = assert(H.read(dir .. "/BENCHMARKS.md"))
    assert.truthy(md:find("commit abc1234", 1, true))
    assert.truthy(md:find("command: `make bench`", 1, true))
    -- sequential p50: median 270 µs against 1.5 × 110 + 100 = 265 µs
    assert.truthy(out:find("%[NOT met%s*%] read: sequential p50"), out)
    -- the bridge: median of 18 and 6 = 12 µs
    assert.truthy(out:find("%[NOT met%s*%] read: the bridge's own CPU.-12%.0 µs"), out)
    assert.truthy(out:find("%[not measured%s*%] read: server CPU per call"), out)
    assert.truthy(out:find("peer not measured", 1, true))
    assert.truthy(out:find("5%.00× %(8,000 vs 1,600 ms"), out)
    assert.truthy(out:find("%[n/a %(not met%)%] audit verify: an incremental verify.-n/a: no checkpoint"), out)
    assert.truthy(out:find("failed (exit 124)", 1, true))
    assert.truthy(out:find("%[met%s*%] idle RSS"), out)
    H.sh("rm -rf " .. H.q(dir))
  end)
end)
