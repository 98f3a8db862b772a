-- lualign.jinja: what Python's Jinja (the engine transformers renders chat
-- templates with) does where the JavaScript port used for the fixtures
-- differs or has no opinion -- printing of Python values, string methods
-- with arguments, comparisons of strings, repetition -- and the errors, which
-- name the construct and the template line.  (tests/hf_tokenizer_spec.lua
-- checks the constructs and real templates against @huggingface/jinja.)

local jinja = require "lualign.jinja"

local function render(src, ctx) return (jinja.render(src, ctx)) end

local function errmsg(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

describe("jinja values print as Python's str() does", function()
  it("booleans, None, integers and floats", function()
    assert.are.equal("True False None", render("{{ true }} {{ False }} {{ none }}"))
    assert.are.equal("3 3.5 1.0 0.1 1e+16 1e-05 123456789.0",
      render("{{ 3 }} {{ 3.5 }} {{ 1.0 }} {{ 0.1 }} {{ 1e16 }} {{ 0.00001 }} {{ 123456789.0 }}"))
    assert.are.equal("2.0 -4 1", render("{{ 4 / 2 }} {{ -7 // 2 }} {{ -7 % 4 }}"))
  end)

  it("lists, tuples and dicts, their items as repr() writes them", function()
    assert.are.equal("['a', 1, None, True]", render("{{ ['a', 1, none, true] }}"))
    assert.are.equal("{'k': 'v', 'n': [1]}", render("{{ {'k': 'v', 'n': [1]} }}"))
    assert.are.equal("(1, 'x')", render("{{ (1, 'x') }}"))
    assert.are.equal([=[["it's", 'a\nb']]=], render([[{{ ["it's", "a\nb"] }}]]))
  end)

  it("undefined values print as nothing, and context numbers read from JSON stay integers", function()
    assert.are.equal("[]", render("[{{ missing }}]"))
    assert.are.equal("3", render("{{ n }}", {n = 3.0}))
  end)
end)

describe("jinja operations as in Python", function()
  it("string methods take their arguments", function()
    assert.are.equal("hi|xxhi|hixx", render("{{ 'xxhixx'.strip('x') }}|{{ 'xxhixx'.rstrip('x') }}|{{ 'xxhixx'.lstrip('x') }}"))
    assert.are.equal("  a", render("{{ '\\n  a'.lstrip('\\n') }}"))
    assert.are.equal("a|b c", render("{{ 'a b c'.split(' ', 1) | join('|') }}"))
    assert.are.equal("2 -1 3", render("{{ 'abcabc'.find('c') }} {{ 'abc'.find('z') }} {{ 'aXaXa'.count('a') }}"))
  end)

  it("compares strings, repeats strings and lists, tests divisibility", function()
    assert.are.equal("True False", render("{{ 'a' < 'b' }} {{ 'b' <= 'a' }}"))
    assert.are.equal("=== [1, 1]", render("{{ '=' * 3 }} {{ [1] * 2 }}"))
    assert.are.equal("True False", render("{{ 9 is divisibleby 3 }} {{ 9 is divisibleby(2) }}"))
    assert.are.equal("True", render("{{ [1, [2]] == [1, [2]] }}"))
  end)

  it("keeps a loop's assignments inside the loop, and a namespace's across it", function()
    assert.are.equal("0 3", render("{% set n = 0 %}{% set ns = namespace(n=0) %}{% for i in [1, 2] %}"
      .. "{% set n = n + i %}{% set ns.n = ns.n + i %}{% endfor %}{{ n }} {{ ns.n }}"))
  end)

  it("breaks and continues loops", function()
    assert.are.equal("13", render("{% for i in [1, 2, 3, 4] %}{% if i == 2 %}{% continue %}{% endif %}"
      .. "{% if i == 4 %}{% break %}{% endif %}{{ i }}{% endfor %}"))
  end)

  it("reports {% generation %} spans as byte ranges of the output", function()
    local text, info = jinja.compile("a{% generation %}bc{% endgeneration %}d{% generation %}é{% endgeneration %}")
      :render({})
    assert.are.equal("abcdé", text)
    assert.are.same({{1, 3}, {4, 6}}, info.generation)
  end)

  it("passes {% raw %} through and drops one trailing newline of the template", function()
    assert.are.equal("{{ x }}", render("{% raw %}{{ x }}{% endraw %}\n"))
  end)
end)

describe("jinja errors name the construct and the line", function()
  it("for statements, filters and tests it does not implement", function()
    assert.truthy(errmsg(render, "a\n{% include 'x' %}"):find("chat template line 2: unsupported construct {% include %}", 1, true))
    assert.truthy(errmsg(render, "{{ x | frobnicate }}"):find("chat template line 1: unsupported filter 'frobnicate'", 1, true))
    assert.truthy(errmsg(render, "\n\n{{ x is shiny }}"):find("chat template line 3: unsupported test 'shiny'", 1, true))
  end)

  it("for unclosed blocks and misplaced tags", function()
    assert.truthy(errmsg(render, "{% if x %}\nno end"):find("chat template line 1: {% if %} is not closed", 1, true))
    assert.truthy(errmsg(render, "x\n{% endfor %}"):find("chat template line 2: {% endfor %} without an opening tag", 1, true))
    assert.truthy(errmsg(render, "{{ 'open }}"):find("unclosed {{", 1, true))
  end)

  it("for bad operations, with the types", function()
    assert.truthy(errmsg(render, "{{ 'a' + 1 }}"):find("unsupported operand types for +: str and int", 1, true))
    assert.truthy(errmsg(render, "{{ x.y.z }}"):find("undefined", 1, true))
    assert.truthy(errmsg(render, "{% set a.b = 1 %}", {a = {b = 2}}):find("only a namespace() takes attributes", 1, true))
  end)

  it("for raise_exception, with the template's message", function()
    assert.are.equal("chat template: roles must alternate", errmsg(render, "{{ raise_exception('roles must alternate') }}"))
  end)
end)
