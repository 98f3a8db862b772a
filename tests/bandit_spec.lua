-- The GDPO paper's bandit (recipes/bandit.lua), run as a user runs it, with
-- its default seed: in the caption's regime (beta = 1, tau = 0.5, an SFT
-- reference, exact soft labels) DPO and GDPO end with a higher expected
-- reward and a better mode than cDPO, which stays at its closed-form optimum
-- pi_ref exp(r / (beta tau)) in the data's low-reward region; with beta = 0.1
-- the ordering reverses and cDPO is best.  See docs/bandit.md.
local cjson = require "cjson"

local function run(args)
  local out = os.tmpname()
  os.remove(out)
  local cmd = string.format("lua5.4 recipes/bandit.lua out_dir=%s name=bandit quiet=true %s 2>&1", out, args or "")
  local p = assert(io.popen(cmd))
  local text = p:read("a")
  local ok = p:close()
  assert(ok, "the recipe failed:\n" .. text)
  local f = assert(io.open(out .. "/bandit/summary.json"))
  local summary = cjson.decode(f:read("a"))
  f:close()
  return summary, out, out .. "/bandit"
end

local h = require "helpers"
local read = h.read

describe("the bandit recipe", function()
  it("shows the caption in its regime: DPO and GDPO above cDPO, cDPO's mode in the data", function()
    local summary, out, dir = run()
    local s = summary["caption regime"]
    assert.is_not_nil(s, "no caption regime in the summary")
    local dpo, cdpo, gdpo = s.methods.dpo, s.methods.cdpo, s.methods.gdpo
    assert.is_true(s.caption_holds)
    assert.is_true(dpo.reward > cdpo.reward + 0.1, "DPO's expected reward should clearly beat cDPO's")
    assert.is_true(gdpo.reward > cdpo.reward + 0.1, "GDPO's expected reward should clearly beat cDPO's")
    assert.is_true(dpo.mode_reward > cdpo.mode_reward and gdpo.mode_reward > cdpo.mode_reward)
    -- cDPO's mode sits in the training distribution (centred on action 30), where the reward is low
    assert.is_true(math.abs(cdpo.mode - 30) <= 10 and cdpo.mode_reward < 0.2, "cDPO mode " .. cdpo.mode)
    -- and cDPO has converged to its closed-form optimum
    assert.is_true(math.abs(cdpo.reward - s.optimum.reward) < 0.01)
    assert.is_true(math.abs(cdpo.kl - s.optimum.kl) < 0.02)
    -- the run wrote its report, plot and metrics
    assert.is_truthy(read(dir .. "/report.md"):find("Caption's ordering .- %*%*holds%*%*"))
    assert.is_truthy(read(dir .. "/bandit.svg"):find("^<svg"))
    assert.is_truthy(read(dir .. "/config.json"):find('"tau": 0.5', 1, true))
    local lines = 0
    for _ in io.lines(dir .. "/metrics.jsonl") do lines = lines + 1 end
    assert.are.equal(3 * (3000 / 25 + 1), lines)
    os.execute("rm -rf '" .. out .. "'")
  end)

  it("shows where the caption fails: with beta = 0.1 cDPO's optimum is the best of the three", function()
    local summary, out = run("beta=0.1 steps=1500")
    local name = next(summary)
    local s = summary[name]
    local dpo, cdpo, gdpo = s.methods.dpo, s.methods.cdpo, s.methods.gdpo
    assert.is_false(s.caption_holds)
    assert.is_true(cdpo.reward > dpo.reward and cdpo.reward > gdpo.reward)
    assert.is_true(cdpo.mode_reward > 0.9, "cDPO's mode should be near the reward's peak")
    assert.is_true(math.abs(cdpo.reward - s.optimum.reward) < 0.02)
    os.execute("rm -rf '" .. out .. "'")
  end)

  it("rejects unknown keys and bad values, naming them", function()
    local p = io.popen("lua5.4 recipes/bandit.lua betta=2 2>&1")
    local text = p:read("a")
    assert.is_falsy(p:close())
    assert.is_truthy(text:find("unknown config key 'betta' -- did you mean 'beta'?", 1, true), text)
    p = io.popen("lua5.4 recipes/bandit.lua steps=many 2>&1")
    text = p:read("a")
    assert.is_falsy(p:close())
    assert.is_truthy(text:find("steps must be an integer (got 'many')", 1, true), text)
  end)

  it("lists every key with its default and description under --help", function()
    local p = io.popen("lua5.4 recipes/bandit.lua --help 2>&1")
    local text = p:read("a")
    assert.is_truthy(p:close())
    assert.is_truthy(text:find("tau%s+0.5%s+temperature of the Bradley%-Terry labels"), text)
    assert.is_truthy(text:find("lr%s+0.05%s+Adam learning rate"), text)
    local keys = 0
    for line in text:gmatch("\n  (%S[^\n]*)") do
      keys = keys + 1
      assert.is_truthy(line:match("^%S+%s+%S+%s+%S"), "no description: " .. line)
    end
    assert.are.equal(27, keys)   -- the bandit's 19, name, and the 7 every recipe has
  end)
end)
