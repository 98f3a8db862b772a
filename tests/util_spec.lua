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
