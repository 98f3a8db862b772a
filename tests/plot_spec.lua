-- lualign.plot: the SVG it writes has one polyline per series (broken at
-- non-finite points), a legend with the labels (escaped), ticks on the axes,
-- and a log axis that leaves out points it cannot draw.
local plot = require "lualign.plot"

local function count(s, pattern)
  local n = 0
  for _ in s:gmatch(pattern) do n = n + 1 end
  return n
end

describe("lualign.plot", function()
  it("draws each series as a polyline with a legend entry", function()
    local p = plot.new{title = "loss & reward", xlabel = "step", ylabel = "value"}
    p:line({1, 2, 3}, {3, 2, 1}, {label = "a < b"})
    p:line({1, 2, 3}, {1, 2, 3}, {label = "second", dash = true})
    local svg = p:svg()
    assert.is_truthy(svg:find("^<svg xmlns"))
    assert.is_truthy(svg:find("</svg>%s*$"))
    assert.are.equal(2, count(svg, "<polyline"))
    assert.is_truthy(svg:find("a &lt; b", 1, true))
    assert.is_truthy(svg:find("loss &amp; reward", 1, true))
    assert.is_truthy(svg:find('stroke%-dasharray="6,4"'))
    assert.is_truthy(svg:find(">1.5<", 1, true), "a tick at 1.5 on the axes")
  end)

  it("breaks a line at NaN and infinite points, and a log axis skips y <= 0", function()
    local p = plot.new{}
    p:line({1, 2, 3, 4, 5}, {1, 2, 0 / 0, 4, 5})
    assert.are.equal(2, count(p:svg(), "<polyline"))
    local q = plot.new{logy = true}
    q:line({1, 2, 3, 4}, {1e-3, 0, 1e-1, 1})
    local svg = q:svg()
    assert.are.equal(2, count(svg, "<polyline"))
    assert.is_truthy(svg:find(">1e%-2<"))
  end)

  it("lays plots out in a grid and checks its input", function()
    local a, b = plot.new{width = 300, height = 200}, plot.new{width = 300, height = 200}
    a:line({0, 1}, {0, 1})
    b:line({0, 1}, {1, 0})
    local svg = plot.grid({a, b, a}, {cols = 2})
    assert.is_truthy(svg:find('width="600" height="400"', 1, true))
    assert.has_error(function() a:line({1, 2}, {1}) end, "plot: 2 x values but 1 y values")
  end)
end)
