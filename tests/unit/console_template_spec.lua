-- The console's template renderer and its SVG charts: every substitution
-- is HTML-escaped unless the template asks for the console's own HTML.
local template = require("switchboard.console.template")
local chart = require("switchboard.console.chart")

describe("console templates", function()
  it("escape every substitution by default", function()
    local t = template.compile([[<p title="{{v}}">{{v}}</p>{{&raw}}]])
    assert.equal([[<p title="&lt;script&gt;&quot;&#39;&amp;">&lt;script&gt;&quot;&#39;&amp;</p><b>ok</b>]],
      t:render({ v = [[<script>"'&]], raw = "<b>ok</b>" }))
  end)

  it("repeat sections over lists, look names up outward, and invert", function()
    local t = template.compile("{{#rows}}[{{name}}:{{csrf}}]{{/rows}}{{^rows}}none{{/rows}}"
      .. "{{#flag}}yes{{/flag}}{{^flag}}no{{/flag}}{{#obj}}{{a.b}}{{/obj}}")
    assert.equal("[x:T][<y>:T]yes7", t:render({ csrf = "T", rows = { { name = "x" }, { name = "<y>" } }, flag = true,
      obj = { a = { b = 7 } } }):gsub("&lt;", "<"):gsub("&gt;", ">"))
    assert.equal("noneno", t:render({ rows = {}, flag = false }))
    assert.equal("[1][2]", template.compile("{{#l}}[{{.}}]{{/l}}"):render({ l = { 1, 2 } }))
  end)

  it("refuse a template with a bad tag or an unclosed section", function()
    assert.has_error(function() template.compile("{{#a}}x", "t.html") end, "template t.html: {{#a}} is not closed")
    assert.has_error(function() template.compile("{{/a}}", "t.html") end, "template t.html: {{/a}} closes nothing open")
    assert.has_error(function() template.compile("{{a b}}", "t.html") end, "template t.html: bad tag {{a b}}")
  end)

  it("draw bar charts as SVG with escaped labels and no inline style", function()
    local svg = chart.bars({ { label = "<img src=x>", value = 2 }, { label = "b", value = 1 } },
      { title = "T & <t>", unit = "USD" })
    assert.truthy(svg:find("^<svg "))
    assert.falsy(svg:find("<img", 1, true))
    assert.truthy(svg:find("&lt;img src=x&gt;", 1, true))
    assert.truthy(svg:find("T &amp; &lt;t&gt;", 1, true))
    assert.falsy(svg:find("style=", 1, true))
    local _, bars = svg:gsub('<rect class="bar"', "")
    assert.equal(2, bars)
    assert.truthy(svg:find('width="360"', 1, true))   -- the largest value is the full width
  end)
end)
