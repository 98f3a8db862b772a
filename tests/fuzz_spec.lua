-- The fuzzing harnesses of tests/fuzz/, linked with a replay driver instead of
-- libFuzzer (built by `make test`), run over their seed corpora and over the
-- inputs that once crashed them (tests/fuzz/regressions/NAME/): each must run
-- to the end with no crash and no broken contract.  `make fuzz` runs the same
-- harnesses under libFuzzer.

local bin = os.getenv("LUALIGN_FUZZ_BIN") or "./build/fuzz"
local names = {"safetensors", "bpe", "jsonl", "tokenizer_json", "encode"}

local h = require "helpers"
local exists = h.exists

local function is_dir(path)
  local ok, _, code = os.execute("test -d '" .. path .. "'")
  return ok == true or code == 0
end

describe("fuzzing harnesses replay their corpora", function()
  for _, name in ipairs(names) do
    it(name, function()
      local exe = bin .. "/" .. name
      assert.is_true(exists(exe), exe .. " is not built (make test builds it)")
      local dirs = {"tests/fuzz/seeds/" .. name}
      if is_dir("tests/fuzz/regressions/" .. name) then dirs[#dirs + 1] = "tests/fuzz/regressions/" .. name end
      local p = assert(io.popen("LUALIGN_ROOT=. " .. exe .. " " .. table.concat(dirs, " ") .. " 2>&1"))
      local out = p:read("a")
      local ok = p:close()
      assert.is_true(ok, out)
      local n = tonumber(out:match("(%d+) inputs replayed"))
      assert.is_true(n ~= nil and n > 0, out)
    end)
  end
end)
