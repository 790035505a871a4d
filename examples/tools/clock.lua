-- example_clock: the time now. The smallest complete tool: a schema, the
-- truth in its annotations, and a handler returning text plus data.
return {
  name = "example_clock",
  title = "Clock",
  description = "Returns the current time as a Unix timestamp and as ISO 8601 in UTC.",
  group = "Examples",
  input_schema = {
    type = "object",
    properties = {
      tz = { type = "string", enum = { "UTC" }, default = "UTC",
             description = "Time zone of the ISO form; only UTC for now." },
    },
    additionalProperties = false,
  },
  output_schema = {
    type = "object",
    properties = {
      unix = { type = "integer" },
      iso = { type = "string" },
      tz = { type = "string" },
    },
    required = { "unix", "iso", "tz" },
  },
  annotations = { readOnlyHint = true, openWorldHint = false },
  handler = function(_, args)
    local now = os.time()
    local iso = os.date("!%Y-%m-%dT%H:%M:%SZ", now)
    return { text = ("It is %s (%s)."):format(iso, args.tz), data = { unix = now, iso = iso, tz = args.tz } }
  end,
}
