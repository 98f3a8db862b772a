local la = require "lualign"
local recipe = require "lualign.recipe"
local log = require "lualign.log"

local specs = {
  {"lr", 3e-4, "learning rate"},
  {"steps", 100, "optimizer steps"},
  {"loss", "gdpo", "loss name"},
  {"pack", false, "pack examples"},
}

local h = require "helpers"
local tmpdir = h.tmpdir

describe("recipe config", function()
  it("takes defaults, key=value overrides with the defaults' types, and config files", function()
    local c = recipe.config({[0] = "x.lua", "lr=1e-3", "steps=20", "pack=true", "name=t"}, "demo", specs)
    assert.are.equal(1e-3, c.lr)
    assert.are.equal(20, c.steps)
    assert.are.equal("integer", math.type(c.steps))
    assert.is_true(c.pack)
    assert.are.equal("gdpo", c.loss)
    assert.are.equal("t", c.name)
    assert.are.equal("runs", c.out_dir)
    local file = os.tmpname() .. ".lua"
    local f = assert(io.open(file, "w"))
    f:write("return {steps = 7, loss = 'dpo'}")
    f:close()
    local c2 = recipe.config({[0] = "x.lua", file, "loss=ipo"}, "demo", specs)
    os.remove(file)
    assert.are.equal(7, c2.steps)
    assert.are.equal("ipo", c2.loss)   -- later arguments win
  end)

  it("rejects unknown keys and values of the wrong type, naming them", function()
    assert.has_error(function() recipe.config({"stpes=3"}, "demo", specs) end,
      "argument 'stpes=3': unknown config key 'stpes' -- did you mean 'steps'? (see --help)")
    assert.has_error(function() recipe.config({"steps=2.5"}, "demo", specs) end,
      "argument 'steps=2.5': steps must be an integer (got '2.5')")
    assert.has_error(function() recipe.config({"pack=maybe"}, "demo", specs) end,
      "argument 'pack=maybe': pack must be a boolean (got 'maybe')")
    assert.has_error(function() recipe.config({"oops"}, "demo", specs) end)
  end)

  it("lists every key with its default and description under --help", function()
    local out = io.popen("cd " .. os.getenv("PWD") .. " && lua5.4 -e 'package.path=\"./lua/?.lua;./lua/?/init.lua;\"..package.path; package.cpath=\"./build/?.so;\"..package.cpath' -e 'require(\"lualign.recipe\").config({[0]=\"r.lua\", \"--help\"}, \"demo\", {{\"lr\", 0.1, \"learning rate\"}, {\"fmt\", \"Q:\" .. string.char(10) .. \"A:\", \"format\"}})'")
    local text = out:read("a")
    out:close()
    assert.is_truthy(text:find("usage: lualign r.lua", 1, true))
    assert.is_truthy(text:find("lr%s+0.1%s+learning rate"))
    assert.is_truthy(text:find("resume%s+false"))
    assert.is_truthy(text:find("fmt%s+Q:\\nA:%s+format"), text)   -- a newline shown escaped, on one line
  end)
end)

describe("run folders and metrics", function()
  it("writes config.json and appends metrics, dropping lines after a resume point", function()
    local dir = tmpdir()
    local c = recipe.config({"out_dir=" .. dir, "name=r1"}, "demo", specs)
    local run = recipe.run(c)
    assert.is_false(run:exists("config.json"))   -- nothing is written before run:start()
    run:start()
    assert.is_true(run:exists("config.json"))
    local cfg = require("cjson").decode(io.open(run:path("config.json")):read("a"))
    assert.are.equal(100, cfg.steps)
    local logger = log.open(run, {total = 5, every = 100, quiet = true})
    for s = 1, 5 do logger:log(s, {loss = 1 / s}) end
    logger:close()
    assert.are.equal(5, #log.read(run:path("metrics.jsonl")))
    local resumed = log.open(run, {total = 5, start_step = 3, quiet = true})
    resumed:log(4, {loss = 0.2})
    resumed:close()
    local rows = log.read(run:path("metrics.jsonl"))
    assert.are.same({1, 2, 3, 4}, {rows[1].step, rows[2].step, rows[3].step, rows[4].step})
    assert.are.equal(0.2, rows[4].loss)
    os.execute("rm -rf " .. dir)
  end)

  it("computes a cached file once, and again when its inputs or the file change", function()
    local dir = tmpdir()
    local run = recipe.run(recipe.config({"out_dir=" .. dir, "name=c"}, "demo", specs)):start()
    local src = dir .. "/source.txt"
    local function put(path, text) local f = assert(io.open(path, "w")); f:write(text); f:close() end
    put(src, "one")
    local builds = 0
    local function get(extra)
      return run:cached("derived.txt", {source = recipe.file_identity(src), max_len = extra or 8}, function(path)
        builds = builds + 1
        put(path, "built " .. builds)
      end)
    end
    local path = get()
    assert.are.equal(run:path("derived.txt"), path)
    get()
    assert.are.equal(1, builds)                         -- same inputs: reused
    get(16)
    assert.are.equal(2, builds)                         -- a setting differs
    put(src, "two")
    get(16)
    assert.are.equal(3, builds)                         -- the source file's bytes differ
    put(path, "edited")
    get(16)
    assert.are.equal(4, builds)                         -- the cached file itself changed
    assert.are.equal("built 4", io.open(path):read("a"))
    -- identities tell files apart by their bytes, not their names or times
    local a, b = dir .. "/a", dir .. "/b"
    put(a, string.rep("x", 1000)); put(b, string.rep("x", 999) .. "y")
    assert.are_not.equal(recipe.file_identity(a).digest, recipe.file_identity(b).digest)
    put(b, string.rep("x", 1000))
    assert.are.same(recipe.file_identity(a), recipe.file_identity(b))
    assert.are.equal(1000, recipe.file_identity(a).bytes)
    os.execute("rm -rf " .. dir)
  end)

  it("reads a metric's curve back: the steps that have it and its values", function()
    local rows = {{step = 1, loss = 3}, {step = 2, loss = 2, valid_loss = 2.5}, {step = 3, loss = 1},
                  {step = 4, valid_loss = 1.5}}
    local steps, losses = log.series(rows, "loss")
    assert.are.same({1, 2, 3}, steps)
    assert.are.same({3, 2, 1}, losses)
    steps, losses = log.series(rows, "valid_loss")
    assert.are.same({2, 4}, steps)
    assert.are.same({2.5, 1.5}, losses)
    assert.are.same({}, (log.series(rows, "kl")))
  end)

  it("writes JSON with sorted keys and integers kept", function()
    assert.are.equal('{"a": 1, "b": [0.5, "x"], "c": true}', recipe.json({c = true, a = 1, b = {0.5, "x"}}))
  end)
end)
