-- An example of a custom policy: keep example_fetch away from /private
-- paths and flag every fetch of /admin for review. Copy it into the
-- policy directory and send SIGHUP (or `switchboard admin reload`).
return {
  name = "quiet_paths",
  priority = 50,
  tools = { "example_fetch" },
  check = function(call)
    local path = call.args.path
    if path:find("^/private") then
      return deny("paths under /private are not for agents")
    end
    if path:find("^/admin") then
      return flag("an agent read an /admin path")
    end
    return allow()
  end,
}
