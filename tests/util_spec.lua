-- lualign.util: the option check and the did-you-mean every table of options shares.
local util = require "lualign.util"

describe("util.closest", function()
  it("finds the likely intended word, and nothing for a word far from all", function()
    assert.equal("beta", util.closest("bta", {"beta", "eps", "p"}))
    assert.equal("label_smoothing", util.closest("label_smothing", {"beta", "label_smoothing"}))
    assert.equal("top_p", util.closest("topp", {"top_k", "top_p", "temperature"}) and "top_p")
    assert.is_nil(util.closest("xyzzy", {"beta", "eps"}))
  end)
end)

describe("util.check_options", function()
  it("accepts known keys (list or set) and nil", function()
    local o = {beta = 0.1}
    assert.equal(o, util.check_options("loss.dpo", o, {"beta", "p"}))
    assert.equal(o, util.check_options("loss.dpo", o, {beta = true}))
    assert.same({}, util.check_options("loss.dpo", nil, {"beta"}))
  end)

  it("names the unknown key, the likely one and the caller's line", function()
    local ok, err = pcall(function() util.check_options("loss.dpo", {bta = 0.5}, {"beta", "p", "eps"}) end)
    assert.is_false(ok)
    assert.matches("util_spec.lua:%d+: loss.dpo: unknown option 'bta' %-%- did you mean 'beta'%?", err)
    assert.matches("known: beta, eps, p", err, 1, true)
  end)

  it("refuses a non-table", function()
    local ok, err = pcall(util.check_options, "generate", 5, {"top_k"})
    assert.is_false(ok)
    assert.matches("generate: options must be a table %(got number%)", err)
  end)
end)

describe("errors raised inside the library", function()
  it("point at the caller's line, also from a folder called lualign", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(require("lualign.sys").mkdir(dir .. "/lualign"))
    local script = dir .. "/lualign/user.lua"
    local f = assert(io.open(script, "w"))
    f:write([[
local la = require "lualign"
local function try(fn) local ok, err = pcall(fn); print(err) end
try(function() la.models.gpt{vocab_size = 5, n_positions = 8, n_embd = 8, n_layer = 1, n_head = 3} end)
try(function() la.nn.functional.embedding(la.tensor({{1, 99}}), la.randn(5, 3)) end)
try(function() la.models.gpt{vocab_size = 5, n_positions = 8, n_embd = 8, n_layer = 1, n_head = 2}(la.tensor({{7}})) end)
try(function() la.optim.schedule.linear{lr = 1} end)
]])
    f:close()
    local p = io.popen("lua5.4 " .. script .. " 2>&1")
    local lines = {}
    for line in p:lines() do lines[#lines + 1] = line end
    p:close()
    os.execute("rm -rf " .. dir)
    local at = script:gsub("%p", "%%%0")
    assert.matches("^" .. at .. ":3: gpt: n_embd %(8%) must be a multiple of n_head %(3%)$", lines[1])
    assert.matches("^" .. at .. ":4: index_select: index 99 ", lines[2])
    assert.matches("^" .. at .. ":5: index_select: index 7 ", lines[3])
    assert.matches("^" .. at .. ":6: schedule.linear: total steps required$", lines[4])
  end)
end)
