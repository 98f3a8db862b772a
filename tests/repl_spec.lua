-- The REPL's parts without a terminal: value printing, completion, help,
-- the read-eval-print loop on plain files, and the `lualign` command.

local la = require "lualign"
local pretty = require "lualign.repl.pretty"
local complete = require "lualign.repl.complete"
local help = require "lualign.repl.help"
local repl = require "lualign.repl"
local cli = require "lualign.repl.cli"

local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok and 0 or code
end

describe("pretty printing", function()
  it("prints strings quoted and numbers as Lua does", function()
    assert.equal('"a\\nb"', pretty.format("a\nb"))
    assert.equal("1.0", pretty.format(1.0))
    assert.equal("3", pretty.format(3))
  end)

  it("prints tensors by their __tostring and objects by theirs", function()
    local t = la.tensor({1, 2})
    assert.equal(tostring(t), pretty.format(t))
    assert.equal("Linear(in=2, out=3, bias=true)", pretty.format(la.nn.Linear(2, 3)))
  end)

  it("lists tables inline when short and nested otherwise, keys sorted", function()
    assert.equal("{1, 2, x = 3}", pretty.format({1, 2, x = 3}))
    assert.equal('{["a b"] = 1, [true] = 2}', pretty.format({["a b"] = 1, [true] = 2}))
    local long = pretty.format({alpha = string.rep("a", 40), beta = {gamma = string.rep("g", 40)}})
    assert.equal(table.concat({
      "{",
      '  alpha = "' .. string.rep("a", 40) .. '",',
      '  beta = {gamma = "' .. string.rep("g", 40) .. '"},',
      "}"}, "\n"), long)
  end)

  it("marks cycles and limits depth and size", function()
    local t = {name = "root"}
    t.self = t
    assert.matches("self = <cycle: table: 0x%x+>", pretty.format(t))
    assert.equal("{a = {b = {c = {d = 1}}}}", pretty.format({a = {b = {c = {d = 1}}}}))
    assert.equal("{a = {b = {c = {d = {... 2 entries}}}}}", pretty.format({a = {b = {c = {d = {1, 2}}}}}))
    local big = {}
    for i = 1, 100 do big[i] = i end
    local s = pretty.format(big)
    assert.truthy(s:find("... (60 more)", 1, true))
    assert.falsy(s:find("41", 1, true))
  end)

  it("shows tensors inside tables by shape", function()
    assert.equal("{w = tensor(shape=(3, 4), dtype=float32)}", pretty.format({w = la.zeros(3, 4)}))
  end)

  it("joins several results with tabs", function()
    assert.equal('1\t"a"', pretty.format_all(1, "a"))
  end)
end)

describe("completion", function()
  local env = setmetatable({t = la.ones(2), m = la.nn.Sequential(la.nn.Linear(2, 2)), la = la}, {__index = _G})

  local function words(text)
    local list, start = complete.candidates(text, env)
    return table.concat(list, " "), start
  end

  it("completes globals and keywords", function()
    local list, start = words("pri")
    assert.equal("print", list)
    assert.equal(1, start)
    assert.equal("function", (words("x = func")))
  end)

  it("completes fields of tables, loading lazy submodules", function()
    local list, start = words("y = la.ze")
    assert.equal("zero zero_grad zeros zeros_like", list)
    assert.equal(8, start)
    assert.equal("Linear", (words("la.nn.Li")))
    assert.equal("constant cosine", (words("la.optim.schedule.c")))
    assert.truthy((" " .. words("la.") .. " "):find(" optim ", 1, true))
  end)

  it("completes tensor methods from la.Tensor and module methods through metatables", function()
    assert.equal("reshape", (words("t:resh")))
    assert.equal("grad grad_fn", (words("t.gr")))
    assert.equal("named_modules named_parameters", (words("m:named_")))
    assert.equal("format", (words("string.form")))
  end)

  it("offers nothing for unknown paths or numbers", function()
    assert.equal("", (words("nothing.here")))
    assert.equal("", (words("x = 1.5")))
  end)
end)

describe("help", function()
  it("shows the docstring of a Lua function, with its signature", function()
    local text, found = help.text(la.eye)
    assert.is_true(found)
    assert.truthy(text:find("la.eye(n, m, dtype)", 1, true))
    assert.truthy(text:find("Identity matrix", 1, true))
  end)

  it("shows the reference entry of a function written in C", function()
    local text, found = help.text(la.zeros)
    assert.is_true(found)
    assert.truthy(text:find("la.zeros(d1, d2", 1, true))
    assert.truthy(text:find("docs/tensors.md", 1, true))
    assert.truthy(help.text("t:softmax"):find("log_softmax", 1, true))
  end)

  it("documents classes, modules and names given as strings", function()
    local text = help.text(la.nn.Linear)
    assert.truthy(text:find("y = x W^T + b", 1, true))
    assert.truthy(text:find("constructor: Linear(in_features, out_features, opts)", 1, true))
    assert.truthy(help.text(la.nn):find("the Module protocol", 1, true))
    assert.truthy(help.text("la.optim.AdamW"):find("weight_decay", 1, true))
    assert.truthy(help.text("lualign.optim.schedule.cosine"):find("cosine decay", 1, true))
    assert.truthy(help.text(la.nn.Linear(2, 2)):find("y = x W^T + b", 1, true))
  end)

  it("says when nothing has the name", function()
    local text, found = help.text("la.no_such_thing")
    assert.is_false(found)
    assert.equal("help: nothing is called la.no_such_thing", text)
    -- help(la.no_such_thing) passes nil: that is said, not answered with the guide
    local out = {}
    local saved = io.write
    io.write = function(...) for _, x in ipairs({...}) do out[#out + 1] = x end end
    help.help(la.no_such_thing)
    io.write = saved
    assert.equal('help: the value given is nil (a name that does not exist?); help("la.NAME") looks a name up\n',
      table.concat(out))
  end)

  it("takes a function's entry from its own module's page only", function()
    -- `exp` also appears in formulas of docs/bandit.md, and `la.cat` in an example on docs/data.md
    local text = help.text(la.exp)
    assert.truthy(text:find("Unary: neg, exp, log", 1, true), text)
    assert.falsy(text:find("bandit", 1, true), text)
    text = help.text(la.cat)
    assert.truthy(text:find("la.cat({t1, t2, …} [, dim])", 1, true), text)
    assert.falsy(text:find("docs/data.md", 1, true), text)
    -- a function wrapped so that its errors point at the caller shows its own signature
    assert.truthy(help.text(la.loss.dpo):find("la.loss.dpo(pc, pr, rc, rr, opts)", 1, true))
  end)

  it("reads docstrings above definitions and groups of one-liners", function()
    local lines = {
      "--- Adds.", "-- Twice.", "function M.add(a, b) return a + b end",
      "", "----------", "-- not a doc", "local x = 1",
      "", "--- Small ones.", "F.a = function() end", "F.b = g",
    }
    assert.equal("Adds.\nTwice.", help.doc_above(lines, 3))
    assert.is_nil(help.doc_above(lines, 7))
    assert.equal("Small ones.", help.doc_above(lines, 11))
    assert.equal("Small ones.", (help.doc_by_name(lines, "b")))
  end)
end)

describe("interrupting", function()
  local lineedit = require("lualign.sys").lineedit

  local function own_pid()
    local f = assert(io.open("/proc/self/stat"))
    local pid = f:read("n")
    f:close()
    return pid
  end

  local function traceback(e) return tostring(e) end

  -- SIGINT to this process, delivered by the time this returns (through
  -- io.popen: os.execute ignores SIGINT while it waits, as system() does).
  local function send_sigint()
    local p = assert(io.popen("kill -INT " .. own_pid()))
    p:read("a")
    p:close()
  end

  local function spin(seconds)
    local deadline, steps = la.clock() + seconds, 0
    while la.clock() < deadline do steps = steps + 1 end
    return steps
  end

  it("stops running Lua code on SIGINT and returns like xpcall", function()
    local ok, err = lineedit.interruptible(function()
      send_sigint()
      spin(60)
      return "not interrupted"
    end, traceback)
    assert.is_false(ok)
    assert.matches("interrupted!$", err)
  end)

  it("passes arguments and results through", function()
    assert.same({true, 3, "x"}, {lineedit.interruptible(function(a, b) return a + b, "x" end, traceback, 1, 2)})
    local ok, err = lineedit.interruptible(function() error("plain", 0) end, traceback)
    assert.is_false(ok)
    assert.equal("plain", err)
  end)

  it("ignores SIGINT between evaluations while interrupts are caught", function()
    lineedit.catch_interrupts(true)
    send_sigint()                      -- comes while nothing is interruptible
    spin(0.2)
    local ok, v = lineedit.interruptible(function() return 1 end, traceback)
    lineedit.catch_interrupts(false)
    assert.is_true(ok)
    assert.equal(1, v)
    assert.is_nil(debug.gethook())
  end)
end)

describe("the REPL without a terminal", function()
  local function session(input)
    local inf, outf = io.tmpfile(), io.tmpfile()
    inf:write(input)
    inf:seek("set")
    local env = setmetatable({}, {__index = _G})
    assert.equal(0, repl.run({input = inf, output = outf, env = env, terminal = false, banner = false}))
    outf:seek("set")
    return outf:read("a"), env
  end

  it("evaluates expressions, statements and multi-line input", function()
    local out, env = session("x = 2\nx * 21\nfunction f(a)\nreturn a + 1\nend\nf(x)\n")
    assert.equal("> > 42\n> >> >> > 3\n> \n", out)
    assert.equal(2, env.x)
  end)

  it("reports errors and goes on", function()
    local out = session("error('boom')\nla.zeros(2) + la.zeros(3)\n1 +\n)\n7\n")
    assert.truthy(out:find("stdin:1: boom", 1, true))
    assert.truthy(out:find("cannot be broadcast", 1, true))
    assert.truthy(out:find("unexpected symbol", 1, true))
    assert.truthy(out:find("\n> 7\n", 1, true))
  end)

  it("preloads la, nn, optim, loss and help", function()
    local out = session("la == require 'lualign', nn == la.nn, optim == la.optim, loss == la.loss, type(help)\n")
    assert.equal('> true\ttrue\ttrue\ttrue\t"function"\n> \n', out)
  end)

  it("says which fields of a data file the readers ignore", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write('{"prompt": "a", "chosen": "b", "rejected": "c", "label": 0.7}\n')
    f:close()
    local out = session("#la.data.load('" .. path .. "', 'preference')\n")
    la.data.on_ignored_fields(nil)
    os.remove(path)
    assert.equal("> note: " .. path .. ': fields the preference format does not use, ignored: "label" (1 of 1 lines)'
      .. "\n1\n> \n", out)
  end)
end)

describe("the lualign command", function()
  it("prints its version and help, runs -e code and scripts", function()
    assert.matches("^lualign %d+%.%d+%.%d+ %(Lua 5%.4%)\n$", (run("lua5.4 bin/lualign --version")))
    assert.truthy(run("lua5.4 bin/lualign --help"):find("--recipe NAME", 1, true))
    assert.equal("6\n", (run("lua5.4 bin/lualign -e 'print(string.format(\"%g\", la.ones(2, 3):sum():item()))'")))
    local out = run("lua5.4 bin/lualign -e 'help(la.eye)'")
    assert.truthy(out:find("Identity matrix", 1, true))
  end)

  it("shows a message for the user alone, and an error from code with its traceback", function()
    local out, code = run("lua5.4 bin/lualign -e 'error(\"steps must be an integer (got 1.5)\", 0)'")
    assert.equal(1, code)
    assert.equal("lualign: steps must be an integer (got 1.5)\n", out)
    out, code = run("lua5.4 bin/lualign -e 'local x = la.zeros(2, 3) + la.zeros(4)'")
    assert.equal(1, code)
    assert.truthy(out:find("^lualign: %(command line%):1: add: shapes %(2, 3%) and %(4,%)"), out)
    assert.truthy(out:find("stack traceback:", 1, true), out)
  end)

  it("reads a piped session with prompts and results", function()
    local out, code = run("printf 'y = 5\\ny + 1\\n' | lua5.4 bin/lualign")
    assert.equal(0, code)
    assert.truthy(out:find("> > 6\n> \n", 1, true))
  end)

  it("runs -i script then the prompt, keeping the script's globals", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write("from_script = 99\n")
    f:close()
    local out = run("echo 'from_script + 1' | lua5.4 bin/lualign -i " .. path)
    os.remove(path)
    assert.truthy(out:find("> 100\n", 1, true))
  end)

  it("finds a recipe by name in the given folders and in installed lualign/recipes", function()
    local dir = run("mktemp -d"):gsub("%s+$", "")
    os.execute("mkdir -p " .. dir .. "/recipes")
    local f = assert(io.open(dir .. "/recipes/tiny.lua", "w"))
    f:write("print('tiny ran with', ...)\n")
    f:close()
    assert.equal("tiny", cli.recipe_name("recipes/tiny.lua"))
    assert.equal("tiny", cli.recipe_name("tiny.lua"))
    assert.equal("tiny", cli.recipe_name("tiny"))
    assert.is_nil(cli.recipe_name("../x/tiny.lua"))
    assert.equal(dir .. "/recipes/tiny.lua", cli.find_recipe("tiny", {dir .. "/recipes"}))
    assert.is_nil(cli.find_recipe("tiny", {}))
    local list = cli.list_recipes({dir .. "/recipes"})
    assert.same({"tiny", dir .. "/recipes/tiny.lua"}, list[1])
    -- An installed tree: <dir>/share/lua/5.4/lualign/recipes/tiny.lua
    os.execute("mkdir -p " .. dir .. "/share/lua/5.4/lualign/recipes && cp " .. dir ..
      "/recipes/tiny.lua " .. dir .. "/share/lua/5.4/lualign/recipes/")
    local out, code = run("cd /tmp && LUA_PATH='" .. dir .. "/share/lua/5.4/?.lua;;' lua5.4 " ..
      os.getenv("PWD") .. "/bin/lualign --recipe tiny a=1")
    assert.equal(0, code)
    assert.equal("tiny ran with\ta=1\n", out)
    out, code = run("lua5.4 bin/lualign no_such_recipe")
    assert.equal(1, code)
    assert.truthy(out:find("no file no_such_recipe and no recipe called no_such_recipe", 1, true))
    os.execute("rm -rf " .. dir)
  end)
end)
