-- data/arith: the generated arithmetic problems.  data/build.lua's arith step
-- writes the committed bytes (and their MANIFEST.tsv lines), every answer is
-- right, and the three files share no operand pair.
local la = require "lualign"
local helpers = require "helpers"

local FILES = {"arith/sft.jsonl", "arith/train.jsonl", "arith/test.jsonl"}

local function manifest_lines(path)
  local lines = {}
  for line in io.lines(path) do
    local rel = line:match("^(arith/[^\t]+)\t")
    if rel then lines[rel] = line end
  end
  return lines
end

describe("data/arith", function()
  it("is what data/build.lua's arith step writes, byte for byte, as MANIFEST.tsv records", function()
    local out = helpers.tmpdir()
    assert.is_true(os.execute("lua5.4 data/build.lua arith '" .. out .. "' 2>/dev/null"))
    local committed, built = manifest_lines(la.data.path("MANIFEST.tsv")), manifest_lines(out .. "/MANIFEST.tsv")
    for _, rel in ipairs(FILES) do
      local built_bytes = helpers.read(out .. "/" .. rel)
      assert.is_string(built_bytes, rel .. " was not written")
      assert.are.equal(helpers.read(la.data.path(rel)), built_bytes, rel)
      assert.is_string(committed[rel], rel .. " is not in MANIFEST.tsv")
      assert.are.equal(committed[rel], built[rel])
    end
    os.execute("rm -rf '" .. out .. "'")
  end)

  it("answers every problem rightly, and no operand pair is in two files", function()
    local owner, sizes = {}, {}
    for _, rel in ipairs(FILES) do
      sizes[rel] = 0
      for ex in la.data.sft(la.data.path(rel)) do
        local a, op, b = ex.prompt:match("^What is (%d+) ([+-]) (%d+)%?$")
        assert.is_string(a, rel .. ": " .. ex.prompt)
        a, b = math.tointeger(tonumber(a)), math.tointeger(tonumber(b))
        assert.is_true(a <= 49 and b <= 49, ex.prompt)
        local answer = op == "+" and a + b or a - b
        assert.is_true(answer >= 0, ex.prompt)
        assert.are.equal(tostring(answer), ex.completion, ex.prompt)
        local key = math.min(a, b) .. "," .. math.max(a, b)
        assert.are.equal(owner[key] or rel, rel, ex.prompt .. " shares its operands with " .. tostring(owner[key]))
        owner[key] = rel
        sizes[rel] = sizes[rel] + 1
      end
    end
    -- every unordered pair of 0..49 (1,275) belongs to one file
    local n = 0
    for _ in pairs(owner) do n = n + 1 end
    assert.are.equal(1275, n)
    assert.are.same({["arith/sft.jsonl"] = 2595, ["arith/train.jsonl"] = 972, ["arith/test.jsonl"] = 208}, sizes)
  end)
end)
