std = "lua54"
max_line_length = 130
codes = true
unused_args = false
files["policies/"] = { read_globals = { "allow", "flag", "hold", "escalate", "deny", "settings" } }
files["examples/policies/"] = { read_globals = { "allow", "flag", "hold", "escalate", "deny", "settings" } }
files["tests/"] = { std = "+busted" }
files["tests/policies/"] = { read_globals = { "allow", "flag", "hold", "escalate", "deny", "settings" } }
exclude_files = { "tests/node/node_modules/", "build/" }
