-- Schemas and results over the agent socket: tool files using $defs,
-- $ref, oneOf, anyOf and const; structuredContent repeated as a JSON text
-- block; a handler's own content blocks (image, audio, resource links,
-- downgraded to text for protocol versions that lack them); results that
-- do not match their output schema; get_media's resource links.
local H = require("helpers")
local TW = require("twilio_env")
local json = require("switchboard.json")

local function session(srv, token, version)
  local c = assert(H.client(srv.agent_socket))
  local r = c:initialize(token, version)
  assert(r and r.result, "initialize failed: " .. json.encode(r))
  return c
end

local function text_blocks(res)
  local out = {}
  for _, b in ipairs(res.content) do out[#out + 1] = b.type end
  return table.concat(out, ",")
end

describe("tool schemas and results", function()
  local srv, token

  setup(function()
    -- as in the whole suite (tests/run.sh): a result off its output schema becomes an error
    srv = H.server({ wrapper = "env SWITCHBOARD_CHECK_RESULTS=1",
                     config = { tool_dirs = { H.ROOT .. "/examples/tools", H.ROOT .. "/tests/fixtures/schema_tools" } } })
    token = srv.agent("t", "a", "caioo", "Examples,Tests")
  end)

  teardown(function()
    if srv then srv.stop() end
  end)

  it("lists a tool whose schemas use $defs, $ref, oneOf and anyOf, and calls it", function()
    H.async(function()
      local c = session(srv, token)
      local list = c:request("tools/list", {})
      local shapes
      for _, t in ipairs(list.result.tools) do
        if t.name == "test_shapes" then shapes = t end
        assert.equal("https://json-schema.org/draft/2020-12/schema", t.inputSchema["$schema"], t.name)
      end
      assert.truthy(shapes, "test_shapes is not listed")
      assert.equal("#/$defs/circle", shapes.inputSchema.properties.shape.oneOf[1]["$ref"])
      assert.equal("circle", shapes.inputSchema["$defs"].circle.properties.kind.const)
      local r = c:call("test_shapes", { shape = { kind = "square", side = 4 } }).result
      assert.is_nil(r.isError, r.content[1].text)
      assert.same({ kind = "square", area = 16, unit = "cm2" }, r.structuredContent)
      -- the paragraph first, then the same data as JSON text
      assert.equal("text,text", text_blocks(r))
      assert.equal("The square's area is 16 cm².", r.content[1].text)
      assert.same(r.structuredContent, json.decode(r.content[2].text))
      r = c:call("test_shapes", { shape = { kind = "circle", radius = -1 } }).result
      assert.is_true(r.isError)
      assert.equal("Invalid arguments: `shape.radius` must be at least 0 (got -1).", r.content[1].text)
      r = c:call("test_shapes", { shape = { kind = "hexagon" } }).result
      assert.is_true(r.isError)
      assert.truthy(r.content[1].text:find("`shape` must be one of:", 1, true), r.content[1].text)
      c:close()
    end)
  end)

  it("returns a handler's image, audio and resource link after the paragraph and the JSON", function()
    H.async(function()
      local c = session(srv, token)
      local r = c:call("test_blocks", {}).result
      assert.is_nil(r.isError)
      assert.equal("text,text,image,audio,resource_link", text_blocks(r))
      assert.equal("Here are the files.", r.content[1].text)
      assert.same({ blocks = 3 }, json.decode(r.content[2].text))
      assert.same({ type = "image", data = "iVBORw0KGgo=", mimeType = "image/png" }, r.content[3])
      assert.same({ type = "resource_link", uri = "https://example.com/files/report.pdf", name = "report.pdf",
                    mimeType = "application/pdf", size = 1024 }, r.content[5])
      for _, bad in ipairs({ "image_type", "link_uri", "unknown_type", "data" }) do
        r = c:call("test_blocks", { bad = bad }).result
        assert.is_true(r.isError, bad)
        assert.equal("The tool test_blocks returned a malformed result.", r.content[1].text)
      end
      -- an error's data has the pipeline's error shape, its message never missing
      r = c:call("test_blocks", { bad = "error" }).result
      assert.is_true(r.isError)
      assert.equal("The tool failed. (error 7)", r.content[1].text)
      assert.same({ error = { message = "The tool failed.", code = 7 } }, r.structuredContent)
      assert.same(r.structuredContent, json.decode(r.content[2].text))
      c:close()
    end)
    local log = H.read(srv.log)
    assert.truthy(log:find("content[1].mimeType: must be an image/", 1, true))
    assert.truthy(log:find("content[3].uri: required for a resource_link block", 1, true))
    assert.truthy(log:find("content[2].type: must be text, image, audio, resource_link or resource", 1, true))
    assert.truthy(log:find("content[1].data: must be base64", 1, true))
  end)

  it("gives older protocol versions text where they lack a block type, and the data as JSON text", function()
    H.async(function()
      local c = session(srv, token, "2025-03-26")
      local r = c:call("test_blocks", {}).result
      assert.is_nil(r.structuredContent) -- not in 2025-03-26
      assert.equal("text,text,image,audio,text", text_blocks(r))
      assert.same({ blocks = 3 }, json.decode(r.content[2].text))
      assert.equal("report.pdf: https://example.com/files/report.pdf (application/pdf)", r.content[5].text)
      c:close()
      c = session(srv, token, "2024-11-05")
      r = c:call("test_blocks", {}).result
      assert.equal("text,text,image,text,text", text_blocks(r))
      assert.equal("(an audio/wav recording, not shown in this protocol version)", r.content[4].text)
      c:close()
    end)
  end)

  it("turns a result that does not match its output schema into an error in the test suite, and logs it", function()
    H.async(function()
      local c = session(srv, token)
      local r = c:call("test_shapes", { shape = { kind = "square", side = 2 }, mode = "wrong" }).result
      assert.is_true(r.isError)
      assert.is_nil(r.structuredContent)
      assert.truthy(r.content[1].text:find("returned a result that does not match its outputSchema", 1, true))
      assert.truthy(r.content[1].text:find("`extra` is not a known property", 1, true), r.content[1].text)
      assert.truthy(r.content[1].text:find("`unit` must be one of \"cm2\", \"in2\" (got \"furlong\")", 1, true),
        r.content[1].text)
      c:close()
    end)
    assert.truthy(H.read(srv.log):find("tool test_shapes: a result that does not match its outputSchema", 1, true))
  end)

  it("outside the test suite logs such a result and returns it as it is", function()
    local srv2 = H.server({ wrapper = "env SWITCHBOARD_CHECK_RESULTS=0",
                            config = { tool_dirs = { H.ROOT .. "/tests/fixtures/schema_tools" } } })
    local token2 = srv2.agent("t", "a", "caioo", "Tests")
    H.async(function()
      local c = session(srv2, token2)
      local r = c:call("test_shapes", { shape = { kind = "square", side = 2 }, mode = "wrong" }).result
      assert.is_nil(r.isError)
      assert.equal("furlong", r.structuredContent.unit)
      c:close()
    end)
    srv2.stop()
    assert.truthy(H.read(srv2.log):find("tool test_shapes: a result that does not match its outputSchema", 1, true))
  end)

  it("leaves the JSON block out of a result the block would take over limits.result_bytes", function()
    local up = H.upstream()
    local srv3 = H.server({ config = { limits = { result_bytes = 8192 },
                                       tool_settings = { example_fetch = { base_url = up.url } } } })
    local token3 = srv3.agent("t", "a", "caioo", "Examples")
    H.async(function()
      local c = session(srv3, token3)
      local r = c:call("example_fetch", { path = "/hello.json" }).result
      assert.equal("text,text", text_blocks(r))
      -- 5000 bytes of data fit once, not twice
      r = c:call("example_fetch", { path = "/big.json" }).result
      assert.is_nil(r.isError, r.content[1].text)
      assert.equal("text", text_blocks(r))
      assert.equal(5000, #r.structuredContent.json.data)
      c:close()
    end)
    srv3.stop()
    up.stop()
  end)
end)

describe("twilio_search_messages get_media", function()
  local sim, srv, token

  setup(function()
    sim = TW.sim()
    srv = TW.server()
    token = TW.connect_sim(srv, sim, "acme")
  end)

  teardown(function()
    if srv then srv.stop() end
    if sim then sim.stop() end
  end)

  it("returns each media file as a resource link beside the data", function()
    TW.with(srv, token, function(c)
      local r = TW.call(c, "twilio_search_messages", { action = "get_media",
                                                       message_sid = "MM00000000000000000000000000000003" })
      assert.is_nil(r.isError, r.text)
      assert.equal("text,text,resource_link,resource_link", text_blocks(r))
      assert.same(r.structuredContent, json.decode(r.content[2].text))
      for i, m in ipairs(r.data.media) do
        assert.same({ type = "resource_link", uri = m.url, name = m.sid, mimeType = m.content_type }, r.content[2 + i])
      end
      r = TW.call(c, "twilio_search_messages", { action = "get_media", message_sid = "SM00000000000000000000000000000001" })
      assert.equal("text,text", text_blocks(r))
    end)
  end)
end)
