-- The catalogue of bad input (tests/errors_catalogue.lua, shown to users as
-- docs/errors.md): every entry raises exactly the error it documents, nothing
-- crashes, hangs or leaves a partial file, and the page is up to date.
--
-- The entries run in a process of their own (tests/errors_catalogue_run.lua)
-- under a time limit, so a crash or a hang fails these tests instead of
-- stopping the test run; each entry is reported as a test here.

local h = require "helpers"
local read = h.read

describe("bad-input catalogue", function()
  it("docs/errors.md is generated from the catalogue (make errors-doc)", function()
    local p = assert(io.popen("lua5.4 tests/errors_catalogue_run.lua --markdown"))
    local generated = p:read("a")
    p:close()
    assert.is_true(generated == read("docs/errors.md"),
      "docs/errors.md differs from tests/errors_catalogue.lua: run make errors-doc")
  end)

  local p = assert(io.popen("timeout 300 lua5.4 tests/errors_catalogue_run.lua 2>&1; echo \"exit $?\""))
  local output = p:read("a")
  p:close()
  local seen = 0
  for line in output:gmatch("[^\n]+") do
    local n, what = line:match("^ok (%d+): (.*)$")
    local fn, fwhat, why = line:match("^FAIL (%d+): (.-): (.*)$")
    if n or fn then
      seen = seen + 1
      it(string.format("%s. %s", n or fn, what or fwhat), function()
        assert(n, why and why:gsub("\\n", "\n"))
      end)
    end
  end
  it("ran every entry to the end (no crash, no hang)", function()
    assert.is_true(seen > 0, output)
    assert.is_truthy(output:match("%d+ passed, %d+ failed\nexit 0\n$"), output)
  end)
end)
