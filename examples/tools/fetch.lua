-- example_fetch: one HTTP GET to the upstream named in the config
-- (tool_settings.example_fetch.base_url). The request yields this call's
-- coroutine; other calls go on meanwhile.
local http = require("core.http")
local json = require("switchboard.json")

return {
  name = "example_fetch",
  title = "Fetch from the configured upstream",
  description = "Fetches a path from the operator's configured HTTP upstream and returns the status and the JSON body.",
  group = "Examples",
  input_schema = {
    type = "object",
    properties = {
      path = { type = "string", minLength = 1, maxLength = 512,
               description = "Path on the upstream, starting with '/', e.g. /hello.json" },
    },
    required = { "path" },
    additionalProperties = false,
  },
  output_schema = {
    type = "object",
    properties = {
      status = { type = "integer" },
      json = { type = "object" },
      body = { type = "string" },
      ms = { type = "number" },
    },
    required = { "status", "ms" },
  },
  annotations = { readOnlyHint = true, openWorldHint = true },
  check = function(args)
    if args.path:sub(1, 1) ~= "/" or args.path:find("[%s#]") or args.path:find("://", 1, true) then
      return nil, "`path` must start with '/' and hold no spaces, '#' or scheme"
    end
    return true
  end,
  handler = function(ctx, args)
    local base = ctx.settings.base_url
    if type(base) ~= "string" then
      return nil, { message = "example_fetch has no upstream configured",
                    hint = "The operator sets tool_settings.example_fetch.base_url in the config." }
    end
    local res, err = http.request({ url = base .. args.path, timeout = ctx.settings.timeout or 10,
                                    headers = { Accept = "application/json" } })
    if not res then
      return nil, { message = "the upstream could not be reached: " .. err, hint = "Try again later." }
    end
    local data = { status = res.status, ms = math.floor(res.time * 100000 + 0.5) / 100 }
    local body = res.body
    local decoded = (res.headers["content-type"] or ""):find("json", 1, true) and json.decode(body)
    if type(decoded) == "table" then
      data.json = decoded
    else
      data.body = #body > 4096 and body:sub(1, 4096) or body
    end
    return { text = ("GET %s answered %d in %.2f ms."):format(args.path, res.status, data.ms), data = data }
  end,
}
